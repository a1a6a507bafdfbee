"""GPU acceptance check: the project's GPU paths end to end in about five minutes, one JSON summary.

    python scripts/gpu_check.py [--output gpu_check.json] [--workdir DIR] [--steps a,b,...]
    bash scripts/gpu_check.sh ...   (the same, with the launchers' choice of Python)

Steps (each in its own process, with its own timeout; a failure in one does not stop the others):
  train_fp16      B0 training steps, channels_last, fp16 autocast + dynamic GradScaler (src.runtime.amp)
  train_bf16      the same in bf16 without a scaler (skipped where the GPU has no bf16)
  ddp_nccl        torchrun --nproc_per_node 1 train.py --dist_backend nccl on a generated image folder
  compile         train.py --compile true for one short epoch (skipped without triton)
  grad_ckpt_b3    B3 training step: peak memory with and without gradient checkpointing
  eval            eval.py on ddp_nccl's best checkpoint
  export          export.py of that checkpoint (ONNX, checked against PyTorch on the CPU provider)
  onnx_cuda       the exported file on onnxruntime's CUDA provider vs PyTorch on the GPU
  onnx_tensorrt   the same on the TensorRT provider
  benchmark       python benchmark.py model --amp fp16 --batch_size 256

A step is pass, fail, timeout or skipped (with the reason: no CUDA, a package or provider missing, an
earlier step's output missing). Exit status 1 when a step failed or timed out, else 0; on a machine
without CUDA one line says so, every step is skipped and the status is 0. The check installs nothing
and uses no torch API newer than 2.4, so it runs on the Python a GPU machine already has.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

REPO = Path(__file__).resolve().parents[1]
DEVICE = "cuda"  # the internal steps' device (a developer's CPU dry run may change it)
RESULT_PREFIX = "gpu_check result: "  # a child step's last word: this prefix, then JSON
STATUSES = ("pass", "fail", "timeout", "skipped")
NO_CUDA = "no CUDA"
EXIT_FAILED = 1
KILL_GRACE_S = 5.0

# Sizes: big enough to measure a GPU, small enough for ~5 minutes on an H100/H200-class card.
TRAIN_BATCH, TRAIN_SIZE, TRAIN_STEPS, TRAIN_WARMUP = 128, 224, 30, 10
CKPT_BATCH, CKPT_SIZE = 64, 300
DATA_CLASSES, DATA_TRAIN, DATA_VAL, DATA_PX = 3, 48, 16, 96
RUN_FLAGS = ["--model", "efficientnet_b0", "--image_size", "64", "--batch_size", "16", "--num_workers", "2",
             "--class_num", "0", "--log_interval", "5", "--amp", "fp16", "--eval_interval", "1", "--overwrite", "true"]
# TF32 convolutions (both runtimes' default on Ampere and later) round to a 10-bit mantissa: relative
# logit differences around 1e-3 are rounding; 1e-2 means a wrong kernel.
ONNX_REL_TOLERANCE = 1e-2


@dataclass
class StepResult:
    name: str
    description: str
    status: str
    reason: str = ""
    seconds: float = 0.0
    metrics: dict[str, Any] = field(default_factory=dict)


@dataclass
class Context:
    """What the steps share: the work folder (data, runs, logs) and this machine's facts."""

    workdir: Path
    python: str = sys.executable
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.workdir / "data"

    def best_checkpoint(self) -> Path | None:
        found = sorted((self.workdir / "ddp_run").glob("*-best.pth"))
        return found[0] if found else None

    @property
    def onnx(self) -> Path:
        return self.workdir / "b0.onnx"


# A step's plan: the command to run, or a string saying why it is skipped.
Plan = Callable[[Context], "list[str] | str"]


@dataclass(frozen=True)
class Step:
    name: str
    description: str
    timeout_s: float
    plan: Plan
    metrics: Callable[[str, Context], dict] = lambda output, ctx: {}


# --------------------------------------------------------------------------------------------
# Running steps
# --------------------------------------------------------------------------------------------
def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _reported(output: str) -> dict | None:
    """The child's own result line (status, reason, metrics), if it printed one."""
    for line in reversed(output.splitlines()):
        if line.startswith(RESULT_PREFIX):
            try:
                return json.loads(line[len(RESULT_PREFIX):])
            except json.JSONDecodeError:
                return None
    return None


