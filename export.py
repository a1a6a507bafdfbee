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
from pathlib import Path
from typing import Sequence

from infer.quantize import CALIB_METHODS, DEFAULT_CALIB_IMAGES
from infer.triton_repo import DEFAULT_MAX_BATCH_SIZE
from src.common.errors import EXIT_FAILED, InputError, OneLineParser, report_error
from src.export.check import DEFAULT_CHECK_TOLERANCE
from src.export.steps import (BENCH_BATCHES, BIAS_CORRECTED, INT8_SUFFIX, WEIGHT_FORMATS, check_args, print_benchmark, write_int8,
                              write_triton, write_weight_file)
from src.models.loading import add_use_ema_argument, use_ema_flag
from src.export.onnx_export import DEFAULT_OPSET, FORMATS, export_source
from src.export.source import load_source

def _format(text: str) -> str:
    value = text.upper()
    if value not in (*FORMATS, *WEIGHT_FORMATS):
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join((*FORMATS, *WEIGHT_FORMATS))}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                      help_hint="python export.py --help")
    src = p.add_argument_group("weights")
    src.add_argument("--checkpoint_path", help="train.py checkpoint, or a plain state_dict (with --model)")
    src.add_argument("--pretrained", nargs="?", const="imagenet", metavar="NAME",
                     help="published weights by name (imagenet, the default: the --model's reference weights; a "
                          "registry name, python -m src.models --weights; hf-hub:OWNER/REPO) or a weight file PATH")
    src.add_argument("--model", help="variant, e.g. efficientnet_b0 (read from train.py checkpoints)")
    src.add_argument("--config", help="YAML: model, checkpoint_path, eval_resize/eval_crop/interpolation/"
                                      "normalization, class_num")
    add_use_ema_argument(src)
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
    q.add_argument("--calib_method", choices=sorted([*CALIB_METHODS, BIAS_CORRECTED]), default=BIAS_CORRECTED,
                   help="bias_corrected (default): PyTorch observers + per-channel bias correction (src/models/qat.py); "
                        "minmax/entropy/percentile: onnxruntime's own quantizer")
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


def run(args: argparse.Namespace) -> None:
    check_args(args)
    source = load_source(args.checkpoint_path, args.model, args.pretrained, args.config, use_ema_flag(args.use_ema))
    if source.weights_note:
        print(source.weights_note, flush=True)
    file_name = args.file_name or source.model_name
    if args.file_format in WEIGHT_FORMATS:
        write_weight_file(source, file_name, args.file_format)
        return
    result = export_source(source, file_name, args.file_format, args.width, args.height, args.batch_size,
                           args.opset, args.fp16, count_ops=not args.no_op_counts,
                           check_tolerance=args.check_tolerance)
    onnx_files = [(result.path, Path(file_name).name)]
    if args.quantize:
        onnx_files.append((write_int8(result, source, file_name, args), Path(file_name).name + INT8_SUFFIX))
    if args.triton_repo:
        write_triton(onnx_files, args)
    if args.benchmark:
        print_benchmark(source, result, args.bench_seconds, args.bench_threads)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except InputError as exc:
        return report_error(exc)
    except OSError as exc:  # a file system that failed under a check that passed (a lost mount, a full disk)
        return report_error(exc, EXIT_FAILED)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
