"""The metadata an exported model carries, so the file alone says how to feed it.

export.py writes these keys into the ONNX model's ``metadata_props``; the runner reads them back
through onnxruntime (``session.get_modelmeta().custom_metadata_map``), so no ``onnx`` package
is needed at inference time. Values are strings; structured values are JSON.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Mapping, Sequence

from src.common.preprocess import Preprocess
from src.common.errors import InputError

KEY_MODEL_NAME = "model_name"
KEY_PREPROCESS = "preprocess"  # JSON: {resize, crop, interpolation, mean, std}
KEY_CLASSES = "classes"  # JSON list of class names, or null when unknown
KEY_NUM_CLASSES = "num_classes"
KEY_INPUT_NAME = "input_name"
KEY_OUTPUT_NAME = "output_name"
KEY_PRECISION = "precision"  # fp32 | fp16 | int8

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
PRECISIONS = ("fp32", "fp16", "int8")


class MetadataError(InputError):
    """The model's metadata is missing or malformed; the message names the key."""


@dataclass(frozen=True)
class ModelInfo:
    """What the runner needs to know about a model besides its graph."""

    model_name: str | None
    preprocess: Preprocess | None
    classes: list[str] | None
    num_classes: int | None
    input_name: str | None
    output_name: str | None
    precision: str | None


def build_metadata(
    model_name: str,
    preprocess: Preprocess,
    classes: Sequence[str] | None,
    num_classes: int,
    precision: str = "fp32",
    input_name: str = INPUT_NAME,
    output_name: str = OUTPUT_NAME,
) -> dict[str, str]:
    """The string key/value pairs export.py stores in ``metadata_props``."""
    if precision not in PRECISIONS:
        raise MetadataError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if classes is not None and len(classes) != num_classes:
        raise MetadataError(f"{len(classes)} class names for a model with {num_classes} outputs")
    return {
        KEY_MODEL_NAME: model_name,
        KEY_PREPROCESS: json.dumps(preprocess.to_dict(), sort_keys=True),
        KEY_CLASSES: json.dumps(None if classes is None else [str(c) for c in classes]),
        KEY_NUM_CLASSES: str(int(num_classes)),
        KEY_INPUT_NAME: input_name,
        KEY_OUTPUT_NAME: output_name,
        KEY_PRECISION: precision,
    }


def _json(props: Mapping[str, str], key: str):
    text = props.get(key)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MetadataError(f"model metadata {key!r} is not valid JSON: {exc}") from None


def parse_metadata(props: Mapping[str, str]) -> ModelInfo:
    """Inverse of build_metadata; every key is optional (models from elsewhere have none)."""
    pre = _json(props, KEY_PREPROCESS)
    try:
        preprocess = None if pre is None else Preprocess.from_dict(pre)
    except (TypeError, ValueError) as exc:
        raise MetadataError(f"model metadata {KEY_PREPROCESS!r} is invalid: {exc}") from None
    classes = _json(props, KEY_CLASSES)
    if classes is not None and not (
        isinstance(classes, list) and all(isinstance(c, str) for c in classes)
    ):
        raise MetadataError(f"model metadata {KEY_CLASSES!r} must be a JSON list of strings")
    num = props.get(KEY_NUM_CLASSES)
    try:
        num_classes = None if num is None else int(num)
    except ValueError:
        raise MetadataError(f"model metadata {KEY_NUM_CLASSES!r} is not an integer: {num!r}") from None
    return ModelInfo(
        model_name=props.get(KEY_MODEL_NAME),
        preprocess=preprocess,
        classes=classes,
        num_classes=num_classes,
        input_name=props.get(KEY_INPUT_NAME),
        output_name=props.get(KEY_OUTPUT_NAME),
        precision=props.get(KEY_PRECISION),
    )
