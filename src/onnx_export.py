"""Export a trained or published EfficientNet to ONNX or TorchScript, and prove the file is right.

The ONNX path uses torch's TorchScript-based exporter (``dynamo=False``): it is fast, mature, and
with ``do_constant_folding`` folds every BatchNorm into the preceding convolution of an eval-mode
model, so the graph holds only Conv / Sigmoid / Mul / Add / pooling / Gemm. SiLU is exported as
``Sigmoid`` + ``Mul`` (standard ops, no custom Swish), which onnxruntime fuses back.

Every file is checked twice: ``onnx.checker`` (structure, before writing) and onnxruntime on the
written file against PyTorch on the same batch of random images (numerics). The preprocessing, class names and model name are
stored in ``metadata_props`` (keys in ``infer.metadata``) so the runner needs nothing else.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import tempfile
import time
import warnings
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from infer.metadata import INPUT_NAME, OUTPUT_NAME, build_metadata
from infer.session import create_session, physical_cores, session_options
from src.config import read_yaml
from src.model_loading import PUBLISHED_WEIGHTS, apply_eval_overrides, load_published, load_trained
from src.models import NETWORK_STRIDE, get_variant, load_pretrained
from src.models.pretrained import PRETRAINED_TAG
from src.preprocess import Preprocess

DEFAULT_OPSET = 17
FALLBACK_OPSETS = (9, 17)  # when torch does not say what its exporter supports (torch.onnx._constants)
MIN_FOLDING_OPSET = 9  # below it torch exports without constant folding: BatchNorm stays unfolded in the file
FP32_TOLERANCE = 1e-4  # max |onnxruntime - PyTorch| on the logits
FP16_RELATIVE_TOLERANCE = 1e-2  # fp16 weights: max diff / max |logit|
VERIFY_BATCH = 2  # a dynamic-batch model is checked at batch 2, so the batch axis is exercised
VERIFY_SEED = 0
FORMATS = ("ONNX", "TORCHSCRIPT")
SUFFIXES = {"ONNX": ".onnx", "TORCHSCRIPT": ".pt"}
TORCHSCRIPT_METADATA_FILE = "metadata.json"  # inside the .pt archive (torch.jit.load _extra_files)
BENCH_WARMUP = 2
BENCH_ROUNDS = 5

Announce = Callable[[str], None]


class ExportError(ValueError):
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


# --------------------------------------------------------------------------------------------
# Loading the model to export
# --------------------------------------------------------------------------------------------
def preprocess_for_size(pre: Preprocess, size: int) -> Preprocess:
    """The same preprocessing at another crop, keeping the resize/crop ratio (224/256 -> 64/73)."""
    if size == pre.crop:
        return pre
    return replace(pre, crop=size, resize=round(size * pre.resize / pre.crop))


def imagenet_categories(model_name: str) -> list[str] | None:
    """The 1000 class names shipped with torchvision's weight enum (offline), if available."""
    try:
        from torchvision.models import get_model_weights

        return list(get_model_weights(model_name)[PRETRAINED_TAG].meta["categories"])
    except (ImportError, KeyError, ValueError):
        return None


