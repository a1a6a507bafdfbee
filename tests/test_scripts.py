"""The training launchers in scripts/: argument checks with usage, and one real CPU run + resume."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers_data import make_image_folder

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
RUN_TIMEOUT_S = 600
ENV = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}


def script(name: str, *args: object, env: dict | None = None, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPTS / name), *map(str, args)], cwd=cwd, env=env or ENV,
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)


def assert_usage_error(proc: subprocess.CompletedProcess, fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and fragment in proc.stderr.splitlines()[0], proc.stderr
    assert "Usage: bash scripts/" in proc.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("data"), classes=2, per_class=8, size=(36, 36), split="both")


@pytest.mark.parametrize("name, args, fragment", [
    ("run_standalone_train.sh", [], "expected DEVICE_ID and DATA_DIR, got 0"),
    ("run_standalone_train.sh", ["0"], "got 1 argument"),
    ("run_standalone_train.sh", ["gpu0", "{data}"], "DEVICE_ID must be a non-negative integer"),
    ("run_standalone_train.sh", ["0", "{tmp}/missing"], "DATA_DIR '{tmp}/missing' is not a directory"),
    ("run_distribute_train.sh", ["8"], "expected DEVICE_NUM and DATA_DIR, got 1"),
    ("run_distribute_train.sh", ["0", "{data}"], "DEVICE_NUM must be a positive integer, got '0'"),
    ("run_distribute_train.sh", ["-2", "{data}"], "DEVICE_NUM must be a positive integer"),
    ("run_distribute_train.sh", ["two", "{data}"], "DEVICE_NUM must be a positive integer"),
    ("run_distribute_train.sh", ["2", "{tmp}/missing"], "is not a directory"),
    ("run_distribute_resume.sh", ["2", "{data}"], "expected DEVICE_NUM, DATA_DIR and CHECKPOINT, got 2"),
    ("run_distribute_resume.sh", ["2", "{data}", "{tmp}/none.pth"], "CHECKPOINT '{tmp}/none.pth' is not a file"),
    ("run_distribute_resume.sh", ["x", "{data}", "{tmp}/none.pth"], "DEVICE_NUM must be a positive integer"),
])
def test_bad_arguments_print_usage_and_exit_2(name, args, fragment, data, tmp_path):
    proc = script(name, *[a.format(data=data, tmp=tmp_path) for a in args])
    assert_usage_error(proc, fragment.format(tmp=tmp_path))


@pytest.mark.parametrize("variables, fragment", [
    ({"NNODES": "x"}, "NNODES must be a positive integer, got 'x'"),
    ({"NNODES": "2", "NODE_RANK": "2"}, "NODE_RANK must be below NNODES (2), got '2'"),
    ({"NODE_RANK": "-1"}, "NODE_RANK must be a non-negative integer"),
    ({"MASTER_PORT": "abc"}, "MASTER_PORT must be a positive integer, got 'abc'"),
    ({"MASTER_PORT": "70000"}, "MASTER_PORT must be at most 65535"),
])
def test_bad_launch_environment_prints_usage_and_exit_2(variables, fragment, data):
    proc = script("run_distribute_train.sh", 2, data, "--device_target", "CPU", env={**ENV, **variables})
    assert_usage_error(proc, fragment)


@pytest.mark.parametrize("name, first", [("run_distribute_train.sh", "2"), ("run_standalone_train.sh", "0")])
def test_bad_dataset_is_one_line_before_any_process_starts(name, first, tmp_path):
    """train.py --check runs first: no torchrun failure report, no per-rank copies, no run folder left."""
    (tmp_path / "empty").mkdir()
    runs = tmp_path / "runs"
    proc = script(name, first, tmp_path / "empty", "--device_target", "CPU", env={**ENV, "RUN_ROOT": str(runs)})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: no class folders in {tmp_path / 'empty'}; expected "
                                                f"{tmp_path / 'empty'}/<class>/<image>"]
    assert proc.stdout == "" and list(runs.iterdir()) == []


@pytest.mark.parametrize("name, first", [("run_distribute_train.sh", "2"), ("run_standalone_train.sh", "0")])
def test_gpu_launch_without_gpus_is_refused(name, first, data, tmp_path):
    # CUDA_VISIBLE_DEVICES="" hides every GPU, so this runs on GPU machines too (but the standalone
    # launcher counts the machine's physical GPUs, as DEVICE_ID is a physical index).
    if name == "run_standalone_train.sh" and torch.cuda.is_available():
        pytest.skip("run_standalone_train.sh counts physical GPUs")
    proc = script(name, first, data, "--device_target", "GPU",
                  env={**ENV, "RUN_ROOT": str(tmp_path / "runs"), "CUDA_VISIBLE_DEVICES": ""})
    assert_usage_error(proc, "--device_target CPU")


def test_bad_train_flag_is_train_py_error_exit_2(data, tmp_path):
    proc = script("run_distribute_train.sh", 2, data, "--batch_size", "-4", env={**ENV, "RUN_ROOT": str(tmp_path)})
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: config key 'batch_size'") and len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())  # nothing launched, no run folder


def test_resume_refuses_an_unsafe_checkpoint(data, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint at all")
    proc = script("run_distribute_resume.sh", 2, data, bad, "--device_target", "CPU")
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and str(bad) in proc.stderr


# ---------------------------------------------------------------- which Python the launchers run
LAUNCHERS = {  # launcher -> arguments that pass its own checks, so the Python check comes next
    "run_standalone_train.sh": ["0", "{data}"],
    "run_distribute_train.sh": ["2", "{data}"],
    "run_distribute_resume.sh": ["2", "{data}", "{file}"],
    "run_eval.sh": ["{data}", "{file}"],
    "run_infer_onnx.sh": ["{file}", "{data}", "CPU"],
    "run_demo.sh": [],
}
NO_TORCH = "cannot import torch, torchvision, numpy, PIL, yaml; run `make install`"


def _python_wrapper(path: Path, log: Path | None = None, site: bool = False) -> Path:
    """An executable named like a Python that runs this one, without site-packages unless ``site``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = f'echo "$*" >> "{log}"\n' if log else ""
    path.write_text(f'#!/bin/sh\n{record}exec "{sys.executable}" {"" if site else "-I -S"} "$@"\n')
    path.chmod(0o755)
    return path


