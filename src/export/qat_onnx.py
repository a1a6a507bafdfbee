"""The QDQ ONNX file of a QAT model: the TorchScript exporter's graph, tidied into the layout
onnxruntime's int8 kernels expect, and checked against the fake-quantized PyTorch model.

The exporter writes each activation fake-quantize as QuantizeLinear → DequantizeLinear with
one-element (not scalar) scales behind Identity nodes, which onnxruntime's QDQ fusions reject.
Weights arrive as float tensors already on their int8 grid; here they become int8 initializers
read through a per-channel DequantizeLinear, exactly as onnxruntime's own quantizer writes them.
"""
from __future__ import annotations

import copy
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch.ao.quantization import disable_fake_quant

from infer.metadata import INPUT_NAME, KEY_PRECISION, OUTPUT_NAME, parse_metadata
from infer.quantize import CALIB_BATCH, ImageCalibrationReader, QuantizeError, calibration_files
from src.export.graph import drop_initializer_identities
from src.models.qat import QAT_OPSET, fold_for_export, is_qat_model, post_training_quantize

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


def _constants_as_initializers(graph: onnx.GraphProto) -> None:
    """Constant nodes (the exporter's scales and zero points) become initializers."""
    kept = []
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute[0].name == "value":
            graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(node.attribute[0].t),
                                                             node.output[0]))
        else:
            kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)


def _scalar_qparams(graph: onnx.GraphProto) -> None:
    """One-element scales and zero points of per-tensor Q/DQ nodes become scalars."""
    inits = {i.name: i for i in graph.initializer}
    scalars: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        for i in (1, 2):
            name = node.input[i] if len(node.input) > i else ""
            if name not in inits:
                continue
            value = numpy_helper.to_array(inits[name])
            if value.ndim == 0 or value.size != 1 or any(a.name == "axis" for a in node.attribute):
                continue
            if name not in scalars:
                scalars[name] = name + "_scalar"
                graph.initializer.append(numpy_helper.from_array(value.reshape(()), scalars[name]))
            node.input[i] = scalars[name]


def _int8_weights(graph: onnx.GraphProto, grids: dict[str, tuple[np.ndarray, int]]) -> int:
    """Each float weight on an int8 grid → int8 initializer + DequantizeLinear (axis 0)."""
    inits = {i.name: i for i in graph.initializer}
    missing = set(grids) - set(inits)
    if missing:
        raise ValueError(f"weights not found in the exported graph: {sorted(missing)[:3]}")
    dequant = []
    for name, (scale, _) in grids.items():
        weight = numpy_helper.to_array(inits[name])
        shape = (-1,) + (1,) * (weight.ndim - 1)
        integers = np.rint(weight / scale.reshape(shape))
        if np.abs(integers * scale.reshape(shape) - weight).max() > 1e-6 * max(1.0, float(np.abs(weight).max())):
            raise ValueError(f"{name} is not on its int8 grid")
        inits[name].CopyFrom(numpy_helper.from_array(integers.astype(np.int8), name + "_quantized"))
        graph.initializer.append(numpy_helper.from_array(scale.astype(np.float32), name + "_scale"))
        graph.initializer.append(numpy_helper.from_array(np.zeros(len(scale), np.int8), name + "_zero_point"))
        dequant.append(onnx.helper.make_node(
            "DequantizeLinear", [name + "_quantized", name + "_scale", name + "_zero_point"], [name],
            name=name + "_DequantizeLinear", axis=0))
    nodes = dequant + list(graph.node)  # initializers feed them: they can come first
    del graph.node[:]
    graph.node.extend(nodes)
    return len(dequant)


