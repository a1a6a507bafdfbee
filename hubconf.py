"""torch.hub entry points: one per architecture, as torchvision's and NVIDIA's repositories have.

    model = torch.hub.load("OWNER/efficientnet", "efficientnet_lite0", weights="imagenet", num_classes=10)
    model = torch.hub.load("path/to/clone", "efficientnet_b0", source="local", weights=None)

``weights`` is any ``--pretrained`` value (src.models.names): ``imagenet``, a registry name such as
``efficientnet_lite0.google_imagenet`` (``python -m src.models --weights``), torchvision's
``EfficientNet_B0_Weights.IMAGENET1K_V1``, ``hf-hub:timm/tf_efficientnet_lite0.in1k`` or a file; None
builds the network untrained. The network is built with the padding and BatchNorm eps the weights
need, and ``model.preprocess`` holds their eval preprocessing (resize, crop, interpolation, mean,
std): Google's Lite weights want mean = std = 0.5, not ImageNet's. ``num_classes`` other than the
weights' re-initialises the classifier, for fine-tuning. Extra keyword arguments go to build_model
(dropout, drop_path_rate).
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from src.common.preprocess import Preprocess
from src.models import build_model, build_pretrained, default_preprocess

dependencies = ["torch", "torchvision"]


def _entry(arch: str) -> Callable[..., nn.Module]:
    def load(weights: str | None = None, num_classes: int | None = None, progress: bool = True,
             **kwargs: Any) -> nn.Module:
        if weights is None:
            model = build_model(arch, num_classes=num_classes or 1000, **kwargs)
            model.preprocess = default_preprocess(arch)
            return model
        model, imported = build_pretrained(arch, str(weights), num_classes, progress=progress, **kwargs)
        model.preprocess = Preprocess.from_dict(imported.preprocess)
        return model

    load.__name__ = load.__qualname__ = arch
    load.__doc__ = f"{arch}: weights= any --pretrained name or file (None: untrained), num_classes= (default: the weights')."
    return load


efficientnet_b0 = _entry("efficientnet_b0")
efficientnet_b1 = _entry("efficientnet_b1")
efficientnet_b2 = _entry("efficientnet_b2")
efficientnet_b3 = _entry("efficientnet_b3")
efficientnet_b4 = _entry("efficientnet_b4")
efficientnet_b5 = _entry("efficientnet_b5")
efficientnet_b6 = _entry("efficientnet_b6")
efficientnet_b7 = _entry("efficientnet_b7")
efficientnet_v2_s = _entry("efficientnet_v2_s")
efficientnet_v2_m = _entry("efficientnet_v2_m")
efficientnet_v2_l = _entry("efficientnet_v2_l")
efficientnet_lite0 = _entry("efficientnet_lite0")
efficientnet_lite1 = _entry("efficientnet_lite1")
efficientnet_lite2 = _entry("efficientnet_lite2")
efficientnet_lite3 = _entry("efficientnet_lite3")
efficientnet_lite4 = _entry("efficientnet_lite4")
