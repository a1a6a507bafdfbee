"""``benchmark.py memory``: peak memory of one training step, per batch size, with and without
gradient checkpointing and mixed precision; ours vs torchvision's model (no checkpointing there).

Every configuration runs in a fresh child process (``python -m bench.memory --child JSON``), so
allocator caches and earlier peaks cannot leak between rows. The child builds the model and the
project's optimizer (TF-style RMSProp), creates the optimizer state (one zero-gradient step, as
every step after the first has it), makes the input batch, and only then takes its baseline:

* CPU: peak RSS (``getrusage`` ru_maxrss) after the step minus the resident size at the baseline.
* GPU: ``torch.cuda.max_memory_allocated`` during the step minus the allocated bytes at the baseline.

"step" is therefore what one step needs on top of the weights, optimizer state and input batch
(activations kept for backward, gradients, temporaries); "model + optimizer" is that resident
state itself. Together they are what to plan for.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import torch

from src.common.errors import InputError
from .common import MIN_IMAGE_SIZE, format_table, machine_info, run_child

PROJECT_ROOT = Path(__file__).resolve().parent.parent
MB = 1024 * 1024
RESULT_PREFIX = "MEMORY_RESULT "
IMPLS = ("ours", "torchvision", "timm")
CHECKPOINTING_IMPLS = ("ours", "timm")  # torchvision's EfficientNet has no gradient checkpointing
CHILD_TIMEOUT_S = 900
NUM_CLASSES = 1000
LR = 1e-3


# --------------------------------------------------------------------------------------------
# Child side
# --------------------------------------------------------------------------------------------
def current_rss_bytes() -> int:
    """Resident set size now (Linux /proc); falls back to the peak where /proc is missing."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def build(impl: str, name: str, checkpointing: bool) -> torch.nn.Module:
    if impl == "ours":
        from src.models import build_model

        model = build_model(name, num_classes=NUM_CLASSES)
        model.set_grad_checkpointing(checkpointing)
        return model
    if impl == "torchvision":
        if checkpointing:
            raise InputError("torchvision's EfficientNet has no gradient checkpointing")
        import torchvision

        return torchvision.models.get_model(name, num_classes=NUM_CLASSES)
    if impl == "timm":
        import timm

        model = timm.create_model(name, num_classes=NUM_CLASSES)
        model.set_grad_checkpointing(checkpointing)
        return model
    raise InputError(f"impl must be one of {IMPLS}, got {impl!r}")


def warm_up_libraries(cfg_defaults, device: torch.device) -> None:
    """One step of a tiny model through the same code path, so modules loaded on first use
    (the first optimizer pulls in torch._dynamo, ~150 MB) are not counted as model memory."""
    from src.runtime.amp import autocast
    from src.training.trainer import optimizer_from_config

    tiny = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                               torch.nn.LazyLinear(2)).to(device)
    tiny(torch.zeros(2, 3, 8, 8, device=device))
    optimizer = optimizer_from_config(tiny, cfg_defaults, LR)
    for amp in ("none", "bf16" if device.type == "cpu" else "fp16"):
        with autocast(device, amp):
            loss = tiny(torch.zeros(2, 3, 8, 8, device=device)).float().sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


def measure(cfg: dict) -> dict:
    """One configuration, in this process: see the module doc for what is measured."""
    from src.runtime.amp import autocast, build_scaler
    from src.config import load_config
    from src.training.trainer import optimizer_from_config

    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    device = torch.device(cfg["device"])
    cuda = device.type == "cuda"
    cfg_defaults = load_config([])
    warm_up_libraries(cfg_defaults, device)
    rss_start = current_rss_bytes()
    gpu_start = torch.cuda.memory_allocated(device) if cuda else 0
    model = build(cfg["impl"], cfg["model"], cfg["checkpointing"]).to(device).train()
    optimizer = optimizer_from_config(model, cfg_defaults, LR)
    for p in model.parameters():  # create the optimizer state now, as every later step has it
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scaler = build_scaler(cfg["amp"], 0.0, device)
    loss_fn = torch.nn.CrossEntropyLoss()
    size = cfg["image_size"]
    x = torch.randn(cfg["batch"], 3, size, size, device=device)
    y = torch.randint(0, NUM_CLASSES, (cfg["batch"],), device=device)
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss_base = current_rss_bytes()
    gpu_base = torch.cuda.memory_allocated(device) if cuda else 0
    start = time.perf_counter()
    for _ in range(cfg["steps"]):
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, cfg["amp"]):
            loss = loss_fn(model(x), y)
        scaler.backward(loss)
        scaler.step(optimizer)
    if cuda:
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / cfg["steps"]
    result = dict(cfg, model_optimizer_mb=(rss_base - rss_start) / MB,
                  cpu_step_mb=(peak_rss_bytes() - rss_base) / MB, seconds_per_step=seconds,
                  loss=float(loss.detach().float()))
    if cuda:
        result["gpu_model_optimizer_mb"] = (gpu_base - gpu_start) / MB
        result["gpu_step_mb"] = (torch.cuda.max_memory_allocated(device) - gpu_base) / MB
    return result


