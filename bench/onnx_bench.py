"""``benchmark.py onnx``: onnxruntime vs PyTorch eager inference images/s for one variant.

PyTorch runs as most users run it (NCHW) and with channels_last (a large win on CPUs for the
depthwise convolutions); ratios are against the plain NCHW run.

The model is exported in this process with the project's exporter (``src.export.onnx_export.export_onnx``:
dynamic batch, BatchNorm folded) and run by an onnxruntime session with full graph optimisation
(ORT_ENABLE_ALL) and the same number of intra-op threads PyTorch uses, on the same random batch.
Both sides take a host batch and return host logits (on a GPU both pay the copies). Rounds
alternate the order and the ratio is the median of per-round ratios, as in the other modes.
Random weights (BatchNorm statistics set from a random batch so activations have a realistic
scale, see ``bench.model.calibrate_batchnorm``): speed does not depend on the values, and
nothing is downloaded; ``--pretrained`` loads published weights instead.

``--int8``: one network as an fp32 and an int8 ONNX file, side by side on the CPU, instead.
fp32: exported here as in the plain mode (random weights, or ``--pretrained``), or ``--fp32_file``
(an export.py file). int8: quantized here by the project's own quantizer
(``infer.quantize.quantize_int8``, what ``export.py --quantize int8`` writes), or ``--int8_file``
(e.g. a QAT export). Both run in onnxruntime CPU sessions with the same options and threads on the
same random batch, warmed up and timed in alternating rounds so drift hits both equally; images/s is
the median over rounds (with their range), the speed-up the ratio of the two medians. With
``--eval_dir`` the runner scores both files on a labelled folder (``infer.quantize.compare_accuracy``).
Without ``--calib_dir`` the calibration images are the benchmark's synthetic photo-like JPEGs
(``bench.data``): their ranges say nothing about accuracy, but the int8 graph, and so its speed, is
the same.

onnx, onnxruntime and the quantizer are imported where they are used, so that ``benchmark.py``'s
other modes run without them.
"""
from __future__ import annotations

import argparse
import copy
import functools
import os
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from src.common.errors import InputError
from infer.metadata import build_metadata
from src.models import build_model, get_variant
from src.models.weights import default_preprocess
from src.common.preprocess import Preprocess

from .common import MIN_IMAGE_SIZE, format_table, machine_info, warm_paired_rounds
from .data import JPEG_KINDS, generate_jpegs
from .model import calibrate_batchnorm

if TYPE_CHECKING:
    import onnxruntime as ort

NUM_CLASSES = 1000
INT8_ONLY = ("fp32_file", "int8_file", "calib_dir", "eval_dir", "save_dir")  # options that need --int8
CPU = torch.device("cpu")
SYNTHETIC_CALIB_IMAGES = 32  # --int8 ranges for a speed measurement only: a few images do
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
ACCURACY_KEYS = ("images", "fp32_top1", "int8_top1", "fp32_top5", "int8_top5", "agreement")


@dataclass
class Network:
    """The measured model (eval mode) with its name, eval preprocessing at the measured size and class count."""

    model: nn.Module
    name: str
    preprocess: Preprocess
    num_classes: int


def load_network(args: argparse.Namespace) -> Network:
    """``--pretrained`` weights (as export.py loads them), else random weights with BatchNorm
    statistics from a random batch; at ``--image_size`` (default: the weights' eval crop)."""
    from src.export.source import load_source

    if args.pretrained:
        source = load_source(model_name=args.model, pretrained=args.pretrained)
        model, name, pre, num_classes = source.model, source.model_name, source.preprocess, source.num_classes
    else:
        torch.manual_seed(0)
        model, num_classes = build_model(args.model, num_classes=NUM_CLASSES), NUM_CLASSES
        name = get_variant(args.model).name
        pre = default_preprocess(name)
    pre = pre.at_crop(args.image_size or pre.crop)
    if not args.pretrained:
        calibrate_batchnorm(model, pre.crop)
    return Network(model.eval(), name, pre, num_classes)


def export_fp32(net: Network, path: str | os.PathLike) -> float:
    """Export ``net`` with the project's exporter and the metadata the runner and the quantizer read
    (no class names: a labelled folder's class i is output i). Returns the seconds it took."""
    from src.export.onnx_export import export_onnx

    start = time.perf_counter()
    export_onnx(net.model, path, net.preprocess.crop, build_metadata(net.name, net.preprocess, None, net.num_classes))
    return time.perf_counter() - start


def timing_batch(batch: int, size: int) -> torch.Tensor:
    """The random batch every implementation is timed on (seeded by its size)."""
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))


def ort_session(path: str, device: torch.device, threads: int):
    """onnxruntime session: CUDA provider on a GPU (TensorRT left out: its engine build takes
    minutes and is a deployment choice), else CPU; ORT_ENABLE_ALL, ``threads`` intra-op."""
    import onnxruntime as ort

    from infer.session import CPU_PROVIDER, CUDA_PROVIDER, choose_providers, session_options

    providers = [CPU_PROVIDER]
    if device.type == "cuda":
        providers = [p for p in choose_providers("GPU").providers if p in (CUDA_PROVIDER, CPU_PROVIDER)]
    return ort.InferenceSession(path, sess_options=session_options(threads), providers=providers)


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    threads = args.threads or os.cpu_count() or 1
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        if args.int8:
            return measure_int8(args, threads)
        given = [f"--{name}" for name in INT8_ONLY if getattr(args, name)]
        if given:
            raise InputError(f"{', '.join(given)}: --int8 options; add --int8")
        return _measure(args, device, threads)
    finally:
        torch.set_num_threads(saved_threads)