def _run_with_timeout(command: Sequence[str], timeout_s: float, log: Path) -> tuple[int | None, str]:
    """(exit status or None on timeout, output). The whole process group is ended on timeout, so
    torchrun's workers and DataLoader workers go too."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w+", encoding="utf-8", errors="replace") as out:
        proc = subprocess.Popen(list(command), cwd=REPO, stdout=out, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True, env=_child_env())
        try:
            code: int | None = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            code = None
            _signal_group(proc.pid, signal.SIGTERM)  # torchrun passes it on to its workers
            try:
                proc.wait(timeout=KILL_GRACE_S)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(proc.pid, signal.SIGKILL)  # whatever of the group is still there
            proc.wait()
        out.seek(0)
        return code, out.read()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _child_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else "")}


def run_step(step: Step, ctx: Context) -> StepResult:
    """One step's result; never raises (a broken plan or parser is that step's failure)."""
    start = time.perf_counter()
    result = StepResult(step.name, step.description, "fail")
    try:
        plan = step.plan(ctx)
        if isinstance(plan, str):
            result.status, result.reason = "skipped", plan
            return result
        code, output = _run_with_timeout(plan, step.timeout_s, ctx.workdir / "logs" / f"{step.name}.log")
        reported = _reported(output)
        if code is None:
            result.status, result.reason = "timeout", f"no result after {step.timeout_s:g} s"
        elif reported is not None and reported.get("status") in STATUSES:
            result.status, result.reason = reported["status"], str(reported.get("reason", ""))
            result.metrics.update(reported.get("metrics") or {})
        elif code == 0:
            result.status = "pass"
        else:
            result.reason = f"exit status {code}: {_last_line(output)}"
        if code == 0 and result.status == "pass":
            result.metrics.update(step.metrics(output, ctx))
    except Exception as exc:  # noqa: BLE001 - the bookkeeping must survive any step
        result.status, result.reason = "fail", f"{type(exc).__name__}: {exc}"
    finally:
        result.seconds = round(time.perf_counter() - start, 1)
    return result


def run_steps(steps: Sequence[Step], ctx: Context, announce: Callable[[str], None] = print) -> list[StepResult]:
    results = []
    for step in steps:
        result = run_step(step, ctx)
        announce(f"gpu_check: {result.name}: {result.status}" + (f" ({result.reason})" if result.reason else ""))
        results.append(result)
    return results


# --------------------------------------------------------------------------------------------
# Steps that run in a child process of this script (``--internal NAME``)
# --------------------------------------------------------------------------------------------
def _report(status: str, reason: str = "", **metrics: Any) -> None:
    print(RESULT_PREFIX + json.dumps({"status": status, "reason": reason, "metrics": metrics}), flush=True)


def _peak_mb(torch) -> float:
    return round(torch.cuda.max_memory_allocated() / 2**20, 1)


def internal_train(amp: str) -> None:
    """B0 training steps on one repeated batch: the loss must fall and every value stay finite."""
    import torch

    from src.runtime.amp import autocast, build_scaler
    from src.models import build_model

    if amp == "bf16" and not torch.cuda.is_bf16_supported():
        return _report("skipped", "this GPU has no bf16")
    device = torch.device(DEVICE)
    torch.manual_seed(0)
    model = build_model("efficientnet_b0", num_classes=1000).to(device).to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    scaler = build_scaler(amp, 0.0, device)
    x = torch.randn(TRAIN_BATCH, 3, TRAIN_SIZE, TRAIN_SIZE, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (TRAIN_BATCH,), device=device)
    before = [p.detach().clone() for p in model.parameters()]
    losses, applied = [], 0
    torch.cuda.reset_peak_memory_stats()
    for i in range(TRAIN_STEPS):
        if i == TRAIN_WARMUP:
            torch.cuda.synchronize()
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        scaler.backward(loss)
        applied += scaler.step(optimizer).applied
        losses.append(float(loss.detach()))
    torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    metrics = dict(images_per_s=round(TRAIN_BATCH * (TRAIN_STEPS - TRAIN_WARMUP) / seconds, 1),
                   peak_memory_mb=_peak_mb(torch), first_loss=round(losses[0], 4), last_loss=round(losses[-1], 4),
                   applied_steps=applied, batch=TRAIN_BATCH, image_size=TRAIN_SIZE)
    changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    finite = all(torch.isfinite(p).all() for p in model.parameters())
    if not (all(math.isfinite(v) for v in losses) and finite and changed and applied):
        return _report("fail", f"non-finite values or no step applied ({applied} applied)", **metrics)
    if not losses[-1] < losses[0]:
        return _report("fail", f"loss did not fall on a repeated batch: {losses[0]:.4f} -> {losses[-1]:.4f}", **metrics)
    return _report("pass", **metrics)


def internal_grad_ckpt() -> None:
    """Peak memory of a B3 fp16 training step with and without gradient checkpointing."""
    import torch

    from src.runtime.amp import autocast, build_scaler
    from src.models import build_model

    device = torch.device(DEVICE)
    model = build_model("efficientnet_b3", num_classes=1000).to(device).to(memory_format=torch.channels_last)
    model.train()
    x = torch.randn(CKPT_BATCH, 3, CKPT_SIZE, CKPT_SIZE, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (CKPT_BATCH,), device=device)
    peaks = {}
    for enabled in (False, True):
        model.set_grad_checkpointing(enabled)
        scaler = build_scaler("fp16", 0.0, device)
        model.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        with autocast(device, "fp16"):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        scaler.backward(loss)
        torch.cuda.synchronize()
        peaks[enabled] = _peak_mb(torch)
        model.zero_grad(set_to_none=True)
    metrics = dict(peak_memory_mb=peaks[True], peak_without_mb=peaks[False],
                   saving=round(1 - peaks[True] / peaks[False], 3), batch=CKPT_BATCH, image_size=CKPT_SIZE)
    if peaks[True] < peaks[False]:
        return _report("pass", **metrics)
    return _report("fail", "checkpointing did not lower the peak memory", **metrics)


def internal_onnx(provider: str, workdir: Path) -> None:
    """The exported model on ``provider`` vs the checkpoint in PyTorch (fp32 on the GPU), on the val images."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return _report("skipped", f"onnxruntime not importable: {exc}")
    if provider not in ort.get_available_providers():
        return _report("skipped", f"this onnxruntime ({ort.__version__}) has no {provider} (a CPU-only build?)")
    import numpy as np
    import torch

    from infer.pipeline import load_normalized
    from infer.session import choose_providers
    from src.models.loading import load_trained
    from src.common.preprocess import list_class_folders

    choice = choose_providers("GPU")  # loads each provider's libraries quietly: TensorRT's are often absent
    if provider not in choice.providers:
        return _report("skipped", choice.fallback_reason or f"{provider} cannot load here (its libraries are missing)")
    ctx = Context(workdir)
    checkpoint = ctx.best_checkpoint()
    if checkpoint is None or not ctx.onnx.is_file():
        return _report("skipped", "needs the checkpoint of ddp_nccl and the file of export")
    loaded = load_trained(str(checkpoint))
    _, samples = list_class_folders(ctx.data / "val")
    x = np.stack([load_normalized(path, loaded.preprocess) for path, _ in samples])
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    with torch.no_grad():
        reference = loaded.model.cuda().eval()(torch.from_numpy(x).cuda()).float().cpu().numpy()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    keep = (provider, "CPUExecutionProvider")
    wanted = [p for p in choice.with_options() if (p[0] if isinstance(p, tuple) else p) in keep]
    session = ort.InferenceSession(str(ctx.onnx), options, providers=wanted)
    if session.get_providers()[0] != provider:
        return _report("fail", f"onnxruntime could not start {provider} (running on {session.get_providers()[0]})")
    session.run(None, {session.get_inputs()[0].name: x})  # build the engine (TensorRT) outside the timing
    start = time.perf_counter()
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    seconds = time.perf_counter() - start
    rel = float(np.abs(logits - reference).max() / max(np.abs(reference).max(), 1e-12))
    agree = float((logits.argmax(1) == reference.argmax(1)).mean())
    metrics = dict(images_per_s=round(len(x) / seconds, 1), max_rel_diff=rel, top1_agreement=agree, images=len(x))
    if rel <= ONNX_REL_TOLERANCE and agree == 1.0:
        return _report("pass", **metrics)
    return _report("fail", f"differs from PyTorch: max relative difference {rel:.2e} "
                           f"(allowed {ONNX_REL_TOLERANCE:g}), top-1 agreement {agree:.3f}", **metrics)


