"""Process-group setup for torchrun and SLURM launches, plus the few collectives training needs.

Every helper is a no-op in a single process, so train.py and eval.py run the same code with or
without a launcher.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from src.common.errors import InputError

DEFAULT_MASTER_PORT = 29500
DEFAULT_TIMEOUT_MINUTES = 30.0  # how long a collective waits for a process that stopped answering
MAX_PROBE_SECONDS = 10.0  # how long the live ranks wait for each other to name the silent ones
NUMPY_SEED_MODULUS = 2**32  # numpy seeds must fit in uint32
MAX_DEFAULT_WORKERS = 8  # DataLoader workers per process when none are asked for (and CPUs allow)
_TORCHRUN_KEYS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_SLURM_KEYS = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")


class DistributedError(InputError):
    """The launcher environment or the requested device cannot give a working process group."""


@dataclass(frozen=True)
class DistInfo:
    """Who this process is; ``is_main`` decides who logs and saves checkpoints."""

    rank: int
    world_size: int
    local_rank: int
    is_main: bool
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@dataclass(frozen=True)
class LaunchEnv:
    """What a launcher told us through environment variables."""

    rank: int
    world_size: int
    local_rank: int
    master_addr: str | None
    master_port: str | None


def first_slurm_host(nodelist: str) -> str:
    """First host of a SLURM node list: 'gpu[003-004,007],cpu1' -> 'gpu003' (padding kept)."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\]([^,]*))?", nodelist.strip())
    if not match:
        raise DistributedError(f"cannot parse SLURM node list {nodelist!r}; set MASTER_ADDR")
    prefix, ranges, suffix = match.groups()
    if ranges is None:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0] + (suffix or "")


def _int_env(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise DistributedError(f"environment variable {key}={env[key]!r} is not an integer") from None


def launch_env(env: Mapping[str, str]) -> LaunchEnv | None:
    """Read torchrun's variables, else SLURM's, else None (a plain single-process run).

    torchrun wins because a common SLURM recipe starts one torchrun per node with srun.
    SLURM does not set MASTER_ADDR/PORT, so the first host of the job and a default port are used.
    """
    if all(key in env for key in _TORCHRUN_KEYS):
        rank, world, local = (_int_env(env, key) for key in _TORCHRUN_KEYS)
        addr, port = env.get("MASTER_ADDR"), env.get("MASTER_PORT")
    elif all(key in env for key in _SLURM_KEYS):
        rank, world, local = (_int_env(env, key) for key in _SLURM_KEYS)
        nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
        addr = env.get("MASTER_ADDR") or (first_slurm_host(nodelist) if nodelist else None)
        port = env.get("MASTER_PORT") or str(DEFAULT_MASTER_PORT)
        if world > 1 and addr is None:
            raise DistributedError("SLURM job without SLURM_NODELIST: set MASTER_ADDR")
    else:
        return None
    if not 0 <= rank < world:
        raise DistributedError(f"rank {rank} is outside world size {world}")
    return LaunchEnv(rank, world, local, addr, port)


def _device_for(device_target: str, local_rank: int) -> torch.device:
    target = device_target.upper()
    if target == "CPU":
        return torch.device("cpu")
    if target != "GPU":
        raise DistributedError(f"device_target must be GPU or CPU, got {device_target!r}")
    if not torch.cuda.is_available():
        raise DistributedError("device_target GPU requested but CUDA is not available; use --device_target CPU")
    count = torch.cuda.device_count()
    # SLURM's per-task GPU binding shows each task exactly one GPU, whatever its local rank.
    index = local_rank if local_rank < count else 0 if count == 1 else -1
    if index < 0:
        raise DistributedError(f"local rank {local_rank} but only {count} GPUs are visible")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def init_distributed(device_target: str, backend: str | None = None,
                     timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES) -> DistInfo:
    """Join the process group the launcher prepared (NCCL on GPU, gloo on CPU); world 1 joins none.
    A collective waits ``timeout_minutes`` for every process, then fails (see silent_ranks)."""
    launch = launch_env(os.environ)
    if launch is None or launch.world_size == 1:
        local_rank = launch.local_rank if launch else 0
        return DistInfo(0, 1, local_rank, True, _device_for(device_target, local_rank))
    device = _device_for(device_target, launch.local_rank)
    # env:// needs these; torchrun sets them already, SLURM does not.
    os.environ.setdefault("MASTER_ADDR", launch.master_addr or "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", launch.master_port or str(DEFAULT_MASTER_PORT))
    timeout = timedelta(minutes=timeout_minutes)
    dist.init_process_group(backend or ("nccl" if device.type == "cuda" else "gloo"), **_rendezvous(launch, timeout),
                            rank=launch.rank, world_size=launch.world_size, timeout=timeout,
                            device_id=device if device.type == "cuda" else None)  # binds NCCL to our GPU
    return DistInfo(launch.rank, launch.world_size, launch.local_rank, launch.rank == 0, device)


def _rendezvous(launch: LaunchEnv, timeout: timedelta) -> dict[str, Any]:
    """Where the processes meet: env:// (MASTER_ADDR:MASTER_PORT); under torchrun its agent's store, with
    keys of this restart only. torch's env:// reuses the agent's keys across restarts, so a restarted
    process could read a dead peer's address and fail to connect (seen with gloo: 4 restarts in 5)."""
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return {"init_method": "env://"}
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False, timeout=timeout)
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return {"store": dist.PrefixStore(f"effnet/attempt_{attempt}", store)}


