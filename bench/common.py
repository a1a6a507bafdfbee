"""Shared helpers of the benchmark modes: paired timing, machine description, tables, JSON."""
from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Callable

import torch

from src.common.errors import InputError
from src.models import NETWORK_STRIDE
from src.common.writable import unwritable_output, why_not_writable

MIN_IMAGE_SIZE = NETWORK_STRIDE  # a smaller input ends in a 1x1 feature map


def machine_info() -> dict:
    """What the numbers were measured on, stored next to them."""
    info = {
        "cpu": _cpu_name(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "malloc": _malloc_setting(),
    }
    return info


def _malloc_setting() -> str:
    """benchmark.py --malloc as the environment records it (see src/runtime/host_memory.py)."""
    from src.runtime.host_memory import tuning_requested

    if os.environ.get("MALLOC_MMAP_MAX_") == "0":
        return "reuse"
    return "EFFNET_MALLOC=tuned" if tuning_requested() else "default"  # glibc's, as shipped


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], iters: int, device: torch.device) -> float:
    """Seconds per call of ``fn``, averaged over ``iters`` calls after the caller's warm-up."""
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - start) / iters


def paired_rounds(
    candidates: dict[str, Callable[[], object]], rounds: int, iters: int, device: torch.device
) -> dict[str, list[float]]:
    """Time every candidate once per round, alternating the order, so drift hits all equally.

    Returns seconds per call for each candidate and round; ratios are taken per round.
    """
    names = list(candidates)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            times[name].append(time_call(candidates[name], iters, device))
    return times


TARGET_SECONDS_PER_CALL_GROUP = 0.5  # calls per round are sized so one round takes about this
WARMUP_CALLS = 2


def iterations_for(fn: Callable[[], object], device: torch.device) -> int:
    """Calls per timed group so a group lasts about TARGET_SECONDS_PER_CALL_GROUP (>= 1)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return max(1, round(TARGET_SECONDS_PER_CALL_GROUP / max(time.perf_counter() - start, 1e-6)))


def warm_paired_rounds(
    candidates: dict[str, Callable[[], object]], rounds: int, device: torch.device
) -> tuple[dict[str, list[float]], int]:
    """``paired_rounds`` after WARMUP_CALLS calls of each candidate, with the calls per round the
    slowest candidate needs for a group of about TARGET_SECONDS_PER_CALL_GROUP; also returns that count."""
    for fn in candidates.values():
        for _ in range(WARMUP_CALLS):
            fn()
    iters = min(iterations_for(fn, device) for fn in candidates.values())
    return paired_rounds(candidates, rounds, iters, device), iters


def median_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of speed(a) / speed(b) = time(b) / time(a)."""
    return statistics.median(tb / ta for ta, tb in zip(a, b))


def format_table(headers: list[str], rows: list[list[object]]) -> str:
    """A markdown table, as pasted into the README."""
    def cell(v: object) -> str:
        if isinstance(v, float):
            return f"{v:,.1f}" if abs(v) >= 10 else f"{v:.3f}"
        return str(v)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def check_args(args, minimums: dict[str, int]) -> None:
    """Bad counts, sizes and output paths fail here as one line, before minutes of benchmarking.

    ``minimums`` maps each numeric option of the mode to its smallest sensible value; options left
    unset (None) keep their computed default.
    """
    bad = []
    for name, low in minimums.items():
        value = getattr(args, name)
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(v is not None and v < low for v in values):
            bad.append(f"--{name} must be >= {low}, got {value}")
    if bad:
        raise InputError("; ".join(bad))
    for name in ("data_dir", "save_dir"):  # folders a mode writes into
        folder = getattr(args, name, None)
        reason = why_not_writable(folder) if folder else None
        if reason is not None:
            raise InputError(f"--{name} {folder}: cannot write there ({reason}); choose a writable folder")
    complaint = unwritable_output("--json", args.json) if args.json else None
    if complaint is not None:
        raise InputError(complaint)


def write_json(path: str | None, payload: dict) -> None:
    if not path:
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    print(f"wrote {path}")


def run_child(module: str, flag: str, params: dict, prefix: str, timeout: float, what: str,
              env: dict[str, str] | None = None) -> dict:
    """``python -m module flag JSON`` in a fresh interpreter; the dict it printed after ``prefix``.

    A child that prints no result line raises RuntimeError naming ``what``, the exit status and
    the last line of its stderr (one line for benchmark.py to print).
    """
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-m", module, flag, json.dumps(params)], cwd=root, env=env,
                          capture_output=True, text=True, timeout=timeout)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(prefix):
            return json.loads(line[len(prefix):])
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    raise RuntimeError(f"{what} failed (exit {proc.returncode}): {tail}")
