"""Learning-rate schedules: the ModelZoo per-step generator plus two epoch-level alternatives.

``get_lr`` returns one value per optimizer step like the MindSpore ModelZoo ``get_lr``: a linear
warmup from lr_init to lr_max over W = steps_per_epoch * warmup_epochs steps, then a decay to lr_end
over the remaining T - W steps. ``LRSchedule`` is what the trainer holds: it answers "which LR at
global step i" from the config alone, so resuming at step i restores the exact LR position
(the ModelZoo restarted its schedule from step 0 on resume).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from src.config import LR_DECAY_MODES
from src.training.best import check_mode, is_improvement

# 'steps' mode: multiply by STEP_DECAY_FACTOR at these fractions of all training steps.
STEP_MILESTONES = (0.3, 0.6, 0.8)
STEP_DECAY_FACTOR = 0.1
# Defaults of the mode-specific knobs (TF EfficientNet: 0.97 every 2.4 epochs; ModelZoo poly power 2).
DEFAULT_DECAY_RATE = 0.97
DEFAULT_DECAY_EPOCHS = 2.4
DEFAULT_POWER = 2.0
MODE_ALIASES = {"liner": "linear"}  # ModelZoo's GPU config spells linear "liner"
MODE_KWARGS = {"decay_rate", "decay_epochs", "power"}
SCHEDULERS = ("step", "plateau", "cosine_restarts")


def _lr_for_steps(steps: np.ndarray, lr_init: float, lr_end: float, lr_max: float, warmup_steps: int,
                  total_steps: int, steps_per_epoch: int, mode: str, decay_rate: float,
                  decay_epochs: float, power: float) -> np.ndarray:
    """The schedule evaluated at integer step indices (vectorised; used by get_lr and LRSchedule)."""
    steps = steps.astype(np.float64)
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = np.clip((steps - warmup_steps) / decay_steps, 0.0, 1.0)  # 0 at the end of warmup
    if mode == "linear":
        decayed = lr_max - (lr_max - lr_end) * progress
    elif mode == "cosine":
        decayed = lr_end + 0.5 * (lr_max - lr_end) * (1.0 + np.cos(np.pi * progress))
    elif mode == "poly":
        decayed = lr_end + (lr_max - lr_end) * (1.0 - progress) ** power
    elif mode == "steps":
        passed = sum((steps >= fraction * total_steps).astype(np.float64) for fraction in STEP_MILESTONES)
        decayed = lr_max * STEP_DECAY_FACTOR ** passed
    elif mode == "exponential":  # staircase, counted from the end of warmup, never below lr_end
        interval = decay_epochs * steps_per_epoch
        decayed = np.maximum(lr_max * decay_rate ** np.floor(np.maximum(steps - warmup_steps, 0) / interval), lr_end)
    elif mode == "constant":
        decayed = np.full_like(steps, lr_max)
    else:
        raise ValueError(f"lr_decay_mode {mode!r} is not one of {', '.join(LR_DECAY_MODES)}")
    if warmup_steps == 0:
        return decayed
    warm = lr_init + (lr_max - lr_init) * steps / warmup_steps
    return np.where(steps < warmup_steps, warm, decayed)


def _check_schedule_args(lr_decay_mode: str, total_epochs: int, steps_per_epoch: int, warmup_epochs: float,
                         mode_kwargs: dict[str, Any]) -> str:
    mode = MODE_ALIASES.get(lr_decay_mode, lr_decay_mode)
    if mode not in LR_DECAY_MODES:
        raise ValueError(f"lr_decay_mode {lr_decay_mode!r} is not one of {', '.join(LR_DECAY_MODES)}")
    if steps_per_epoch < 1 or total_epochs < 1:
        raise ValueError(f"need steps_per_epoch >= 1 and total_epochs >= 1, got {steps_per_epoch} and {total_epochs}")
    if warmup_epochs < 0:
        raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
    unknown = set(mode_kwargs) - MODE_KWARGS
    if unknown:
        raise ValueError(f"unknown schedule option(s) {sorted(unknown)}; allowed {sorted(MODE_KWARGS)}")
    return mode


def _warmup_steps(warmup_epochs: float, steps_per_epoch: int) -> int:
    """Warmup longer than the run keeps its slope and is cut at the end (short runs of recipe configs)."""
    return int(round(warmup_epochs * steps_per_epoch))


def get_lr(lr_init: float, lr_end: float, lr_max: float, warmup_epochs: float, total_epochs: int,
           steps_per_epoch: int, lr_decay_mode: str, **mode_kwargs: float) -> np.ndarray:
    """One learning rate per step for the whole run (length total_epochs * steps_per_epoch).

    Warmup (all modes): i < W -> lr_init + (lr_max - lr_init) * i / W. After it, with
    u = (i - W) / (T - W): linear lr_max - (lr_max - lr_end) * u; cosine
    lr_end + (lr_max - lr_end)(1 + cos(pi u)) / 2; poly lr_end + (lr_max - lr_end)(1 - u)^power;
    steps lr_max * 0.1^k after k of the 30/60/80 % marks of T; exponential
    lr_max * decay_rate^floor((i - W) / (decay_epochs * steps_per_epoch)), floored at lr_end;
    constant lr_max. mode_kwargs: decay_rate, decay_epochs, power.
    """
    mode = _check_schedule_args(lr_decay_mode, total_epochs, steps_per_epoch, warmup_epochs, mode_kwargs)
    total_steps = total_epochs * steps_per_epoch
    return _lr_for_steps(
        np.arange(total_steps), lr_init, lr_end, lr_max, _warmup_steps(warmup_epochs, steps_per_epoch),
        total_steps, steps_per_epoch, mode, mode_kwargs.get("decay_rate", DEFAULT_DECAY_RATE),
        mode_kwargs.get("decay_epochs", DEFAULT_DECAY_EPOCHS), mode_kwargs.get("power", DEFAULT_POWER))


def cosine_restarts_lr(epoch_float: float, lr_max: float, lr_end: float, t0: float, mult: float = 1) -> float:
    """SGDR cosine annealing with warm restarts: cycle i lasts t0 * mult**i epochs and starts at lr_max."""
    if t0 <= 0 or mult < 1:
        raise ValueError(f"need t0 > 0 and mult >= 1, got t0={t0}, mult={mult}")
    epoch_float = max(epoch_float, 0.0)
    if mult == 1:
        cycle_len, into_cycle = t0, math.fmod(epoch_float, t0)
    else:
        cycle = math.floor(math.log(1 + epoch_float / t0 * (mult - 1), mult))
        cycle_start = t0 * (mult ** cycle - 1) / (mult - 1)
        cycle_len, into_cycle = t0 * mult ** cycle, epoch_float - cycle_start
        if into_cycle >= cycle_len:  # float rounding right at a boundary
            cycle_len, into_cycle = cycle_len * mult, into_cycle - cycle_len
    return lr_end + 0.5 * (lr_max - lr_end) * (1 + math.cos(math.pi * into_cycle / cycle_len))


class PlateauScheduler:
    """Multiply the LR by ``factor`` when the metric has not improved for more than ``patience`` checks.

    Same rule as torch's ReduceLROnPlateau (threshold 0, no cooldown) but with plain-data state that
    loads with ``torch.load(weights_only=True)``.
    """

    def __init__(self, lr: float, factor: float = 0.1, patience: int = 3, min_lr: float = 0.0,
                 mode: str = "max") -> None:
        if not 0 < factor < 1:
            raise ValueError(f"factor must be in (0, 1), got {factor}")
        if patience < 0:
            raise ValueError(f"patience must be >= 0, got {patience}")
        self.lr, self.factor, self.patience, self.min_lr, self.mode = lr, factor, patience, min_lr, check_mode(mode)
        self.best: float | None = None
        self.num_bad = 0

    def step(self, metric: float) -> bool:
        """Record one validation result; returns True when the LR was reduced."""
        if is_improvement(metric, self.best, self.mode):
            self.best, self.num_bad = float(metric), 0
            return False
        self.num_bad += 1
        if self.num_bad <= self.patience:
            return False
        self.num_bad = 0
        new_lr = max(self.lr * self.factor, self.min_lr)
        reduced = new_lr < self.lr
        self.lr = new_lr
        return reduced

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "best": self.best, "num_bad": self.num_bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr, self.best, self.num_bad = float(state["lr"]), state["best"], int(state["num_bad"])


class LRSchedule:
    """The trainer's LR source: warmup, then the per-step generator, plateau or cosine restarts.

    Pure function of the global optimizer step (plus, for 'plateau', the validation history kept in
    state_dict), so a resumed run continues at exactly the LR it stopped at.

    Extending (or shortening) a run on resume (``--resume CKPT --epoch_size N``) stretches the rest
    of the schedule: from the resumed epoch e0 the original schedule's remainder [e0, E_old] is
    mapped linearly onto [e0, N], so the LR goes on from where it was and reaches lr_end at epoch N
    (a run that had already ended keeps its final LR for the added epochs). The stretches are part
    of state_dict, so resuming the extended run again is exact.
    """

    def __init__(self, *, scheduler: str, lr_init: float, lr_max: float, lr_end: float, warmup_epochs: float,
                 total_epochs: int, steps_per_epoch: int, lr_decay_mode: str = "linear",
                 decay_rate: float = DEFAULT_DECAY_RATE, decay_epochs: float = DEFAULT_DECAY_EPOCHS,
                 power: float = DEFAULT_POWER, plateau_factor: float = 0.1, plateau_patience: int = 3,
                 restart_epochs: float = 10, restart_mult: float = 1) -> None:
        if scheduler not in SCHEDULERS:
            raise ValueError(f"lr_scheduler {scheduler!r} is not one of {', '.join(SCHEDULERS)}")
        mode_kwargs = {"decay_rate": decay_rate, "decay_epochs": decay_epochs, "power": power}
        self.mode = _check_schedule_args(lr_decay_mode, total_epochs, steps_per_epoch, warmup_epochs, mode_kwargs)
        self.scheduler = scheduler
        self.lr_init, self.lr_max, self.lr_end = lr_init, lr_max, lr_end
        self.steps_per_epoch = steps_per_epoch
        self.total_epochs = total_epochs
        self.total_steps = total_epochs * steps_per_epoch
        self.base_total_epochs = total_epochs  # the schedule's own length, before any stretch
        self.stretches: list[tuple[float, float, float]] = []  # (from epoch, old total, new total)
        self.warmup_steps = _warmup_steps(warmup_epochs, steps_per_epoch)
        self.mode_kwargs = mode_kwargs
        self.restart_epochs, self.restart_mult = restart_epochs, restart_mult
        self.plateau = PlateauScheduler(lr_max, plateau_factor, plateau_patience, min_lr=lr_end, mode="max")

    def lr_at(self, global_step: int) -> float:
        """LR for optimizer step ``global_step`` (0-based); steps past the end keep the last value."""
        step = self._unstretched(min(max(int(global_step), 0), self.total_steps - 1))
        if step < self.warmup_steps or self.scheduler == "step":
            base_steps = self.base_total_epochs * self.steps_per_epoch
            return float(_lr_for_steps(np.array([step]), self.lr_init, self.lr_end, self.lr_max, self.warmup_steps,
                                       base_steps, self.steps_per_epoch, self.mode, **self.mode_kwargs)[0])
        if self.scheduler == "plateau":
            return self.plateau.lr
        epochs_after_warmup = (step - self.warmup_steps) / self.steps_per_epoch
        return cosine_restarts_lr(epochs_after_warmup, self.lr_max, self.lr_end, self.restart_epochs,
                                  self.restart_mult)

    def on_validation(self, metric: float) -> bool:
        """Feed a validation metric (higher is better, e.g. top-1); True if the LR was reduced."""
        return self.plateau.step(metric) if self.scheduler == "plateau" else False

    def _unstretched(self, step: int) -> float:
        """The position in the original schedule of ``step`` of the (possibly stretched) run."""
        if not self.stretches:
            return step
        epoch = step / self.steps_per_epoch
        for start, old_total, new_total in reversed(self.stretches):
            if epoch > start:
                epoch = start + (epoch - start) * (old_total - start) / (new_total - start)
        return epoch * self.steps_per_epoch

    def state_dict(self) -> dict[str, Any]:
        return {"scheduler": self.scheduler, "plateau": self.plateau.state_dict(), "total_epochs": self.total_epochs,
                "base_total_epochs": self.base_total_epochs, "stretches": [list(s) for s in self.stretches]}

    def load_state_dict(self, state: dict[str, Any], resume_epoch: float | None = None) -> str | None:
        """Restore; when the saved run had another total_epochs, stretch the rest of the schedule from
        ``resume_epoch`` (epochs done) to this run's length. Returns the line that says so, or None."""
        if state.get("scheduler") != self.scheduler:
            raise ValueError(f"LR state is for lr_scheduler {state.get('scheduler')!r}, "
                             f"this run uses {self.scheduler!r}")
        self.plateau.load_state_dict(state["plateau"])
        saved_total = float(state.get("total_epochs", self.total_epochs))
        self.base_total_epochs = float(state.get("base_total_epochs", saved_total))
        self.stretches = [(float(a), float(b), float(c)) for a, b, c in state.get("stretches", [])]
        if resume_epoch is None or saved_total == self.total_epochs or resume_epoch >= self.total_epochs:
            return None
        lr_then = self.lr_at(int(round(resume_epoch * self.steps_per_epoch)))
        self.stretches.append((float(resume_epoch), saved_total, float(self.total_epochs)))
        if resume_epoch >= saved_total:
            return (f"epoch_size {saved_total:g} -> {self.total_epochs}: the schedule had ended; the added epochs "
                    f"keep its final lr {lr_then:.3g}")
        return (f"epoch_size {saved_total:g} -> {self.total_epochs}: the rest of the LR schedule (from epoch "
                f"{resume_epoch:g}, lr {lr_then:.3g}) is stretched to end at epoch {self.total_epochs}")
