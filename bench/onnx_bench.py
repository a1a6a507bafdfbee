"""``benchmark.py onnx``: onnxruntime vs PyTorch eager inference images/s for one variant.

PyTorch runs as most users run it (NCHW) and with channels_last (a large win on CPUs for the
depthwise convolutions); ratios are against the plain NCHW run.

The model is exported in this process with the project's exporter (``src.onnx_export.export_onnx``:
dynamic batch, BatchNorm folded) and run by an onnxruntime session with full graph optimisation
(ORT_ENABLE_ALL) and the same number of intra-op threads PyTorch uses, on the same random batch.
Both sides take a host batch and return host logits (on a GPU both pay the copies). Rounds
alternate the order and the ratio is the median of per-round ratios, as in the other modes.
Random weights (BatchNorm statistics set from a random batch so activations have a realistic
scale, see ``bench.model.calibrate_batchnorm``): speed does not depend on the values, and
nothing is downloaded.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from typing import Callable

import numpy as np
import torch

from src.models import build_model, get_variant

from .common import MIN_IMAGE_SIZE, format_table, machine_info, paired_rounds, sync
from .model import calibrate_batchnorm

TARGET_SECONDS_PER_CALL_GROUP = 0.5  # iterations per round are sized so one round takes about this
WARMUP = 2
NUM_CLASSES = 1000


def ort_session(path: str, device: torch.device, threads: int):
    """onnxruntime session: CUDA provider on a GPU (TensorRT left out: its engine build takes
    minutes and is a deployment choice), else CPU; ORT_ENABLE_ALL, ``threads`` intra-op."""
    import onnxruntime as ort

    from infer.session import CPU_PROVIDER, CUDA_PROVIDER, choose_providers, session_options

    providers = [CPU_PROVIDER]
    if device.type == "cuda":
        providers = [p for p in choose_providers("GPU").providers if p in (CUDA_PROVIDER, CPU_PROVIDER)]
    return ort.InferenceSession(path, sess_options=session_options(threads), providers=providers)


def iterations_for(fn: Callable[[], object], device: torch.device) -> int:
    """Calls per timed group so a group lasts about TARGET_SECONDS_PER_CALL_GROUP (>= 1)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return max(1, round(TARGET_SECONDS_PER_CALL_GROUP / max(time.perf_counter() - start, 1e-6)))


def run(args: argparse.Namespace) -> dict:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    threads = args.threads or os.cpu_count() or 1
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _measure(args, device, threads)
    finally:
        torch.set_num_threads(saved_threads)


def _measure(args: argparse.Namespace, device: torch.device, threads: int) -> dict:
    from src.onnx_export import export_onnx

    size = args.image_size or get_variant(args.model).eval_crop
    torch.manual_seed(0)
    model = build_model(args.model, num_classes=NUM_CLASSES)
    calibrate_batchnorm(model, size)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, f"{args.model}.onnx")
        start = time.perf_counter()
        export_onnx(model, path, size, {"model_name": args.model})
        export_seconds = time.perf_counter() - start
        session = ort_session(path, device, threads)
        providers = session.get_providers()
        input_name = session.get_inputs()[0].name
        model = model.to(device)
        model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
        results = []
        for batch in args.batch_sizes:
            x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
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
            for fn in candidates.values():
                for _ in range(WARMUP):
                    fn()
            iters = min(iterations_for(fn, device) for fn in candidates.values())
            times = paired_rounds(candidates, args.rounds, iters, device)
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
    return dict(mode="onnx", model=args.model, image_size=size, device=str(device), threads=threads,
                providers=providers, export_seconds=export_seconds, rounds=args.rounds,
                machine=machine_info(), results=results)


def print_report(payload: dict) -> None:
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
MINIMUMS = {"image_size": MIN_IMAGE_SIZE, "batch_sizes": 1, "rounds": 1, "threads": 1}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="efficientnet_b0")
    p.add_argument("--image_size", type=int, default=None, help="default: the variant's eval crop")
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="PyTorch and onnxruntime intra-op threads "
                                                             "(default: all cores)")
    p.add_argument("--cpu", action="store_true", help="time on the CPU even when a GPU is present")
