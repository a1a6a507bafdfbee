"""Export a trained or published EfficientNet to ONNX or TorchScript, and prove the file is right.

The ONNX path uses torch's TorchScript-based exporter (``dynamo=False``): it is fast, mature, and
with ``do_constant_folding`` folds every BatchNorm into the preceding convolution of an eval-mode
model, so the graph holds only Conv / Sigmoid / Mul / Add / pooling / Gemm. SiLU is exported as
``Sigmoid`` + ``Mul`` (standard ops, no custom Swish), which onnxruntime fuses back.

Every file is checked twice: ``onnx.checker`` (structure, before writing) and onnxruntime on the
written file against PyTorch in float64 on a few synthetic photos through the model's eval
preprocessing, allowing a multiple of PyTorch's own float32 error (numerics, ``src.export.check``).
The file is written under a temporary name and moved into place only when both checks pass.
The preprocessing, class names and model name are stored in ``metadata_props`` (keys in
``infer.metadata``) so the runner needs nothing else.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import os
import time
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from infer.metadata import INPUT_NAME, OUTPUT_NAME, build_metadata
from infer.session import create_session, physical_cores
from src.common.preprocess import Preprocess
from src.export.check import (
    DEFAULT_CHECK_TOLERANCE, CheckFailed, CheckResult, Reference, compare, float64_reference, verification_batch,
)
from src.export.graph import drop_initializer_identities, format_op_counts, op_counts, optimized_op_counts
from src.export.qat_onnx import check_qat_structure, compare_qat, export_qat_onnx
from src.export.source import ExportError, ExportSource
from src.models import NETWORK_STRIDE
from src.models.qat import QAT_OPSET, is_qat_model

DEFAULT_OPSET = 17
VERIFY_BATCH = 2  # a dynamic-batch model is traced at batch 2 and checked at batch VERIFY_IMAGES
VERIFY_IMAGES = 4  # synthetic photos the numeric check runs on (a fixed batch: enough whole batches)
VERIFY_SEED = 0
FORMATS = ("ONNX", "TORCHSCRIPT")
SUFFIXES = {"ONNX": ".onnx", "TORCHSCRIPT": ".pt"}
TORCHSCRIPT_METADATA_FILE = "metadata.json"  # inside the .pt archive (torch.jit.load _extra_files)
BENCH_WARMUP = 2
BENCH_ROUNDS = 5

Announce = Callable[[str], None]


# --------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------
def random_batch(batch: int, size: int, seed: int = VERIFY_SEED) -> torch.Tensor:
    """Standard-normal inputs of the model's shape for tracing and timing (reproducible)."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


