"""Exponential moving average of model weights (Polyak averaging), as in the TF/timm EfficientNet recipes.

The averaged copy usually evaluates better than the raw weights late in training; BN running
statistics are averaged too so the copy's normalisation matches its weights.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from src.runtime.distributed import unwrap_model

# Warmup (1 + n) / (10 + n): early updates follow the model closely instead of averaging in the
# random initialisation for thousands of steps (TensorFlow's ExponentialMovingAverage num_updates).
WARMUP_OFFSET_NUM = 1.0
WARMUP_OFFSET_DEN = 10.0


class ModelEma:
    """Keeps ``ema = d * ema + (1 - d) * model`` for float parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.module = copy.deepcopy(unwrap_model(model)).eval().requires_grad_(False)
        self.decay = decay
        self.warmup = warmup
        self.updates = 0
        self._float_names, self._int_names = self._split_names(self.module)

    @staticmethod
    def _split_names(module: nn.Module) -> tuple[list[str], list[str]]:
        state = module.state_dict()
        floats = [name for name, value in state.items() if value.is_floating_point()]
        return floats, [name for name in state if name not in set(floats)]

    def decay_at(self, step: int) -> float:
        """The decay used for update number ``step`` (0-based)."""
        if not self.warmup:
            return self.decay
        return min(self.decay, (WARMUP_OFFSET_NUM + step) / (WARMUP_OFFSET_DEN + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int | None = None) -> float:
        """Fold the current weights in; ``step`` defaults to the number of updates so far.

        Returns the decay that was applied. One fused _foreach call per list keeps this cheap
        even for models with hundreds of tensors.
        """
        decay = self.decay_at(self.updates if step is None else step)
        ema_state = self.module.state_dict()
        model_state = unwrap_model(model).state_dict()
        ema_floats = [ema_state[name] for name in self._float_names]
        model_floats = [model_state[name].detach().to(ema_state[name].dtype) for name in self._float_names]
        torch._foreach_mul_(ema_floats, decay)
        torch._foreach_add_(ema_floats, model_floats, alpha=1.0 - decay)
        for name in self._int_names:  # e.g. BN num_batches_tracked: copied, not averaged
            ema_state[name].copy_(model_state[name])
        self.updates += 1
        return decay

    def state_dict(self) -> dict:
        """Weights plus the update count, so a resumed run continues the warmup where it stopped."""
        return {"state_dict": self.module.state_dict(), "updates": self.updates, "decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["state_dict"])
        self.updates = int(state["updates"])