def load_source(
    checkpoint_path: str | None = None,
    model_name: str | None = None,
    pretrained: str | None = None,
    config_path: str | None = None,
    use_ema: bool | None = None,
) -> ExportSource:
    """The model to export, from a train.py checkpoint, a plain state_dict (+ model name), or
    torchvision weights (``pretrained='imagenet'`` or a path). A YAML ``config_path`` supplies
    ``model``, ``checkpoint_path``, ``pretrained`` and eval preprocessing keys not given directly."""
    config = read_yaml(config_path) if config_path else {}
    model_origin = "--model" if model_name else "config key 'model'"
    model_name = model_name or config.get("model")
    if checkpoint_path is None and pretrained is None:
        checkpoint_path, pretrained = config.get("checkpoint_path"), config.get("pretrained")
    if checkpoint_path and pretrained:
        raise ExportError("give --checkpoint_path or --pretrained, not both")
    class_num = config.get("class_num") or None
    if checkpoint_path:
        loaded = load_trained(str(checkpoint_path), model_name, use_ema, model_origin, class_num)
    elif pretrained:
        # This module's load_pretrained is handed over so the download can be replaced here (offline tests).
        loaded = load_published(model_name, str(pretrained), progress=False, class_num=class_num,
                                download=load_pretrained)
    else:
        raise ExportError("nothing to export: pass --checkpoint_path FILE or --pretrained [imagenet|PATH]")
    base = loaded.preprocess or Preprocess.for_variant(get_variant(loaded.name))
    pre = apply_eval_overrides(base, config.get("eval_resize"), config.get("eval_crop"),
                               config.get("interpolation"), config.get("normalization"))
    classes = loaded.classes
    if classes is None and str(pretrained) in PUBLISHED_WEIGHTS:
        classes = imagenet_categories(loaded.name)
    return ExportSource(loaded.model, loaded.name, loaded.num_classes, classes, pre, loaded.source,
                        loaded.weights_note)


# --------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------
def random_batch(batch: int, size: int, pre: Preprocess | None = None, seed: int = VERIFY_SEED) -> torch.Tensor:
    """Random images as the model sees them: uniform pixels normalised with ``pre``'s mean/std
    (standard normal without ``pre``). Reproducible."""
    generator = torch.Generator().manual_seed(seed)
    if pre is None:
        return torch.randn(batch, 3, size, size, generator=generator)
    pixels = torch.rand(batch, 3, size, size, generator=generator)
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    return (pixels - mean) / std


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


def drop_initializer_identities(model: onnx.ModelProto) -> int:
    """Remove ``Identity`` nodes whose input is a weight; returns how many were removed.

    The exporter deduplicates equal constants (e.g. zero biases) and re-exposes each copy through
    an Identity node. They compute nothing; wiring consumers to the weight directly keeps the
    file's op counts honest.
    """
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    outputs = {o.name for o in graph.output}
    rename = {n.output[0]: n.input[0] for n in graph.node
              if n.op_type == "Identity" and n.input[0] in weights and n.output[0] not in outputs}
    if not rename:
        return 0
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in rename)]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del graph.node[:]
    graph.node.extend(kept)
    return len(rename)


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
    with torch.no_grad():
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


def op_counts(path: str | os.PathLike) -> Counter:
    """Operator types in the file, e.g. Counter({'Conv': 81, 'Mul': 65, ...})."""
    return Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)


