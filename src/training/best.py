"""The one "is this a new best?" rule, for the best checkpoint, plateau LR reduction and early stopping."""
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


class EarlyStopping:
    """Stop after ``patience`` evaluations without an improvement larger than ``min_delta``."""

    def __init__(self, patience: int, mode: str = "max", min_delta: float = 0.0) -> None:
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience, self.mode, self.min_delta = patience, check_mode(mode), min_delta
        self.best: float | None = None
        self.bad_epochs = 0

    def step(self, value: float) -> bool:
        """Record one evaluation; True means training should stop now."""
        if is_improvement(value, self.best, self.mode, self.min_delta):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad_epochs = state["best"], int(state["bad_epochs"])