@pytest.fixture
def bare(tmp_path) -> dict:
    """scripts/ copied into a folder without .venv; PATH's python3 sees no site-packages (no torch)."""
    repo = tmp_path / "repo"
    shutil.copytree(SCRIPTS, repo / "scripts")
    _python_wrapper(tmp_path / "bin" / "python3")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHON", "VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = f"{tmp_path / 'bin'}:/usr/bin:/bin"
    (tmp_path / "file.bin").write_bytes(b"not used")
    return dict(repo=repo, env=env, tmp=tmp_path, file=tmp_path / "file.bin")


def _launch(bare: dict, name: str, data: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    args = [a.format(data=data, file=bare["file"]) for a in LAUNCHERS[name]]
    return subprocess.run(["bash", str(bare["repo"] / "scripts" / name), *args], cwd=bare["tmp"],
                          env={**bare["env"], **(env or {})}, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("name", list(LAUNCHERS))
def test_launcher_whose_python_lacks_the_packages_says_how_to_install_in_one_line(name, bare, data):
    proc = _launch(bare, name, data)
    assert proc.returncode == 1 and proc.stdout == "", proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: python3 cannot import "), proc.stderr
    assert "`make install`" in lines[0] and "`source .venv/bin/activate`" in lines[0]
    missing = "onnxruntime, numpy, PIL" if name == "run_infer_onnx.sh" else "torch, torchvision, numpy, PIL, yaml"
    assert f"cannot import {missing}" in lines[0]


def test_launchers_prefer_python_then_the_active_venv_then_the_projects_venv(bare, data):
    venv = _python_wrapper(bare["repo"] / ".venv" / "bin" / "python")
    active = _python_wrapper(bare["tmp"] / "active" / "bin" / "python")
    chosen = _python_wrapper(bare["tmp"] / "chosen" / "python")
    for env, python in (({}, venv), ({"VIRTUAL_ENV": str(active.parents[1])}, active),
                        ({"VIRTUAL_ENV": str(active.parents[1]), "PYTHON": str(chosen)}, chosen)):
        proc = _launch(bare, "run_eval.sh", data, env)
        assert proc.returncode == 1 and proc.stderr.startswith(f"error: {python} {NO_TORCH}"), proc.stderr


def test_launcher_runs_the_projects_venv_when_it_has_the_packages(bare, data):
    log = bare["tmp"] / "venv.log"
    _python_wrapper(bare["repo"] / ".venv" / "bin" / "python", log=log, site=True)
    proc = _launch(bare, "run_infer_onnx.sh", data)
    assert proc.returncode != 0  # the copy has no infer/: the venv's Python was asked to run it
    calls = log.read_text().splitlines()
    assert len(calls) == 2 and calls[0].startswith("-c ") and calls[0].endswith(" onnxruntime numpy PIL")
    assert calls[1].startswith(f"{bare['repo']}/infer/infer_onnx.py --onnx_path {bare['file']}")


@pytest.mark.slow
def test_standalone_cpu_run_then_two_process_resume(data, tmp_path):
    env = {**ENV, "RUN_ROOT": str(tmp_path / "runs"), "MASTER_PORT": str(free_port())}
    args = ["--device_target", "CPU", "--model", "efficientnet_b0", "--image_size", "32", "--batch_size", "4",
            "--epoch_size", "1", "--num_workers", "0", "--class_num", "0", "--augment", "none", "--log_interval", "2"]
    proc = script("run_standalone_train.sh", 0, data, *args, env=env)
    assert proc.returncode == 0, proc.stderr
    run_dir = Path(re.search(r"^run folder: (\S+)", proc.stdout, re.M).group(1))
    assert run_dir.parent == tmp_path / "runs" and run_dir.name.startswith("train_")
    assert "final accuracy" in (run_dir / "log.txt").read_text()
    first = run_dir / "efficientnet_b0-1_4.pth"
    assert first.is_file() and (run_dir / "config.yaml").is_file()

    proc = script("run_distribute_resume.sh", 2, data, first, "--epoch_size", "2", env=env)
    assert proc.returncode == 2 and "use 1 processes" in proc.stderr  # 2 x batch 4 cannot be the global batch 4
    proc = script("run_distribute_resume.sh", 2, data, first, "--epoch_size", "2", "--batch_size", "2", env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"resuming in run folder: {run_dir}" in proc.stdout
    logs = list(run_dir.glob("log_resume_*.txt"))
    assert len(logs) == 1 and "resumed from" in logs[0].read_text()
    assert "2 process(es) x batch 2 x accumulate 1 = global batch 4; 4 steps per epoch" in logs[0].read_text()
    second = torch.load(run_dir / "efficientnet_b0-2_4.pth", weights_only=True)
    assert (second["epoch"], second["world_size"], second["config"]["device_target"]) == (2, 2, "CPU")


def test_make_digits_writes_a_fixed_stratified_split(tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    proc = subprocess.run([sys.executable, str(SCRIPTS / "make_digits.py"), str(tmp_path / "digits")],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("wrote 1438 training and 359 validation digits")
    root = tmp_path / "digits"
    val = {p.name for p in (root / "val").rglob("*.png")}
    assert sorted(p.name for p in (root / "val").iterdir()) == [str(d) for d in range(10)]
    counts = [len(list((root / "val" / str(d)).iterdir())) for d in range(10)]
    assert all(abs(c - 36) <= 1 for c in counts)  # 20% of each class (~180 images per digit)
    assert not val & {p.name for p in (root / "train").rglob("*.png")}  # disjoint
    digits = load_digits()
    index = 42
    path = next(root.rglob(f"{index:04d}.png"))
    assert path.parent.name == str(digits.target[index])
    with Image.open(path) as img:
        assert img.mode == "L" and img.size == (8, 8)
        pixels = np.asarray(img)
    assert np.array_equal(pixels, np.rint(digits.images[index] * 255 / 16).astype(np.uint8))
    again = subprocess.run([sys.executable, str(SCRIPTS / "make_digits.py"), str(tmp_path / "again")],
                           capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    assert again.returncode == 0 and {p.name for p in (tmp_path / "again" / "val").rglob("*.png")} == val


def test_every_script_parses_and_is_shellcheck_clean():
    """bash -n and shellcheck (pinned in requirements-dev.txt) over the launchers, the SLURM batch file
    and the demo: warnings count (the default severity)."""
    files = sorted([*SCRIPTS.glob("*.sh"), *SCRIPTS.glob("*.sbatch")])
    assert SCRIPTS / "slurm_train.sbatch" in files
    for path in files:
        parsed = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
        assert parsed.returncode == 0, (path.name, parsed.stderr)
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    checked = subprocess.run([shellcheck, "-x", *map(str, files)], cwd=REPO, capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout[-3000:]


def test_slurm_batch_file_keeps_its_run_folder_and_requeues_on_a_preemption_checkpoint():
    text = (SCRIPTS / "slurm_train.sbatch").read_text()
    for directive in ("#SBATCH --signal=B:USR1@120", "#SBATCH --requeue"):
        assert directive in text
    assert "RUN_DIR=${RUN_DIR:-runs/slurm_${SLURM_JOB_ID}}" in text  # a requeued job finds its run again
    assert 'scontrol requeue "${SLURM_JOB_ID}"' in text and "EXIT_PREEMPTED=143" in text
