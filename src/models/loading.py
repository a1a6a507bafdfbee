"""Turn a checkpoint, a weight file or the published weights into a ready EfficientNet in eval mode.

eval.py and export.py both load through here, so one file gives the same model, class names and
preprocessing whether it is scored or exported. Sources:

* ``--checkpoint_path``: a train.py checkpoint, self-describing (model name, class names, eval
  preprocessing, EMA weights, QAT), or a plain state_dict of any layout (the caller names the
  variant, or the one whose shapes fit is taken);
* ``--pretrained``: whatever src.models.pretrained.resolve_weights makes of it (published weights by
  name, hf-hub:REPO, or a weight file), as train.py's --pretrained does.

Published weights (asked for by name, or a bare file recognised as a registry entry) carry their
output names in ``labels`` (ImageNet's), for exported files; ``classes`` are a checkpoint's own
training classes, which eval.py matches to the data's folders.

The class count always comes from the weights (rows of ``classifier.1.weight``), never from a
default, so a 10-class fine-tune is never silently given a fresh 1000-class head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from src.common.errors import ModelLoadError
from src.common.preprocess import Preprocess

from . import qat
from .effnet import build_model, get_variant
from .files import has_ema, read_file, weights_in
from .layouts import ImportedWeights, import_weights
from .pretrained import check_fits, resolve_weights
from .qat import QAT_KEY
from .names import parse_pretrained
from .weights import Weights, WeightsNotInstalled

CLASSIFIER_WEIGHT = "classifier.1.weight"  # its rows are the class count of a state_dict
IMAGENET_CLASSES = 1000


@dataclass
class LoadedModel:
    """A model in eval mode plus what its file says about it."""

    model: nn.Module
    name: str  # canonical variant name, e.g. "efficientnet_b0"
    num_classes: int
    classes: list[str] | None  # names in the model's output order, when the checkpoint has them
    preprocess: Preprocess | None  # the checkpoint's own eval preprocessing, when it has one
    source: str  # the file path, or "torchvision NAME IMAGENET1K_V1"; for messages and reports
    use_ema: bool = False  # the checkpoint's EMA weights were loaded (not its raw "model")
    weights_note: str | None = None  # one line saying which weights of a checkpoint were loaded, and why
    import_note: str | None = None  # one line: the file's layout, padding and eval preprocessing (foreign layouts)
    padding: str = "symmetric"  # the network's padding, as the weights need
    published: Weights | None = None  # the registry entry the weights are, when they are published ones
    labels: list[str] | None = None  # published weights' output names (ImageNet's), for exported files


def variant_name(name: str | None, why: str) -> str:
    """The canonical variant name; ``why`` says why a name is needed when none was given."""
    if not name:
        raise ModelLoadError(f"{why}: pass --model NAME (e.g. --model efficientnet_b0)")
    try:
        return get_variant(name).name
    except ValueError as exc:  # names the valid variants
        raise ModelLoadError(str(exc)) from None


def classifier_size(state: Mapping[str, torch.Tensor], source: str) -> int:
    """Number of classes of an EfficientNet state_dict: the rows of its final Linear layer."""
    weight = state.get(CLASSIFIER_WEIGHT)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise ModelLoadError(f"{source} has no {CLASSIFIER_WEIGHT!r}; is it an EfficientNet state_dict?")
    return int(weight.shape[0])


def check_class_num(num_classes: int, class_num: int | None, source: str) -> None:
    """A config's ``class_num`` (None = not set) must agree with the weights."""
    if class_num is not None and class_num != num_classes:
        raise ModelLoadError(f"{source} has {num_classes} classes but the config's class_num is {class_num}")


def _build(weights: ImportedWeights, num_classes: int, source: str) -> nn.Module:
    """Exactly these weights in a fresh model built as they need (padding, BatchNorm eps): every
    key and shape must match (no silent re-init)."""
    model = build_model(weights.model_name, num_classes=num_classes, **weights.build_options())
    check_fits(model, weights.state, source)  # WeightMismatchError naming the first bad key
    model.load_state_dict(weights.state, strict=True)
    return model.eval()


