"""src/training/best.py: the one new-best rule the best checkpoint, the plateau scheduler and early stopping share."""
from __future__ import annotations

import pytest

from src.training.best import EarlyStopping, check_mode, is_improvement


def test_is_improvement():
    assert is_improvement(0.1, None) is True  # the first value is the best so far
    assert [is_improvement(v, 0.5) for v in (0.4, 0.5, 0.6)] == [False, False, True]  # a tie is no new best
    assert [is_improvement(v, 0.5, "min") for v in (0.4, 0.5, 0.6)] == [True, False, False]
    assert [is_improvement(v, 0.5, "max", 0.1) for v in (0.6, 0.61)] == [False, True]  # more than min_delta
    assert [is_improvement(v, 0.5, "min", 0.1) for v in (0.4, 0.39)] == [False, True]


def test_check_mode():
    assert check_mode("min") == "min"
    with pytest.raises(ValueError, match="^mode must be 'max' or 'min', got 'up'$"):
        check_mode("up")


def test_early_stopping_counts():
    stopper = EarlyStopping(patience=2, mode="max")
    assert [stopper.step(v) for v in (0.5, 0.6, 0.6, 0.55)] == [False, False, False, True]
    assert (stopper.best, stopper.bad_epochs) == (0.6, 2)
    resumed = EarlyStopping(patience=2)
    resumed.load_state_dict(stopper.state_dict())
    assert (resumed.best, resumed.bad_epochs) == (0.6, 2)
    by_loss = EarlyStopping(patience=1, mode="min", min_delta=0.1)
    assert [by_loss.step(v) for v in (1.0, 0.95)] == [False, True]  # 0.05 better is not enough
    with pytest.raises(ValueError, match="patience must be >= 1"):
        EarlyStopping(patience=0)
