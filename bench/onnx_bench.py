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

``--int8`` compares the fp32 file with its int8 quantization instead (``bench.onnx_int8``).
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from src.common.errors import InputError
from infer.metadata import build_metadata
from src.models import build_model, get_variant
from src.models.weights import default_preprocess
from src.common.preprocess import Preprocess

from .common import MIN_IMAGE_SIZE, format_table, machine_info, warm_paired_rounds
from .model import calibrate_batchnorm

NUM_CLASSES = 1000
INT8_ONLY = ("fp32_file", "int8_file", "calib_dir", "eval_dir", "save_dir")  # options that need --int8


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
    from src.export.onnx_export import load_source

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
            from .onnx_int8 import measure_int8  # it imports this module's helpers

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


def print_report(payload: dict) -> None:
    if payload.get("int8"):
        from .onnx_int8 import print_int8_report

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