class HalfPrecision(nn.Module):
    """fp16 weights and arithmetic behind a float32 interface: callers feed and read float32.

    Wraps a half-precision copy, so the caller's fp32 model stays the reference to check against.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.half()).float()


def output_path(file_name: str, file_format: str) -> Path:
    """NAME -> NAME.onnx / NAME.pt (a name already ending in the suffix is kept)."""
    suffix = SUFFIXES[file_format]
    path = Path(file_name)
    return path if path.suffix.lower() == suffix else path.with_name(path.name + suffix)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    size: int,
    metadata: Mapping[str, str],
    batch_size: int | None = None,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
) -> Path:
    """Write ``model`` (eval mode) as ONNX with input ``input`` (N, 3, size, size) and output
    ``logits``; N is dynamic unless ``batch_size`` is given. The graph passes ``onnx.checker``
    (checked in memory, then written once: V2-L is ~475 MB). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = HalfPrecision(model) if fp16 else model
    net.eval()
    example = random_batch(batch_size or VERIFY_BATCH, size)
    dynamic = None if batch_size else {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        # SAME padding's asymmetric F.pad exports a Slice the folder leaves as it is (the graph is
        # still exact: export.py's float64 check runs on it); the exporter's note is not the user's business.
        warnings.filterwarnings("ignore", message=r"Constant folding - Only steps=1", category=UserWarning)
        torch.onnx.export(
            net, (example,), buffer, dynamo=False, export_params=True, opset_version=opset,
            do_constant_folding=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes=dynamic, training=torch.onnx.TrainingMode.EVAL,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    del buffer
    drop_initializer_identities(proto)
    onnx.helper.set_model_props(proto, dict(metadata))
    proto.doc_string = f"{metadata.get('model_name', 'EfficientNet')} exported by export.py"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"onnx.checker rejects the exported graph: {str(exc).splitlines()[0]}") from None
    onnx.save(proto, str(path))
    return path


def check_images(pre: Preprocess, batch_size: int | None) -> torch.Tensor:
    """The numeric check's batch: VERIFY_IMAGES synthetic photos through ``pre``; for a fixed-batch
    file, as many whole batches as cover VERIFY_IMAGES."""
    count = VERIFY_IMAGES if batch_size is None else -(-VERIFY_IMAGES // batch_size) * batch_size
    return verification_batch(pre, count)


def _checked(got: np.ndarray, ref: Reference, tolerance: float, what: str) -> CheckResult:
    """``compare`` with its failure as an ExportError that names the flag to override it."""
    try:
        return compare(got, ref, tolerance, what)
    except CheckFailed as exc:
        raise ExportError(f"{exc}: the exported file is not faithful; raise --check_tolerance (now {tolerance:g}) "
                          "only if this CPU's kernels are known to be less exact") from None


def run_file(path: str | os.PathLike, x: torch.Tensor, batch_size: int | None = None,
             intra_op_threads: int | None = None) -> np.ndarray:
    """onnxruntime's logits for ``x`` (in ``batch_size`` chunks for a fixed-batch file); the session
    is closed on return, since the file is moved into place next and nothing may hold it open."""
    session = create_session(path, "CPU", intra_op_threads, announce=lambda _: None)
    step = batch_size or len(x)
    return np.concatenate([session.run([OUTPUT_NAME], {INPUT_NAME: x[i:i + step].numpy()})[0]
                           for i in range(0, len(x), step)])


def verify_onnx(path: str | os.PathLike, model: nn.Module, pre: Preprocess, batch_size: int | None = None,
                fp16: bool = False, tolerance: float = DEFAULT_CHECK_TOLERANCE,
                intra_op_threads: int | None = None) -> CheckResult:
    """onnxruntime on the file vs ``model`` (the fp32 eager model) in float64 on the check images,
    allowing ``tolerance`` x PyTorch's own float32 (``fp16``: float16) error; raises ExportError."""
    x = check_images(pre, batch_size)
    ref = float64_reference(model, x, fp16)
    got = run_file(path, x, batch_size, intra_op_threads)
    return _checked(got, ref, tolerance, "onnxruntime")


@contextlib.contextmanager
def replaced_when_done(path: Path) -> Iterator[Path]:
    """A temporary name next to ``path`` to write and check; moved onto ``path`` when the block
    ends without error, removed when it fails (a failed check leaves nothing behind)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield temporary
        os.replace(temporary, path)
    except ExportError as exc:
        raise ExportError(f"{exc}; nothing written to {path}") from None
    finally:
        temporary.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# TorchScript
# --------------------------------------------------------------------------------------------
def export_torchscript(
    model: nn.Module, path: str | os.PathLike, size: int, metadata: Mapping[str, str],
    batch_size: int | None = None, fp16: bool = False,
) -> Path:
    """torch.jit.trace the eval model and save it with the metadata as an extra file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    net = HalfPrecision(model) if fp16 else model
    with torch.no_grad(), _quiet_torchscript():
        traced = torch.jit.trace(net.eval(), random_batch(batch_size or VERIFY_BATCH, size), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_METADATA_FILE: json.dumps(dict(metadata))})
    return path


@contextlib.contextmanager
def _quiet_torchscript() -> Iterator[None]:
    """torch.jit.* warn on every call that TorchScript is deprecated; export_source says it once."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=FutureWarning)
        yield


def read_torchscript_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata dict export_torchscript stored inside the .pt archive."""
    extra = {TORCHSCRIPT_METADATA_FILE: ""}
    with _quiet_torchscript():
        torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    return json.loads(extra[TORCHSCRIPT_METADATA_FILE])


def verify_torchscript(path: str | os.PathLike, model: nn.Module, pre: Preprocess, batch_size: int | None = None,
                       fp16: bool = False, tolerance: float = DEFAULT_CHECK_TOLERANCE) -> CheckResult:
    """The saved TorchScript module vs ``model`` in float64, by the same rule as ``verify_onnx``."""
    with _quiet_torchscript():
        loaded = torch.jit.load(str(path), map_location="cpu")
    x = check_images(pre, batch_size)
    step = batch_size or len(x)
    with torch.inference_mode():
        got = np.concatenate([loaded(x[i:i + step]).float().numpy() for i in range(0, len(x), step)])
    return _checked(got, float64_reference(model, x, fp16), tolerance, "TorchScript")


# --------------------------------------------------------------------------------------------
# Speed
# --------------------------------------------------------------------------------------------
def _images_per_second(run: Callable[[], Any], batch: int, seconds: float) -> float:
    """Throughput of ``run`` over at least ``seconds`` (and at least one call)."""
    count, start = 0, time.perf_counter()
    while True:
        run()
        count += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return count * batch / elapsed


def _best_interleaved(runs: Mapping[str, Callable[[], Any]], batch: int, min_seconds: float) -> dict[str, float]:
    """Best-of-BENCH_ROUNDS images/s per contender, measured in alternating slices so that
    load from other processes hits both alike (best-of, like timeit: noise only slows runs)."""
    for run in runs.values():
        for _ in range(BENCH_WARMUP):
            run()
    best = {name: 0.0 for name in runs}
    for _ in range(BENCH_ROUNDS):
        for name, run in runs.items():
            best[name] = max(best[name], _images_per_second(run, batch, min_seconds / BENCH_ROUNDS))
    return best


def benchmark(
    model: nn.Module, onnx_path: str | os.PathLike, size: int, batch_sizes: Sequence[int] = (1, 32),
    min_seconds: float = 3.0, threads: int | None = None,
) -> list[dict[str, float]]:
    """PyTorch eager vs onnxruntime images/s on the same random batches, in this process.

    Both get the same number of threads (default: physical cores); the session is made exactly
    as the runner makes it (infer.session.create_session). Each contender runs for about
    ``min_seconds`` after warm-up, in alternating slices; the best slice counts. On a busy CPU
    the numbers drop, most for multi-threaded PyTorch (OpenMP threads spin-wait on each other).
    """
    threads = threads or physical_cores()
    session = create_session(onnx_path, "CPU", threads, announce=lambda _: None)
    fixed = session.get_inputs()[0].shape[0]
    if isinstance(fixed, int):  # a fixed-batch file runs at its own batch only
        batch_sizes = (fixed,)
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    model = model.float().eval()
    rows = []
    try:
        for batch in batch_sizes:
            x = random_batch(batch, size)
            feed = {INPUT_NAME: x.numpy()}
            with torch.inference_mode():
                best = _best_interleaved({"eager": lambda: model(x),
                                          "onnxruntime": lambda: session.run(None, feed)}, batch, min_seconds)
            rows.append({"batch": batch, "threads": threads, **best,
                         "speedup": best["onnxruntime"] / best["eager"]})
    finally:
        torch.set_num_threads(saved_threads)
    return rows


# --------------------------------------------------------------------------------------------
# The whole export
# --------------------------------------------------------------------------------------------
@dataclass
class ExportResult:
    path: Path
    size: int
    max_abs_diff: float  # max |exported file - PyTorch float64| on the check images
    metadata: dict[str, str]
    op_counts: Counter | None = None
    optimized_op_counts: Counter | None = None
    check: CheckResult | None = None


def _exports_folded(opset: int) -> bool:
    """Whether torch's TorchScript-based exporter writes a Conv + BatchNorm + SiLU at ``opset``
    without error or 'not supported' warning, with the BatchNorm folded into the Conv."""
    probe = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.SiLU()).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notice
        warnings.simplefilter("error", torch.onnx.errors.OnnxExporterWarning)  # "opset N is not supported"
        try:
            with torch.no_grad():
                torch.onnx.export(probe, (torch.zeros(1, 3, 8, 8),), buffer, dynamo=False, opset_version=opset,
                                  do_constant_folding=True, training=torch.onnx.TrainingMode.EVAL)
        except Exception:  # noqa: BLE001 - any refusal means "not this opset"
            return False
    graph = onnx.load_from_string(buffer.getvalue())
    return (graph.opset_import[0].version == opset
            and all(node.op_type != "BatchNormalization" for node in graph.graph.node))


