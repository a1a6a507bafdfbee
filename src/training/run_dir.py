"""Which folder a training run writes to, so that runs never overwrite each other.

* ``--save_checkpoint_path DIR`` on the command line: exactly DIR. If DIR already holds another
  run's files it is only reused by ``--resume`` (the same run going on) or ``--overwrite true``
  (its run files are deleted first).
* ``--resume CKPT``: the folder of CKPT, the run going on where it was.
* otherwise (the schema default or a YAML's value): a new ``<base>/<model>_<date>_<time>`` folder
  under that base, as timm names its output folders. The saved config.yaml names the base, so
  ``--config <run>/config.yaml`` starts a new sibling folder instead of writing into the old one.

The folder is made by rank 0 only (other ranks learn its name from rank 0 after the process group
exists) and not at all by ``train.py --check``.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from src.models.files import CHECKPOINT_SUFFIX
from src.training.monitor import CURVES_FILE, LOG_FILE, METRICS_FILE
from src.training.scalar_logs import EVENTS_GLOB, SUMMARY_FILE
from src.common.errors import InputError

CONFIG_FILE = "config.yaml"
RUN_FILES = (METRICS_FILE, LOG_FILE, CURVES_FILE, CONFIG_FILE, SUMMARY_FILE)  # besides checkpoints and events
MAX_NAME_TRIES = 1000


class RunDirError(InputError):
    """The run folder cannot be used as asked; the message says what to pass instead."""


def previous_run_files(folder: Path) -> list[Path]:
    """Files of an earlier run in ``folder``: metrics, log, curves, config, summary, TensorBoard
    events, checkpoints."""
    if not folder.is_dir():
        return []
    found = [folder / name for name in RUN_FILES if (folder / name).is_file()]
    for pattern in (EVENTS_GLOB, f"*{CHECKPOINT_SUFFIX}"):
        found += sorted(p for p in folder.glob(pattern) if p.is_file())
    return found


def check_reuse(folder: Path, overwrite: bool, resuming: bool) -> list[Path]:
    """Refuse a folder holding another run unless resuming or overwriting; returns files to delete."""
    found = previous_run_files(folder)
    if not found or resuming:
        return []
    if not overwrite:
        checkpoints = [p for p in found if p.suffix == CHECKPOINT_SUFFIX]
        hint = f"resume it with --resume {checkpoints[-1]}, " if checkpoints else ""
        raise RunDirError(f"--save_checkpoint_path {folder} holds another run ({found[0].name}); {hint}choose a new "
                          "folder (or leave the flag out for a new timestamped one), or pass --overwrite true "
                          "to delete that run's files")
    return found


def new_run_name(model: str, now: float | None = None) -> str:
    return f"{model}_{time.strftime('%Y%m%d_%H%M%S', time.localtime(now))}"


def make_new_run_dir(base: Path, model: str) -> Path:
    """Create ``base/<model>_<date>_<time>`` (``_2``, ``_3``... when that name is taken), atomically."""
    base.mkdir(parents=True, exist_ok=True)
    name = new_run_name(model)
    for attempt in range(1, MAX_NAME_TRIES + 1):
        folder = base / (name if attempt == 1 else f"{name}_{attempt}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise RunDirError(f"{base} already holds {MAX_NAME_TRIES} runs named {name}*; choose another folder")


def resolve_run_dir(save_path: str, model: str, exact: bool, resume: str | None, overwrite: bool,
                    create: bool, judge: bool = True) -> tuple[Path, list[Path]]:
    """(the run folder, earlier run files to delete before training). ``create`` False (``--check``,
    ranks other than 0) makes nothing: a new folder's name is then only a preview. ``judge`` False
    (ranks other than 0) skips the occupied-folder check: rank 0 may already have written there."""
    if exact:
        folder = Path(save_path)
        return folder, check_reuse(folder, overwrite, resuming=resume is not None) if judge else []
    if resume is not None:
        return Path(resume).parent, []
    base = Path(save_path)
    if not create:
        return base / new_run_name(model), []
    return make_new_run_dir(base, model), []


def delete_run_files(files: list[Path]) -> None:
    """--overwrite: remove the earlier run's files so metrics and curves hold one run only."""
    for path in files:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass
