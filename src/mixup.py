"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a normalised batch, with soft targets.

Both blend each image with another image of the same batch (a random permutation) and blend
the one-hot targets by the same weight, so the loss receives (N, C) probability rows (the
project's losses accept them). The randomness comes from a numpy Generator the caller seeds
per step, which keeps a resumed run identical to an uninterrupted one.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

SWITCH_PROB = 0.5  # with both enabled, each batch uses CutMix with this probability (timm's default)


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels.long(), num_classes).float()


def cutmix_box(height: int, width: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of a box covering about 1 - lam of the image, centre uniform, clipped."""
    cut = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * cut), int(width * cut)
    cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
    top, bottom = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    left, right = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return top, left, bottom, right


def mix_batch(images: torch.Tensor, labels: torch.Tensor, num_classes: int, mixup_alpha: float,
              cutmix_alpha: float, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (mixed images, soft targets (N, C)); with both alphas 0, the images and one-hot targets."""
    targets = one_hot(labels, num_classes).to(images.device)
    use_cutmix = cutmix_alpha > 0 and (mixup_alpha <= 0 or rng.random() < SWITCH_PROB)
    alpha = cutmix_alpha if use_cutmix else mixup_alpha
    if alpha <= 0 or images.shape[0] < 2:
        return images, targets
    lam = float(rng.beta(alpha, alpha))
    perm = torch.from_numpy(rng.permutation(images.shape[0])).to(images.device)
    if use_cutmix:
        top, left, bottom, right = cutmix_box(images.shape[-2], images.shape[-1], lam, rng)
        images = images.clone()
        images[:, :, top:bottom, left:right] = images[perm, :, top:bottom, left:right]
        lam = 1.0 - (bottom - top) * (right - left) / (images.shape[-2] * images.shape[-1])
    else:
        images = images.mul(lam).add_(images[perm], alpha=1.0 - lam)
    return images, targets.mul(lam).add_(targets[perm], alpha=1.0 - lam)
