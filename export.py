"""Export a checkpoint (or torchvision's weights) to ONNX or TorchScript and check the result.

    python export.py --checkpoint_path checkpoint/efficientnet_b2-350_625.pth --file_name effnet_b2
    python export.py --model efficientnet_b0 --pretrained --file_name b0            # torchvision ImageNet
    python export.py --checkpoint_path weights.pth --model efficientnet_b0 --width 260 --height 260
    python export.py --checkpoint_path ckpt.pth --file_name b0 --quantize int8 --calib_dir data/train \\
        --eval_dir data/val                                                         # + b0_int8.onnx

The ONNX file has a dynamic batch axis (``--batch_size N`` fixes it), input ``input`` (N, 3, H, W)
float32 normalised images, output ``logits``, and the preprocessing, class names and model name in
its metadata. It is checked with onnx.checker and in onnxruntime against PyTorch in float64 on a
few synthetic photos through the model's eval preprocessing: the file may be off by at most
``--check_tolerance`` (10) times PyTorch's own float32 (``--fp16``: float16) error on the same
images. The file is written under a temporary name and moved into place only when both checks
pass. Bad input ends with one ``error: ...`` line and exit status 2.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Sequence

from infer.triton_repo import DEFAULT_MAX_BATCH_SIZE, write_triton_repo
from infer.quantize import CALIB_METHODS, DEFAULT_CALIB_IMAGES, QuantizeError, compare_accuracy, quantize_int8
from src.checkpoint import CheckpointError
from src.config import ConfigError
from src.export_check import DEFAULT_CHECK_TOLERANCE
from src.onnx_export import (
    DEFAULT_OPSET, FORMATS, ExportError, benchmark, check_opset, export_source, load_source, output_path,
)
from src.models import ImportedWeights
from src.models.layouts import save_weights
from src.writable import why_not_writable

EXIT_BAD_INPUT = 2
INT8_SUFFIX = "_int8"
BENCH_BATCHES = (1, 32)
WEIGHT_FORMATS = {"SAFETENSORS": ".safetensors"}  # weights + metadata only (no graph), written by src.models.layouts


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        print(f"error: {message} (see python export.py --help)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def _format(text: str) -> str:
    value = text.upper()
    if value not in (*FORMATS, *WEIGHT_FORMATS):
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join((*FORMATS, *WEIGHT_FORMATS))}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("weights")
    src.add_argument("--checkpoint_path", help="train.py checkpoint, or a plain state_dict (with --model)")
    src.add_argument("--pretrained", nargs="?", const="imagenet",
                     help="torchvision ImageNet weights ('imagenet', the default) or a weight file PATH")
    src.add_argument("--model", help="variant, e.g. efficientnet_b0 (read from train.py checkpoints)")
    src.add_argument("--config", help="YAML: model, checkpoint_path, eval_resize/eval_crop/interpolation/"
                                      "normalization, class_num")
    src.add_argument("--use_ema", nargs="?", const="true", type=str.lower, choices=("true", "false"),
                     help="true: the checkpoint's EMA weights, false: its raw weights (default: EMA when "
                          "it has them, the weights its best was chosen by)")
    out = p.add_argument_group("output")
    out.add_argument("--file_name", help="output name without suffix (default: the model name)")
    out.add_argument("--file_format", type=_format, default="ONNX", help="ONNX (default), TORCHSCRIPT (.pt) or SAFETENSORS (weights, padding and "
                     "preprocessing; loads wherever a .pth does)")
    out.add_argument("--width", type=int, help="input width (default: the checkpoint's eval crop)")
    out.add_argument("--height", type=int, help="input height (default: the checkpoint's eval crop)")
    out.add_argument("--batch_size", type=int, help="fixed batch size (default: dynamic batch axis)")
    out.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="ONNX opset version")
    out.add_argument("--fp16", action="store_true", help="half-precision weights and arithmetic "
                                                         "(float32 input/output; for GPUs)")
    out.add_argument("--no_op_counts", action="store_true", help="skip the operator count report")
    out.add_argument("--check_tolerance", type=float, default=DEFAULT_CHECK_TOLERANCE, metavar="K",
                     help="accept the file when it is within K x PyTorch's own float32 error of PyTorch "
                          f"in float64 (default {DEFAULT_CHECK_TOLERANCE:g})")
    q = p.add_argument_group("int8 quantization (ONNX only)")
    q.add_argument("--quantize", choices=["int8"], help="also write NAME_int8.onnx, statically quantized")
    q.add_argument("--calib_dir", help="images to calibrate on (folder, class folders or .txt list)")
    q.add_argument("--calib_images", type=int, default=DEFAULT_CALIB_IMAGES, help="calibration images used")
    q.add_argument("--calib_method", choices=sorted(CALIB_METHODS), default="minmax")
    q.add_argument("--eval_dir", help="labelled folder: report fp32 vs int8 top-1/top-5 on it")
    t = p.add_argument_group("Triton Inference Server (ONNX only)")
    t.add_argument("--triton_repo", metavar="DIR", help="also write DIR/<name>/config.pbtxt, 1/model.onnx and "
                   "labels.txt (and DIR/<name>_int8 with --quantize)")
    t.add_argument("--triton_max_batch", type=int, default=DEFAULT_MAX_BATCH_SIZE, metavar="N",
                   help=f"max_batch_size for Triton's dynamic batching (default {DEFAULT_MAX_BATCH_SIZE})")
    t.add_argument("--trt", action="store_true", help="ask Triton's ONNX Runtime backend for TensorRT in fp16")
    b = p.add_argument_group("speed")
    b.add_argument("--benchmark", action="store_true",
                   help=f"time PyTorch eager vs onnxruntime at batch {' and '.join(map(str, BENCH_BATCHES))}")
    b.add_argument("--bench_seconds", type=float, default=3.0, help="seconds per measurement")
    b.add_argument("--bench_threads", type=int, help="threads for both PyTorch and onnxruntime "
                                                     "(default: physical cores)")
    return p


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
    for flag in ("width", "height", "batch_size", "calib_images", "bench_threads", "triton_max_batch"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise ExportError(f"--{flag} must be >= 1, got {value}")
    if not 0 < args.bench_seconds < math.inf:
        raise ExportError(f"--bench_seconds must be a positive number of seconds, got {args.bench_seconds}")
    if not 0 < args.check_tolerance < math.inf:
        raise ExportError(f"--check_tolerance must be a positive number, got {args.check_tolerance}")
    check_opset(args.opset)
    folder = Path(args.file_name or "model").parent
    reason = why_not_writable(folder)
    if reason is not None:
        raise ExportError(f"cannot write into {folder} for --file_name ({reason}); choose a writable folder")
    reason = why_not_writable(args.triton_repo) if args.triton_repo else None
    if reason is not None:
        raise ExportError(f"cannot write into {args.triton_repo} for --triton_repo ({reason}); choose a writable folder")


def run(args: argparse.Namespace) -> None:
    check_args(args)
    use_ema = None if args.use_ema is None else args.use_ema == "true"
    source = load_source(args.checkpoint_path, args.model, args.pretrained, args.config, use_ema)
    if source.weights_note:
        print(source.weights_note, flush=True)
    file_name = args.file_name or source.model_name
    if args.file_format in WEIGHT_FORMATS:
        path = Path(file_name).with_suffix(WEIGHT_FORMATS[args.file_format])
        weights = ImportedWeights.from_model(source.model, source.preprocess.to_dict(), source.origin, source.classes)
        print(f"wrote {save_weights(weights, path)} ({source.model_name}, {source.num_classes} classes, "
              f"padding {weights.padding})")
        return
    result = export_source(source, file_name, args.file_format, args.width, args.height, args.batch_size,
                           args.opset, args.fp16, count_ops=not args.no_op_counts,
                           check_tolerance=args.check_tolerance)
    if args.quantize:
        int8_path = output_path(file_name + INT8_SUFFIX, "ONNX")
        quantize_int8(result.path, int8_path, args.calib_dir, args.calib_images, args.calib_method)
        if args.eval_dir:
            for line in compare_accuracy(result.path, int8_path, args.eval_dir).lines():
                print(line)
    if args.triton_repo:
        name = Path(file_name).name
        written = [(result.path, name)] + ([(int8_path, name + INT8_SUFFIX)] if args.quantize else [])
        for path, model in written:
            folder = write_triton_repo(path, args.triton_repo, model, args.triton_max_batch, args.trt)
            labels = ", labels.txt" if (folder / "labels.txt").exists() else ""
            print(f"triton model repository: {folder}/ (config.pbtxt, 1/model.onnx{labels})")
    if args.benchmark:
        rows = benchmark(source.model, result.path, result.size, BENCH_BATCHES, args.bench_seconds,
                         args.bench_threads)
        print(f"benchmark ({source.model_name}, {result.size}x{result.size}, CPU, {rows[0]['threads']} "
              "threads each, images/s):")
        for row in rows:
            print(f"  batch {row['batch']:>3}: PyTorch eager {row['eager']:8.1f}, onnxruntime "
                  f"{row['onnxruntime']:8.1f} ({row['speedup']:.2f}x)")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ExportError, QuantizeError, CheckpointError, ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