def _torchvision_layout(state: Mapping[str, torch.Tensor]) -> bool:
    return "features.0.0.weight" in state or CLASSIFIER_WEIGHT in state


def _imported(obj: dict, state: dict, name: str | None, source: str,
              padding: str | None = None) -> tuple[ImportedWeights, str | None]:
    """Any layout (torchvision, timm, efficientnet_pytorch) in this project's keys, and the line
    that names the layout, padding and preprocessing when the file is not in ours or the padding
    was forced. ``padding`` forces the padding over the file's own."""
    weights = import_weights(obj, name, source, padding, state=state)  # WeightMismatchError: closest layout, bad key
    return weights, None if weights.layout == "torchvision" and padding is None else weights.notes[0]


def _foreign_preprocess(weights: ImportedWeights) -> Preprocess | None:
    """The eval preprocessing a foreign file's trainer used (timm's, Google's); None for ours."""
    return None if weights.layout == "torchvision" else Preprocess.from_dict(weights.preprocess)


def _saved_preprocess(entry: object, path: str) -> Preprocess | None:
    if not isinstance(entry, dict):
        return None
    try:
        return Preprocess.from_dict(entry)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path} has an unusable 'preprocess' entry: {exc}") from None


def choose_ema(obj: dict, use_ema: bool | None, path: str) -> tuple[bool, str | None]:
    """(load the EMA weights?, the line that says so). ``use_ema`` None = the weights the checkpoint's
    best was chosen by: train.py validates the EMA last and keeps its top-1 as the metric, so a
    checkpoint with EMA weights was judged by them."""
    if use_ema and not has_ema(obj):
        raise ModelLoadError(f"{path} has no EMA weights (trained without ema_decay); drop --use_ema")
    if not has_ema(obj):
        return False, None
    if use_ema is None:
        return True, ("weights: EMA (the checkpoint's best was chosen by the EMA's top-1; "
                      "--use_ema false for the raw weights)")
    return use_ema, f"weights: {'EMA' if use_ema else 'raw (not the EMA)'}, as --use_ema asks"


def add_use_ema_argument(parser: Any) -> None:
    """``--use_ema [true|false]`` as eval.py and export.py take it (``parser``: an argparse parser or
    argument group); read the value with use_ema_flag."""
    parser.add_argument("--use_ema", nargs="?", const="true", type=str.lower, choices=("true", "false"),
                        help="true: the checkpoint's EMA weights, false: its raw weights (default: EMA when "
                             "it has them, the weights its best was chosen by)")


def use_ema_flag(value: str | None) -> bool | None:
    """The parsed --use_ema: True, False, or None when not given (choose_ema decides)."""
    return None if value is None else value == "true"


def load_trained(
    path: str,
    model_name: str | None = None,
    use_ema: bool | None = None,
    model_origin: str = "--model",
    class_num: int | None = None,
    padding: str | None = None,
) -> LoadedModel:
    """A train.py checkpoint (self-describing) or a plain state_dict (needs ``model_name``; other
    layouts than ours: found from the shapes). ``padding`` forces the padding ("same"/"symmetric").

    ``use_ema`` None loads the EMA weights when the checkpoint has them (see choose_ema).
    ``model_origin`` names where ``model_name`` came from ("--model", "config key 'model'") so a
    clash with the checkpoint's own name tells the user what to drop.
    """
    path = str(path)
    obj = read_file(path)  # CheckpointError: missing, unsafe, corrupt
    use_ema, weights_note = choose_ema(obj, use_ema, path)
    state = weights_in(obj, ema=use_ema)
    saved = obj.get("model_name") if isinstance(obj.get("model_name"), str) else None
    if saved and model_name and model_name != saved:
        raise ModelLoadError(f"{path} holds {saved} weights but {model_origin} is {model_name}; "
                             "drop it or pass the matching checkpoint")
    name = saved or model_name
    if saved and obj.get(QAT_KEY):
        return _load_qat(obj, state, saved, path, use_ema, weights_note, class_num)
    if name or _torchvision_layout(state):  # other layouts: the variant whose shapes fit
        name = variant_name(name, f"{path} is a plain state_dict without a model name")
    weights, import_note = _imported(obj, state, name, path, padding)
    name, state = weights.model_name, weights.state
    num_classes = classifier_size(state, path)
    check_class_num(num_classes, class_num, path)
    classes = obj.get("classes") if saved else None  # a plain state_dict's keys are all tensors
    if classes is not None and len(classes) != num_classes:
        raise ModelLoadError(f"{path} lists {len(classes)} class names but its classifier has "
                             f"{num_classes} outputs")
    preprocess = _saved_preprocess(obj.get("preprocess"), path) if saved else _foreign_preprocess(weights)
    return LoadedModel(_build(weights, num_classes, path), name, num_classes,
                       [str(c) for c in classes] if classes else None, preprocess, path, use_ema, weights_note,
                       import_note, weights.padding, weights.published, weights.labels)


