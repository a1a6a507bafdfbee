"""``benchmark.py finetune``: the shipped fine-tuning recipe against a plain loop, over sets and seeds.

For every set (``ROOT[:PER_CLASS]``, see bench/finetune_sets.py) and seed, one at a time:

* the recipe: ``train.py --config configs/finetune.yaml --model M --pretrained imagenet --seed S``
  as a user runs it (CPU, a private run folder), scored by ``eval.py`` on the LAST checkpoint it
  wrote (its EMA weights when it saved them, as eval.py chooses), never the best epoch;
* the plain loop (bench/plain_finetune.py) from the same weights, scored on its final weights.

Both score the whole val/; nothing is selected on it. Seconds are each side's wall clock in its own
fresh interpreter: train.py's includes its per-epoch validation, the plain loop's its one final
evaluation; the eval.py scoring of the recipe is not counted. ``--epochs_scale F`` multiplies both
sides' epochs (the plain loop's 8, the recipe's epoch_size as finetune_auto chooses it: recipe_for)
for cheap sweeps; the numbers to report are at F = 1 and the variant's own image size.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from src.common.errors import InputError
from src.models import default_preprocess
from src.models.weights import imagenet_entry
from src.training.finetune import recipe_for
from .common import MIN_IMAGE_SIZE, format_table, machine_info, run_child
from .finetune_sets import DIGITS, PhotoSet, check_set, parse_set, training_root, write_digits
from .plain_finetune import EPOCHS as PLAIN_EPOCHS
from .plain_finetune import RESULT_PREFIX as PLAIN_PREFIX

PROJECT_ROOT = Path(__file__).resolve().parent.parent
RECIPE_CONFIG = "configs/finetune.yaml"
RUN_TIMEOUT_S = 6 * 3600  # one fine-tune of a few thousand photos at 224 px on 2 CPU cores takes ~1 h
METHODS = ("recipe", "plain_loop")


def scaled_epochs(epochs: int, scale: float) -> int:
    return max(1, round(epochs * scale))


def run_program(cmd: list[str], what: str) -> float:
    """Run ``cmd`` from the project root; its wall seconds. A failure is one RuntimeError line."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or proc.stdout.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"{what} exited with {proc.returncode}: {tail}")
    return seconds


def last_checkpoint(run_dir: Path, model: str) -> tuple[Path, int]:
    """The newest ``<model>-<epoch>_<step>.pth`` train.py wrote (not -best) and its epoch."""
    pattern = re.compile(rf"{re.escape(model)}-(\d+)_(\d+)\.pth")
    found = [(int(m[1]), int(m[2]), p) for p in run_dir.glob("*.pth") if (m := pattern.fullmatch(p.name))]
    if not found:
        raise RuntimeError(f"train.py wrote no {model}-<epoch>_<step>.pth checkpoint in {run_dir}")
    epoch, _, path = max(found)
    return path, epoch


def recipe_command(args: argparse.Namespace, photo_set: PhotoSet, root: Path, seed: int, run_dir: Path) -> list[str]:
    cmd = [sys.executable, "train.py", "--config", RECIPE_CONFIG, "--model", args.model, "--pretrained", "imagenet",
           "--seed", str(seed), "--dataset_path", str(root), "--device_target", "CPU",
           "--save_checkpoint_path", str(run_dir), "--num_workers", str(args.num_workers)]
    if args.image_size:
        cmd += ["--image_size", str(args.image_size)]
    if args.epochs_scale != 1:
        epochs = recipe_for(photo_set.train_images, len(photo_set.classes))["epoch_size"]
        cmd += ["--epoch_size", str(scaled_epochs(int(epochs), args.epochs_scale))]
    return cmd


