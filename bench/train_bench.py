"""``benchmark.py train``: end-to-end ``train.py`` images/s against a plain PyTorch loop.

Both train the same network (``src.models.build_model``) with the same optimizer (the config's
TF-style RMSProp), loss, batch size, worker count and image folder of generated ImageNet-like
JPEGs, each in a fresh interpreter (same start-up and thread settings). What differs is
everything a plain loop does the usual way:

* ``train.py`` runs as a user runs it; its images/s per epoch come from ``metrics.jsonl``.
* the plain loop (``python -m bench.train_bench --plain ...``): torchvision ``ImageFolder`` with
  RandomResizedCrop + RandomHorizontalFlip + ToTensor + Normalize in the workers,
  ``DataLoader(shuffle=True)`` and a forward/backward/step loop, timed per epoch the same way.
  It keeps train.py's channels_last memory format, so layouts do not differ, only pipelines.

This is ``bench/train_loop.py``'s method (the digits-demo comparison) on the workload the data
pipeline is built for; the first epoch is warm-up and the steady rate is its ``steady``. Rounds
alternate the order; the ratio is the median of per-round ratios.
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
from dataclasses import replace
from pathlib import Path

import torch

from src.common.errors import InputError
from .common import MIN_IMAGE_SIZE, format_table, machine_info, run_child, sync
from .data import JPEG_KINDS, generate_jpegs
from .train_loop import WARMUP_EPOCHS, steady

PROJECT_ROOT = Path(__file__).resolve().parent.parent
TRAIN_TIMEOUT_S = 1800
PLAIN_INTERPOLATION = "bilinear"  # torchvision RandomResizedCrop's default; train.py is told the same
RESULT_PREFIX = "PLAIN_LOOP_RESULT "
PLAIN_KEYS = ("model", "image_size", "batch_size", "epochs", "num_workers", "amp")


def make_image_folder(data_dir: str | os.PathLike, classes: int, per_class: int, width: int, height: int) -> Path:
    """root/train/class_XX/*.jpg of ImageNet-like JPEGs (cached; symlinks into the data mode's files)."""
    kind = replace(JPEG_KINDS["imagenet"], width=width, height=height)
    files = generate_jpegs(data_dir, kind, classes * per_class)
    root = Path(data_dir) / f"folder-{classes}x{per_class}-{width}x{height}"
    for c in range(classes):
        folder = root / "train" / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            link = folder / f"img_{j:04d}.jpg"
            if not link.exists():
                link.symlink_to(files[c * per_class + j].resolve())
    return root


def train_py_command(args: argparse.Namespace, root: Path, run_dir: Path, device: torch.device) -> list[str]:
    return [sys.executable, str(PROJECT_ROOT / "train.py"), "--dataset_path", str(root),
            "--device_target", "GPU" if device.type == "cuda" else "CPU", "--model", args.model,
            "--image_size", str(args.image_size), "--batch_size", str(args.batch_size),
            "--epoch_size", str(args.epochs), "--num_workers", str(args.num_workers), "--amp", args.amp,
            "--class_num", "0", "--interpolation", PLAIN_INTERPOLATION, "--save_checkpoint", "False",
            "--save_checkpoint_path", str(run_dir), "--log_interval", "1000000", "--seed", "1"]


def run_train_py(args: argparse.Namespace, root: Path, device: torch.device) -> dict:
    """train.py in a subprocess; images/s per epoch and the last epoch's images from metrics.jsonl."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        cmd = train_py_command(args, root, run_dir, device)
        proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=TRAIN_TIMEOUT_S)
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
            raise RuntimeError(f"train.py exited with {proc.returncode}: {tail}")
        metrics = run_dir / "metrics.jsonl"
        epochs = [r for r in map(json.loads, metrics.read_text().splitlines()) if r.get("type") == "epoch"]
    if len(epochs) != args.epochs:
        raise RuntimeError(f"train.py logged {len(epochs)} epochs in {metrics}, expected {args.epochs}")
    last = epochs[-1]
    steps = round(last["epoch_time_ms"] / last["per_step_ms"])
    return {"img_per_s_per_epoch": [e["img_per_s"] for e in epochs], "images": steps * args.batch_size,
            "loss": last["avg_loss"], "command": cmd}


def run_plain(args: argparse.Namespace, root: Path, device: torch.device) -> dict:
    """The plain loop in a fresh interpreter, like train.py."""
    params = {k: getattr(args, k) for k in PLAIN_KEYS} | {"root": str(root), "device": str(device)}
    return run_child("bench.train_bench", "--plain", params, RESULT_PREFIX, TRAIN_TIMEOUT_S, "the plain loop")


def plain_loop(p: dict) -> dict:
    """The loop most tutorials write; images/s per epoch and the last epoch's images."""
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision import transforms as tv

    from src.runtime.amp import autocast, build_scaler
    from src.config import load_config
    from src.models import build_model, default_preprocess
    from src.training.trainer import loss_from_config, optimizer_from_config

    torch.manual_seed(1)
    device = torch.device(p["device"])
    cfg = load_config(["--model", p["model"], "--amp", p["amp"]])
    pre = default_preprocess(p["model"])
    transform = tv.Compose([tv.RandomResizedCrop(p["image_size"]), tv.RandomHorizontalFlip(), tv.ToTensor(),
                            tv.Normalize(pre.mean, pre.std)])
    dataset = datasets.ImageFolder(str(Path(p["root"]) / "train"), transform=transform)
    cuda = device.type == "cuda"
    loader = DataLoader(dataset, batch_size=p["batch_size"], shuffle=True, drop_last=True,
                        num_workers=p["num_workers"], pin_memory=cuda, persistent_workers=p["num_workers"] > 0)
    num_classes = len(dataset.classes)
    model = build_model(p["model"], num_classes=num_classes, drop_path_rate=cfg.drop_path_rate).to(device)
    model = model.to(memory_format=torch.channels_last)  # train.py's default: compare pipelines, not layouts
    model.train()
    optimizer = optimizer_from_config(model, cfg, cfg.lr_max)
    criterion, scaler = loss_from_config(cfg, num_classes), build_scaler(p["amp"], 0.0, device)
    per_epoch, images, loss = [], 0, torch.zeros(())
    for _ in range(p["epochs"]):
        images, start = 0, time.perf_counter()
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            x = x.contiguous(memory_format=torch.channels_last)
            y = y.to(device, non_blocking=True)
            with autocast(device, p["amp"]):
                loss = criterion(model(x), y)
            scaler.backward(loss)
            scaler.step(optimizer)
            optimizer.zero_grad(set_to_none=True)
            images += y.numel()
        loss = loss.detach().float().cpu()  # one sync per epoch, as train.py's end-of-epoch log
        sync(device)
        per_epoch.append(images / (time.perf_counter() - start))
    return {"img_per_s_per_epoch": per_epoch, "images": images, "loss": float(loss)}


def run(args: argparse.Namespace) -> dict:
    if args.epochs <= WARMUP_EPOCHS:
        raise InputError(f"--epochs must be > {WARMUP_EPOCHS}: the first epoch carries start-up and is not timed")
    if args.classes * args.per_class < args.batch_size:
        raise InputError(f"{args.classes} x {args.per_class} images make no full batch of {args.batch_size}")
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    data_dir = args.data_dir or os.path.join(tempfile.gettempdir(), "effnet_bench_jpegs")
    root = make_image_folder(data_dir, args.classes, args.per_class, *args.jpeg_size)
    runners = {"train.py": run_train_py, "plain_loop": run_plain}
    runs: dict[str, list[dict]] = {name: [] for name in runners}
    for r in range(args.rounds):
        for name in (list(runners) if r % 2 == 0 else list(runners)[::-1]):
            runs[name].append(runners[name](args, root, device))
            print(f"  round {r + 1} {name}: {steady(runs[name][-1]):.1f} images/s", flush=True)
    ref = [steady(x) for x in runs["plain_loop"]]
    results = []
    for name, rs in runs.items():
        speeds = [steady(x) for x in rs]
        results.append(dict(impl=name, images_per_sec=statistics.median(speeds), images=rs[-1]["images"],
                            per_round=speeds, vs_plain_loop=statistics.median(s / p for s, p in zip(speeds, ref)),
                            final_loss=rs[-1]["loss"]))
    return dict(mode="train", model=args.model, image_size=args.image_size, batch_size=args.batch_size,
                epochs=args.epochs, num_workers=args.num_workers, amp=args.amp, device=str(device),
                dataset=dict(root=str(root), classes=args.classes, per_class=args.per_class,
                             jpeg_size=list(args.jpeg_size)),
                train_py_command=" ".join(runs["train.py"][-1]["command"]), rounds=args.rounds,
                machine=machine_info(), results=results)


def print_report(payload: dict) -> None:
    ds = payload["dataset"]
    print(f"model={payload['model']} px={payload['image_size']} batch={payload['batch_size']} "
          f"workers={payload['num_workers']} amp={payload['amp']} device={payload['device']} "
          f"({payload['machine']['cpu']}); {ds['classes']} x {ds['per_class']} JPEGs "
          f"{ds['jpeg_size'][0]}x{ds['jpeg_size'][1]}; images/s after {WARMUP_EPOCHS} warm-up epoch(s) of "
          f"{payload['epochs']}")
    if payload["device"] == "cpu":
        print("no GPU here: CPU rows only; the same command prints GPU rows on a CUDA machine")
    rows = [[r["impl"], r["images_per_sec"], r["images"], f"{r['vs_plain_loop']:.2f}x"] for r in payload["results"]]
    print(format_table(["impl", "images/s", "images per epoch", "vs plain loop (median of rounds)"], rows))
    print(f"train.py ran as: {payload['train_py_command']}")


# benchmark.py rejects smaller values before the run (common.check_args)
MINIMUMS = {"image_size": MIN_IMAGE_SIZE, "batch_size": 1, "epochs": 1, "classes": 1, "per_class": 1,
            "num_workers": 0, "rounds": 1}


def add_arguments(p: argparse.ArgumentParser) -> None:
    from .data import parse_geometry

    p.add_argument("--model", default="efficientnet_b0")
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--epochs", type=int, default=2, help=f"the first {WARMUP_EPOCHS} is warm-up, the rest timed")
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--per_class", type=int, default=32)
    p.add_argument("--jpeg_size", type=parse_geometry, default=(500, 375), help="generated JPEGs, WIDTHxHEIGHT")
    p.add_argument("--num_workers", type=int, default=2)
    p.add_argument("--amp", default="none", choices=("none", "fp16", "bf16"))
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--data_dir", default=None, help="where generated JPEGs are cached (default: the temp dir)")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--plain":
        print(RESULT_PREFIX + json.dumps(plain_loop(json.loads(sys.argv[2]))), flush=True)
        sys.exit(0)
    sys.exit("usage: python benchmark.py train [options]  (bench.train_bench --plain JSON is internal)")
