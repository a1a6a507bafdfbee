"""The trainer, as NVIDIA's ConvNets ``Trainer``: it owns the network and everything that changes its
weights (optimizer, LR schedule, loss scaler, gradient accumulation, the weight EMA) and validation.

``train_step`` is one optimizer step: ``accumulate_grad_batches`` micro-batches through the step
executor (src.training.step), then clipping, the step and the EMA update. Each micro-batch's
randomness (dropout, stochastic depth, mixing) is seeded from its place in the global batch (seed,
step, micro-batch), never from the rank, so how a global batch is split over processes and
accumulation does not change the weights (src.data.sampler feeds the same images either way). A step whose loss (on any
rank) or gradients are not finite is skipped and counted; too many non-finite losses in a row stop
the run. The epoch loop, checkpoints and logs are the run's (src.training.loop).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from src.common.preprocess import Preprocess
from src.config import Config
from src.data.dataset import Batch
from src.evaluation.metrics import EvalResult, evaluate
from src.models import qat
from src.runtime.amp import build_scaler
from src.runtime.distributed import DistInfo
from src.training.ema import ModelEma
from src.training.errors import NonFiniteLossError
from src.training.loss import build_loss
from src.training.lr_generator import LRSchedule
from src.training.network import channels_last, wrap_model
from src.training.optimizer import build_optimizer
from src.training.progressive import StageSettings
from src.training.step import Mixing, StepExecutor, seed_micro_batch, step_flags


@dataclass
class StepStats:
    """What one optimizer step saw on this process."""

    loss: torch.Tensor  # mean over the micro-batches, on the device (read by the monitor at log lines only)
    lr: float
    images: int  # images trained on (unreadable ones left out)
    broken: int  # unreadable images skipped
    waited: float  # seconds spent waiting for the data loader
    stop: bool = False  # a stop signal arrived on some rank: every rank stops after this step


def optimizer_from_config(model: nn.Module, cfg: Config, lr: float) -> torch.optim.Optimizer:
    """The config's optimizer (opt, weight_decay, momentum, opt_eps, rmsprop_decay, nesterov) at ``lr``."""
    return build_optimizer(model, cfg.opt, lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum, eps=cfg.opt_eps,
                           alpha=cfg.rmsprop_decay, nesterov=cfg.nesterov)


def loss_from_config(cfg: Config, num_classes: int) -> nn.Module:
    """The config's loss: label smoothing by use_label_smooth / label_smooth_factor."""
    return build_loss(num_classes, cfg.label_smooth_factor if cfg.use_label_smooth else 0.0)


def schedule_from_config(cfg: Config, steps_per_epoch: int, world_size: int = 1) -> LRSchedule:
    """The config's LR schedule; ``scale_lr`` applies the linear scaling rule (Goyal et al.): the LR
    proportional to the global batch."""
    scale = 1.0
    if cfg.scale_lr:
        scale = cfg.batch_size * world_size * cfg.accumulate_grad_batches / cfg.lr_base_batch
    return LRSchedule(scheduler=cfg.lr_scheduler, lr_init=cfg.lr_init * scale, lr_max=cfg.lr_max * scale,
                      lr_end=cfg.lr_end * scale, warmup_epochs=cfg.warmup_epochs, total_epochs=cfg.epoch_size,
                      steps_per_epoch=steps_per_epoch, lr_decay_mode=cfg.lr_decay_mode, decay_rate=cfg.lr_decay_rate,
                      decay_epochs=cfg.lr_decay_epochs, power=cfg.lr_power, plateau_factor=cfg.plateau_factor,
                      plateau_patience=cfg.plateau_patience, restart_epochs=cfg.restart_epochs,
                      restart_mult=cfg.restart_mult)