def _load_qat(obj: dict, state: dict, name: str, path: str, use_ema: bool, weights_note: str | None,
              class_num: int | None) -> LoadedModel:
    """A train.py --qat true checkpoint: the fake-quantized network, observers off, as its int8 file computes."""
    config = obj.get("config") or {}
    num_classes = classifier_size(state, path)
    check_class_num(num_classes, class_num, path)
    padding = config.get("padding") if config.get("padding") in ("same", "symmetric") else "symmetric"
    float_model = build_model(name, num_classes=num_classes, padding=padding, bn_eps=config.get("bn_eps"))
    try:
        model = qat.load_for_eval(float_model, state, int(obj[QAT_KEY]["image_size"]))
    except (RuntimeError, KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{path} is not a loadable QAT checkpoint ({str(exc).splitlines()[0][:200]})") from None
    classes = obj.get("classes")
    return LoadedModel(model, name, num_classes, [str(c) for c in classes] if classes else None,
                       _saved_preprocess(obj.get("preprocess"), path), path, use_ema, weights_note,
                       f"quantization-aware trained at {obj[QAT_KEY]['image_size']} px: int8 simulated", padding)


def load_published(
    model_name: str | None,
    pretrained: str,
    progress: bool = True,
    class_num: int | None = None,
    padding: str | None = None,
) -> LoadedModel:
    """``--pretrained VALUE`` as eval.py and export.py load it: src.models.pretrained.resolve_weights,
    the function train.py's --pretrained uses too (published weights by name or hf-hub:REPO, or a
    weight file of any layout: a train.py checkpoint gives its EMA weights when it has them). Of a
    file's metadata only the build settings (padding, BatchNorm eps) are used; its class count comes
    from the file, so a fine-tuned head loads as it is. ``padding`` forces the padding."""
    name = variant_name(model_name, "--pretrained needs the variant") if model_name else None
    named = parse_pretrained(str(pretrained), name)
    if named.entry is not None:  # before a download of up to 475 MB
        check_class_num(IMAGENET_CLASSES, class_num, f"the {named.entry.name} weights")
    try:
        weights = resolve_weights(name, str(pretrained), progress, padding)
    except WeightsNotInstalled as exc:
        raise ModelLoadError(str(exc)) from None
    num_classes = classifier_size(weights.state, weights.source)
    check_class_num(num_classes, class_num, weights.source)
    published = named.path is None
    preprocess = Preprocess.from_dict(weights.preprocess) if published else _foreign_preprocess(weights)
    notes = [note for note in weights.notes if note.startswith("weights: the EMA")]
    import_note = weights.notes[0] if published or weights.layout != "torchvision" or padding else None
    return LoadedModel(_build(weights, num_classes, weights.source), weights.model_name, num_classes, None, preprocess,
                       weights.source, use_ema=bool(notes), weights_note=notes[0] if notes else None,
                       import_note=import_note, padding=weights.padding, published=weights.published,
                       labels=weights.labels)
