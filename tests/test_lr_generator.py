"""LR schedules against hand-computed values."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from src.config import load_config
from src.training.lr_generator import PlateauScheduler, cosine_restarts_lr, get_lr
from src.training.trainer import schedule_from_config

# lr_init 0.1, lr_max 1, lr_end 0, 1 warmup epoch of 2 steps, 3 epochs -> T = 6, W = 2.
SMALL = dict(lr_init=0.1, lr_end=0.0, lr_max=1.0, warmup_epochs=1, total_epochs=3, steps_per_epoch=2)
WARMUP = [0.1, 0.55]


@pytest.mark.parametrize("mode,after_warmup", [
    ("linear", [1.0, 0.75, 0.5, 0.25]),
    ("liner", [1.0, 0.75, 0.5, 0.25]),
    ("cosine", [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))]),
    ("poly", [1.0, 0.5625, 0.25, 0.0625]),
    ("constant", [1.0, 1.0, 1.0, 1.0]),
])
def test_modes_hand_values(mode: str, after_warmup: list[float]) -> None:
    np.testing.assert_allclose(get_lr(**SMALL, lr_decay_mode=mode), WARMUP + after_warmup, rtol=1e-12)


def test_linear_with_lr_end_and_poly_power() -> None:
    np.testing.assert_allclose(get_lr(0.1, 0.2, 1.0, 1, 3, 2, "linear"), [0.1, 0.55, 1.0, 0.8, 0.6, 0.4])
    np.testing.assert_allclose(get_lr(0.1, 0.0, 1.0, 1, 3, 2, "poly", power=1.0), WARMUP + [1.0, 0.75, 0.5, 0.25])


def test_modelzoo_b2_gpu_numbers() -> None:
    lrs = get_lr(7e-5, 7e-6, 0.092, 2, 350, 625, "liner")
    assert lrs.shape == (350 * 625,)
    assert lrs[0] == pytest.approx(7e-5)
    assert lrs[625] == pytest.approx(0.046035)  # halfway through warmup
    assert lrs[1250] == pytest.approx(0.092)
    assert lrs[-1] == pytest.approx(7e-6 + (0.092 - 7e-6) / 217_500)


def test_steps_mode_milestones() -> None:
    lrs = get_lr(0.0, 0.0, 1.0, 0, 1, 10, "steps")
    np.testing.assert_allclose(lrs, [1, 1, 1, 0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])


def test_exponential_staircase_after_warmup_floored_at_lr_end() -> None:
    lrs = get_lr(0.0, 0.3, 1.0, 1, 5, 5, "exponential", decay_rate=0.5, decay_epochs=1)
    expected = [0.0, 0.2, 0.4, 0.6, 0.8] + [1.0] * 5 + [0.5] * 5 + [0.3] * 10
    np.testing.assert_allclose(lrs, expected)


def test_exponential_defaults_are_tf_097_every_2_4_epochs() -> None:
    # 5 steps per epoch, 1 warmup epoch, 10 epochs: 2.4 epochs are 12 steps, counted after the 5 warmup steps
    lrs = get_lr(0.0, 0.0, 1.0, 1, 10, 5, "exponential")
    expected = [0.0, 0.2, 0.4, 0.6, 0.8] + [1.0] * 12 + [0.97] * 12 + [0.97 ** 2] * 12 + [0.97 ** 3] * 9
    np.testing.assert_allclose(lrs, expected, rtol=1e-12)


def test_warmup_longer_than_run_is_cut() -> None:
    # W = 10 steps but T = 4: the ramp keeps its slope (0.09 per step) and stops where the run ends.
    np.testing.assert_allclose(get_lr(0.1, 0.0, 1.0, 5, 2, 2, "linear"), [0.1, 0.19, 0.28, 0.37])


@pytest.mark.parametrize("kwargs,message", [
    (dict(lr_decay_mode="foo"), "lr_decay_mode 'foo' is not one of"),
    (dict(lr_decay_mode="linear", steps_per_epoch=0), "need steps_per_epoch >= 1"),
    (dict(lr_decay_mode="linear", gamma=0.1), "unknown schedule option"),
])
def test_get_lr_errors(kwargs: dict, message: str) -> None:
    args = dict(SMALL) | kwargs
    with pytest.raises(ValueError, match=message):
        get_lr(**args)


def test_cosine_restarts_hand_values() -> None:
    assert cosine_restarts_lr(0, 1.0, 0.0, 10) == pytest.approx(1.0)
    assert cosine_restarts_lr(5, 1.0, 0.0, 10) == pytest.approx(0.5)
    assert cosine_restarts_lr(10, 1.0, 0.0, 10) == pytest.approx(1.0)
    assert cosine_restarts_lr(12.5, 1.0, 0.0, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    # mult 2, t0 2: cycles [0, 2), [2, 6), [6, 14)
    assert cosine_restarts_lr(1, 1.0, 0.0, 2, 2) == pytest.approx(0.5)
    assert cosine_restarts_lr(2, 1.0, 0.0, 2, 2) == pytest.approx(1.0)
    assert cosine_restarts_lr(4, 1.0, 0.0, 2, 2) == pytest.approx(0.5)
    assert cosine_restarts_lr(6, 1.0, 0.0, 2, 2) == pytest.approx(1.0)
    assert cosine_restarts_lr(10, 1.0, 0.2, 2, 2) == pytest.approx(0.6)


def test_plateau_reduces_after_patience_and_respects_min_lr() -> None:
    plateau = PlateauScheduler(1.0, factor=0.1, patience=1, min_lr=0.005)
    results = [plateau.step(m) for m in (0.5, 0.4, 0.4, 0.6, 0.6, 0.5)]
    assert results == [False, False, True, False, False, True]
    assert plateau.lr == pytest.approx(0.01)
    assert [plateau.step(0.1), plateau.step(0.1)] == [False, True] and plateau.lr == 0.005
    assert [plateau.step(0.1), plateau.step(0.1)] == [False, False] and plateau.lr == 0.005


def test_plateau_min_mode_and_state_round_trip() -> None:
    plateau = PlateauScheduler(2.0, factor=0.5, patience=0, mode="min")
    assert [plateau.step(m) for m in (3.0, 2.0, 2.5)] == [False, False, True] and plateau.lr == 1.0
    other = PlateauScheduler(2.0, factor=0.5, patience=0, mode="min")
    other.load_state_dict(plateau.state_dict())
    assert other.step(2.1) is True and other.lr == 0.5


def _cfg(*extra: str):
    return load_config(["--lr_init", "0.1", "--lr_max", "1.0", "--lr_end", "0.01", "--warmup_epochs", "1",
                        "--epoch_size", "4", *extra])


def test_schedule_step_matches_get_lr_and_clamps_past_the_end() -> None:
    schedule = schedule_from_config(_cfg("--lr_decay_mode", "cosine"), steps_per_epoch=3)
    expected = get_lr(0.1, 0.01, 1.0, 1, 4, 3, "cosine")
    assert [schedule.lr_at(i) for i in range(12)] == pytest.approx(expected.tolist())
    assert schedule.lr_at(50) == pytest.approx(expected[-1])
    assert (schedule.total_steps, schedule.warmup_steps) == (12, 3)


def test_schedule_scale_lr_uses_global_batch() -> None:
    cfg = _cfg("--scale_lr", "--batch_size", "64", "--accumulate_grad_batches", "2", "--lr_base_batch", "128")
    schedule = schedule_from_config(cfg, steps_per_epoch=3, world_size=2)  # global 256 -> x2
    assert (schedule.lr_at(0), schedule.lr_at(3)) == pytest.approx((0.2, 2.0))
    assert schedule_from_config(_cfg(), steps_per_epoch=3, world_size=2).lr_at(3) == pytest.approx(1.0)


def test_schedule_plateau_resumes_exactly() -> None:
    cfg = _cfg("--lr_scheduler", "plateau", "--plateau_patience", "0", "--plateau_factor", "0.5")
    schedule = schedule_from_config(cfg, steps_per_epoch=3)
    assert schedule.lr_at(1) == pytest.approx(0.4)  # warmup still applies: 0.1 + 0.9 / 3
    assert schedule.lr_at(4) == 1.0
    assert [schedule.on_validation(m) for m in (0.3, 0.2)] == [False, True]
    assert schedule.lr_at(7) == 0.5
    buffer = io.BytesIO()
    torch.save(schedule.state_dict(), buffer)
    buffer.seek(0)
    resumed = schedule_from_config(cfg, steps_per_epoch=3)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    assert resumed.lr_at(7) == 0.5
    assert resumed.on_validation(0.25) is True and resumed.lr_at(8) == 0.25  # best 0.3 was restored


def test_schedule_cosine_restarts_after_warmup() -> None:
    cfg = _cfg("--lr_scheduler", "cosine_restarts", "--restart_epochs", "2")
    schedule = schedule_from_config(cfg, steps_per_epoch=4)
    assert schedule.lr_at(4) == pytest.approx(1.0)
    assert schedule.lr_at(8) == pytest.approx(cosine_restarts_lr(1.0, 1.0, 0.01, 2))
    assert schedule.lr_at(12) == pytest.approx(1.0)  # restart two epochs after warmup
    assert schedule.on_validation(0.9) is False


def test_schedule_rejects_state_of_another_scheduler() -> None:
    step = schedule_from_config(_cfg(), steps_per_epoch=3)
    plateau = schedule_from_config(_cfg("--lr_scheduler", "plateau"), steps_per_epoch=3)
    with pytest.raises(ValueError, match="LR state is for lr_scheduler 'plateau', this run uses 'step'"):
        step.load_state_dict(plateau.state_dict())
