"""Checkpoints: atomic saving, safe loading, rotation and exact-resume RNG state.

Every checkpoint is a plain dict of tensors, numbers, strings, lists and dicts so that it loads
with ``torch.load(weights_only=True)``: a checkpoint is a file people download and share, and
unpickling arbitrary Python objects from such a file can run arbitrary code.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from src.models.layouts import strip_wrapper_prefixes
from src.common.errors import InputError

CHECKPOINT_SUFFIX = ".pth"
SAFETENSORS_SUFFIX = ".safetensors"  # read as {"model": tensors, **metadata}
BEST_TAG = "best"
# Fragments of torch's weights-only unpickler errors that mean "this file wants to build Python
# objects" (as opposed to "these bytes are not a pickle at all").
_UNSAFE_MARKERS = ("GLOBAL ", "Can only build", "Can only create new object")


class CheckpointError(InputError):
    """A checkpoint file is missing, unsafe, corrupt or does not hold what the caller needs."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, file-size limit, lost mount); nothing was replaced."""


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """Save ``obj`` with torch.save so that ``path`` is either the old file or the complete new one.

    A crash or a full disk in the middle of a save must never leave a truncated checkpoint behind
    (it would break the resume that the checkpoint exists for), so we write a temporary file in the
    same directory (same filesystem, so ``os.replace`` is atomic), fsync it, then rename it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_name, _default_file_mode())  # mkstemp makes 0600; others may need to read it
        os.replace(tmp_name, path)
    except (OSError, RuntimeError) as exc:
        # torch.save reports a full disk as a RuntimeError ("unexpected pos ..."): name the cause.
        Path(tmp_name).unlink(missing_ok=True)
        raise CheckpointWriteError(_write_failure_message(path, exc)) from exc
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def _write_failure_message(path: Path, exc: BaseException) -> str:
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):  # torch.save hides the OSError as context
        cause = cause.__context__
    if isinstance(cause, OSError) and cause.strerror:
        reason = cause.strerror
    else:
        reason = " ".join(str(exc).split()) or type(exc).__name__
    try:
        free = f"{shutil.disk_usage(path.parent).free / 1e9:.1f} GB free there"
    except OSError:
        free = "free space unknown"
    return (f"could not write checkpoint {path} ({reason}; {free}); the files already there are intact: "
            "free disk space or set --save_checkpoint_path to another disk, then resume from the last checkpoint")


def _default_file_mode() -> int:
    """The mode open() would give a new file (0666 minus the process umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_directory(directory: Path) -> None:
    """Persist the rename itself; best effort because not every OS/filesystem allows it."""
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def load_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True`` and turn every failure into a CheckpointError."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the checkpoint file inside it (a .pth)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == SAFETENSORS_SUFFIX:  # tensors + a str header only: it cannot carry code
        from src.models.layouts import WeightMismatchError, read_safetensors

        try:
            return read_safetensors(path)
        except WeightMismatchError as exc:
            raise CheckpointError(str(exc)) from None
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if any(marker in str(exc) for marker in _UNSAFE_MARKERS):
            raise CheckpointError(
                f"{path} is not a safe checkpoint (it contains pickled Python objects; "
                "refusing to load it)") from None
        raise CheckpointError(f"{path} is not a readable checkpoint (corrupt or not a PyTorch "
                              "file); re-create or re-download it") from None
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    except (RuntimeError, EOFError, KeyError, ValueError) as exc:
        reason = str(exc).split(".")[0] if isinstance(exc, RuntimeError) else type(exc).__name__
        raise CheckpointError(f"{path} is corrupt or truncated ({reason}); "
                              "re-create or re-download it") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict")
    return obj


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



def extract_state_dict(obj: dict, use_ema: bool = False) -> dict:
    """Find the model weights in whatever dict a user points us at.

    Accepts a train.py checkpoint (its "model", or "ema" when ``use_ema``), a dict with a
    "state_dict" entry (ModelEma, Lightning-style files) or a plain state_dict (torchvision).
    """
    if not isinstance(obj, dict):
        raise CheckpointError(f"expected a dict of weights, got {type(obj).__name__}")
    if use_ema:
        if obj.get("ema") is None:
            raise CheckpointError("checkpoint has no EMA weights; drop the EMA option to use 'model'")
        return extract_state_dict(obj["ema"])
    if isinstance(obj.get("model"), dict):
        return extract_state_dict(obj["model"])
    if isinstance(obj.get("state_dict"), dict):
        return extract_state_dict(obj["state_dict"])
    if obj and all(isinstance(value, torch.Tensor) for value in obj.values()):
        return {strip_wrapper_prefixes(key): value for key, value in obj.items()}
    keys = ", ".join(sorted(map(str, obj))[:8])
    raise CheckpointError(f"no model weights found (expected 'model', 'state_dict' or tensors); keys: {keys}")