class Trainer:
    """The network of a run and what trains it; ``log`` prints a line (rank 0 only)."""

    def __init__(self, cfg: Config, info: DistInfo, model: nn.Module, num_classes: int, preprocess: Preprocess,
                 steps_per_epoch: int, log: Callable[[str], None]) -> None:
        self.cfg, self.info, self.model, self.num_classes, self.log = cfg, info, model, num_classes, log
        self.train_model, self.ddp = wrap_model(model, cfg, info)
        self.schedule = schedule_from_config(cfg, steps_per_epoch, info.world_size)
        self.optimizer = optimizer_from_config(model, cfg, self.schedule.lr_at(0))
        self.scaler = build_scaler(cfg.amp, cfg.loss_scale, info.device)
        self.ema = ModelEma(model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay > 0 else None
        self.executor = StepExecutor(model, self.train_model, self.ddp, loss_from_config(cfg, num_classes),
                                     self.scaler, info, cfg.amp, channels_last(cfg), preprocess, num_classes,
                                     cfg.freeze_backbone)
        self.preprocess = preprocess
        self.nonfinite_streak = self.nonfinite_total = self.overflow_total = 0

    # ------------------------------------------------------------------------------------------
    # Training
    # ------------------------------------------------------------------------------------------
    def train_mode(self, epoch: int) -> None:
        """Train mode; a frozen backbone stays in eval so its BN statistics and stochastic depth stay off,
        and with freeze_bn every BatchNorm keeps its running statistics. QAT observers follow the data in
        the first epochs only."""
        self.model.train()
        if self.cfg.freeze_backbone:
            self.model.features.eval()
        elif self.cfg.freeze_bn:  # the pretrained running statistics stay; scale and shift still train
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        if self.cfg.qat:
            qat.start_epoch(self.model, epoch)

    def train_step(self, batches: Iterator[Batch], global_step: int, stage: StageSettings,
                   where: str, last_checkpoint: str | None, stop: bool = False) -> StepStats:
        """One optimizer step over the next ``accumulate_grad_batches`` micro-batches of ``batches``.

        ``stop``: this process was asked to stop; the ranks agree on it with the step's flags.
        ``where`` ("epoch E step S") and ``last_checkpoint`` go into the warnings and the error a
        persistently non-finite loss raises."""
        cfg, accum = self.cfg, self.cfg.accumulate_grad_batches
        lr = self.schedule.lr_at(global_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        loss_sum, images, broken, waited = torch.zeros((), device=self.info.device), 0, 0, 0.0
        for micro in range(accum):
            start = time.perf_counter()
            batch = next(batches)
            waited += time.perf_counter() - start
            broken += len(batch.broken)
            images += batch.labels.numel()
            position = (cfg.seed, global_step, self.info.rank * accum + micro)  # the micro-batch's place in the step
            seed_micro_batch(position)
            mixing = Mixing(stage.mixup, cfg.cutmix, position)
            loss_sum += self.executor.forward_backward(batch, accum, micro == accum - 1, stage.image_size, mixing)
        loss = loss_sum / accum
        stop = self._optimizer_step(loss, where, last_checkpoint, stop)
        return StepStats(loss, lr, images, broken, waited, stop)

    def _optimizer_step(self, loss: torch.Tensor, where: str, last_checkpoint: str | None, stop: bool) -> bool:
        """Clip, step, update the EMA; a non-finite loss (any rank) or gradient skips the step.
        Returns whether some rank asked to stop."""
        cfg = self.cfg
        flags = step_flags(loss, stop, self.info.distributed)
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_([q for q in self.model.parameters() if q.grad is not None], cfg.grad_clip)
        # One host read per step, for loss, stop request and gradients together (in scaler.step), as
        # GradScaler's own step has; a skip with no read at all needs optimizers that take a device found_inf
        # (torch's fused ones, not RMSpropTF).
        applied, stop = self.scaler.step(self.optimizer, flags)
        self.optimizer.zero_grad(set_to_none=True)
        if applied:
            self.nonfinite_streak = 0
            if self.ema is not None:
                self.ema.update(self.model)
            return stop
        if not flags[0].item():  # read on skipped steps only: the gradients overflowed, the loss was finite
            self.nonfinite_streak = 0
            self.overflow_total += 1
            return stop
        self.nonfinite_streak += 1
        self.nonfinite_total += 1
        self.log(f"warning: non-finite loss at {where}; step skipped ({self.nonfinite_streak} in a row, "
                 f"{self.nonfinite_total} in all)")
        if self.nonfinite_streak >= cfg.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"the loss was NaN/inf for {self.nonfinite_streak} consecutive steps (max_nonfinite_steps); "
                f"training stopped. Lower --lr_max, set --grad_clip, or use --amp bf16/none. "
                f"Last good checkpoint: {last_checkpoint or 'none saved yet'}")
        return stop

    # ------------------------------------------------------------------------------------------
    # Replicas and validation
    # ------------------------------------------------------------------------------------------
    def sync_replicas(self) -> None:
        """Copy rank 0's BN statistics (model and EMA) to every rank; once per epoch, before validation.

        Parameters are identical on all ranks by construction (DDP averages gradients); the running
        statistics are updated from each rank's own batch after DDP's per-forward broadcast. A mid-epoch
        checkpoint needs no sync: it holds rank 0's state, every rank's next forward starts from rank 0's
        buffers (DDP broadcasts them), and the EMA's are overwritten by rank 0's at the epoch's end.
        """
        if not self.info.distributed:
            return
        for module in [self.model] + ([self.ema.module] if self.ema is not None else []):
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    def validate(self, loader: Any) -> dict[str, EvalResult]:
        """Top-1/top-5 of the model and, when there is one, its EMA (evaluated last: its top-1 is the
        metric that drives the best checkpoint and early stopping, as timm does)."""
        modules = {"model": self.model} | ({"ema": self.ema.module} if self.ema is not None else {})
        results = {}
        for tag, module in modules.items():
            with qat.observers_paused(module):
                results[tag] = evaluate(module, loader, self.info.device, self.preprocess.mean, self.preprocess.std,
                                        self.num_classes, channels_last=channels_last(self.cfg), amp=self.cfg.amp)
        return results

    # ------------------------------------------------------------------------------------------
    # State (checkpoints)
    # ------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint entries of what trains the network (plain data: loads with weights_only)."""
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "lr_state": self.schedule.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None, "scaler": self.scaler.state_dict(),
                "nonfinite_total": self.nonfinite_total, "overflow_total": self.overflow_total,
                qat.QAT_KEY: qat.checkpoint_entry(self.model)}

    def load_state_dict(self, ckpt: dict[str, Any], resume_epoch: float) -> str | None:
        """Restore from a checkpoint; returns the LR schedule's note when the run was extended.
        RuntimeError & co. when the checkpoint does not fit (the caller names the file)."""
        lr_state = dict(ckpt["lr_state"])
        lr_state.setdefault("total_epochs", ckpt["config"].get("epoch_size", self.cfg.epoch_size))  # older files
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        extended = self.schedule.load_state_dict(lr_state, resume_epoch=resume_epoch)
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        self.scaler.load_state_dict(ckpt.get("scaler"))
        self.nonfinite_total = int(ckpt.get("nonfinite_total", 0))
        self.overflow_total = int(ckpt.get("overflow_total", 0))
        return extended
