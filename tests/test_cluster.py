"""Training that survives the cluster (issue 19), CPU processes with gloo.

One uninterrupted reference run (1 process x accumulate_grad_batches 2, global batch 4) and every
way a cluster takes a run away, each ending with the reference's parameters bitwise: a SIGTERM'd
single process run again with the same command; 2 torchrun processes stopped by SIGTERM and resumed
on 1 process (every image of the interrupted epoch loaded exactly once); a SIGKILL'd worker that
torchrun restarts; two NNODES=2 launchers on one machine; a truncated newest checkpoint. 2 processes
x accumulate 1 and 1 process x accumulate 2 feed the same micro-batches with the same randomness to
every step (src.data.sampler, src.training.step), so one reference serves all. BatchNorm running
statistics differ between those splits (each process updates its own from its micro-batches), so
the parameters are compared, not the buffers.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from src.models import build_model
from src.training.preemption import EXIT_PREEMPTED
from tests.helpers_data import make_image_folder

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
TIMEOUT_S = 300
TRAIN_IMAGES = 24  # 6 steps of global batch 4 per epoch
STEPS_PER_EPOCH, EPOCHS = 6, 2
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cluster_data")
    make_image_folder(root, classes=3, per_class=8, size=(36, 36), split="train", seed=1)
    return make_image_folder(root, classes=3, per_class=2, size=(36, 36), split="val", seed=2)


def args(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return ["--model", "efficientnet_b0", "--device_target", "CPU", "--dataset_path", str(data),
            "--save_checkpoint_path", str(run_dir), "--image_size", "32", "--batch_size", "2",
            "--epoch_size", str(EPOCHS), "--num_workers", "0", "--class_num", "0", "--seed", "3",
            "--dropout", "0.3", "--drop_path_rate", "0.2", "--ema_decay", "0.9", "--log_interval", "1", *extra]


def train_py(*argv: str) -> list[str]:
    return [sys.executable, "train.py", *argv]


def torchrun(script: str, *argv: str, nproc: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            script, *argv]


def final_parameters(run_dir: Path) -> dict[str, torch.Tensor]:
    """The model's and the EMA's parameters (not BN buffers) of the run's last checkpoint."""
    ckpt = torch.load(run_dir / f"efficientnet_b0-{EPOCHS}_{STEPS_PER_EPOCH}.pth", weights_only=True)
    names = [name for name, _ in build_model("efficientnet_b0", num_classes=3).named_parameters()]
    return {**{n: ckpt["model"][n] for n in names}, **{f"ema.{n}": ckpt["ema"]["state_dict"][n] for n in names}}


def assert_same_parameters(run_dir: Path, reference: dict[str, torch.Tensor]) -> None:
    got = final_parameters(run_dir)
    different = [name for name, value in reference.items() if not torch.equal(got[name], value)]
    assert not different, f"{len(different)} tensors differ, first {different[0]}"


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> dict[str, torch.Tensor]:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    done = subprocess.run(train_py(*args(data, run_dir, "--accumulate_grad_batches", "2")), cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-2000:]
    return final_parameters(run_dir)


def start(cmd: list[str], log: Path, **env: str) -> subprocess.Popen:
    handle = open(log, "w", encoding="utf-8")  # noqa: SIM115 - closed by finish()
    return subprocess.Popen(cmd, cwd=REPO, env={**ENV, **env}, stdout=handle, stderr=subprocess.STDOUT,
                            start_new_session=True)


def wait_for(log: Path, pattern: str, proc: subprocess.Popen) -> None:
    """Until the run's output matches ``pattern`` (it fails if the run ends first)."""
    deadline = time.monotonic() + TIMEOUT_S
    while not re.search(pattern, log.read_text(encoding="utf-8")):
        assert proc.poll() is None, log.read_text(encoding="utf-8")[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.1)


def finish(proc: subprocess.Popen, log: Path) -> tuple[int, str]:
    code = proc.wait(timeout=TIMEOUT_S)
    return code, log.read_text(encoding="utf-8")


