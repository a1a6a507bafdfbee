"""Error types and the one-line argument error shared by both sides of the project: the torch half
(src/, eval.py, export.py) and the torch-free ONNX runner (infer/). Defined here, without torch, so
both import the one definition."""
from __future__ import annotations

import argparse
import sys
from typing import NoReturn

EXIT_BAD_INPUT = 2  # argparse's own status for bad arguments; the programs use it for every bad input


class ModelLoadError(ValueError):
    """A weight or model file cannot become the requested model (a checkpoint that does not fit,
    an ONNX file onnxruntime cannot load); the one-line message says what to pass instead."""


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
        print(f"error: {text}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)