def default_num_workers() -> int:
    """DataLoader workers per process when the user sets none: the CPUs this process may use, shared
    by the processes the launcher started on this node (LOCAL_WORLD_SIZE), at most MAX_DEFAULT_WORKERS."""
    local_processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return min(MAX_DEFAULT_WORKERS, max(1, len(os.sched_getaffinity(0)) // local_processes))


def is_timeout(exc: BaseException) -> bool:
    """Whether a collective failed because some process did not answer in time (gloo's and NCCL's wording)."""
    text = str(exc).lower()
    return "timed out" in text or "timeout" in text


def silent_ranks(rank: int, world_size: int, wait_seconds: float = MAX_PROBE_SECONDS) -> list[int] | None:
    """After a timed-out collective: the ranks that stopped answering. Every live rank writes a key
    to the launch's key-value store (which outlives the failed collective) and waits ``wait_seconds``
    for the others' keys; the missing ones are the silent ranks. None when the store is out of reach."""
    try:
        store = dist.distributed_c10d._get_default_store()  # torch's own store of this process group
        prefix = f"silent_probe/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        store.set(f"{prefix}{rank}", "alive")
        keys = [f"{prefix}{r}" for r in range(world_size)]
        try:
            store.wait(keys, timedelta(seconds=wait_seconds))
        except RuntimeError:  # some never came: name them
            pass
        return [r for r, key in enumerate(keys) if not store.check([key])]
    except (RuntimeError, ValueError, AttributeError):
        return None


def is_main_launch() -> bool:
    """Before the process group exists: rank 0 (or no launcher) prints and shows download progress."""
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank (e.g. rank 0 finishes writing before others read); no-op alone."""
    if is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place and return it (counts/loss sums for exact global metrics)."""
    if is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Return rank ``src``'s ``obj`` on every rank (e.g. the run directory name chosen by rank 0)."""
    if not is_initialized():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=src)
    return holder[0]


def cleanup() -> None:
    """Tear the group down so the process exits cleanly (NCCL warns otherwise)."""
    if is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int, rank: int = 0) -> int:
    """Seed python, numpy and torch (all devices) with ``seed + rank``.

    Offsetting by rank keeps runs reproducible while giving each rank different augmentations;
    returns the seed used.
    """
    rank_seed = seed + rank
    random.seed(rank_seed)
    np.random.seed(rank_seed % NUMPY_SEED_MODULUS)
    torch.manual_seed(rank_seed)
    return rank_seed


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / DataParallel / torch.compile wrappers (in any nesting order)."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model