def run_recipe(args: argparse.Namespace, photo_set: PhotoSet, root: Path, seed: int, tmp: Path) -> dict:
    """train.py with the recipe, then eval.py on its last checkpoint."""
    cmd = recipe_command(args, photo_set, root, seed, tmp / "run")
    seconds = run_program(cmd, "train.py")
    checkpoint, epochs = last_checkpoint(tmp / "run", args.model)
    scores = tmp / "eval.json"
    run_program([sys.executable, "eval.py", "--checkpoint_path", str(checkpoint), "--dataset_path", str(root),
                 "--device_target", "CPU", "--num_workers", str(args.num_workers), "--output_json", str(scores)],
                "eval.py")
    result = json.loads(scores.read_text())
    return dict(top1=result["Top_1_Acc"], seconds=seconds, epochs=epochs, image_size=result["preprocess"]["crop"],
                weights="ema" if result["use_ema"] else "raw", command=" ".join(cmd[1:]))


def run_plain(args: argparse.Namespace, photo_set: PhotoSet, root: Path, seed: int, tmp: Path) -> dict:
    """The plain loop in a fresh interpreter, like train.py."""
    epochs = scaled_epochs(PLAIN_EPOCHS, args.epochs_scale)
    params = dict(root=str(root), model=args.model, image_size=args.image_size, epochs=epochs, seed=seed,
                  num_workers=args.num_workers)
    start = time.perf_counter()
    result = run_child("bench.plain_finetune", "--run", params, PLAIN_PREFIX, RUN_TIMEOUT_S, "the plain loop")
    return dict(top1=result["top1"], seconds=time.perf_counter() - start, epochs=epochs,
                image_size=args.image_size or default_preprocess(args.model).crop, weights="final")


def check_options(args: argparse.Namespace) -> None:
    imagenet_entry(args.model)  # an unknown model or one without ImageNet weights: an InputError that says so
    if not (math.isfinite(args.epochs_scale) and args.epochs_scale > 0):
        raise InputError(f"--epochs_scale must be > 0, got {args.epochs_scale}")


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None


def summarize(photo_set: PhotoSet, runs: list[dict]) -> dict:
    """Per method: mean/std top-1, mean seconds, epochs; the recipe's lead in points and whether it is
    within one standard deviation of the plain loop's top-1."""
    out = dict(set=photo_set.spec.label, root=str(photo_set.root), per_class=photo_set.spec.per_class,
               images=photo_set.train_images, classes=len(photo_set.classes), val_images=photo_set.val_images)
    for method in METHODS:
        mine = [r for r in runs if r["method"] == method]
        mean, std = mean_std([r["top1"] for r in mine])
        out[method] = dict(top1_mean=mean, top1_std=std, seconds_mean=statistics.mean(r["seconds"] for r in mine),
                           epochs=mine[0]["epochs"], image_size=mine[0]["image_size"])
    lead = 100 * (out["recipe"]["top1_mean"] - out["plain_loop"]["top1_mean"])
    std = out["plain_loop"]["top1_std"]
    out["lead_points"] = lead
    out["within_one_plain_std"] = None if std is None else abs(lead) <= 100 * std
    return out


def run_seed(args: argparse.Namespace, photo_set: PhotoSet, seed: int, tmp: Path) -> list[dict]:
    """Both methods on this seed's training set, one after the other, in a folder deleted once scored."""
    runs = []
    with tempfile.TemporaryDirectory(dir=tmp) as work_name:
        work = Path(work_name)
        root = training_root(photo_set, seed, work / "data")
        for method, side in zip(METHODS, (run_recipe, run_plain)):
            (work / method).mkdir()
            r = side(args, photo_set, root, seed, work / method)
            runs.append(dict(set=photo_set.spec.label, seed=seed, method=method, **r))
            print(f"  seed {seed} {method}: top-1 {r['top1']:.4f}, {r['epochs']} epochs, {r['seconds']:.0f} s",
                  flush=True)
    return runs


