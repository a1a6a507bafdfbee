"""Static int8 quantization of an exported model with onnxruntime's tools (no torch).

QDQ format (QuantizeLinear/DequantizeLinear pairs around each quantized op, which onnxruntime
fuses into integer kernels and which other runtimes such as TensorRT read too), per-channel
int8 weights and uint8 activations (U8S8: the fast path of x86 and ARM int8 kernels).
Activation ranges are calibrated on images decoded and preprocessed exactly as at inference,
using the preprocessing stored in the model's metadata.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static,
)

from infer.inputs import collect_inputs
from infer.metadata import KEY_PRECISION, parse_metadata
from infer.pipeline import iter_batches
from src.preprocess import DatasetError, Preprocess

DEFAULT_CALIB_IMAGES = 300
CALIB_BATCH = 16
TRAIN_DIR = "train"
CALIB_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}

Announce = Callable[[str], None]


class QuantizeError(ValueError):
    """Quantization cannot run: no calibration images, a model without metadata, ..."""


@dataclass
class QuantizeResult:
    path: Path
    calibration_images: int
    skipped: list[tuple[str, str]]


def calibration_files(calib_dir: str | os.PathLike, limit: int) -> list[str]:
    """Up to ``limit`` images spread evenly over the sorted listing, so every class folder counts.

    A dataset root calibrates on its train/ (never on the val/ it may be evaluated on).
    """
    if limit < 1:
        raise QuantizeError(f"--calib_images must be >= 1, got {limit}")
    train = Path(calib_dir) / TRAIN_DIR
    try:
        files = collect_inputs(train if train.is_dir() else calib_dir).files
    except DatasetError as exc:
        raise QuantizeError(f"calibration images: {exc}") from None
    if len(files) <= limit:
        return files
    picks = np.linspace(0, len(files) - 1, limit).round().astype(int)
    return [files[i] for i in picks]


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds preprocessed image batches to onnxruntime's calibrator; unreadable files are skipped."""

    def __init__(self, files: list[str], pre: Preprocess, input_name: str, batch_size: int,
                 fixed_batch: bool = False) -> None:
        self.files, self.pre, self.input_name = files, pre, input_name
        self.batch_size, self.fixed_batch = batch_size, fixed_batch
        self.skipped: list[tuple[str, str]] = []
        self.used = 0
        self._batches = self._generate()

    def _generate(self):
        for batch in iter_batches(self.files, self.pre, self.batch_size):
            self.skipped.extend((self.files[i], reason) for i, reason in batch.broken)
            x = batch.images
            if len(x) == 0:
                continue
            if self.fixed_batch and len(x) < self.batch_size:  # repeat images to fill a fixed batch
                x = np.concatenate([x, x[np.arange(self.batch_size - len(x)) % len(x)]])
            self.used += len(batch.indices)
            yield {self.input_name: x}

    def get_next(self) -> dict | None:
        return next(self._batches, None)

    def rewind(self) -> None:
        self.skipped, self.used = [], 0
        self._batches = self._generate()


def quantize_int8(
    fp32_path: str | os.PathLike,
    out_path: str | os.PathLike,
    calib_dir: str | os.PathLike,
    calib_images: int = DEFAULT_CALIB_IMAGES,
    method: str = "minmax",
    announce: Announce = print,
) -> QuantizeResult:
    """Write a statically quantized copy of ``fp32_path`` (its metadata kept, precision int8)."""
    if method not in CALIB_METHODS:
        raise QuantizeError(f"unknown calibration method {method!r}; use one of {', '.join(CALIB_METHODS)}")
    model = onnx.load(str(fp32_path))
    props = {p.key: p.value for p in model.metadata_props}
    info = parse_metadata(props)
    if info.preprocess is None:
        raise QuantizeError(f"{fp32_path} has no preprocessing metadata; export it with export.py")
    graph_input = model.graph.input[0]
    batch_dim = graph_input.type.tensor_type.shape.dim[0]
    fixed = batch_dim.HasField("dim_value") and batch_dim.dim_value > 0
    batch = batch_dim.dim_value if fixed else CALIB_BATCH
    files = calibration_files(calib_dir, calib_images)
    reader = ImageCalibrationReader(files, info.preprocess, graph_input.name, batch, fixed)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        # Shape inference + graph clean-up, as onnxruntime recommends before quantizing.
        quant_pre_process(str(fp32_path), prepared, skip_symbolic_shape=True)
        try:
            quantize_static(
                prepared, str(out_path), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=CALIB_METHODS[method],
            )
        except Exception as exc:  # onnxruntime's tools raise assorted types
            out_path.unlink(missing_ok=True)
            if reader.used == 0:
                raise QuantizeError(f"no readable calibration images in {calib_dir}") from None
            raise QuantizeError(f"quantization failed: {str(exc).strip().splitlines()[0]}") from None
    quantized = onnx.load(str(out_path))
    onnx.helper.set_model_props(quantized, {**props, KEY_PRECISION: "int8"})
    onnx.save(quantized, str(out_path))
    announce(f"quantized int8 (QDQ, per-channel, {method} calibration on {reader.used} images "
             f"from {calib_dir}) -> {out_path}")
    if reader.skipped:
        announce(f"calibration skipped {len(reader.skipped)} unreadable files: "
                 + ", ".join(f for f, _ in reader.skipped[:5]) + (" ..." if len(reader.skipped) > 5 else ""))
    return QuantizeResult(out_path, reader.used, reader.skipped)


@dataclass
class Comparison:
    """fp32 vs int8 on one labelled folder."""

    images: int
    fp32_top1: float
    int8_top1: float
    fp32_top5: float
    int8_top5: float
    agreement: float  # fraction of images whose top-1 class is the same in both models

    def lines(self) -> list[str]:
        return [
            f"int8 vs fp32 on {self.images} images: top-1 {self.int8_top1:.5f} vs {self.fp32_top1:.5f} "
            f"({self.int8_top1 - self.fp32_top1:+.5f}), top-5 {self.int8_top5:.5f} vs {self.fp32_top5:.5f} "
            f"({self.int8_top5 - self.fp32_top5:+.5f})",
            f"int8 and fp32 agree on the top-1 class of {self.agreement:.5f} of the images",
        ]


def compare_accuracy(fp32_path: str | os.PathLike, int8_path: str | os.PathLike,
                     eval_dir: str | os.PathLike, batch_size: int = CALIB_BATCH) -> Comparison:
    """Run both models over a labelled folder with the runner; the accuracy change int8 costs."""
    from infer.infer_onnx import run_inference

    quiet = lambda _: None  # noqa: E731 - the runner's notes are printed once by the caller
    ref = run_inference(fp32_path, eval_dir, "CPU", batch_size, announce=quiet)
    low = run_inference(int8_path, eval_dir, "CPU", batch_size, announce=quiet)
    if ref.labels is None:
        raise QuantizeError(f"--eval_dir {eval_dir} is not a labelled folder (class folders or a root with val/)")
    if len(ref.files) == 0:
        raise QuantizeError(f"no readable images in {eval_dir}")
    agree = float((ref.logits.argmax(1) == low.logits.argmax(1)).mean())
    return Comparison(len(ref.files), ref.top1, low.top1, ref.top5, low.top5, agree)
