"""Classification losses: the ModelZoo smoothed cross-entropy, or plain cross-entropy."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class SmoothedCrossEntropy(nn.Module):
    """Cross-entropy against a smoothed one-hot target: on = 1 - eps, off = eps / (C - 1).

    This is the ModelZoo's CrossEntropySmooth (eps spread over the *other* classes, unlike
    torch's label_smoothing which spreads eps / C over all classes including the true one).
    Targets may be class indices (N,) or probability rows (N, C) from mixup/cutmix; smoothing is
    affine in the target, so smoothing a mixed target equals mixing the smoothed targets.
    """

    def __init__(self, num_classes: int, smooth_factor: float = 0.1) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"label smoothing needs at least 2 classes, got {num_classes}")
        if not 0.0 <= smooth_factor < 1.0:
            raise ValueError(f"smooth_factor must be in [0, 1), got {smooth_factor}")
        self.num_classes = num_classes
        self.smooth_factor = smooth_factor
        self.on_value = 1.0 - smooth_factor
        self.off_value = smooth_factor / (num_classes - 1)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"expected logits of shape (N, {self.num_classes}), got {tuple(logits.shape)}")
        # At least float32 (fp16/bf16 logits under autocast would lose precision in log_softmax).
        log_probs = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=1)
        if target.ndim == 1:
            # -sum(t * logp) with t = off everywhere and on at the label, without building t.
            picked = log_probs.gather(1, target.long().unsqueeze(1)).squeeze(1)
            per_sample = -(self.off_value * log_probs.sum(1) + (self.on_value - self.off_value) * picked)
        elif target.shape == logits.shape:
            smoothed = target.to(log_probs.dtype) * (self.on_value - self.off_value) + self.off_value
            per_sample = -(smoothed * log_probs).sum(1)
        else:
            raise ValueError(f"target must be class indices (N,) or probabilities (N, C); got {tuple(target.shape)}")
        return per_sample.mean()

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, smooth_factor={self.smooth_factor}"


def build_loss(cfg: Any, num_classes: int) -> nn.Module:
    """SmoothedCrossEntropy when use_label_smooth and label_smooth_factor > 0, else nn.CrossEntropyLoss.

    Both accept class indices or (N, C) probability targets.
    """
    if cfg.use_label_smooth and cfg.label_smooth_factor > 0:
        return SmoothedCrossEntropy(num_classes, cfg.label_smooth_factor)
    return nn.CrossEntropyLoss()
