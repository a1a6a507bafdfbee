"""The one "is this a new best?" rule for the best checkpoint, plateau LR reduction and early stopping."""
from __future__ import annotations

MODES = ("max", "min")  # max: higher is better (accuracy); min: lower is better (loss)


def check_mode(mode: str) -> str:
    """``mode`` itself when it is one of MODES, else ValueError naming them."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    return mode


def is_improvement(value: float, best: float | None, mode: str = "max", min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` (None: nothing seen yet, so it does) by more than ``min_delta``."""
    if best is None:
        return True
    return value > best + min_delta if mode == "max" else value < best - min_delta
