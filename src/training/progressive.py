"""Progressive learning (EfficientNetV2 paper, Sec. 4): small images and weak regularisation early,
larger images and stronger regularisation later.

``cfg.progressive`` lists stages, e.g.::

    progressive:
      - {epochs: 2, image_size: 128, dropout: 0.1, randaug_magnitude: 5, mixup: 0.0}
      - {epochs: 2, image_size: 192, dropout: 0.2, randaug_magnitude: 10, mixup: 0.1}
      - {epochs: 1, image_size: 256, dropout: 0.3, randaug_magnitude: 15, mixup: 0.2}

The last stage runs until ``epoch_size``. A key a stage leaves out keeps the run's value. At a
stage boundary the run rebuilds the train transform (new crop size and RandAugment magnitude;
src.training.data) and its loader, and sets the classifier dropout; evaluation keeps the final size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn


def progressive_stage(stages: list[dict[str, Any]] | None, epoch: int) -> dict[str, Any] | None:
    """The stage in effect at 0-based ``epoch``; the last stage continues until training ends."""
    if not stages:
        return None
    end = 0
    for stage in stages:
        end += stage["epochs"]
        if epoch < end:
            return stage
    return stages[-1]


@dataclass(frozen=True)
class StageSettings:
    """What one epoch trains with; equal settings mean the loader can be kept."""

    index: int  # stage number, 0-based; -1 without progressive learning
    image_size: int
    dropout: float | None  # None: keep the model's dropout
    randaug_magnitude: int
    mixup: float


def stage_index(stages: list[dict[str, Any]] | None, epoch: int) -> int:
    """Index of the stage in effect at 0-based ``epoch`` (-1 when there are no stages)."""
    stage = progressive_stage(stages, epoch)
    if stage is None:
        return -1
    return next(i for i, s in enumerate(stages or []) if s is stage)


def stage_settings(cfg: Any, epoch: int, image_size: int) -> StageSettings:
    """Settings for ``epoch``: the stage's values over the run's (``image_size`` is the run's crop)."""
    stage = progressive_stage(cfg.progressive, epoch) or {}
    return StageSettings(index=stage_index(cfg.progressive, epoch),
                         image_size=int(stage.get("image_size", image_size)),
                         dropout=stage.get("dropout", cfg.dropout),
                         randaug_magnitude=int(stage.get("randaug_magnitude", cfg.randaug_magnitude)),
                         mixup=float(stage.get("mixup", cfg.mixup)))


def set_dropout(model: nn.Module, p: float | None) -> None:
    """Set the classifier's dropout probability (``model.classifier[0]``); None leaves it."""
    if p is None:
        return
    dropout = model.classifier[0]
    if not isinstance(dropout, nn.Dropout):
        raise TypeError(f"expected model.classifier[0] to be nn.Dropout, got {type(dropout).__name__}")
    dropout.p = float(p)
