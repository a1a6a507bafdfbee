"""Static int8 quantization of an exported model with onnxruntime's tools (no torch).

QDQ format (QuantizeLinear/DequantizeLinear pairs around each quantized op, which onnxruntime
fuses into integer kernels and which other runtimes such as TensorRT read too), per-channel
int8 weights and uint8 activations (U8S8: the fast path of x86 and ARM int8 kernels).
Activation ranges are calibrated on images decoded and preprocessed exactly as at inference,
using the preprocessing stored in the model's metadata.

On x86 CPUs without VNNI (AVX512-VNNI / AVX-VNNI / AMX), onnxruntime's U8S8 kernels multiply pairs
of uint8 x int8 into int16 (vpmaddubsw), which saturates for large weights: there the weights are
quantized to 7 bits (``reduce_range``), as onnxruntime's documentation advises.
"""
from __future__ import annotations

import os
import platform
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
from infer.runner import run_inference
from src.common.preprocess import DatasetError, Preprocess
from src.common.errors import InputError

DEFAULT_CALIB_IMAGES = 300
CALIB_BATCH = 16
TRAIN_DIR = "train"
CALIB_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}

Announce = Callable[[str], None]


class QuantizeError(InputError):
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


def cpu_has_vnni(cpuinfo: str | None = None) -> bool:
    """Whether this x86 CPU has an int8 dot-product instruction (non-x86 CPUs: True, nothing to avoid)."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686") and cpuinfo is None:
        return True
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return True  # unknown (e.g. macOS): keep full-range weights
    flags = set(cpuinfo.split())
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8"})


class ImageCalibrationReader(CalibrationDataReader):
    """Feeds preprocessed image batches to onnxruntime's calibrator; unreadable files are skipped.

    Every batch has the same size (the last one is filled up with repeats of its own images):
    onnxruntime's histogram calibrators (entropy, percentile) stack the batches into one array and
    fail on a short last batch.
    """

    def __init__(self, files: list[str], pre: Preprocess, input_name: str, batch_size: int,
                 fixed_batch: bool = True) -> None:
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
            if self.fixed_batch and len(x) < self.batch_size:  # repeat images to fill the batch
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
    files = calibration_files(calib_dir, calib_images)
    batch = batch_dim.dim_value if fixed else min(CALIB_BATCH, len(files))
    reader = ImageCalibrationReader(files, info.preprocess, graph_input.name, batch)
    reduce_range = not cpu_has_vnni()
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
                calibrate_method=CALIB_METHODS[method], reduce_range=reduce_range,
            )
        except Exception as exc:  # onnxruntime's tools raise assorted types
            out_path.unlink(missing_ok=True)
            if reader.used == 0:
                raise QuantizeError(f"no readable calibration images in {calib_dir}") from None
            raise QuantizeError(f"quantization failed: {str(exc).strip().splitlines()[0]}") from None
    quantized = onnx.load(str(out_path))
    onnx.helper.set_model_props(quantized, {**props, KEY_PRECISION: "int8"})
    onnx.save(quantized, str(out_path))
    weights = "7-bit weights (this CPU has no VNNI)" if reduce_range else "per-channel int8 weights"
    announce(f"quantized int8 (QDQ, {weights}, uint8 activations, {method} calibration on {reader.used} images "
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
    fp32_top5: float | None  # None with 5 classes or fewer (src.common.topk)
    int8_top5: float | None
    agreement: float  # fraction of images whose top-1 class is the same in both models
    fp32_images_per_s: float = float("nan")  # onnxruntime alone (decoding excluded), at the runner's batch
    int8_images_per_s: float = float("nan")
    batch_size: int = CALIB_BATCH

    def lines(self) -> list[str]:
        speedup = self.int8_images_per_s / self.fp32_images_per_s if self.fp32_images_per_s > 0 else float("nan")
        return [
            f"int8 vs fp32 on {self.images} images (onnxruntime CPU, batch {self.batch_size}):",
            f"{'':6} {'top-1':>8} {'top-5':>8} {'images/s':>9}",
            f"{'fp32':6} {self.fp32_top1:8.5f} {_cell(self.fp32_top5)} {self.fp32_images_per_s:9.1f}",
            f"{'int8':6} {self.int8_top1:8.5f} {_cell(self.int8_top5)} {self.int8_images_per_s:9.1f}",
            f"{'change':6} {self.int8_top1 - self.fp32_top1:+8.5f} "
            f"{_cell(None if self.fp32_top5 is None else self.int8_top5 - self.fp32_top5, '+')} {speedup:8.2f}x",
            f"int8 and fp32 agree on the top-1 class of {self.agreement:.5f} of the images",
        ]


def _cell(value: float | None, sign: str = "") -> str:
    return f"{'n/a':>8}" if value is None else f"{value:{sign}8.5f}"


def compare_accuracy(fp32_path: str | os.PathLike, int8_path: str | os.PathLike,
                     eval_dir: str | os.PathLike, batch_size: int = CALIB_BATCH) -> Comparison:
    """Run both models over a labelled folder with the runner; the accuracy change int8 costs."""
    quiet = lambda _: None  # noqa: E731 - the runner's notes are printed once by the caller
    ref = run_inference(fp32_path, eval_dir, "CPU", batch_size, announce=quiet)
    low = run_inference(int8_path, eval_dir, "CPU", batch_size, announce=quiet)
    if ref.labels is None:
        raise QuantizeError(f"--eval_dir {eval_dir} is not a labelled folder (class folders or a root with val/)")
    if len(ref.files) == 0:
        raise QuantizeError(f"no readable images in {eval_dir}")
    agree = float((ref.logits.argmax(1) == low.logits.argmax(1)).mean())
    return Comparison(len(ref.files), ref.top1, low.top1, ref.top5, low.top5, agree,
                      ref.timing.model_images_per_second, low.timing.model_images_per_second, batch_size)
