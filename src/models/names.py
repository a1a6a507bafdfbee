"""What a ``--pretrained`` value names: the one vocabulary of train.py, eval.py, export.py and hubconf.py.

=====================================  ===========================================================
``imagenet`` (also ``true``,           the architecture's reference ImageNet weights (needs the
``IMAGENET1K_V1``; any case)            variant): src.models.weights.imagenet_entry
a registry name                        that entry: ``efficientnet_lite0.google_imagenet``
                                       (``python -m src.models --weights`` lists them)
torchvision's enum spelling            its registry entry: ``EfficientNet_B0_Weights.IMAGENET1K_V1``
``hf-hub:OWNER/NAME``                  a timm model repository on the Hugging Face hub
a file path                            any layout src.models.layouts reads, .pth/.bin/.safetensors
=====================================  ===========================================================

A value with no folder separator and no weight-file suffix that names no existing file is taken as
a name; an unknown one is an UnknownWeights error naming the closest names, not "file not found".
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from .effnet import get_variant
from .hub import HUB_PREFIX
from .weights import TORCHVISION, WEIGHTS, UnknownWeights, Weights, closest_names, hub_entry, imagenet_entry
from .layouts import WeightMismatchError

IMAGENET = "imagenet"  # the --pretrained word for an architecture's reference ImageNet weights
PRETRAINED_TAG = "IMAGENET1K_V1"  # torchvision's weights that "imagenet" means for B0-B7 and V2
PUBLISHED_WORDS = (IMAGENET, "true", PRETRAINED_TAG.lower())  # every spelling of it (any case)
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt", ".tar")
# torchvision's weight enums: EfficientNet_B0_Weights.IMAGENET1K_V1 (DEFAULT is the same weights here)
TORCHVISION_ENUM = re.compile(r"(efficientnet_(?:b\d|v2_[sml]))_weights\.(imagenet1k_v1|default)", re.IGNORECASE)
TIMM_NAME = re.compile(r"(tf_)?efficientnet\w*\.\w+")  # timm's names: tf_efficientnet_lite0.in1k


@dataclass(frozen=True)
class Named:
    """A --pretrained value, parsed: a registry ``entry`` (words and names), a hub ``repo_id`` (with its
    registry entry when it has one), or a file ``path``."""

    value: str
    entry: Weights | None = None
    repo_id: str | None = None
    path: str | None = None


def is_published(value: str | None) -> bool:
    """Whether a --pretrained value names published weights (a word, a registry name, hf-hub:REPO),
    not a local file: nothing to read, and a download to avoid in ``train.py --check``."""
    if value is None:
        return False
    text = str(value).strip()
    return (text.lower() in PUBLISHED_WORDS or text.startswith(HUB_PREFIX) or text in WEIGHTS
            or _torchvision_entry(text) is not None)


def parse_pretrained(value: str, arch: str | None = None) -> Named:
    """``value`` in the vocabulary above, for variant ``arch`` (None: not given). Raises UnknownWeights
    (the closest names) and WeightMismatchError (the variant is missing, or not the weights')."""
    text = str(value).strip()
    if text.lower() in PUBLISHED_WORDS:
        if not arch:
            raise WeightMismatchError(f"--pretrained {text} needs the variant: pass --model NAME (e.g. --model "
                                      "efficientnet_lite0)")
        return Named(text, entry=imagenet_entry(arch))
    if text.startswith(HUB_PREFIX):
        repo_id = text.removeprefix(HUB_PREFIX)
        return Named(text, entry=_fits(hub_entry(repo_id), arch, text), repo_id=repo_id)
    entry = WEIGHTS.get(text) or _torchvision_entry(text)
    if entry is not None:
        return Named(text, entry=_fits(entry, arch, text))
    if _is_file_like(text):
        return Named(text, path=text)
    hint = f"; a timm name? timm's weights are on the hub: hf-hub:timm/{text}" if TIMM_NAME.fullmatch(text) else ""
    raise UnknownWeights(f"--pretrained {text!r} is no weights name and no file{hint}; "
                         f"{closest_names(text, [IMAGENET, *WEIGHTS])}")


def _torchvision_entry(text: str) -> Weights | None:
    """EfficientNet_B0_Weights.IMAGENET1K_V1 as its registry entry."""
    match = TORCHVISION_ENUM.fullmatch(text)
    if match is None:
        return None
    arch = match.group(1).lower()
    return next((w for w in WEIGHTS.values() if w.arch == arch and w.trainer == TORCHVISION), None)


def _fits(entry: Weights | None, arch: str | None, text: str) -> Weights | None:
    """The entry, unless --model names another variant."""
    if entry is not None and arch and get_variant(arch).name != entry.arch:
        raise WeightMismatchError(f"{text} are {entry.arch} weights, not {get_variant(arch).name}'s; "
                                  f"pass --model {entry.arch}")
    return entry


def _is_file_like(text: str) -> bool:
    """A path: it exists, has a folder in it, or ends like a weight file."""
    return Path(text).exists() or "/" in text or "\\" in text or text.lower().endswith(WEIGHT_SUFFIXES)