@functools.lru_cache(maxsize=None)
def supported_opsets() -> tuple[int, int]:
    """Lowest and highest opset at which torch's TorchScript-based exporter (the one used,
    dynamo=False) exports with BatchNorm folded: found by exporting a 3-layer probe outwards from
    DEFAULT_OPSET (torch publishes the range only in a private module; ~10 tiny exports)."""
    if not _exports_folded(DEFAULT_OPSET):
        raise ExportError(f"torch {torch.__version__}'s ONNX exporter cannot export at opset {DEFAULT_OPSET}")
    low = high = DEFAULT_OPSET
    while low > 1 and _exports_folded(low - 1):
        low -= 1
    while high < onnx.defs.onnx_opset_version() and _exports_folded(high + 1):
        high += 1
    return low, high


def check_opset(opset: int) -> None:
    """Outside the range torch raises (or warns 'not supported') only after the model is built."""
    low, high = supported_opsets()
    if not low <= opset <= high:
        raise ExportError(f"--opset must be between {low} and {high} (the range torch {torch.__version__}'s "
                          f"ONNX exporter supports with constant folding), got {opset}")


def export_source(
    source: ExportSource,
    file_name: str,
    file_format: str = "ONNX",
    width: int | None = None,
    height: int | None = None,
    batch_size: int | None = None,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    count_ops: bool = True,
    announce: Announce = print,
    intra_op_threads: int | None = None,
    check_tolerance: float = DEFAULT_CHECK_TOLERANCE,
) -> ExportResult:
    """Export, store metadata, verify, and report; raises ExportError on any failure, and then
    nothing is left at the output path (the file is written under a temporary name first)."""
    file_format = file_format.upper()
    if file_format not in FORMATS:
        raise ExportError(f"--file_format must be one of {', '.join(FORMATS)}, got {file_format!r}")
    size = width or height or source.preprocess.crop
    if (width or size) != (height or size):
        raise ExportError(f"--width {width} and --height {height} differ; the eval preprocessing is a "
                          "square centre crop, so export a square input")
    if size < NETWORK_STRIDE:
        raise ExportError(f"input size {size} is too small; EfficientNet downsamples {NETWORK_STRIDE}x "
                          f"(use >= {NETWORK_STRIDE})")
    if batch_size is not None and batch_size < 1:
        raise ExportError(f"--batch_size must be >= 1, got {batch_size}")
    if not 0 < check_tolerance < float("inf"):
        raise ExportError(f"--check_tolerance must be a positive number, got {check_tolerance}")
    if file_format == "ONNX":
        check_opset(opset)
    pre = source.preprocess.at_crop(size)
    if is_qat_model(source.model):
        return _export_qat(source, file_name, file_format, size, batch_size, fp16, pre, announce)
    metadata = build_metadata(source.model_name, pre, source.classes, source.num_classes,
                              precision="fp16" if fp16 else "fp32")
    path = output_path(file_name, file_format)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = source.model.eval()  # also the reference for fp16 files: the fp32 model the user trained
    if file_format == "TORCHSCRIPT":
        with replaced_when_done(path) as temporary:
            export_torchscript(model, temporary, size, metadata, batch_size, fp16)
            check = verify_torchscript(temporary, model, pre, batch_size, fp16, check_tolerance)
        announce(f"exported {source.model_name} ({source.origin}) -> {path} [TorchScript, {size}x{size}, "
                 f"batch {batch_size or 'dynamic'}]")
        announce(f"check: {check.describe('TorchScript')}")
        announce("note: PyTorch deprecates TorchScript; ONNX is the format this project tests and serves")
        return ExportResult(path, size, check.max_abs_diff, metadata, check=check)
    with replaced_when_done(path) as temporary:
        export_onnx(model, temporary, size, metadata, batch_size, opset, fp16)
        check = verify_onnx(temporary, model, pre, batch_size, fp16, check_tolerance, intra_op_threads)
    announce(f"exported {source.model_name} ({source.origin}) -> {path} [ONNX opset {opset}, "
             f"{'fp16' if fp16 else 'fp32'}, {size}x{size}, batch {batch_size or 'dynamic'}]")
    announce(f"metadata: preprocess {json.dumps(pre.to_dict())}, "
             f"{len(source.classes) if source.classes else 'no'} class names")
    announce(f"check: onnx.checker ok; {check.describe('onnxruntime')}")
    result = ExportResult(path, size, check.max_abs_diff, metadata, check=check)
    if count_ops:
        result.op_counts = op_counts(path)
        result.optimized_op_counts = optimized_op_counts(path)
        announce(f"ops in file: {format_op_counts(result.op_counts)} "
                 f"(BatchNormalization {result.op_counts.get('BatchNormalization', 0)})")
        announce(f"ops after onnxruntime optimisation: {format_op_counts(result.optimized_op_counts)}")
    return result