INTERNAL: dict[str, Callable[[Path], None]] = {
    "train_fp16": lambda workdir: internal_train("fp16"),
    "train_bf16": lambda workdir: internal_train("bf16"),
    "grad_ckpt_b3": lambda workdir: internal_grad_ckpt(),
    "onnx_cuda": lambda workdir: internal_onnx("CUDAExecutionProvider", workdir),
    "onnx_tensorrt": lambda workdir: internal_onnx("TensorrtExecutionProvider", workdir),
}


# --------------------------------------------------------------------------------------------
# The steps
# --------------------------------------------------------------------------------------------
def _missing(*modules: str) -> str | None:
    import importlib.util

    gone = [m for m in modules if importlib.util.find_spec(m) is None]
    return f"{', '.join(gone)} not installed" if gone else None


def _internal(name: str) -> Plan:
    return lambda ctx: [ctx.python, str(Path(__file__).resolve()), "--internal", name, "--workdir", str(ctx.workdir)]


def _train_metrics(run_dir: str) -> Callable[[str, Context], dict]:
    def parse(output: str, ctx: Context) -> dict:
        records = [json.loads(line) for line in (ctx.workdir / run_dir / "metrics.jsonl").read_text().splitlines()]
        epochs = [r for r in records if "img_per_s" in r]
        val = [r for r in records if "top1" in r]
        return dict(images_per_s=round(epochs[-1]["img_per_s"], 1) if epochs else None,
                    top1=val[-1]["top1"] if val else None)
    return parse


