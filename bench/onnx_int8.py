"""``benchmark.py onnx --int8``: one network as an fp32 and an int8 ONNX file, side by side on the CPU.

fp32: exported here as in the plain onnx mode (random weights, or ``--pretrained``), or ``--fp32_file``
(an export.py file). int8: quantized here by the project's own quantizer
(``infer.quantize.quantize_int8``, what ``export.py --quantize int8`` writes), or ``--int8_file``
(e.g. a QAT export). Both run in onnxruntime CPU sessions with the same options and threads on the
same random batch, warmed up and timed in alternating rounds so drift hits both equally; images/s is
the median over rounds (with their range), the speed-up the ratio of the two medians. With
``--eval_dir`` the runner scores both files on a labelled folder (``infer.quantize.compare_accuracy``).

Without ``--calib_dir`` the calibration images are the benchmark's synthetic photo-like JPEGs
(``bench.data``): their ranges say nothing about accuracy, but the int8 graph, and so its speed, is
the same.
"""
from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
from dataclasses import asdict
from pathlib import Path

import onnxruntime as ort
import torch

from src.common.errors import InputError
from infer.quantize import DEFAULT_CALIB_IMAGES, compare_accuracy, quantize_int8
from src.export.onnx_export import op_counts

from .common import format_table, machine_info, warm_paired_rounds
from .data import JPEG_KINDS, generate_jpegs
from .onnx_bench import export_fp32, load_network, ort_session, timing_batch

CPU = torch.device("cpu")
SYNTHETIC_CALIB_IMAGES = 32  # ranges for a speed measurement only: a few images do
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
ACCURACY_KEYS = ("images", "fp32_top1", "int8_top1", "fp32_top5", "int8_top5", "agreement")


def check_given_files(args: argparse.Namespace) -> None:
    """Wrong --fp32_file / --int8_file fail before anything is exported or quantized."""
    if args.fp32_file and args.pretrained:
        raise InputError("give --fp32_file or --pretrained, not both")
    for flag in ("fp32_file", "int8_file"):
        path = getattr(args, flag)
        if path and not Path(path).is_file():
            raise InputError(f"--{flag} {path}: no such file")


def fp32_file(args: argparse.Namespace, folder: Path) -> tuple[Path, str]:
    """The fp32 file and where its weights come from."""
    if args.fp32_file:
        return Path(args.fp32_file), f"--fp32_file {args.fp32_file}"
    net = load_network(args)
    path = folder / f"{net.name}.onnx"
    export_fp32(net, path)
    return path, f"--pretrained {args.pretrained}" if args.pretrained else "random weights"


def int8_file(args: argparse.Namespace, fp32: Path, folder: Path) -> tuple[Path, dict | None]:
    """The int8 file and, when quantized here, its calibration (folder, images used, synthetic or not)."""
    if args.int8_file:
        return Path(args.int8_file), None
    count = args.calib_images or DEFAULT_CALIB_IMAGES
    calib_dir = args.calib_dir
    if calib_dir is None:
        count = min(count, SYNTHETIC_CALIB_IMAGES)
        calib_dir = generate_jpegs(folder / "calibration", JPEG_KINDS["imagenet"], count)[0].parent
    result = quantize_int8(fp32, folder / f"{fp32.stem}.int8.onnx", calib_dir, count)
    return result.path, dict(dir=str(calib_dir), images=result.calibration_images, synthetic=args.calib_dir is None)


def input_size(sessions: dict[str, ort.InferenceSession]) -> int:
    """The input side both files take; they must take the same images, at any batch size."""
    shapes = {name: s.get_inputs()[0].shape for name, s in sessions.items()}
    if shapes["fp32"][1:] != shapes["int8"][1:]:
        raise InputError(f"the fp32 file takes {shapes['fp32'][1:]} inputs and the int8 file {shapes['int8'][1:]}: "
                         "give files of the same model")
    fixed = [name for name, shape in shapes.items() if isinstance(shape[0], int)]
    if fixed:
        raise InputError(f"the {' and '.join(fixed)} file has a fixed batch size; export it with a dynamic batch")
    return int(shapes["fp32"][2])