def descendants(pid: int) -> list[int]:
    children = [int(c) for c in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()]
    return children + [d for c in children for d in descendants(c)]


def worker_pid(launcher: subprocess.Popen, rank: int) -> int:
    """The pid of the train.py process of ``rank`` under a launcher (torchrun puts workers in sessions
    of their own, so they are found by descent and by the RANK torchrun gave them)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for pid in descendants(launcher.pid):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ and any(v.startswith(b"TORCHELASTIC_RUN_ID=") for v in environ):
                return pid
        time.sleep(0.1)
    raise AssertionError(f"no rank {rank} worker found")


STOPPED = re.compile(r"preempted at epoch (\d+) step (\d+): checkpoint (\S+) \(written in [\d.]+ s\); "
                     r"run the same command again to continue")


def test_sigterm_checkpoints_the_step_reached_and_the_same_command_continues(data, reference, tmp_path):
    """A 1-process run (accumulate 2, a loader worker) stopped by SIGTERM (twice: the second lands during the
    save); the process exits (its worker too) and the same command continues."""
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    command = train_py(*args(data, run_dir, "--accumulate_grad_batches", "2", "--num_workers", "1"))
    proc = start(command, log)
    wait_for(log, r"step:\[\s+2/", proc)
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGTERM)
    code, out = finish(proc, log)
    assert code == EXIT_PREEMPTED, out[-2000:]
    epoch, step, path = STOPPED.search(out).groups()
    ckpt = torch.load(path, weights_only=True)
    assert (ckpt["epoch"], ckpt["step_in_epoch"], ckpt["stopped"]) == (int(epoch) - 1, int(step), "SIGTERM")
    again = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"holds a stopped run: continuing from {path}" in again.stdout
    assert_same_parameters(run_dir, reference)


def test_two_processes_stopped_then_resumed_on_one_keep_the_global_batch(data, reference, tmp_path):
    """torchrun with 2 processes, SIGTERM'd mid-epoch; the run continues on 1 process: accumulate 1 -> 2,
    every image of the interrupted epoch loaded exactly once, the reference's parameters."""
    run_dir, log, images = tmp_path / "run", tmp_path / "log.txt", tmp_path / "images"
    proc = start(torchrun("tests/record_images_train.py", str(images), *args(data, run_dir)), log)
    wait_for(log, r"step:\[\s+3/\s+6\]", proc)
    proc.send_signal(signal.SIGTERM)  # torchrun passes it on to both workers
    code, out = finish(proc, log)
    assert code == 1, out[-3000:]  # torchrun's own status after a signal; its workers exit 143 (README)
    epoch, step, _ = STOPPED.search(out).groups()
    assert int(epoch) == 1 and 3 <= int(step) < STEPS_PER_EPOCH, out[-2000:]
    resumed = subprocess.run([sys.executable, "tests/record_images_train.py", str(images), *args(data, run_dir)],
                             cwd=REPO, env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert ("resuming on 1 process(es) instead of 2: accumulate_grad_batches 1 -> 2 keeps the global batch 4"
            in resumed.stdout)
    loads = Counter(line for file in images.glob("images_*.txt") for line in file.read_text().split("\n") if line)
    first_epoch = {line: n for line, n in loads.items() if line.startswith("0 ")}
    assert sorted(int(line.split()[1]) for line in first_epoch) == list(range(TRAIN_IMAGES))
    assert set(first_epoch.values()) == {1}  # none skipped, none repeated across the stop
    assert_same_parameters(run_dir, reference)


def test_a_killed_worker_is_restarted_and_resumes(data, reference, tmp_path):
    """run_distribute_train.sh with MAX_RESTARTS=1; one of 2 workers SIGKILLed: torchrun restarts the group,
    which continues from the run's newest checkpoint (--save_checkpoint_steps 2)."""
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    launcher = start(["bash", "scripts/run_distribute_train.sh", "2", str(data),
                      *args(data, run_dir, "--save_checkpoint_steps", "2")[2:]], log,
                     RUN_DIR=str(run_dir), MAX_RESTARTS="1")
    wait_for(log, r"saved checkpoint \S+-1_2\.pth", launcher)
    os.kill(worker_pid(launcher, 1), signal.SIGKILL)
    code, out = finish(launcher, log)
    assert code == 0, out[-3000:]
    assert re.search(r"torchrun restart 1: continuing from \S+-1_[24]\.pth", out) and "resumed from" in out
    assert_same_parameters(run_dir, reference)


def test_two_nnodes_2_launchers_on_one_machine_train_as_one(data, reference, tmp_path):
    """NNODES=2 NODE_RANK=0|1 MASTER_ADDR=127.0.0.1: a c10d rendezvous of two launchers, 1 process each."""
    run_dir = tmp_path / "run"
    node_env = dict(RUN_DIR=str(run_dir), NNODES="2", MASTER_ADDR="127.0.0.1", RDZV_ID=f"test_{os.getpid()}",
                    MASTER_PORT=str(29700 + os.getpid() % 200))
    nodes = [start(["bash", "scripts/run_distribute_train.sh", "1", str(data), *args(data, run_dir)[2:]],
                   tmp_path / f"node{rank}.txt", NODE_RANK=str(rank), **node_env) for rank in range(2)]
    results = [finish(node, tmp_path / f"node{rank}.txt") for rank, node in enumerate(nodes)]
    assert [code for code, _ in results] == [0, 0], [out[-2000:] for _, out in results]
    assert "2 process(es) x batch 2 x accumulate 1 = global batch 4" in "".join(out for _, out in results)
    assert_same_parameters(run_dir, reference)


def test_resume_auto_skips_a_truncated_newest_checkpoint(data, tmp_path):
    run_dir = tmp_path / "run"
    one_epoch = args(data, run_dir, "--accumulate_grad_batches", "2", "--epoch_size", "1", "--save_checkpoint_steps",
                     "2")
    first = subprocess.run(train_py(*one_epoch), cwd=REPO, env=ENV, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert first.returncode == 0, first.stderr[-2000:]
    newest = run_dir / "efficientnet_b0-1_6.pth"
    expected = torch.load(newest, weights_only=True)["model"]
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # a save cut short by a crash
    again = subprocess.run(train_py(*one_epoch, "--resume", "auto"), cwd=REPO, env=ENV, capture_output=True, text=True,
                           timeout=TIMEOUT_S)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("warning: --resume auto skips") == 1 and f"skips {newest}" in again.stdout
    assert f"resume auto: continuing from {run_dir / 'efficientnet_b0-1_4.pth'}" in again.stdout
    redone = torch.load(newest, weights_only=True)["model"]
    assert all(torch.equal(redone[k], v) for k, v in expected.items())  # steps 5 and 6 done again, exactly


def test_a_stopped_rank_makes_the_others_fail_within_dist_timeout_naming_it(data, tmp_path):
    run_dir, log = tmp_path / "run", tmp_path / "log.txt"
    timeout_min = 0.1  # 6 s
    proc = start(torchrun("train.py", *args(data, run_dir, "--dist_timeout", str(timeout_min), "--epoch_size", "3")),
                 log)
    wait_for(log, r"step:\[\s+2/", proc)
    rank1, rank0 = worker_pid(proc, 1), worker_pid(proc, 0)
    os.kill(rank1, signal.SIGSTOP)
    stopped_at = time.monotonic()
    try:
        while Path(f"/proc/{rank0}").exists() and b"zombie" not in _state(rank0):
            assert time.monotonic() - stopped_at < timeout_min * 60 + 60, "rank 0 hangs"
            time.sleep(0.2)
    finally:
        os.kill(rank1, signal.SIGKILL)
    code, out = finish(proc, log)
    assert code != 0
    assert re.search(rf"error: rank 0: rank 1 stopped answering: a collective waited dist_timeout {timeout_min:g} min",
                     out), out[-3000:]


def _state(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/status").read_bytes().lower()
    except OSError:
        return b"zombie"
