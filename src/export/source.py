"""What export.py exports: the model (from a checkpoint or --pretrained) and what the file should remember.

One rule for each part, shared with eval.py: src.models.loading loads the weights, src.config reads
the YAML, src.models.preprocessing decides the eval preprocessing stored in the file's metadata.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from src.common.errors import InputError
from src.common.preprocess import Preprocess
from src.config import read_explicit
from src.models.loading import load_published, load_trained
from src.models.preprocessing import resolve_preprocess


class ExportError(InputError):
    """Export cannot proceed or the exported file does not compute what PyTorch computes."""


@dataclass
class ExportSource:
    """A model in eval mode plus everything the exported file should remember about it."""

    model: nn.Module
    model_name: str
    num_classes: int
    classes: list[str] | None
    preprocess: Preprocess
    origin: str
    weights_note: str | None = None  # which weights of a checkpoint (EMA or raw), when it has both


# Config keys export.py honours when a --config YAML sets them (its flags win). `pretrained` is left out on
# purpose, as eval.py leaves it out: in a training YAML it names the fine-tuning start, not what to export.
CONFIG_KEYS = ("model", "checkpoint_path", "class_num", "image_size", "eval_resize", "eval_crop", "interpolation",
               "normalization")


def load_source(
    checkpoint_path: str | None = None,
    model_name: str | None = None,
    pretrained: str | None = None,
    config_path: str | None = None,
    use_ema: bool | None = None,
    padding: str | None = None,
) -> ExportSource:
    """The model to export: a train.py checkpoint or a plain state_dict (``checkpoint_path``), or
    ``pretrained`` (the published weights or a weight file, as train.py's --pretrained reads it).
    A YAML ``config_path`` is read as eval.py reads one (src.config.read_explicit: validated, only
    the keys it sets): ``model``, ``checkpoint_path``, ``class_num`` and the eval preprocessing keys
    (``image_size``, ``eval_resize``, ``eval_crop``, ``interpolation``, ``normalization``). ``padding``
    forces the padding of a weight file (export.py has no flag for it: the converter's --padding
    writes a file that remembers it)."""
    config = read_explicit(config_path, CONFIG_KEYS)
    model_origin = "--model" if model_name else "config key 'model'"
    model_name = model_name or config.get("model")
    if checkpoint_path is None and pretrained is None:
        checkpoint_path = config.get("checkpoint_path")
    if checkpoint_path and pretrained:
        raise ExportError("give --checkpoint_path or --pretrained, not both")
    class_num = config.get("class_num") or None
    if checkpoint_path:
        loaded = load_trained(str(checkpoint_path), model_name, use_ema, model_origin, class_num, padding)
    elif pretrained:
        loaded = load_published(model_name, str(pretrained), progress=False, class_num=class_num, padding=padding)
    else:
        raise ExportError("nothing to export: pass --checkpoint_path FILE or --pretrained NAME|hf-hub:REPO|PATH")
    pre = resolve_preprocess(loaded.name, loaded.preprocess, image_size=config.get("image_size"),
                             resize=config.get("eval_resize"), crop=config.get("eval_crop"),
                             interpolation=config.get("interpolation"), normalization=config.get("normalization"))
    classes = loaded.classes or loaded.labels  # published weights (by name, or a file recognised): ImageNet's
    return ExportSource(loaded.model, loaded.name, loaded.num_classes, classes, pre, loaded.source,
                        loaded.weights_note)
