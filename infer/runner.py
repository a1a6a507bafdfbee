"""The ONNX runner as a library: score images with an exported model through onnxruntime (no torch).

``run_inference`` does what ``python infer/infer_onnx.py MODEL DATA`` does and returns it as data
(``InferenceResult``); ``report_lines`` is the report the command line prints. The command line
itself (argument parsing and output files) lives in infer_onnx.py, which imports this module, as
does infer/quantize.py (its int8-vs-fp32 accuracy comparison). Preprocessing comes from the
model's metadata (written by export.py) with overrides applied by ``Preprocess.override``, the
rule eval.py uses too.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from infer.inputs import collect_inputs
from infer.metadata import ModelInfo, parse_metadata
from infer.pipeline import iter_batches
from infer.report import Timing, topk_accuracy
from src.common.topk import NOT_SHOWN, TOP_K, shows_top_k
from infer.session import DEVICE_TARGETS, DeviceError, create_session
from src.common.class_mapping import map_classes, output_names
from src.common.errors import InputError, ModelLoadError
from src.common.preprocess import Preprocess

DEFAULT_BATCH_SIZE = 32
DEFAULT_TOPK = 5
MAX_LISTED_SKIPS = 20
# Used only for models without preprocessing metadata (not exported by export.py).
FALLBACK_RESIZE_RATIO = 256 / 224
FALLBACK_INTERPOLATION = "bilinear"
FALLBACK_MEAN = (0.485, 0.456, 0.406)
FALLBACK_STD = (0.229, 0.224, 0.225)
FALLBACK_CROP = 224
NUMPY_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}

Announce = Callable[[str], None]


class InputSizeError(InputError):
    """The preprocessing produces images of a size the model does not take."""


@dataclass(frozen=True)
class PreprocessOverrides:
    """Command-line replacements for the model's stored preprocessing (None = keep)."""

    resize: int | None = None
    crop: int | None = None
    interpolation: str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


@dataclass
class InferenceResult:
    """Everything a run produced; ``logits[i]`` belongs to ``files[i]`` (broken files left out)."""

    files: list[str]
    logits: np.ndarray  # (N, num_classes) float32, in listing order
    labels: np.ndarray | None  # (N,) model class indices, labelled runs only
    class_names: list[str]
    skipped: list[tuple[str, str]]  # unreadable files and why
    not_images: list[str]  # files without an image extension, not fed to the model
    preprocess: Preprocess
    info: ModelInfo
    provider: str
    timing: Timing
    top1: float | None
    top5: float | None
    topk: int

    def summary(self) -> dict:
        """JSON-ready summary (written beside the predictions)."""
        return {
            "model_name": self.info.model_name,
            "provider": self.provider,
            "preprocess": self.preprocess.to_dict(),
            "images": len(self.files),
            "top1": self.top1,
            "top5": self.top5,
            "skipped": [{"file": f, "reason": r} for f, r in self.skipped],
            "not_images": self.not_images,
            "timing": self.timing.to_dict(),
        }


def resolve_preprocess(
    info: ModelInfo, overrides: PreprocessOverrides, model_size: int | None, announce: Announce
) -> Preprocess:
    """The model's stored preprocessing with overrides applied.

    Overriding only the crop keeps the stored resize/crop ratio (the usual "evaluate at another
    size" intent); overriding only the resize keeps the stored crop, since the ONNX file's input
    size is fixed. Models without metadata fall back to ImageNet settings at the model's size.
    """
    base = info.preprocess
    if base is None:
        crop = overrides.crop or model_size or FALLBACK_CROP
        base = Preprocess(round(crop * FALLBACK_RESIZE_RATIO), crop, FALLBACK_INTERPOLATION,
                          FALLBACK_MEAN, FALLBACK_STD)
        announce("note: the model has no preprocessing metadata (not exported by export.py); using "
                 f"resize {base.resize} -> crop {base.crop}, {base.interpolation}, ImageNet mean/std")
    crop = overrides.crop
    if overrides.resize is not None and crop is None:
        crop = base.crop  # Preprocess.override would keep the ratio and change the crop
    try:
        return base.override(resize=overrides.resize, crop=crop, interpolation=overrides.interpolation,
                             mean=overrides.mean, std=overrides.std)
    except ValueError as exc:
        raise InputSizeError(f"bad preprocessing override: {exc}") from None


