"""The file format of checkpoints and weight files: one reader, one atomic writer, one rule for the tensors.

Every file this project reads or writes is a plain dict of tensors, numbers, strings, lists and
dicts, so that it loads with ``torch.load(weights_only=True)``: a checkpoint is a file people
download and share, and unpickling arbitrary Python objects from such a file can run arbitrary
code. ``.safetensors`` files (tensors and a text header only) read into the same dict shape.

* ``read_file``: any .pth/.pt/.bin or .safetensors file as a dict; every failure is a
  CheckpointError with one line saying why (missing, a folder, unsafe, corrupt, truncated).
* ``weights_in``: the one rule that finds a network's tensors in such a dict (a train.py
  checkpoint's ``model`` or ``ema``, a ``state_dict`` entry, or plain tensors), without the
  ``module.`` / ``_orig_mod.`` prefixes DDP and torch.compile add.
* ``atomic_save`` / ``save_weights``: the old file or the complete new one, never half of one.

What the tensors mean (layouts, variants, padding) is src.models.layouts' job; when to write a
checkpoint and which to keep is the training run's (src.training.checkpoints).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

import torch

from src.common.errors import InputError

CHECKPOINT_SUFFIX = ".pth"
SAFETENSORS_SUFFIX = ".safetensors"  # read as {"model": tensors, **metadata}
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel, torch.compile
META_KEYS = ("model_name", "padding", "bn_eps", "preprocess", "layout", "classes")  # what a weight file remembers
EMA_KEY = "ema"  # a train.py checkpoint's weight average: {"state_dict": ..., "updates": n, "decay": d}
# Fragments of torch's weights-only unpickler errors that mean "this file wants to build Python
# objects" (as opposed to "these bytes are not a pickle at all").
_UNSAFE_MARKERS = ("GLOBAL ", "Can only build", "Can only create new object")


class CheckpointError(InputError):
    """A checkpoint or weight file is missing, unsafe, corrupt or does not hold what the caller needs."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, file-size limit, lost mount); nothing was replaced."""


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
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


def save_weights(state: Mapping[str, torch.Tensor], metadata: Mapping[str, Any], path: str | Path) -> Path:
    """Write ``state`` and its ``metadata`` (META_KEYS: what rebuilds the network) as .safetensors (by
    suffix, metadata as JSON in the header) or as a .pth dict ``{"model": state, **metadata}``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == SAFETENSORS_SUFFIX:
        from safetensors.torch import save_file

        tensors = {key: value.contiguous() for key, value in state.items()}
        save_file(tensors, str(path), metadata={key: json.dumps(value) for key, value in metadata.items()})
    else:
        torch.save({"model": dict(state), **metadata}, path)
    return path


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
def read_file(path: str | os.PathLike, map_location: Any = "cpu") -> dict:
    """A checkpoint or weight file as a dict, read ``weights_only`` (a .pth is data, never code) or as
    safetensors; every failure is a CheckpointError saying why in one line."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the checkpoint file inside it (a .pth)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == SAFETENSORS_SUFFIX:  # tensors + a str header only: it cannot carry code
        return read_safetensors(path)
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


def read_safetensors(path: str | Path) -> dict[str, Any]:
    """A .safetensors file as a checkpoint-like dict: ``{"model": tensors, **saved metadata}``.

    safetensors holds tensors and a str -> str header only, so it can carry no code; our metadata
    (META_KEYS) is stored there as JSON values."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
            header = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({' '.join(str(exc).split())})") from None
    obj: dict[str, Any] = {"model": tensors}
    for key in META_KEYS:
        if key in header:
            try:
                obj[key] = json.loads(header[key])
            except json.JSONDecodeError:
                obj[key] = header[key]
    return obj


def strip_wrapper_prefixes(key: str) -> str:
    """'module._orig_mod.features.0' -> 'features.0' (DDP and torch.compile wrap in any order)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix):], True
    return key


def has_ema(obj: Mapping[str, Any]) -> bool:
    """Whether ``obj`` is a train.py checkpoint holding EMA weights (trained with ema_decay > 0)."""
    return isinstance(obj.get(EMA_KEY), Mapping)


def weights_in(obj: Mapping[str, Any], ema: bool = False) -> dict[str, Any]:
    """The network's tensors in a file's dict, the one rule every loader uses: a train.py checkpoint's
    ``model`` (its ``ema`` with ``ema=True``), a ``state_dict`` entry (ModelEma, Lightning-style
    files), or the dict itself when it holds only tensors (torchvision's, timm's files). Wrapper
    prefixes are stripped. CheckpointError when there are none."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"expected a dict of weights, got {type(obj).__name__}")
    if ema:
        if not has_ema(obj):
            raise CheckpointError("the checkpoint has no EMA weights (trained without ema_decay)")
        return weights_in(obj[EMA_KEY])
    for entry in ("model", "state_dict"):
        if isinstance(obj.get(entry), Mapping):
            return weights_in(obj[entry])
    if obj and all(isinstance(value, torch.Tensor) for value in obj.values()):
        return {strip_wrapper_prefixes(key): value for key, value in obj.items()}
    keys = ", ".join(sorted(map(str, obj))[:8])
    raise CheckpointError(f"no model weights found (expected 'model', 'state_dict' or tensors); keys: {keys}")
