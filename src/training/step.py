"""The step executor: one micro-batch forward and backward, as NVIDIA's ConvNets ``Executor``.

The uint8 batch is normalised on the device (channels_last when asked), mixed (mixup / CutMix,
seeded by position), run under autocast, and its loss scaled and backpropagated; DDP's gradient
all-reduce runs on the last micro-batch of an optimizer step only. Accumulation, the optimizer
step and the EMA are the trainer's (src.training.trainer).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from src.common.preprocess import Preprocess
from src.data.dataset import Batch
from src.data.mixup import mix_batch, position_seed
from src.data.transforms import to_device_normalized
from src.models import NETWORK_STRIDE
from src.runtime.amp import NoScaler, autocast
from src.runtime.distributed import DistInfo

EMPTY_BATCH_STAND_IN = 2  # images in the zero-weight batch a rank runs when all its images were unreadable
DROPOUT_STREAM = 1  # keeps the dropout seeds of a position apart from its mixing seeds


@dataclass(frozen=True)
class Mixing:
    """Mixup / CutMix of one micro-batch: alphas (0 = off) and the seed of its position."""

    mixup: float
    cutmix: float
    seed: tuple[int, ...]

    @property
    def active(self) -> bool:
        return self.mixup > 0 or self.cutmix > 0


class StepExecutor:
    """Forward and backward of micro-batches for one network (``model``, run as ``train_model``:
    itself, DDP(model) and/or torch.compile(...))."""

    def __init__(self, model: nn.Module, train_model: nn.Module, ddp: nn.parallel.DistributedDataParallel | None,
                 criterion: nn.Module, scaler: NoScaler, info: DistInfo, amp: str, channels_last: bool,
                 preprocess: Preprocess, num_classes: int, frozen_backbone: bool) -> None:
        self.model, self.train_model, self.ddp = model, train_model, ddp
        self.criterion, self.scaler, self.info, self.amp = criterion, scaler, info, amp
        self.channels_last, self.preprocess, self.num_classes = channels_last, preprocess, num_classes
        self.frozen_backbone = frozen_backbone

    def _min_batch_for_batchnorm(self, image_size: int) -> int:
        """BatchNorm in train mode needs two values per channel: two images once the last map is 1x1."""
        return 2 if image_size <= NETWORK_STRIDE and not self.frozen_backbone else 1  # frozen BN is in eval

    def forward_backward(self, batch: Batch, accumulate: int, last_micro: bool, image_size: int,
                         mixing: Mixing) -> torch.Tensor:
        """Backpropagate the loss of one of ``accumulate`` micro-batches (scaled by 1 / accumulate);
        returns the loss, detached.

        A rank whose batch was (almost) all unreadable images still joins DDP's all-reduce with a
        stand-in batch of weight 0 (loss 0); alone, it skips the batch."""
        info = self.info
        weight = 1.0 / accumulate
        if batch.labels.numel() < self._min_batch_for_batchnorm(image_size):
            if not info.distributed:
                return torch.zeros((), device=info.device)
            batch, weight = stand_in_batch(image_size), 0.0
        pre = self.preprocess
        x = to_device_normalized(batch.images, pre.mean, pre.std, info.device, self.channels_last)
        target: torch.Tensor = batch.labels.to(info.device, non_blocking=True)
        if mixing.active:
            x, target = mix_batch(x, target, self.num_classes, mixing.mixup, mixing.cutmix, seed=mixing.seed)
        no_sync = self.ddp.no_sync() if self.ddp is not None and not last_micro else contextlib.nullcontext()
        with no_sync:
            with autocast(info.device, self.amp):
                loss = self.criterion(self.train_model(x), target)
            self.scaler.backward(loss * weight)
        return loss.detach().float() * (weight * accumulate)


def seed_micro_batch(position: tuple[int, int, int]) -> None:
    """Seed torch's generators (CPU and every GPU) for the dropout and stochastic depth of the
    micro-batch at ``position`` = (seed, global step, micro-batch of the global batch): its masks are
    then the same whichever process runs it, after whatever ran before (exact resume on another
    number of processes)."""
    torch.manual_seed(position_seed((*position, DROPOUT_STREAM)))


def stand_in_batch(image_size: int) -> Batch:
    """Zero images with no labels' worth of weight: a rank whose whole batch was unreadable still
    joins DDP's all-reduce."""
    images = torch.zeros((EMPTY_BATCH_STAND_IN, 3, image_size, image_size), dtype=torch.uint8)
    return Batch(images, torch.zeros(EMPTY_BATCH_STAND_IN, dtype=torch.int64), [])


def step_flags(loss: torch.Tensor, stop: bool, distributed: bool) -> torch.Tensor:
    """[loss not finite, stop requested] as a device tensor, agreed across ranks (all-reduce MAX: any
    rank's NaN loss or stop signal counts for all, or their weights and steps would diverge). No host
    sync here: the scaler reads it with the gradient check, once per step."""
    flags = torch.stack([(~torch.isfinite(loss)).to(torch.float32).reshape(()), torch.zeros((), device=loss.device)])
    if stop:
        flags[1].fill_(1.0)
    if distributed:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return flags