def _ddp_plan(ctx: Context) -> list[str] | str:
    if not ctx.facts.get("nccl"):
        return "torch.distributed has no NCCL here"
    return [ctx.python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "train.py",
            "--dataset_path", str(ctx.data), "--device_target", "GPU", "--dist_backend", "nccl", "--epoch_size", "2",
            "--save_checkpoint_path", str(ctx.workdir / "ddp_run"), *RUN_FLAGS]


def _compile_plan(ctx: Context) -> list[str] | str:
    return _missing("triton") or [
        ctx.python, "train.py", "--dataset_path", str(ctx.data), "--device_target", "GPU", "--compile", "true",
        "--epoch_size", "1", "--save_checkpoint_path", str(ctx.workdir / "compile_run"), *RUN_FLAGS]


def _eval_plan(ctx: Context) -> list[str] | str:
    checkpoint = ctx.best_checkpoint()
    if checkpoint is None:
        return "needs the checkpoint of ddp_nccl"
    return [ctx.python, "eval.py", "--checkpoint_path", str(checkpoint), "--dataset_path", str(ctx.data),
            "--device_target", "GPU", "--output_json", str(ctx.workdir / "eval.json")]


def _eval_metrics(output: str, ctx: Context) -> dict:
    result = json.loads((ctx.workdir / "eval.json").read_text())
    return {key: result.get(key) for key in ("Top_1_Acc", "images", "unreadable_images", "seconds")}


def _export_plan(ctx: Context) -> list[str] | str:
    checkpoint = ctx.best_checkpoint()
    if checkpoint is None:
        return "needs the checkpoint of ddp_nccl"
    return _missing("onnx", "onnxruntime", "onnxscript") or [
        ctx.python, "export.py", "--checkpoint_path", str(checkpoint), "--file_name", str(ctx.onnx.with_suffix("")),
        "--no_op_counts"]


def _benchmark_plan(ctx: Context) -> list[str]:
    return [ctx.python, "benchmark.py", "model", "--model", "efficientnet_b0", "--batch_size", "256", "--amp", "fp16",
            "--rounds", "2", "--iters", "5", "--warmup", "3", "--json", str(ctx.workdir / "benchmark.json")]


def _benchmark_metrics(output: str, ctx: Context) -> dict:
    rows = json.loads((ctx.workdir / "benchmark.json").read_text())["results"]
    ours = {f"{r['task']}_{r['variant']}_images_per_s": round(r["images_per_sec"], 1)
            for r in rows if r["impl"] == "ours"}
    return {"images_per_s": ours.get("train_channels_last_images_per_s"), **ours}


STEPS: tuple[Step, ...] = (
    Step("train_fp16", "B0 train steps, channels_last, fp16 + GradScaler", 120, _internal("train_fp16")),
    Step("train_bf16", "B0 train steps, channels_last, bf16", 120, _internal("train_bf16")),
    Step("ddp_nccl", "torchrun 1 process, NCCL, train.py 2 epochs", 240, _ddp_plan, _train_metrics("ddp_run")),
    Step("compile", "train.py --compile true, 1 epoch", 300, _compile_plan, _train_metrics("compile_run")),
    Step("grad_ckpt_b3", "B3 fp16 step: peak memory with/without checkpointing", 120, _internal("grad_ckpt_b3")),
    Step("eval", "eval.py on ddp_nccl's best checkpoint", 120, _eval_plan, _eval_metrics),
    Step("export", "export.py to ONNX (checked on the CPU provider)", 180, _export_plan),
    Step("onnx_cuda", "ONNX on the CUDA provider vs PyTorch", 120, _internal("onnx_cuda")),
    Step("onnx_tensorrt", "ONNX on the TensorRT provider vs PyTorch", 300, _internal("onnx_tensorrt")),
    Step("benchmark", "benchmark.py model --amp fp16 --batch_size 256", 240, _benchmark_plan, _benchmark_metrics),
)