def time_batch(sessions: dict[str, ort.InferenceSession], batch: int, size: int, rounds: int) -> list[dict]:
    """One row per file at this batch size: images/s over the paired rounds and the speed-up."""
    x = timing_batch(batch, size).numpy()
    candidates = {name: functools.partial(s.run, None, {s.get_inputs()[0].name: x}) for name, s in sessions.items()}
    times, iters = warm_paired_rounds(candidates, rounds, CPU)
    rows = []
    for name, seconds in times.items():
        speeds = [batch / t for t in seconds]
        rows.append(dict(batch=batch, precision=name, images_per_sec=statistics.median(speeds),
                         images_per_sec_min=min(speeds), images_per_sec_max=max(speeds),
                         seconds_per_round=seconds, calls_per_round=iters))
    for row in rows:
        row["speedup_vs_fp32"] = row["images_per_sec"] / rows[0]["images_per_sec"]
    return rows


def measure_int8(args: argparse.Namespace, threads: int) -> dict:
    check_given_files(args)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.save_dir or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        fp32, weights = fp32_file(args, folder)
        int8, calibration = int8_file(args, fp32, folder)
        sessions = {"fp32": ort_session(str(fp32), CPU, threads), "int8": ort_session(str(int8), CPU, threads)}
        size = input_size(sessions)
        results = [row for batch in args.batch_sizes for row in time_batch(sessions, batch, size, args.rounds)]
        accuracy = None
        if args.eval_dir:
            comparison = asdict(compare_accuracy(fp32, int8, args.eval_dir))
            accuracy = {key: comparison[key] for key in ACCURACY_KEYS}
        counts = op_counts(int8)
        model = sessions["fp32"].get_modelmeta().custom_metadata_map.get("model_name")
        kept = {"fp32": args.save_dir or args.fp32_file, "int8": args.save_dir or args.int8_file}  # else in tmp
    return dict(mode="onnx", int8=True, model=model, image_size=size, device="cpu", threads=threads,
                providers=sessions["int8"].get_providers(), weights=weights, fp32_exported=not args.fp32_file,
                fp32_file=str(fp32) if kept["fp32"] else None, int8_file=str(int8) if kept["int8"] else None,
                calibration=calibration, int8_ops={op: counts.get(op, 0) for op in QDQ_OPS}, eval_dir=args.eval_dir,
                rounds=args.rounds, machine=machine_info(), results=results, accuracy=accuracy)


def print_int8_report(payload: dict) -> None:
    ops = payload["int8_ops"]
    print(f"model={payload['model']} ({payload['weights']}) px={payload['image_size']} onnxruntime CPU, "
          f"threads={payload['threads']} ({payload['machine']['cpu']}); int8 file: "
          + ", ".join(f"{n} {op}" for op, n in ops.items()))
    calibration = payload["calibration"]
    if calibration is None:
        print(f"int8: {payload['int8_file']} as given")
    elif calibration["synthetic"]:
        print(f"int8: calibrated on {calibration['images']} synthetic JPEGs (no --calib_dir): the speed is right, "
              "the accuracy meaningless; pass --calib_dir for accuracy")
    else:
        print(f"int8: calibrated on {calibration['images']} images of {calibration['dir']}")
    accuracy = payload["accuracy"] or {}
    rows = [[r["batch"], r["precision"], r["images_per_sec"],
             f"{r['images_per_sec_min']:,.1f}-{r['images_per_sec_max']:,.1f}", f"{r['speedup_vs_fp32']:.2f}x",
             accuracy.get(f"{r['precision']}_top1", "-")] for r in payload["results"]]
    print(format_table(["batch", "model", f"images/s (median of {payload['rounds']} rounds)", "range",
                        "vs fp32", "top-1"], rows))
    if accuracy:
        print(f"top-1 on {accuracy['images']} images of {payload['eval_dir']}; int8 and fp32 agree on the top-1 class "
              f"of {accuracy['agreement']:.5f} of them")
        if payload["fp32_exported"]:
            print("note: the file exported here names no classes, so folder class i is scored as output i: top-1 "
                  "means something only for weights trained on this folder's classes; the agreement always does")
