"""torchvision's released ImageNet weights for our models (same keys and shapes).

The weight files are fetched through torch.hub's cache (``~/.cache/torch/hub/checkpoints``), so
each is downloaded once; a local file path works offline. Files are always read with
``weights_only=True``: a weight file is data, never code.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from src.checkpoint import load_checkpoint

PRETRAINED_TAG = "IMAGENET1K_V1"  # the weights whose preprocessing VARIANTS describes


class WeightMismatchError(ValueError):
    """A weight file whose keys or shapes do not fit the model."""


def pretrained_url(model_name: str) -> str:
    """URL of torchvision's IMAGENET1K_V1 weights for ``model_name`` (read from its weight enum)."""
    from torchvision.models import get_model_weights

    return get_model_weights(model_name)[PRETRAINED_TAG].url


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a weight file: a plain state_dict, or a train.py checkpoint's ``model`` entry.

    Read through src.checkpoint.load_checkpoint: weights only, and an empty, truncated or foreign
    file is a CheckpointError naming it rather than whatever torch.load happens to raise."""
    obj = load_checkpoint(path)
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise WeightMismatchError(f"{path} does not hold a state_dict")
    prefixes = ("module.", "_orig_mod.")  # DDP and torch.compile wrappers
    clean = {}
    for key, value in obj.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix):]
        clean[key] = value
    return clean


def check_fits(model: nn.Module, state: dict[str, torch.Tensor], source: str, skip: tuple[str, ...] = ()) -> None:
    """Raise WeightMismatchError naming the first key that is missing, extra or of another shape."""
    own = {k: v for k, v in model.state_dict().items() if not k.startswith(skip)}
    theirs = {k: v for k, v in state.items() if not k.startswith(skip)}
    for key, tensor in own.items():
        if key not in theirs:
            raise WeightMismatchError(f"{source} does not fit {_name(model)}: key {key!r} is missing")
        if tuple(theirs[key].shape) != tuple(tensor.shape):
            raise WeightMismatchError(
                f"{source} does not fit {_name(model)}: {key!r} has shape "
                f"{tuple(theirs[key].shape)} in the file but {tuple(tensor.shape)} in the model"
            )
    extra = [k for k in theirs if k not in own]
    if extra:
        raise WeightMismatchError(
            f"{source} does not fit {_name(model)}: unexpected key {extra[0]!r} "
            f"({len(extra)} unexpected in all)"
        )


def _name(model: nn.Module) -> str:
    variant = getattr(model, "variant", None)
    return variant.name if variant is not None else type(model).__name__


def load_pretrained(model: nn.Module, name_or_path: str = "imagenet", progress: bool = True) -> nn.Module:
    """Load torchvision's ImageNet weights (``"imagenet"``) or a local weight file into ``model``.

    When the model's classifier has another number of classes than the file, everything but the
    classifier is loaded and the classifier keeps a fresh initialisation (a one-line notice is
    printed): the usual start of fine-tuning.
    """
    if name_or_path in ("imagenet", PRETRAINED_TAG, "true", "True"):
        url = pretrained_url(_name(model))
        state = torch.hub.load_state_dict_from_url(
            url, map_location="cpu", progress=progress, weights_only=True
        )
        source = f"torchvision {PRETRAINED_TAG} weights"
    else:
        if not os.path.exists(name_or_path):
            raise FileNotFoundError(f"pretrained weights not found: {name_or_path}")
        state = read_state_dict(name_or_path)
        source = name_or_path
    head = ("classifier.",)
    check_fits(model, state, source, skip=head)
    head_fits = all(
        k in state and tuple(state[k].shape) == tuple(v.shape)
        for k, v in model.state_dict().items()
        if k.startswith(head)
    )
    if head_fits:
        model.load_state_dict(state, strict=True)
    else:
        body = {k: v for k, v in state.items() if not k.startswith(head)}
        model.load_state_dict(body, strict=False)
        if hasattr(model, "reset_classifier"):
            model.reset_classifier()
        file_classes = state["classifier.1.weight"].shape[0] if "classifier.1.weight" in state else "?"
        print(
            f"notice: loaded {source} except the classifier ({file_classes} classes in the file, "
            f"{getattr(model, 'num_classes', '?')} in the model); the classifier is re-initialised"
        )
    return model
