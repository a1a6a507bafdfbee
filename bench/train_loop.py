"""Training images/s of train.py against a plain PyTorch loop on the digits demo.

    python -m bench.train_loop --data data/digits --epochs 3 --rounds 2 [--num_workers 0] [--json out.json]

Both sides train the same network, optimizer (the config's TF-style RMSProp), loss, LR schedule,
batch size and worker count from ``configs/digits.yaml`` on the same PNG folder. What differs is
everything around the model:

* ``train.py`` runs as a user runs it (a subprocess, the demo config); its images/s comes from its
  per-epoch records in ``metrics.jsonl``: data loading, the step, logging and progress included.
* the plain loop is what one writes by hand: torchvision ``ImageFolder`` with Resize + ToTensor +
  Normalize in the loader, ``DataLoader(shuffle=True, drop_last=True)`` and
  forward / backward / step, timed per epoch the same way (also a fresh subprocess). It uses the
  config's memory format (channels_last) too, so the difference is the pipeline, not the kernels.

The first epoch of each run is warm-up (worker start, allocator) and is left out; rounds
alternate the order, and the ratio is the median of per-round ratios, so background load on a
shared machine hits both sides alike.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DIGITS_CONFIG = PROJECT_ROOT / "configs" / "digits.yaml"
RUN_TIMEOUT_S = 3600
WARMUP_EPOCHS = 1


def common_overrides(args: argparse.Namespace) -> list[str]:
    return ["--config", str(DIGITS_CONFIG), "--dataset_path", str(args.data), "--epoch_size", str(args.epochs),
            "--num_workers", str(args.num_workers)]


def run_train_py(args: argparse.Namespace) -> dict:
    """train.py with the demo config; images/s per epoch from metrics.jsonl (validation excluded)."""
    with tempfile.TemporaryDirectory(prefix="bench_train_py_") as run_dir:
        cmd = [sys.executable, str(PROJECT_ROOT / "train.py"), *common_overrides(args), "--save_checkpoint",
               "false", "--save_checkpoint_path", run_dir, "--eval_interval", str(args.epochs + 1),
               "--ema_decay", "0"]  # the plain loop keeps no EMA: compare the pipelines, not the recipes
        start = time.perf_counter()
        subprocess.run(cmd, cwd=PROJECT_ROOT, check=True, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        wall = time.perf_counter() - start
        records = [json.loads(line) for line in Path(run_dir, "metrics.jsonl").read_text().splitlines()]
    epochs = [r["img_per_s"] for r in records if r["type"] == "epoch"]
    return {"img_per_s_per_epoch": epochs, "wall_s": wall}


def run_plain(args: argparse.Namespace) -> dict:
    """The plain loop in a fresh interpreter (same start-up and thread settings as train.py)."""
    cmd = [sys.executable, "-m", "bench.train_loop", "--plain", "--data", str(args.data), "--epochs",
           str(args.epochs), "--num_workers", str(args.num_workers)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, check=True, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["wall_s"] = time.perf_counter() - start
    return result


def plain_loop(args: argparse.Namespace) -> dict:
    """A hand-written loop over torchvision's ImageFolder with the demo's model, optimizer, loss and LR."""
    import torch
    import torchvision
    from torch.utils.data import DataLoader
    from torchvision import transforms as T

    from src.config import load_config
    from src.models import build_model, default_preprocess
    from src.training.trainer import loss_from_config, optimizer_from_config, schedule_from_config

    cfg = load_config(common_overrides(args))
    torch.manual_seed(cfg.seed)
    pre = default_preprocess(cfg.model)
    transform = T.Compose([T.Resize(cfg.image_size, interpolation=T.InterpolationMode.BILINEAR),
                           T.CenterCrop(cfg.image_size), T.ToTensor(), T.Normalize(pre.mean, pre.std)])
    dataset = torchvision.datasets.ImageFolder(str(Path(args.data) / "train"), transform=transform)
    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                        num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    model = build_model(cfg.model, num_classes=len(dataset.classes), dropout=cfg.dropout,
                        drop_path_rate=cfg.drop_path_rate)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    schedule = schedule_from_config(cfg, len(loader))
    optimizer = optimizer_from_config(model, cfg, schedule.lr_at(0))
    criterion = loss_from_config(cfg, len(dataset.classes))
    step, per_epoch = 0, []
    for _ in range(cfg.epoch_size):
        model.train()
        start, images = time.perf_counter(), 0
        for x, y in loader:
            for group in optimizer.param_groups:
                group["lr"] = schedule.lr_at(step)
            loss = criterion(model(x.contiguous(memory_format=memory_format)), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step, images = step + 1, images + y.numel()
        loss.item()
        per_epoch.append(images / (time.perf_counter() - start))
    return {"img_per_s_per_epoch": per_epoch}


def steady(result: dict) -> float:
    """Median images/s over the epochs after the warm-up."""
    return statistics.median(result["img_per_s_per_epoch"][WARMUP_EPOCHS:])


def ensure_digits(path: Path) -> None:
    if not (path / "train").is_dir():
        subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "make_digits.py"), str(path)], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=PROJECT_ROOT / "data" / "digits", help="digits folder")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="train.py / plain pairs, order alternating")
    parser.add_argument("--num_workers", type=int, default=0, help="loader workers on both sides")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--plain", action="store_true", help=argparse.SUPPRESS)  # the plain side's subprocess
    args = parser.parse_args(argv)
    if args.epochs <= WARMUP_EPOCHS:
        parser.error(f"--epochs must be > {WARMUP_EPOCHS} (the first epoch is warm-up)")
    if args.plain:
        print(json.dumps(plain_loop(args)))
        return 0
    ensure_digits(args.data)
    runs: dict[str, list[dict]] = {"train.py": [], "plain": []}
    sides = {"train.py": run_train_py, "plain": run_plain}
    for r in range(args.rounds):
        for name in (("train.py", "plain") if r % 2 == 0 else ("plain", "train.py")):
            runs[name].append(sides[name](args))
            print(f"round {r + 1} {name}: {steady(runs[name][-1]):.1f} img/s", flush=True)
    ratios = [steady(a) / steady(b) for a, b in zip(runs["train.py"], runs["plain"])]
    summary = {"train_py_img_per_s": statistics.median(steady(x) for x in runs["train.py"]),
               "plain_img_per_s": statistics.median(steady(x) for x in runs["plain"]),
               "ratio_median": statistics.median(ratios), "threads": os.environ.get("OMP_NUM_THREADS", "default"),
               "epochs": args.epochs, "num_workers": args.num_workers, "runs": runs}
    print(f"train.py {summary['train_py_img_per_s']:.1f} img/s, plain loop {summary['plain_img_per_s']:.1f} img/s, "
          f"train.py / plain = {summary['ratio_median']:.3f} (median of {args.rounds} rounds)")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
