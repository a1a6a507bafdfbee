"""Fail before the work, not after it: prove an output folder takes files before training or evaluating."""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path


def ensure_writable_folder(folder: str | os.PathLike) -> None:
    """Create ``folder`` (with parents) and create/delete a file in it; raises OSError saying why not."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, "a file is in the way", str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=folder):
        pass


def unwritable_output(flag: str, path: str | os.PathLike) -> str | None:
    """The one-line complaint about the output file ``path`` given as ``flag``; None when it can be written."""
    if Path(path).is_dir():
        return f"{flag} {os.fspath(path)} is a folder; give a file name"
    reason = why_not_writable(Path(os.path.abspath(path)).parent)
    if reason is not None:
        return f"{flag} {os.fspath(path)}: cannot write there ({reason}); choose a writable folder"
    return None


def why_not_creatable(folder: str | os.PathLike) -> str | None:
    """Like why_not_writable, but creates nothing: the folder, or its nearest existing ancestor,
    must be a writable folder (for checks that must leave no trace, e.g. ``train.py --check``)."""
    path = Path(os.path.abspath(folder))
    while not path.exists() and path != path.parent:
        path = path.parent
    if not path.is_dir():
        return f"{path} is a file, not a folder"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"no permission to write in {path}"
    return None


def why_not_writable(folder: str | os.PathLike) -> str | None:
    """None when ``folder`` can take files, else the reason (e.g. 'Permission denied')."""
    try:
        ensure_writable_folder(folder)
    except OSError as exc:
        return exc.strerror or str(exc)
    return None