def _export_qat(source: ExportSource, file_name: str, file_format: str, size: int, batch_size: int | None,
                fp16: bool, pre: Preprocess, announce: Announce) -> ExportResult:
    """A quantization-aware trained checkpoint: its int8 QDQ file, checked against the trained quantization."""
    trained = source.model.qat_image_size
    if file_format != "ONNX" or fp16:
        raise ExportError("a QAT checkpoint exports as an int8 ONNX file: drop --fp16 / --file_format")
    if size != trained:
        raise ExportError(f"this QAT model was trained at {trained} px; export it at that size "
                          f"(--width {trained} --height {trained})")
    metadata = build_metadata(source.model_name, pre, source.classes, source.num_classes, precision="int8")
    path = output_path(file_name, file_format)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = check_images(pre, batch_size)
    with replaced_when_done(path) as temporary:
        export_qat_onnx(source.model, temporary, size, metadata, INPUT_NAME, OUTPUT_NAME, batch_size)
        logits = run_file(temporary, x, batch_size)
        try:
            weights = check_qat_structure(temporary, source.model)
        except ValueError as exc:
            raise ExportError(f"{exc}: the exported file is not the trained model") from None
        check = compare_qat(logits, source.model, x)
    announce(f"exported {source.model_name} ({source.origin}) -> {path} [ONNX opset {QAT_OPSET}, int8 QDQ from "
             f"quantization-aware training, {size}x{size}, batch {batch_size or 'dynamic'}]")
    announce(f"check: onnx.checker ok; {weights} int8 weights and every activation range equal the trained "
             f"ones; {check.describe()}")
    return ExportResult(path, size, check.file_error, metadata)
