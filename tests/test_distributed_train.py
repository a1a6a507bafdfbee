"""train.py under torchrun: 2 CPU processes with gloo.

Checks that every rank ends with bitwise-identical weights (DDP plus the BN-statistics sync), that
only rank 0 prints, logs and writes checkpoints, that validation scores each image exactly once,
and that a mid-epoch checkpoint of a 2-process run resumes to exactly the same final weights.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers_data import make_image_folder

REPO = Path(__file__).resolve().parents[1]
LAUNCHER = "tests/rank_weights_train.py"  # train.py, then each rank's final weights hashed into a folder
WORLD = 2
LAUNCH_TIMEOUT_S = 600
VAL_IMAGES = 9  # odd on purpose: the shards hold 5 and 4 images, none repeated
pytestmark = pytest.mark.slow


def torchrun(args: list[str], log_dir: Path, dump_dir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD),
           "--log-dir", str(log_dir), "--redirects", "3", LAUNCHER, str(dump_dir), *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=LAUNCH_TIMEOUT_S)


def rank_output(log_dir: Path, rank: int) -> str:
    """What local rank ``rank`` printed (torchrun writes <log_dir>/<run id>/attempt_0/<rank>/stdout.log)."""
    files = [p for p in log_dir.rglob("stdout.log") if p.parent.name == str(rank)]
    assert len(files) == 1, files
    return files[0].read_text()


def rank_hashes(dump_dir: Path) -> list[dict]:
    return [json.loads((dump_dir / f"rank{rank}.json").read_text()) for rank in range(WORLD)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ddp_data")
    make_image_folder(root, classes=3, per_class=8, size=(36, 36), split="train", seed=1)
    return make_image_folder(root, classes=3, per_class=3, size=(36, 36), split="val", seed=2)


def train_args(data: Path, run_dir: Path) -> list[str]:
    # 24 images / 2 ranks / batch 4 = 3 steps per epoch; a checkpoint every 2 steps lands mid-epoch.
    return ["--model", "efficientnet_b0", "--device_target", "CPU", "--dataset_path", str(data),
            "--save_checkpoint_path", str(run_dir), "--image_size", "32", "--batch_size", "4", "--epoch_size", "2",
            "--num_workers", "0", "--class_num", "0", "--augment", "light", "--opt", "adamw", "--opt_eps", "1e-8",
            "--lr_max", "0.002", "--lr_init", "0.0002", "--lr_end", "0.0001", "--warmup_epochs", "0.5",
            "--ema_decay", "0.9", "--save_checkpoint_steps", "2", "--keep_checkpoint_max", "20", "--log_interval", "1"]


def check_identical_weights(dump_dir: Path) -> None:
    ranks = rank_hashes(dump_dir)
    assert [r["rank"] for r in ranks] == [0, 1]
    assert ranks[0]["params"] == ranks[1]["params"]
    assert ranks[0]["buffers"] == ranks[1]["buffers"]
    assert ranks[0]["ema"] == ranks[1]["ema"] and ranks[0]["ema"] is not None


def check_only_rank_zero_writes(run: Path, log_dir: Path) -> None:
    rank0, rank1 = rank_output(log_dir, 0), rank_output(log_dir, 1)
    assert "resolved config" in rank0 and "epoch time:" in rank0 and "final accuracy" in rank0
    assert "resolved config" not in rank1 and "epoch" not in rank1 and "saved checkpoint" not in rank1
    log = (run / "train.log").read_text()
    assert log.count("epoch time:") == 2 and log.count("val: epoch:") == 2 and log.count("val(ema): epoch:") == 2
    assert sum('"type": "epoch"' in line for line in (run / "metrics.jsonl").read_text().splitlines()) == 2
    names = sorted(p.name for p in run.glob("*.pth"))
    assert names == ["efficientnet_b0-1_2.pth", "efficientnet_b0-1_3.pth", "efficientnet_b0-2_1.pth",
                     "efficientnet_b0-2_3.pth", "efficientnet_b0-best.pth"]
    assert not list(run.glob(".*.tmp"))  # no half-written files from a second writer


def check_each_val_image_once(run: Path, log_dir: Path) -> None:
    assert f"({VAL_IMAGES} validation images)" in rank_output(log_dir, 0)
    ckpt = torch.load(run / "efficientnet_b0-2_3.pth", weights_only=True)
    assert ckpt["world_size"] == WORLD and len(ckpt["rng_per_rank"]) == WORLD
    assert ckpt["step"] == 6 and ckpt["epoch"] == 2


def test_two_gloo_processes_train_identically_and_resume_exactly(data, tmp_path):
    """One 2-process run (checked three ways), then a 2-process resume from its mid-epoch checkpoint.

    A single test on purpose: under pytest-xdist a shared fixture would run once per worker.
    """
    first = {"run": tmp_path / "run", "logs": tmp_path / "logs", "dump": tmp_path / "dump"}
    proc = torchrun(train_args(data, first["run"]), first["logs"], first["dump"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_identical_weights(first["dump"])
    check_only_rank_zero_writes(first["run"], first["logs"])
    check_each_val_image_once(first["run"], first["logs"])

    mid = first["run"] / "efficientnet_b0-2_1.pth"  # epoch 2, 1 of 3 steps done
    second = {"run": tmp_path / "resumed", "logs": tmp_path / "logs2", "dump": tmp_path / "dump2"}
    proc = torchrun(["--resume", str(mid), "--save_checkpoint_path", str(second["run"])], second["logs"],
                    second["dump"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 epochs + 1 steps done" in rank_output(second["logs"], 0)
    final = "efficientnet_b0-2_3.pth"
    ref = torch.load(first["run"] / final, weights_only=True)
    got = torch.load(second["run"] / final, weights_only=True)
    assert all(torch.equal(ref["model"][k], got["model"][k]) for k in ref["model"])
    assert all(torch.equal(ref["ema"]["state_dict"][k], got["ema"]["state_dict"][k]) for k in ref["model"])
    assert rank_hashes(second["dump"])[1]["params"] == rank_hashes(first["dump"])[1]["params"]
    check_identical_weights(second["dump"])