def run(args: argparse.Namespace) -> dict:
    check_options(args)
    specs = [parse_set(text) for text in args.sets]
    seeds = list(range(args.seeds))
    runs, summary = [], []
    with tempfile.TemporaryDirectory(prefix="bench_finetune_") as tmp_name:
        tmp = Path(tmp_name)
        digits = write_digits(tmp) if any(s.root == DIGITS for s in specs) else None
        sets = [check_set(spec, digits) for spec in specs]  # every bad set fails before the first run
        for i, photo_set in enumerate(sets, 1):
            print(f"set {i}/{len(sets)} {photo_set.spec.label}: {photo_set.train_images} training images, "
                  f"{len(photo_set.classes)} classes, {photo_set.val_images} val", flush=True)
            mine = [r for seed in seeds for r in run_seed(args, photo_set, seed, tmp)]
            runs += mine
            summary.append(summarize(photo_set, mine))
    return dict(mode="finetune", model=args.model, image_size=args.image_size, epochs_scale=args.epochs_scale,
                seeds=seeds, num_workers=args.num_workers, device="cpu", recipe_config=RECIPE_CONFIG,
                machine=machine_info(), runs=runs, summary=summary)


def percent(mean: float, std: float | None) -> str:
    return f"{100 * mean:.2f}" + ("" if std is None else f" ± {100 * std:.2f}")


def print_report(payload: dict) -> None:
    m = payload["machine"]
    size = payload["image_size"] or f"{default_preprocess(payload['model']).crop} (the variant's)"
    print(f"fine-tuning {payload['model']} at {size} px from its ImageNet weights: the recipe "
          f"({payload['recipe_config']}, finetune_auto) vs a plain loop; val top-1 % of the final model, "
          f"mean ± std over seeds {payload['seeds']}; epochs x{payload['epochs_scale']:g}; "
          f"CPU {m['cpu']}, {m['cores']} cores")
    rows = []
    for s in payload["summary"]:
        rec, plain = s["recipe"], s["plain_loop"]
        within = "-" if s["within_one_plain_std"] is None else "yes" if s["within_one_plain_std"] else (
            "no, ahead" if s["lead_points"] > 0 else "no, BEHIND")
        rows.append([s["set"], s["images"], s["classes"], percent(rec["top1_mean"], rec["top1_std"]),
                     percent(plain["top1_mean"], plain["top1_std"]), f"{s['lead_points']:+.2f}", within,
                     f"{rec['seconds_mean']:.0f}", f"{plain['seconds_mean']:.0f}",
                     f"{rec['epochs']} / {plain['epochs']}"])
    print(format_table(["set", "train images", "classes", "recipe top-1", "plain loop top-1", "lead (points)",
                        "within 1 plain std", "recipe s/run", "plain s/run", "epochs (recipe / plain)"], rows))
    print("recipe: train.py's last checkpoint (EMA weights when saved) scored by eval.py; plain loop: its final "
          "weights (bench/plain_finetune.py); no selection on val; s/run: wall clock of the training process")


# benchmark.py rejects smaller values before the run (common.check_args)
MINIMUMS = {"seeds": 1, "image_size": MIN_IMAGE_SIZE, "num_workers": 0}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sets", nargs="+", required=True, metavar="ROOT[:PER_CLASS]",
                   help="dataset roots (train/<class>/*, val/<class>/*) or 'digits'; :PER_CLASS trains on that "
                        "many images per class, drawn per seed (val/ is always whole)")
    p.add_argument("--seeds", type=int, default=3, help="runs per set and method, seeds 0..N-1")
    p.add_argument("--model", default="efficientnet_lite0", help="variant with ImageNet weights")
    p.add_argument("--image_size", type=int, default=None, help="training crop (default: the variant's size)")
    p.add_argument("--epochs_scale", type=float, default=1.0,
                   help="multiply both sides' epochs (the plain loop's 8, the recipe's epoch_size): cheap sweeps")
    p.add_argument("--num_workers", type=int, default=2, help="data loader processes on both sides")
