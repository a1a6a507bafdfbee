"""A Triton Inference Server model repository from an exported ONNX file.

    DIR/<name>/config.pbtxt      platform onnxruntime_onnx, inputs/outputs read from the file
    DIR/<name>/1/model.onnx      the ONNX file (copied; version 1)
    DIR/<name>/labels.txt        one class name per line, for Triton's classification extension

The config is written from the ONNX graph itself (names, element types, dims; a dynamic batch axis
becomes ``max_batch_size`` with per-sample dims), so it cannot disagree with the file. It follows
Triton's ``ModelConfig`` protobuf schema (model_config.proto); the tests parse it with
``tritonclient.grpc.model_config_pb2``. Torch-free: needs only the ``onnx`` package.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnx

from infer.metadata import KEY_CLASSES
from src.common.errors import InputError

DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_QUEUE_DELAY_US = 100  # dynamic batching: wait at most 0.1 ms to fill a batch
TRT_WORKSPACE_BYTES = 1 << 30
VERSION = "1"
# ONNX TensorProto element types -> Triton data types (model_config.proto DataType).
TRITON_TYPES = {
    onnx.TensorProto.FLOAT: "TYPE_FP32", onnx.TensorProto.FLOAT16: "TYPE_FP16",
    onnx.TensorProto.DOUBLE: "TYPE_FP64", onnx.TensorProto.INT8: "TYPE_INT8",
    onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.INT32: "TYPE_INT32",
    onnx.TensorProto.INT64: "TYPE_INT64", onnx.TensorProto.BOOL: "TYPE_BOOL",
}


class TritonRepoError(InputError):
    """The ONNX file cannot be described to Triton; the message says why."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    data_type: str  # Triton's TYPE_*
    dims: tuple[int, ...]  # full shape; -1 for a dynamic axis


def tensor_specs(values: list[onnx.ValueInfoProto]) -> list[TensorSpec]:
    specs = []
    for value in values:
        tensor = value.type.tensor_type
        if tensor.elem_type not in TRITON_TYPES:
            raise TritonRepoError(f"tensor {value.name!r} has ONNX element type {tensor.elem_type}, "
                                  "which Triton's ONNX backend does not take")
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
        specs.append(TensorSpec(value.name, TRITON_TYPES[tensor.elem_type], dims))
    return specs


def _dims(dims: tuple[int, ...]) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def config_pbtxt(name: str, inputs: list[TensorSpec], outputs: list[TensorSpec], max_batch_size: int,
                 labels: bool, trt: bool, instance_count: int = 1) -> str:
    """The text of config.pbtxt. ``max_batch_size`` > 0 means dims exclude the batch axis."""
    lines = [f'name: "{name}"', 'platform: "onnxruntime_onnx"', f"max_batch_size: {max_batch_size}"]
    strip = 1 if max_batch_size > 0 else 0
    for section, specs in (("input", inputs), ("output", outputs)):
        lines.append(f"{section} [")
        for i, spec in enumerate(specs):
            label = ' label_filename: "labels.txt"' if section == "output" and labels and i == 0 else ""
            lines.append(f'  {{ name: "{spec.name}" data_type: {spec.data_type} dims: {_dims(spec.dims[strip:])}'
                         f"{label} }}{',' if i < len(specs) - 1 else ''}")
        lines.append("]")
    if max_batch_size > 0:
        lines.append(f"dynamic_batching {{ max_queue_delay_microseconds: {DEFAULT_QUEUE_DELAY_US} }}")
    lines.append(f"instance_group [ {{ count: {instance_count} kind: KIND_AUTO }} ]")
    if trt:  # TensorRT inside the ONNX Runtime backend, fp16 (Triton's documented accelerator block)
        lines += ["optimization { execution_accelerators { gpu_execution_accelerator : [ {",
                  '  name : "tensorrt"',
                  '  parameters { key: "precision_mode" value: "FP16" }',
                  f'  parameters {{ key: "max_workspace_size_bytes" value: "{TRT_WORKSPACE_BYTES}" }}',
                  "} ] } }"]
    return "\n".join(lines) + "\n"


def model_classes(model: onnx.ModelProto) -> list[str] | None:
    props = {p.key: p.value for p in model.metadata_props}
    classes = json.loads(props.get(KEY_CLASSES, "null"))
    return [str(c) for c in classes] if isinstance(classes, list) else None


def write_triton_repo(onnx_path: str | os.PathLike, repo_dir: str | os.PathLike, name: str,
                      max_batch_size: int = DEFAULT_MAX_BATCH_SIZE, trt: bool = False) -> Path:
    """Write (or replace) ``repo_dir/name``; returns that folder. A fixed-batch file gets
    max_batch_size 0 (no batching by Triton), as Triton requires for a batch axis that is not -1."""
    model = onnx.load(str(onnx_path), load_external_data=False)
    inputs, outputs = tensor_specs(list(model.graph.input)), tensor_specs(list(model.graph.output))
    if not inputs or not outputs:
        raise TritonRepoError(f"{onnx_path} has no graph inputs or outputs")
    batch_dynamic = all(spec.dims and spec.dims[0] == -1 for spec in inputs + outputs)
    classes = model_classes(model)
    text = config_pbtxt(name, inputs, outputs, max_batch_size if batch_dynamic else 0, classes is not None, trt)
    final = Path(repo_dir) / name
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=final.parent))  # swapped in whole, never half-written
    try:
        (staging / VERSION).mkdir()
        shutil.copyfile(onnx_path, staging / VERSION / "model.onnx")
        (staging / "config.pbtxt").write_text(text, encoding="utf-8")
        if classes is not None:
            (staging / "labels.txt").write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return final
