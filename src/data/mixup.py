"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019): torchvision's v2 transforms, seeded per step.

``v2.MixUp`` / ``v2.CutMix`` blend each image with its neighbour in the (shuffled) batch and turn
the labels into (N, C) probability rows weighted the same way; the losses accept those rows and
smooth them afterwards. They draw lam, the box and the MixUp/CutMix choice from torch's global
CPU generator; ``mix_batch`` forks that generator and seeds it from the batch's position (seed,
step, micro-batch of the global batch), so the mixing of a resumed run equals the uninterrupted one's whatever
ran before, and dropout's random stream is the same with or without mixing.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2

SWITCH_PROB = 0.5  # with both enabled, each batch uses CutMix with this probability (timm's default)


@lru_cache(maxsize=8)
def build_mixing(num_classes: int, mixup_alpha: float, cutmix_alpha: float) -> v2.Transform | None:
    """MixUp, CutMix, or a choice of the two per batch; None with both alphas 0."""
    mixup = v2.MixUp(alpha=mixup_alpha, num_classes=num_classes) if mixup_alpha > 0 else None
    cutmix = v2.CutMix(alpha=cutmix_alpha, num_classes=num_classes) if cutmix_alpha > 0 else None
    if mixup is not None and cutmix is not None:
        return v2.RandomChoice([mixup, cutmix], p=[1.0 - SWITCH_PROB, SWITCH_PROB])
    return mixup or cutmix


def position_seed(keys: Sequence[int]) -> int:
    """A 64-bit seed from a position such as (seed, step, micro-batch); numpy's SeedSequence keeps nearby
    keys apart."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0])


def mix_batch(images: torch.Tensor, labels: torch.Tensor, num_classes: int, mixup_alpha: float,
              cutmix_alpha: float, seed: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (mixed images, soft targets (N, C)); with both alphas 0 or one image, the images and one-hot targets.

    ``seed`` names the batch's position, e.g. (cfg.seed, global_step, micro-batch): the same seed
    gives the same mixing, and the global generators are left as they were.
    """
    mixing = build_mixing(num_classes, float(mixup_alpha), float(cutmix_alpha))
    if mixing is None or images.shape[0] < 2:  # one image would be mixed with itself
        return images, F.one_hot(labels.long(), num_classes).float()
    with torch.random.fork_rng(devices=[]):  # every draw is on the CPU generator, whatever the device
        torch.default_generator.manual_seed(position_seed(seed))
        return mixing(images, labels.long())
