"""Tests for src/runtime/distributed.py: launcher env parsing and a real 2-process gloo group."""

import json
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from src.runtime.distributed import (DEFAULT_MASTER_PORT, DistributedError, all_reduce_sum, broadcast_object,
                             first_slurm_host, init_distributed, launch_env, seed_everything,
                             unwrap_model)

REPO = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT_S = 120
WORKER = """
import json, sys
import torch
from src.runtime.distributed import all_reduce_sum, barrier, broadcast_object, cleanup, init_distributed
info = init_distributed("CPU")
total = all_reduce_sum(torch.tensor([float(info.rank + 1), 10.0]))
chosen = broadcast_object({"run_dir": f"chosen-by-{info.rank}"})
barrier()
result = {"rank": info.rank, "world": info.world_size, "local": info.local_rank, "main": info.is_main,
          "device": str(info.device), "sum": total.tolist(), "obj": chosen}
cleanup()
with open(f"{sys.argv[1]}/rank{info.rank}.json", "w") as handle:
    json.dump(result, handle)
"""


@pytest.mark.parametrize("nodelist, host", [
    ("node01", "node01"), ("gpu[003-004,007],cpu1", "gpu003"), ("a-b-[1-3]", "a-b-1"),
    ("node[7,9]-ib", "node7-ib"), ("host1,host2", "host1"), ("10.0.0.5", "10.0.0.5"),
])
def test_first_slurm_host(nodelist, host):
    assert first_slurm_host(nodelist) == host


def test_launch_env_torchrun_slurm_and_none():
    assert launch_env({}) is None
    torchrun = launch_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "h",
                           "MASTER_PORT": "1234", "SLURM_PROCID": "0", "SLURM_NTASKS": "1",
                           "SLURM_LOCALID": "0"})
    assert (torchrun.rank, torchrun.world_size, torchrun.local_rank) == (3, 8, 1)
    assert (torchrun.master_addr, torchrun.master_port) == ("h", "1234")
    slurm = launch_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1",
                        "SLURM_NODELIST": "gpu[12-13]"})
    assert (slurm.rank, slurm.world_size, slurm.local_rank) == (5, 8, 1)
    assert (slurm.master_addr, slurm.master_port) == ("gpu12", str(DEFAULT_MASTER_PORT))
    given = launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0",
                        "SLURM_NODELIST": "gpu[12-13]", "MASTER_ADDR": "m", "MASTER_PORT": "99"})
    assert (given.master_addr, given.master_port) == ("m", "99")


def test_launch_env_errors():
    with pytest.raises(DistributedError, match="RANK='x' is not an integer"):
        launch_env({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(DistributedError, match="rank 2 is outside world size 2"):
        launch_env({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    with pytest.raises(DistributedError, match="set MASTER_ADDR"):
        launch_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0"})


def test_single_process_needs_no_group(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"):
        monkeypatch.delenv(key, raising=False)
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.is_main, info.distributed, info.device) == \
        (0, 1, True, False, torch.device("cpu"))
    assert all_reduce_sum(torch.tensor([2.0])).tolist() == [2.0]
    assert broadcast_object("x") == "x"
    with pytest.raises(DistributedError, match="device_target must be GPU or CPU"):
        init_distributed("TPU")


def test_seed_everything_is_per_rank_and_reproducible():
    def draws():
        return random.random(), float(np.random.rand()), torch.rand(1).item()
    assert seed_everything(7, rank=1) == 8
    first = draws()
    seed_everything(7, rank=1)
    assert draws() == first
    seed_everything(7, rank=0)
    assert draws() != first


def test_unwrap_model():
    inner = nn.Linear(2, 2)
    assert unwrap_model(torch.compile(nn.DataParallel(inner))) is inner
    assert unwrap_model(inner) is inner


def _clean_env() -> dict:
    launcher_vars = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "MASTER_", "TORCHELASTIC_")) and k not in launcher_vars}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return env


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_all(procs: list[subprocess.Popen]) -> None:
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
            assert proc.returncode == 0, err.decode()[-2000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


def _check_results(out: Path, local_ranks: list[int]) -> None:
    for rank, local in enumerate(local_ranks):
        result = json.loads((out / f"rank{rank}.json").read_text())
        assert result == {"rank": rank, "world": 2, "local": local, "main": rank == 0, "device": "cpu",
                          "sum": [3.0, 20.0], "obj": {"run_dir": "chosen-by-0"}}


@pytest.mark.slow
def test_two_process_gloo_group_with_torchrun(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(tmp_path)]
    _run_all([subprocess.Popen(cmd, cwd=REPO, env=_clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)])
    _check_results(tmp_path, local_ranks=[0, 1])


@pytest.mark.slow
def test_two_process_gloo_group_with_slurm_env(tmp_path):
    """Two 'SLURM tasks' on one node; MASTER_ADDR comes from SLURM_NODELIST."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = _clean_env()
        env.update(SLURM_PROCID=str(rank), SLURM_NTASKS="2", SLURM_LOCALID=str(rank),
                   SLURM_NODELIST="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=REPO, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    _run_all(procs)
    _check_results(tmp_path, local_ranks=[0, 1])