def fixed_dims(session) -> tuple[int | None, int | None, int | None]:
    """(batch, height, width) of the model input: ints when fixed, None when dynamic."""
    shape = session.get_inputs()[0].shape
    dims = [d if isinstance(d, int) and d > 0 else None for d in shape]
    if len(dims) != 4:
        raise InputSizeError(f"model input has shape {shape}; expected (batch, 3, height, width)")
    if dims[1] not in (None, 3):
        raise InputSizeError(f"model takes {dims[1]} channels; this runner feeds RGB images (3)")
    return dims[0], dims[2], dims[3]


def check_input_size(session, pre: Preprocess) -> int | None:
    """Raise InputSizeError if the model cannot take ``pre.crop``; return its fixed batch size or None."""
    batch, height, width = fixed_dims(session)
    for name, dim in (("height", height), ("width", width)):
        if dim is not None and dim != pre.crop:
            raise InputSizeError(
                f"the model takes {height}x{width} input but the preprocessing crops to {pre.crop} px "
                f"(model {name} {dim}); drop --crop, or re-export with --width {pre.crop} --height {pre.crop}")
    return batch


@dataclass(frozen=True)
class ModelIO:
    """Names, input dtype and class count of the session's graph."""

    input_name: str
    input_dtype: type
    output_name: str
    num_outputs: int


def model_io(session, info: ModelInfo) -> ModelIO:
    """The input (first graph input) and the logits output (metadata's name, else the first)."""
    model_input = session.get_inputs()[0]
    dtype = NUMPY_DTYPES.get(model_input.type)
    if dtype is None:
        raise InputSizeError(f"model input type {model_input.type} is not a float tensor")
    outputs = {o.name: o for o in session.get_outputs()}
    output = outputs.get(info.output_name) or session.get_outputs()[0]
    classes = output.shape[-1] if output.shape and isinstance(output.shape[-1], int) else info.num_classes
    return ModelIO(model_input.name, dtype, output.name, int(classes or 0))


def _run_batches(session, io: ModelIO, files: Sequence[str], pre: Preprocess, batch_size: int,
                 fixed_batch: int | None, num_threads: int | None):
    """Feed every batch; returns (file indices, logits chunks, broken, per-batch seconds, wall seconds)."""
    warm = np.zeros((fixed_batch or min(batch_size, len(files)), 3, pre.crop, pre.crop), io.input_dtype)
    session.run([io.output_name], {io.input_name: warm})  # first-run allocations stay out of the timing
    indices: list[int] = []
    chunks: list[np.ndarray] = []
    broken: list[tuple[int, str]] = []
    seconds: list[float] = []
    start = time.perf_counter()
    for batch in iter_batches(files, pre, batch_size, num_threads):
        broken.extend(batch.broken)
        n = len(batch.indices)
        if n == 0:
            continue
        x = batch.images.astype(io.input_dtype, copy=False)
        if fixed_batch is not None and n < fixed_batch:  # pad the last batch of a fixed-batch model
            x = np.concatenate([x, np.zeros((fixed_batch - n,) + x.shape[1:], x.dtype)])
        t0 = time.perf_counter()
        logits = session.run([io.output_name], {io.input_name: x})[0]
        seconds.append(time.perf_counter() - t0)
        indices.extend(batch.indices)
        chunks.append(np.asarray(logits[:n], np.float32))
    return indices, chunks, broken, seconds, time.perf_counter() - start