def child_main(config_json: str) -> int:
    try:
        result = measure(json.loads(config_json))
    except torch.OutOfMemoryError as e:
        result = dict(json.loads(config_json), error=f"out of memory: {str(e).splitlines()[0]}")
    print(RESULT_PREFIX + json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------------
def measure_in_child(cfg: dict) -> dict:
    """Run one configuration in a fresh interpreter and return its result dict."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])))
    return run_child("bench.memory", "--child", cfg, RESULT_PREFIX, CHILD_TIMEOUT_S, f"memory child for {cfg}", env)


def configurations(args: argparse.Namespace, device: torch.device) -> list[dict]:
    low = "fp16" if device.type == "cuda" else "bf16"
    amp_modes = [low if a == "low" else a for a in args.amp_modes]
    out = []
    for batch in args.batch_sizes:
        for impl in args.impls:
            for checkpointing in ([False, True] if impl in CHECKPOINTING_IMPLS else [False]):
                for amp in amp_modes:
                    out.append(dict(impl=impl, model=args.model if impl != "timm" else args.timm_model or args.model,
                                    batch=batch, image_size=args.image_size, checkpointing=checkpointing,
                                    amp=amp, device=str(device), steps=args.steps, threads=args.threads))
    return out


def add_savings(results: list[dict]) -> None:
    """Each row's step memory relative to the same impl/batch/amp without checkpointing."""
    key = "gpu_step_mb" if any("gpu_step_mb" in r for r in results) else "cpu_step_mb"
    plain = {(r["impl"], r["batch"], r["amp"]): r.get(key) for r in results if not r["checkpointing"]}
    for r in results:
        base = plain.get((r["impl"], r["batch"], r["amp"]))
        r["step_vs_no_checkpointing"] = (r[key] / base) if base and r.get(key) is not None else None


def run(args: argparse.Namespace) -> dict:
    if "timm" in args.impls:
        try:
            import timm  # noqa: F401
        except ImportError:
            raise InputError("--impls timm needs timm installed (pip install timm)") from None
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    results = []
    for cfg in configurations(args, device):
        r = measure_in_child(cfg)
        results.append(r)
        if "error" in r:
            print(f"  {cfg['impl']} batch {cfg['batch']} checkpointing={cfg['checkpointing']} amp={cfg['amp']}: "
                  f"{r['error']}", flush=True)
        else:
            gpu = f", {r['gpu_step_mb']:,.0f} MB GPU" if "gpu_step_mb" in r else ""
            print(f"  {cfg['impl']} batch {cfg['batch']} checkpointing={cfg['checkpointing']} amp={cfg['amp']}: "
                  f"step {r['cpu_step_mb']:,.0f} MB RSS{gpu}, {r['seconds_per_step']:.1f} s", flush=True)
    add_savings([r for r in results if "error" not in r])
    return dict(mode="memory", model=args.model, image_size=args.image_size, device=str(device),
                steps=args.steps, threads=args.threads, machine=machine_info(), results=results)


def print_report(payload: dict) -> None:
    gpu = payload["device"] != "cpu"
    print(f"model={payload['model']} px={payload['image_size']} device={payload['device']} "
          f"({payload['machine']['cpu']}); peak of {payload['steps']} training step(s) above the "
          f"model + optimizer state + batch, each row in a fresh process")
    if not gpu:
        print("no GPU here: CPU peak RSS only; the same command adds GPU max_memory_allocated rows on a CUDA machine")
    headers = ["impl", "batch", "grad checkpointing", "amp", "model + optimizer (MB)", "step peak RSS (MB)"]
    headers += ["GPU step peak (MB)"] if gpu else []
    headers += ["step vs no checkpointing", "s/step"]
    rows = []
    for r in payload["results"]:
        if "error" in r:
            rows.append([r["impl"], r["batch"], "on" if r["checkpointing"] else "off", r["amp"], r["error"]]
                        + [""] * (len(headers) - 5))
            continue
        ratio = r.get("step_vs_no_checkpointing")
        row = [r["impl"], r["batch"], "on" if r["checkpointing"] else "off", r["amp"],
               r["model_optimizer_mb"], r["cpu_step_mb"]]
        row += [r["gpu_step_mb"]] if gpu else []
        row += ["-" if ratio is None or not r["checkpointing"] else f"{ratio:.2f}x", r["seconds_per_step"]]
        rows.append(row)
    print(format_table(headers, rows))


# benchmark.py rejects smaller values before the run (common.check_args)
MINIMUMS = {"image_size": MIN_IMAGE_SIZE, "batch_sizes": 1, "steps": 1, "threads": 1}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="efficientnet_b3")
    p.add_argument("--timm_model", default=None, help="timm's name when it differs (default: --model)")
    p.add_argument("--image_size", type=int, default=300)
    p.add_argument("--batch_sizes", type=int, nargs="+", default=[8, 16])
    p.add_argument("--impls", nargs="+", default=["ours", "torchvision"], choices=IMPLS)
    p.add_argument("--amp_modes", nargs="+", default=["none", "low"], choices=("none", "low"),
                   help="low = bf16 autocast on the CPU, fp16 (+ dynamic loss scaling) on a GPU")
    p.add_argument("--steps", type=int, default=1, help="training steps per child (the peak is over all)")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads per child: memory barely depends on it, and one keeps children quick on "
                        "a shared machine")
    p.add_argument("--cpu", action="store_true", help="measure on the CPU even when a GPU is present")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        sys.exit(child_main(sys.argv[2]))
    sys.exit("usage: python benchmark.py memory [options]  (bench.memory --child JSON is internal)")