def optimized_op_counts(path: str | os.PathLike) -> Counter:
    """Operator types after onnxruntime's basic+extended graph optimisations (what actually runs,
    before CPU-specific layout changes): shows BN folded and SiLU fused."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = session_options(1)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return op_counts(options.optimized_model_filepath)


def format_op_counts(counts: Counter) -> str:
    return ", ".join(f"{op} {n}" for op, n in counts.most_common())


def torch_logits(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model(x).float().numpy()


def tolerance(ref: np.ndarray, fp16: bool) -> float:
    """Allowed max abs difference: 1e-4 (fp32) or 1e-2 (fp16) times the largest |logit|, never
    below 1e-4 (float32 carries ~7 digits, so logits of 1000 cannot agree to 1e-4 absolute)."""
    scale = max(1.0, float(np.abs(ref).max()))
    return (FP16_RELATIVE_TOLERANCE if fp16 else FP32_TOLERANCE) * scale


def check_close(got: np.ndarray, ref: np.ndarray, fp16: bool, what: str) -> float:
    """Max abs difference; raises ExportError above ``tolerance``."""
    if got.shape != ref.shape:
        raise ExportError(f"{what} output shape {got.shape} differs from PyTorch's {ref.shape}")
    diff = float(np.abs(got.astype(np.float64) - ref).max())
    limit = tolerance(ref, fp16)
    if not np.isfinite(diff) or diff > limit:
        raise ExportError(f"{what} differs from PyTorch by {diff:.3g} (allowed {limit:.3g}); "
                          "the exported file is not faithful")
    return diff


def verify_onnx(path: str | os.PathLike, model: nn.Module, size: int, batch: int, fp16: bool = False,
                pre: Preprocess | None = None, intra_op_threads: int | None = None) -> float:
    """onnxruntime on the written file vs PyTorch (``model``: the fp32 eager model) on one batch
    of random images; returns the max abs difference, raises ExportError above ``tolerance``."""
    x = random_batch(batch, size, pre)
    ref = torch_logits(model, x)
    session = create_session(path, "CPU", intra_op_threads, announce=lambda _: None)
    got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
    return check_close(got, ref, fp16, "onnxruntime")


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


def verify_torchscript(path: str | os.PathLike, reference: nn.Module, size: int, batch: int,
                       fp16: bool = False, pre: Preprocess | None = None) -> float:
    """The saved TorchScript module vs the eager fp32 model on one random batch."""
    with _quiet_torchscript():
        loaded = torch.jit.load(str(path), map_location="cpu")
    x = random_batch(batch, size, pre, seed=VERIFY_SEED + 1)
    return check_close(torch_logits(loaded, x), torch_logits(reference, x), fp16, "TorchScript")


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
    max_abs_diff: float
    metadata: dict[str, str]
    op_counts: Counter | None = None
    optimized_op_counts: Counter | None = None


def supported_opsets() -> tuple[int, int]:
    """Lowest and highest opset of torch's TorchScript-based exporter (the one used, dynamo=False)."""
    try:
        from torch.onnx import _constants
        low, high = _constants.ONNX_MIN_OPSET, _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET
    except (ImportError, AttributeError):
        low, high = FALLBACK_OPSETS
    return max(low, MIN_FOLDING_OPSET), high


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
) -> ExportResult:
    """Export, store metadata, verify, and report; raises ExportError on any failure."""
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
    if file_format == "ONNX":
        check_opset(opset)
    pre = preprocess_for_size(source.preprocess, size)
    metadata = build_metadata(source.model_name, pre, source.classes, source.num_classes,
                              precision="fp16" if fp16 else "fp32")
    path = output_path(file_name, file_format)
    model = source.model.eval()
    reference = model  # fp16 files are checked against the fp32 model the user trained
    batch = batch_size or VERIFY_BATCH
    if file_format == "TORCHSCRIPT":
        export_torchscript(model, path, size, metadata, batch_size, fp16)
        diff = verify_torchscript(path, reference, size, batch, fp16, pre)
        announce(f"exported {source.model_name} ({source.origin}) -> {path} [TorchScript, {size}x{size}, "
                 f"batch {batch_size or 'dynamic'}]")
        announce(f"check: TorchScript vs PyTorch max abs diff {diff:.3g}")
        announce("note: PyTorch deprecates TorchScript; ONNX is the format this project tests and serves")
        return ExportResult(path, size, diff, metadata)
    export_onnx(model, path, size, metadata, batch_size, opset, fp16)
    diff = verify_onnx(path, reference, size, batch, fp16, pre, intra_op_threads)
    announce(f"exported {source.model_name} ({source.origin}) -> {path} [ONNX opset {opset}, "
             f"{'fp16' if fp16 else 'fp32'}, {size}x{size}, batch {batch_size or 'dynamic'}]")
    announce(f"metadata: preprocess {json.dumps(pre.to_dict())}, "
             f"{len(source.classes) if source.classes else 'no'} class names")
    rule = f"{FP16_RELATIVE_TOLERANCE if fp16 else FP32_TOLERANCE:g} x max(1, max |logit|)"
    announce(f"check: onnx.checker ok; onnxruntime vs PyTorch on {batch} random images: "
             f"max abs diff {diff:.3g} (allowed {rule})")
    result = ExportResult(path, size, diff, metadata)
    if count_ops:
        result.op_counts = op_counts(path)
        result.optimized_op_counts = optimized_op_counts(path)
        announce(f"ops in file: {format_op_counts(result.op_counts)} "
                 f"(BatchNormalization {result.op_counts.get('BatchNormalization', 0)})")
        announce(f"ops after onnxruntime optimisation: {format_op_counts(result.optimized_op_counts)}")
    return result