def run_inference(
    onnx_path: str | os.PathLike,
    dataset_path: str | os.PathLike,
    device_target: str = "CPU",
    batch_size: int = DEFAULT_BATCH_SIZE,
    num_threads: int | None = None,
    intra_op_threads: int | None = None,
    topk: int = DEFAULT_TOPK,
    overrides: PreprocessOverrides | None = None,
    announce: Announce = print,
) -> InferenceResult:
    """Score ``dataset_path`` with the model; what the CLI prints, as data (for scripts and tests).

    Raises InputErrors (DeviceError, ModelLoadError, MetadataError, InputSizeError, DatasetError), each
    with a one-line message.
    """
    if batch_size < 1:
        raise InputError(f"--batch_size must be >= 1, got {batch_size}")
    if topk < 1:
        raise InputError(f"--topk must be >= 1, got {topk}")
    if device_target.upper() not in DEVICE_TARGETS:
        raise DeviceError(f"unknown device target {device_target!r}; use one of {', '.join(DEVICE_TARGETS)}")
    if not os.path.isfile(onnx_path):
        raise ModelLoadError(f"model file not found: {os.fspath(onnx_path)}")
    inputs = collect_inputs(dataset_path)
    session = create_session(onnx_path, device_target, intra_op_threads, announce=announce)
    info = parse_metadata(session.get_modelmeta().custom_metadata_map)
    io = model_io(session, info)
    pre = resolve_preprocess(info, overrides or PreprocessOverrides(), fixed_dims(session)[1], announce)
    fixed_batch = check_input_size(session, pre)
    if fixed_batch is not None and fixed_batch != batch_size:
        announce(f"note: the model has a fixed batch size of {fixed_batch}; running batches of {fixed_batch}")
        batch_size = fixed_batch
    folder_to_model = None
    class_names = output_names(info.classes, io.num_outputs)
    if inputs.labelled:
        mapping = map_classes(inputs.classes, info.classes, io.num_outputs, str(inputs.root))
        folder_to_model, class_names = np.asarray(mapping.model_index, np.int64), mapping.names
        if mapping.note:
            announce(mapping.note)

    indices, chunks, broken, seconds, wall = _run_batches(
        session, io, inputs.files, pre, batch_size, fixed_batch, num_threads)
    logits = np.concatenate(chunks) if chunks else np.empty((0, io.num_outputs), np.float32)
    labels = top1 = top5 = None
    if folder_to_model is not None:
        labels = folder_to_model[np.asarray([inputs.labels[i] for i in indices], np.int64)]
        if len(labels):
            top1 = topk_accuracy(logits, labels, 1)
            top5 = topk_accuracy(logits, labels, TOP_K) if shows_top_k(io.num_outputs) else None
    return InferenceResult(
        files=[inputs.files[i] for i in indices],
        logits=logits,
        labels=labels,
        class_names=class_names,
        skipped=[(inputs.files[i], reason) for i, reason in broken],
        not_images=inputs.not_images,
        preprocess=pre,
        info=info,
        provider=session.get_providers()[0],
        timing=Timing(len(indices), wall, tuple(seconds), batch_size),
        top1=top1,
        top5=top5,
        topk=topk,
    )


def report_lines(result: InferenceResult) -> list[str]:
    """The run's printed report: what was scored, what was skipped, accuracy, speed."""
    pre = result.preprocess
    info = result.info
    lines = [
        f"model: {info.model_name or 'unknown'} ({info.precision or 'unknown precision'}, "
        f"{len(result.class_names)} classes) on {result.provider}",
        f"preprocess: resize {pre.resize} -> crop {pre.crop}, {pre.interpolation}, "
        f"mean {list(pre.mean)}, std {list(pre.std)}",
        f"images: {len(result.files)} scored" + (" (labelled)" if result.labels is not None else ""),
    ]
    for title, entries in (("unreadable files", [f"{f} ({r})" for f, r in result.skipped]),
                           ("non-image files", result.not_images)):
        if entries:
            lines.append(f"skipped {len(entries)} {title if len(entries) > 1 else title[:-1]}:")
            lines += [f"  {e}" for e in entries[:MAX_LISTED_SKIPS]]
            if len(entries) > MAX_LISTED_SKIPS:
                lines.append(f"  ... and {len(entries) - MAX_LISTED_SKIPS} more")
    if result.labels is not None:
        if result.top1 is None:
            lines.append("top-1 accuracy: n/a (no readable images)")
        else:
            lines.append(f"top-1 accuracy: {result.top1:.5f}")
            lines.append(NOT_SHOWN if result.top5 is None else f"top-5 accuracy: {result.top5:.5f}")
    lines += result.timing.lines()
    return lines
