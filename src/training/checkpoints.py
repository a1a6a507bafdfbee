"""The training run's checkpoint policy: file names, rotation, the best model, the checkpoint
``--resume auto`` continues from, and the RNG state that exact resume needs. The file format itself
(atomic writes, safe reading) is src.models.files."""

from __future__ import annotations

import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from src.models.files import CHECKPOINT_SUFFIX, CheckpointError, atomic_save, read_file

BEST_TAG = "best"
STOPPED_KEY = "stopped"  # a checkpoint written because a signal stopped the run: the signal's name
# Keys of a resume checkpoint that must be present for an exact continuation.
RESUME_KEYS = ("model", "optimizer", "epoch", "step", "config", "lr_state")


class CheckpointManager:
    """Writes ``<model>-<epoch>_<step>.pth`` files (ModelZoo naming) and keeps the newest ``keep_max``."""

    def __init__(self, directory: str | os.PathLike, model_name: str, keep_max: int) -> None:
        if keep_max < 1:
            raise ValueError(f"keep_max must be >= 1, got {keep_max}")
        self.directory = Path(directory)
        self.model_name = model_name
        self.keep_max = keep_max
        self._pattern = re.compile(rf"^{re.escape(model_name)}-(\d+)_(\d+){re.escape(CHECKPOINT_SUFFIX)}$")

    def path_for(self, epoch: int, step: int) -> Path:
        return self.directory / f"{self.model_name}-{epoch}_{step}{CHECKPOINT_SUFFIX}"

    def save(self, state: dict, epoch: int, step: int) -> Path:
        """Save atomically, then delete the oldest files of this model's pattern beyond keep_max."""
        path = atomic_save(state, self.path_for(epoch, step))
        for old in self.checkpoints()[:-self.keep_max]:
            old.unlink(missing_ok=True)
        return path

    def save_best(self, state: dict) -> Path:
        return atomic_save(state, self.directory / f"{self.model_name}-{BEST_TAG}{CHECKPOINT_SUFFIX}")

    def checkpoints(self) -> list[Path]:
        """This model's periodic checkpoints, oldest first, ordered by (epoch, step) not mtime."""
        if not self.directory.is_dir():
            return []
        found = []
        for entry in self.directory.iterdir():
            match = self._pattern.match(entry.name)
            if match:
                found.append(((int(match.group(1)), int(match.group(2))), entry))
        return [entry for _, entry in sorted(found)]

    def latest(self) -> Path | None:
        """The checkpoint to resume from: the highest (epoch, step) of this model, or None."""
        checkpoints = self.checkpoints()
        return checkpoints[-1] if checkpoints else None

    def newest_resumable(self) -> tuple[Path | None, dict | None, list[str]]:
        """``--resume auto``: (path, its contents, warnings) of the newest checkpoint that loads and
        verifies; (None, None, warnings) when there is none. Newest means the highest (epoch, step)
        of the file name, confirmed by the step counter inside the file (not the modification time);
        a file that does not load (truncated, garbled) or does not verify is skipped with a warning
        naming it, and the one before it is tried."""
        warnings = []
        for path in reversed(self.checkpoints()):
            epoch, step = (int(v) for v in self._pattern.match(path.name).groups())
            try:
                ckpt = read_file(path)
            except CheckpointError as exc:
                warnings.append(f"warning: --resume auto skips {path}: {exc}")
                continue
            why = _why_not_resumable(ckpt, epoch, step)
            if why is None:
                return path, ckpt, warnings
            warnings.append(f"warning: --resume auto skips {path}: {why}")
        return None, None, warnings


def _why_not_resumable(ckpt: dict, epoch: int, step: int) -> str | None:
    """None when ``ckpt`` holds what exact resume needs and its step counter is the one its name
    (``<model>-<epoch>_<step>``: ``step`` optimizer steps into epoch ``epoch``) says."""
    missing = [key for key in RESUME_KEYS if key not in ckpt]
    if missing:
        return f"no {missing[0]!r} entry"
    expected = (epoch - 1) * int(ckpt.get("steps_per_epoch", 0)) + step
    if int(ckpt["step"]) != expected:
        return f"its step counter is {ckpt['step']}, not the {expected} of its name"
    return None


def rng_state() -> dict:
    """Every generator a training step draws from, as weights_only-loadable values.

    numpy's state is stored as an int64 tensor plus plain numbers because weights_only refuses
    numpy arrays; python's state tuple becomes a list.
    """
    version, mt_state, gauss_next = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": {"version": version, "state": list(mt_state), "gauss_next": gauss_next},
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    return state


def restore_rng_state(state: dict) -> None:
    """Inverse of rng_state(); CUDA states are restored only if CUDA exists and they were saved."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npst = state["numpy"]
    keys = npst["keys"].numpy().astype(np.uint32)
    np.random.set_state((npst["name"], keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])