# --------------------------------------------------------------------------------------------
# Machine facts, data, summary
# --------------------------------------------------------------------------------------------
def machine_facts() -> dict[str, Any]:
    """Versions and the GPU; ``cuda`` False (with ``why``) where torch or a CUDA device is missing."""
    facts: dict[str, Any] = {"host": platform.node(), "python": platform.python_version(), "cuda": False}
    try:
        import torch
    except ImportError as exc:
        facts["why"] = f"torch not importable ({exc})"
        return facts
    facts["torch"] = torch.__version__
    facts["torch_cuda"] = torch.version.cuda
    for name in ("torchvision", "onnxruntime", "triton"):
        try:
            facts[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - missing or broken: reported as absent
            facts[name] = None
    if not torch.cuda.is_available():
        facts["why"] = f"torch {torch.__version__} sees no CUDA device"
        return facts
    facts.update(cuda=True, device=torch.cuda.get_device_name(0), devices=torch.cuda.device_count(),
                 nccl=torch.distributed.is_available() and torch.distributed.is_nccl_available())
    return facts


def write_image_folder(root: Path) -> Path:
    """train/ and val/ class folders: one colour channel's square per class on noise."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", DATA_TRAIN), ("val", DATA_VAL)):
        for k in range(DATA_CLASSES):
            folder = root / split / f"class_{k}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                pixels = rng.integers(60, 120, (DATA_PX, DATA_PX, 3), dtype=np.uint8)
                x, y = rng.integers(0, DATA_PX // 2, 2)
                pixels[y:y + DATA_PX // 2, x:x + DATA_PX // 2, k] = 250
                Image.fromarray(pixels).save(folder / f"{i:03d}.jpg", quality=95)
    return root


def summary(results: Sequence[StepResult], facts: dict[str, Any], workdir: Path | None) -> dict[str, Any]:
    counts = {status: sum(r.status == status for r in results) for status in STATUSES}
    return {"machine": facts, "workdir": None if workdir is None else str(workdir), "counts": counts,
            "steps": [asdict(r) for r in results]}


def format_table(results: Sequence[StepResult]) -> str:
    rows = [("step", "status", "s", "images/s", "peak MB", "reason")]
    for r in results:
        rate, peak = r.metrics.get("images_per_s"), r.metrics.get("peak_memory_mb")
        rows.append((r.name, r.status, f"{r.seconds:.0f}", "" if rate is None else f"{rate:,.0f}",
                     "" if peak is None else f"{peak:,.0f}", r.reason[:70]))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1] for row in rows)


def select(names: str | None) -> list[Step]:
    if not names:
        return list(STEPS)
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in {s.name for s in STEPS}]
    if unknown:
        raise ValueError(f"unknown step {unknown[0]!r}; steps: {', '.join(s.name for s in STEPS)}")
    return [s for s in STEPS if s.name in wanted]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="gpu_check.json", help="the JSON summary (default ./gpu_check.json)")
    parser.add_argument("--workdir", default=None, help="data, runs and per-step logs (default: a new temp folder)")
    parser.add_argument("--steps", default=None, help="comma-separated subset of the steps, in their order")
    parser.add_argument("--internal", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.internal:
        INTERNAL[args.internal](Path(args.workdir))
        return 0
    try:
        steps = select(args.steps)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    output = Path(args.output)
    facts = machine_facts()
    if not facts["cuda"]:
        results = [StepResult(s.name, s.description, "skipped", NO_CUDA) for s in steps]
        _write(output, summary(results, facts, None))
        print(f"gpu_check: {NO_CUDA} here ({facts['why']}): all {len(steps)} steps skipped; summary in {output}")
        return 0
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    print(f"gpu_check: {facts['device']}, torch {facts['torch']} (CUDA {facts['torch_cuda']}), "
          f"onnxruntime {facts['onnxruntime']}; work folder {workdir}", flush=True)
    ctx = Context(workdir.resolve(), facts=facts)
    write_image_folder(ctx.data)
    results = run_steps(steps, ctx, announce=lambda line: print(line, flush=True))
    _write(output, summary(results, facts, workdir))
    print(format_table(results))
    print(f"gpu_check: summary in {output}; logs in {workdir / 'logs'}")
    return EXIT_FAILED if any(r.status in ("fail", "timeout") for r in results) else 0


def _write(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    sys.exit(main())