def tidy_qdq(model: onnx.ModelProto, grids: dict[str, tuple[np.ndarray, int]]) -> onnx.ModelProto:
    """The exporter's QAT graph in onnxruntime's QDQ layout (``grids``: weight name → (scales, axis))."""
    graph = model.graph
    _constants_as_initializers(graph)
    drop_initializer_identities(model)
    _scalar_qparams(graph)
    _int8_weights(graph, grids)
    used = {name for node in graph.node for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    onnx.checker.check_model(model)
    return model


def export_qat_onnx(model: torch.nn.Module, path: str | os.PathLike, size: int, metadata: Mapping[str, str],
                    input_name: str, output_name: str, batch_size: int | None = None) -> Path:
    """Write a QAT model as an int8 QDQ ONNX file (opset 13): fold, export, tidy, check, save."""
    folded, grids = fold_for_export(model)
    example = torch.zeros(batch_size or 1, 3, size, size)
    dynamic = None if batch_size else {input_name: {0: "batch"}, output_name: {0: "batch"}}
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and shape-inference notes
        torch.onnx.export(folded, (example,), buffer, dynamo=False, opset_version=QAT_OPSET,
                          do_constant_folding=True, input_names=[input_name], output_names=[output_name],
                          dynamic_axes=dynamic, training=torch.onnx.TrainingMode.EVAL)
    proto = tidy_qdq(onnx.load_from_string(buffer.getvalue()),
                     {name: (grid.scale.numpy(), 0) for name, grid in grids.items()})
    onnx.helper.set_model_props(proto, dict(metadata))
    proto.doc_string = f"{metadata.get('model_name', 'EfficientNet')} (quantization-aware trained) exported by export.py"
    path = Path(path)
    onnx.save(proto, str(path))
    return path


@dataclass
class QatCheck:
    """onnxruntime's int8 run of the file vs the fake-quantized PyTorch model, against int8's own error."""

    images: int
    file_error: float  # median relative logit error of the file vs the fake-quantized model
    int8_error: float  # the same for the fake-quantized model vs its float self
    top1_agreement: float

    def describe(self) -> str:
        return (f"onnxruntime int8 vs the fake-quantized PyTorch model on {self.images} synthetic photos: "
                f"relative logit error {self.file_error:.3g} (int8's own error vs float: {self.int8_error:.3g}), "
                f"same top-1 on {self.top1_agreement:.0%}")


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    """Median over images of |got - ref| / |ref - mean(ref)| on the logit vectors."""
    spread = np.linalg.norm(ref - ref.mean(1, keepdims=True), axis=1)
    return float(np.median(np.linalg.norm(got - ref, axis=1) / np.maximum(spread, 1e-12)))


def check_qat_structure(path: str | os.PathLike, model: torch.nn.Module) -> int:
    """The file holds exactly the trained quantization: every Conv/Gemm weight is an int8
    initializer equal to the fake-quantized weight on its grid (same per-channel scales), and
    every activation quantizer's scale and zero point appears on a QuantizeLinear. Exact checks:
    they hold on any input, unlike logit comparisons, which rounding ties make chaotic on inputs far
    from the training data. Returns the number of weights checked; raises ValueError."""
    folded, grids = fold_for_export(model)
    params = dict(folded.named_parameters())
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for name, grid in grids.items():
        stored = inits.get(name + "_quantized")
        expected = grid.integers(params[name].detach()).numpy()
        if stored is None or stored.dtype != np.int8 or not np.array_equal(stored, expected):
            raise ValueError(f"{name} in the int8 file differs from the trained int8 weight")
        if not np.array_equal(inits[name + "_scale"], grid.scale.numpy()):
            raise ValueError(f"{name}'s scales in the int8 file differ from the trained ones")
    stored_qparams = {(float(inits[n.input[1]]), int(inits[n.input[2]])) for n in graph.node
                      if n.op_type == "QuantizeLinear" and n.input[1] in inits and inits[n.input[1]].ndim == 0}
    for name, module in folded.named_modules():
        if name.startswith("activation_post_process") and "." not in name:
            qparams = (float(np.float32(module.scale.item())), int(module.zero_point.item()))
            if qparams not in stored_qparams:
                raise ValueError(f"{name}'s range (scale {qparams[0]:.4g}, zero point {qparams[1]}) is not in the "
                                 "int8 file")
    return len(grids)


def compare_qat(logits: np.ndarray, model: torch.nn.Module, x: torch.Tensor) -> QatCheck:
    """How far the file's ``logits`` on ``x`` are from the fake-quantized model, and it from float."""
    with torch.no_grad():
        fake = model.eval()(x).numpy()
        float_model = copy.deepcopy(model)
        float_model.apply(disable_fake_quant)
        ref = float_model(x).numpy()
    return QatCheck(len(x), relative_error(logits, fake), relative_error(fake, ref),
                    float((logits.argmax(1) == fake.argmax(1)).mean()))


def write_bias_corrected_int8(model: torch.nn.Module, fp32_path: str | os.PathLike, out_path: str | os.PathLike,
                              size: int, calib_dir: str | os.PathLike, calib_images: int,
                              announce=print) -> Path:
    """export.py --calib_method bias_corrected: ranges observed by PyTorch on the calibration images
    (the fp32 file's own preprocessing), conv biases corrected for int8 rounding, written as QDQ."""
    if is_qat_model(model):
        raise QuantizeError("this checkpoint is quantization-aware trained: its export is already int8; "
                            "drop --quantize")
    fp32 = onnx.load(str(fp32_path))
    props = {p.key: p.value for p in fp32.metadata_props}
    batch_dim = fp32.graph.input[0].type.tensor_type.shape.dim[0]
    batch_size = batch_dim.dim_value if batch_dim.HasField("dim_value") and batch_dim.dim_value > 0 else None
    files = calibration_files(calib_dir, calib_images)
    reader = ImageCalibrationReader(files, parse_metadata(props).preprocess, INPUT_NAME, CALIB_BATCH,
                                    fixed_batch=False)
    batches = [torch.from_numpy(feed[INPUT_NAME]) for feed in iter(reader.get_next, None)]
    if not batches:
        raise QuantizeError(f"no readable calibration images in {calib_dir}")
    prepared = post_training_quantize(model.cpu().eval(), size, batches)
    path = export_qat_onnx(prepared, out_path, size, {**props, KEY_PRECISION: "int8"}, INPUT_NAME, OUTPUT_NAME,
                           batch_size)
    announce(f"quantized int8 (QDQ, per-channel int8 weights, uint8 activations, PyTorch observers + bias "
             f"correction on {reader.used} images from {calib_dir}) -> {path}")
    if reader.skipped:
        announce(f"calibration skipped {len(reader.skipped)} unreadable files")
    return path
