"""Run an exported EfficientNet ONNX model with onnxruntime over images; no torch needed.

    python infer/infer_onnx.py model.onnx /data/imagenet --device_target GPU
    python -m infer.infer_onnx --onnx_path model.onnx --dataset_path photos/ --output preds.csv

A labelled folder (a dataset root's val/, or a folder of class folders) prints
``top-1 accuracy: 0.xxxxx`` / ``top-5 accuracy: 0.xxxxx`` as the ModelZoo runner did; an
unlabelled folder or a ``.txt`` list of files writes predictions (CSV or JSON). Both print
throughput and per-batch latency. Preprocessing comes from the model's metadata (written by
export.py) and can be overridden; it is the same code eval.py uses, so the two agree per image.
"""
# The docstring above is the --help text. This file is the command line only (arguments, output
# files); the runner itself, for scripts and tests, is infer/runner.py (run_inference).
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as `python infer/infer_onnx.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from infer.pipeline import default_decode_threads  # noqa: E402
from infer.report import check_output_path, check_writable_parent, prediction_rows, write_predictions  # noqa: E402
from infer.runner import (  # noqa: E402
    DEFAULT_BATCH_SIZE, DEFAULT_TOPK, PreprocessOverrides, report_lines, run_inference,
)
from src.common.errors import EXIT_FAILED, InputError, OneLineParser, report_error  # noqa: E402
from src.common.preprocess import INTERPOLATIONS, MAX_IMAGE_SIZE  # noqa: E402

DEFAULT_PREDICTIONS_FILE = "predictions.csv"


def _floats3(text: str) -> tuple[float, float, float]:
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 3 numbers like 0.485,0.456,0.406, got {text!r}") from None
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected 3 numbers (R, G, B), got {text!r}")
    return values  # type: ignore[return-value]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="infer_onnx.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("onnx", nargs="?", help="model file (same as --onnx_path)")
    p.add_argument("data", nargs="?", help="dataset root / folder / .txt list (same as --dataset_path)")
    p.add_argument("--onnx_path", help="ONNX model written by export.py")
    p.add_argument("--dataset_path", help="dataset root (uses val/), folder of class folders, folder of "
                                          "images, or a .txt list of image files")
    p.add_argument("--device_target", default="GPU", help="GPU (TensorRT/CUDA, falls back to CPU) or CPU")
    p.add_argument("--batch_size", type=int, default=DEFAULT_BATCH_SIZE, help="images per session.run")
    p.add_argument("--num_threads", type=int, default=None,
                   help=f"image decoding threads (default min({default_decode_threads()}, CPUs))")
    p.add_argument("--intra_op_threads", type=int, default=None,
                   help="onnxruntime threads per operator (default: physical cores)")
    p.add_argument("--topk", type=int, default=DEFAULT_TOPK, help="classes per image in the predictions")
    p.add_argument("--output", help="write predictions here (.csv or .json); unlabelled runs default to "
                                    f"./{DEFAULT_PREDICTIONS_FILE}")
    p.add_argument("--save_logits", help="save the (images, classes) float32 logits as .npy, in the "
                                         "order of the predictions (unreadable files left out)")
    g = p.add_argument_group("preprocessing overrides (default: from the model's metadata)")
    g.add_argument("--resize", type=int, help="shorter side before the crop")
    g.add_argument("--crop", type=int, help="centre crop; alone, keeps the stored resize/crop ratio")
    g.add_argument("--interpolation", choices=sorted(INTERPOLATIONS))
    g.add_argument("--mean", type=_floats3, help="R,G,B in 0..1")
    g.add_argument("--std", type=_floats3, help="R,G,B in 0..1")
    return p


def _resolve_paths(args: argparse.Namespace, parser: argparse.ArgumentParser) -> tuple[str, str]:
    onnx_path = args.onnx_path or args.onnx
    data = args.dataset_path or args.data
    if args.onnx_path and args.onnx and args.onnx != args.onnx_path:
        parser.error("model given both as --onnx_path and positionally")
    if onnx_path is None or data is None:
        parser.error("need a model and a dataset: infer_onnx.py MODEL.onnx DATA (or --onnx_path/--dataset_path)")
    return onnx_path, data


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    onnx_path, data = _resolve_paths(args, parser)
    overrides = PreprocessOverrides(args.resize, args.crop, args.interpolation, args.mean, args.std)
    try:
        for flag, value in (("--num_threads", args.num_threads), ("--intra_op_threads", args.intra_op_threads)):
            if value is not None and value < 1:
                raise InputError(f"{flag} must be >= 1, got {value}")
        for flag, value in (("--resize", args.resize), ("--crop", args.crop)):
            if value is not None and not 1 <= value <= MAX_IMAGE_SIZE:
                raise InputError(f"{flag} must be a number of pixels from 1 to {MAX_IMAGE_SIZE}, got {value}")
        if args.output is not None:
            check_output_path(args.output)  # fail before the run, not after it
        if args.save_logits:
            check_writable_parent(args.save_logits, "--save_logits")
        result = run_inference(onnx_path, data, args.device_target, args.batch_size, args.num_threads,
                               args.intra_op_threads, args.topk, overrides)
        for line in report_lines(result):
            print(line)
        output = args.output
        if output is None and result.labels is None:
            output = DEFAULT_PREDICTIONS_FILE
        if output is not None:
            rows = prediction_rows(result.files, result.logits, result.class_names, result.topk, result.labels)
            write_predictions(output, rows, result.summary())
            print(f"predictions: {len(rows)} images -> {output}")
        if args.save_logits:
            np.save(args.save_logits, result.logits)
            print(f"logits: {result.logits.shape[0]}x{result.logits.shape[1]} -> {args.save_logits}")
    except InputError as exc:
        return report_error(exc)
    except OSError as exc:  # a file system that failed under a check that passed (a lost mount, a full disk)
        return report_error(exc, EXIT_FAILED)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