def _measure(args: argparse.Namespace, device: torch.device, threads: int) -> dict:
    net = load_network(args)
    model, size = net.model, net.preprocess.crop
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{net.name}.onnx")
        export_seconds = export_fp32(net, path)
        session = ort_session(path, device, threads)
        providers = session.get_providers()
        input_name = session.get_inputs()[0].name
        model = model.to(device)
        model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        results = []
        for batch in args.batch_sizes:
            x = timing_batch(batch, size)
            feed = {input_name: x.numpy()}

            def eager() -> None:  # host in, host out, like session.run
                with torch.inference_mode():
                    model(x.to(device)).cpu()

            def eager_channels_last() -> None:  # what --channels_last / a tuned PyTorch user runs
                with torch.inference_mode():
                    model_cl(x.to(device).contiguous(memory_format=torch.channels_last)).cpu()

            def onnxruntime() -> None:
                session.run(None, feed)

            with torch.inference_mode():
                reference = model(x.to(device)).float().cpu().numpy()
                channels_last = model_cl(x.to(device).contiguous(memory_format=torch.channels_last)).float().cpu()
            # each candidate's logits against eager NCHW's (the reference row has none: None)
            max_abs_diff = {"pytorch_eager": None,
                            "pytorch_channels_last": float(np.abs(channels_last.numpy() - reference).max()),
                            "onnxruntime": float(np.abs(session.run(None, feed)[0] - reference).max())}
            max_logit = float(np.abs(reference).max())
            candidates = {"pytorch_eager": eager, "pytorch_channels_last": eager_channels_last,
                          "onnxruntime": onnxruntime}
            times, iters = warm_paired_rounds(candidates, args.rounds, device)
            ref = times["pytorch_eager"]
            for name, t in times.items():
                results.append(dict(
                    batch=batch, impl=name, images_per_sec=batch / statistics.median(t),
                    speedup_vs_eager=statistics.median(r / o for r, o in zip(ref, t)),
                    max_abs_diff_vs_eager=max_abs_diff[name],
                    max_abs_logit=max_logit,
                    rel_diff_vs_eager=None if max_abs_diff[name] is None else max_abs_diff[name] / max_logit,
                    calls_per_round=iters,
                ))
    return dict(mode="onnx", model=net.name, image_size=size, device=str(device), threads=threads,
                providers=providers, export_seconds=export_seconds, rounds=args.rounds,
                machine=machine_info(), results=results)


# --------------------------------------------------------------------------------------------
# --int8: fp32 vs int8 onnxruntime on the CPU
# --------------------------------------------------------------------------------------------
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
    from infer.quantize import DEFAULT_CALIB_IMAGES, quantize_int8

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
    """``--int8``: time (and with --eval_dir score) the fp32 file and its int8 file."""
    from infer.quantize import compare_accuracy
    from src.export.graph import op_counts

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


def print_report(payload: dict) -> None:
    if payload.get("int8"):
        return print_int8_report(payload)
    print(f"model={payload['model']} px={payload['image_size']} device={payload['device']} "
          f"threads={payload['threads']} onnxruntime providers={payload['providers']} "
          f"({payload['machine']['cpu']}); export took {payload['export_seconds']:.1f} s")
    if payload["device"] == "cpu":
        print("no GPU here: CPU rows only; the same command prints GPU rows on a CUDA machine")
    rows = [[r["batch"], r["impl"], r["images_per_sec"], f"{r['speedup_vs_eager']:.2f}x",
             "-" if r["rel_diff_vs_eager"] is None else f"{r['rel_diff_vs_eager']:.1e}"] for r in payload["results"]]
    print(format_table(["batch", "impl", "images/s", "vs PyTorch eager NCHW (median of rounds)",
                        "max |logit diff| / max |logit|"], rows))


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


# benchmark.py rejects smaller values before the run (common.check_args)
MINIMUMS = {"image_size": MIN_IMAGE_SIZE, "batch_sizes": 1, "rounds": 1, "threads": 1, "calib_images": 1}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="efficientnet_b0")
    p.add_argument("--image_size", type=int, default=None, help="default: the variant's eval crop")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="PyTorch and onnxruntime intra-op threads "
                                                             "(default: all cores)")
    p.add_argument("--cpu", action="store_true", help="time on the CPU even when a GPU is present")
    p.add_argument("--pretrained", nargs="?", const="imagenet", default=None, metavar="imagenet|PATH",
                   help="published weights (as export.py --pretrained) instead of random ones")
    p.add_argument("--int8", action="store_true",
                   help="fp32 vs int8 onnxruntime on the CPU (images/s at each batch size, top-1 with --eval_dir) "
                        "instead of onnxruntime vs PyTorch")
    p.add_argument("--fp32_file", default=None, help="--int8: an fp32 ONNX file from export.py instead of "
                                                     "exporting --model here")
    p.add_argument("--int8_file", default=None, help="--int8: an int8 ONNX file (export.py --quantize int8, a QAT "
                                                     "export) instead of quantizing the fp32 file here")
    p.add_argument("--calib_dir", default=None, help="--int8: calibration images (a dataset root calibrates on "
                                                     "its train/); default: synthetic photos, fine for speed only")
    p.add_argument("--calib_images", type=int, default=None,
                   help="--int8: calibration images (default: infer.quantize's DEFAULT_CALIB_IMAGES)")
    p.add_argument("--eval_dir", default=None, help="--int8: a labelled folder: top-1 of both files and how often "
                                                    "their top-1 classes agree")
    p.add_argument("--save_dir", default=None, help="--int8: keep the fp32 and int8 files here (default: a "
                                                    "temporary folder)")
