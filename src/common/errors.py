"""Every program's exit statuses, the base of every bad-input error, and the one way an error is printed.

Shared by both halves of the project: the torch half (src/, train.py, eval.py, export.py,
benchmark.py) and the torch-free ONNX runner (infer/), so this module imports nothing but the
standard library. An error a user can fix (a flag, a file, a folder, a config value) is an
``InputError``: every entry point prints it as one ``error: ...`` line (``error_line``) and exits
with ``EXIT_BAD_INPUT``, never with a traceback. Anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from typing import NoReturn

EXIT_OK = 0
EXIT_FAILED = 1  # the job ran and could not finish (non-finite loss, full disk, a measured child failed)
EXIT_BAD_INPUT = 2  # argparse's own status for bad arguments; the programs use it for every bad input
EXIT_OUT_OF_MEMORY = 3  # train.py: the GPU ran out of memory (the line names the remedies)
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


class InputError(ValueError):
    """Input the user can fix; the message says what to change. Printed as one line, exit status 2."""


class ModelLoadError(InputError):
    """A weight or model file cannot become the requested model (a checkpoint that does not fit,
    an ONNX file onnxruntime cannot load); the one-line message says what to pass instead."""


class BrokenImageWarning(UserWarning):
    """A dataset file could not be decoded and was skipped (and counted)."""


def error_line(message: object, rank: int | str | None = None) -> str:
    """``error: [rank N] MESSAGE`` on one line: a multi-line message is joined, so scripts can grep it."""
    where = f"[rank {rank}] " if rank not in (None, "", 0, "0") else ""
    return f"error: {where}{' '.join(str(message).split())}"


def report_error(message: object, status: int = EXIT_BAD_INPUT, rank: int | str | None = None) -> int:
    """Print ``error_line`` on stderr and return ``status`` (for ``return report_error(exc)`` in a main)."""
    print(error_line(message, rank), file=sys.stderr, flush=True)
    return status


def one_line_broken_image_warnings() -> None:
    """Show BrokenImageWarning as one ``warning: skipping unreadable image ...`` line (train.py and
    eval.py call this): Python's default format adds the warning's source line under each file."""
    default = warnings.formatwarning
    if getattr(default, "one_line_broken_images", False):
        return

    def formatwarning(message, category, filename, lineno, line=None):  # noqa: ANN001 - warnings' signature
        if issubclass(category, BrokenImageWarning):
            return f"warning: {message}\n"
        return default(message, category, filename, lineno, line)

    formatwarning.one_line_broken_images = True  # type: ignore[attr-defined]
    warnings.formatwarning = formatwarning


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument as one line instead of usage + message:
    ``error: MESSAGE (see HELP_HINT)`` on stderr and exit status 2.

    With ``raise_as`` the error is raised as that exception (message and hint) instead, for a
    ``main`` that prints every error itself (eval.py adds the rank under torchrun)."""

    def __init__(self, *args, help_hint: str = "--help", raise_as: type[Exception] | None = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.help_hint, self.raise_as = help_hint, raise_as

    def error(self, message: str) -> NoReturn:
        text = f"{message} (see {self.help_hint})"
        if self.raise_as is not None:
            raise self.raise_as(text)
        raise SystemExit(report_error(text))
