"""What export.py does with its parsed flags, one function per step: check the flag combinations
before the slow export, write a weight file, quantize to int8, write a Triton repository, time
onnxruntime against PyTorch. export.py wires them; a new export path adds a step here."""
from __future__ import annotations

import argparse
import math
from pathlib import Path

from infer.quantize import compare_accuracy, quantize_int8
from infer.triton_repo import write_triton_repo
from src.models import ImportedWeights
from src.models.files import save_weights
from src.export.qat_onnx import write_bias_corrected_int8
from src.export.onnx_export import ExportResult, benchmark, check_opset, output_path
from src.export.source import ExportError, ExportSource
from src.common.writable import why_not_writable

INT8_SUFFIX = "_int8"
BIAS_CORRECTED = "bias_corrected"  # --calib_method on PyTorch's side (src/models/qat.py), not onnxruntime's
BENCH_BATCHES = (1, 32)
WEIGHT_FORMATS = {"SAFETENSORS": ".safetensors"}  # weights + metadata only (no graph), written by src.models.layouts
POSITIVE_INT_FLAGS = ("width", "height", "batch_size", "calib_images", "bench_threads", "triton_max_batch")


def check_args(args: argparse.Namespace) -> None:
    """Flag combinations that cannot work, caught before the (slow) export."""
    if args.quantize:
        if args.file_format != "ONNX":
            raise ExportError("--quantize needs --file_format ONNX")
        if args.fp16:
            raise ExportError("--quantize starts from the fp32 model; drop --fp16")
        if not args.calib_dir:
            raise ExportError("--quantize int8 needs --calib_dir DIR (a few hundred representative images)")
        if not Path(args.calib_dir).exists():
            raise ExportError(f"--calib_dir does not exist: {args.calib_dir}")
    elif args.calib_dir or args.eval_dir:
        raise ExportError("--calib_dir/--eval_dir are for --quantize int8")
    if args.eval_dir and not Path(args.eval_dir).is_dir():
        raise ExportError(f"--eval_dir is not a folder: {args.eval_dir}")
    if (args.triton_repo or args.trt) and args.file_format != "ONNX":
        raise ExportError("--triton_repo/--trt serve the ONNX file; use --file_format ONNX")
    if args.trt and not args.triton_repo:
        raise ExportError("--trt configures the Triton repository; add --triton_repo DIR")
    if args.benchmark and args.file_format != "ONNX":
        raise ExportError("--benchmark compares onnxruntime with PyTorch; use --file_format ONNX")
    for flag in POSITIVE_INT_FLAGS:
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ExportError(f"--{flag} must be >= 1, got {value}")
    if not 0 < args.bench_seconds < math.inf:
        raise ExportError(f"--bench_seconds must be a positive number of seconds, got {args.bench_seconds}")
    if not 0 < args.check_tolerance < math.inf:
        raise ExportError(f"--check_tolerance must be a positive number, got {args.check_tolerance}")
    check_opset(args.opset)
    for flag, folder in (("--file_name", Path(args.file_name or "model").parent), ("--triton_repo", args.triton_repo)):
        reason = why_not_writable(folder) if folder else None
        if reason is not None:
            raise ExportError(f"cannot write into {folder} for {flag} ({reason}); choose a writable folder")


def write_weight_file(source: ExportSource, file_name: str, file_format: str) -> None:
    """``--file_format SAFETENSORS``: the weights with padding, preprocessing and class names, no graph."""
    path = Path(file_name).with_suffix(WEIGHT_FORMATS[file_format])
    weights = ImportedWeights.from_model(source.model, source.preprocess.to_dict(), source.origin, source.classes)
    written = save_weights(weights.state, weights.metadata(), path)
    print(f"wrote {written} ({source.model_name}, {source.num_classes} classes, padding {weights.padding})")


def write_int8(result: ExportResult, source: ExportSource, file_name: str, args: argparse.Namespace) -> Path:
    """``--quantize int8``: NAME_int8.onnx calibrated on --calib_dir (onnxruntime's quantizer, or
    PyTorch's observers with bias correction); with --eval_dir, fp32 vs int8 accuracy."""
    int8_path = output_path(file_name + INT8_SUFFIX, "ONNX")
    if args.calib_method == BIAS_CORRECTED:
        write_bias_corrected_int8(source.model, result.path, int8_path, result.size, args.calib_dir,
                                  args.calib_images)
    else:
        quantize_int8(result.path, int8_path, args.calib_dir, args.calib_images, args.calib_method)
    if args.eval_dir:
        for line in compare_accuracy(result.path, int8_path, args.eval_dir).lines():
            print(line)
    return int8_path


def write_triton(onnx_files: list[tuple[Path, str]], args: argparse.Namespace) -> None:
    """``--triton_repo DIR``: one model folder per (ONNX file, model name)."""
    for path, model in onnx_files:
        folder = write_triton_repo(path, args.triton_repo, model, args.triton_max_batch, args.trt)
        labels = ", labels.txt" if (folder / "labels.txt").exists() else ""
        print(f"triton model repository: {folder}/ (config.pbtxt, 1/model.onnx{labels})")


def print_benchmark(source: ExportSource, result: ExportResult, seconds: float, threads: int | None) -> None:
    """``--benchmark``: images/s of PyTorch eager and onnxruntime at BENCH_BATCHES, on the CPU."""
    rows = benchmark(source.model, result.path, result.size, BENCH_BATCHES, seconds, threads)
    print(f"benchmark ({source.model_name}, {result.size}x{result.size}, CPU, {rows[0]['threads']} "
          "threads each, images/s):")
    for row in rows:
        print(f"  batch {row['batch']:>3}: PyTorch eager {row['eager']:8.1f}, onnxruntime "
              f"{row['onnxruntime']:8.1f} ({row['speedup']:.2f}x)")
