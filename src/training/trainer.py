"""The training run: set-up from a Config, the epoch/step loop, validation and checkpoints.

``run_training(cfg)`` is all train.py calls. The pieces, in the order a run uses them:

1. ``prepare`` (src/training/preflight.py) - the resume checkpoint's config, the automatic choices, the
   datasets and every input check, before any process group is joined (bad input fails fast on
   every rank).
2. ``build_run`` - process group, model (pretrained / frozen / SyncBN / EMA / DDP / compile),
   optimizer, LR schedule, loss scaler, monitor and checkpoint manager.
3. ``train`` - epochs of ``train_one_epoch`` (one optimizer step = ``accumulate_grad_batches``
   micro-batches), then validation, checkpoints, best model and early stopping.

Exact resume: the data order and augmentation are functions of (seed, epoch, position)
(src/data/sampler.py), the LR a function of the global step (src/training/lr_generator.py), and everything
else (weights, optimizer, EMA, scaler, RNG of every rank, best metric, early-stopping and
plateau state) is in the checkpoint, so a run killed at any checkpoint and resumed ends with
bitwise the same weights as one never interrupted.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader

from src.models import qat
from src.runtime.amp import NoScaler, autocast, build_scaler
from src.training.best import is_improvement
from src.models.files import CHECKPOINT_SUFFIX, CheckpointError
from src.training.checkpoints import BEST_TAG, CheckpointManager, restore_rng_state, rng_state
from src.config import Config
from src.data.dataset import Batch, ShardedEvalSampler, collate_skip_broken, to_device_normalized
from src.runtime.distributed import DistInfo, barrier, init_distributed, is_initialized, seed_everything
from src.training.ema import ModelEma
from src.evaluation.metrics import evaluate
from src.runtime.host_memory import reuse_freed_memory_if_requested
from src.training.loss import build_loss
from src.training.lr_generator import LRSchedule
from src.data.mixup import mix_batch
from src.models import NETWORK_STRIDE, get_variant
from src.training.monitor import EarlyStopping, TrainMonitor, format_lr
from src.training.network import build_network, channels_last, wrap_model
from src.training.optimizer import build_optimizer
from src.training.preflight import DataBundle, TrainInputError, announce, plan_epoch, prepare, stage_resize
from src.models.qat import QAT_KEY
from src.training.progressive import StageSettings, augment_config, set_dropout, stage_settings
from src.data.sampler import EpochSampler, SeededDataset
from src.data.transforms import build_train_transform

EMPTY_BATCH_STAND_IN = 2  # images in the zero-weight batch a rank runs when all its images were unreadable


class NonFiniteLossError(RuntimeError):
    """The loss stayed NaN/inf for ``max_nonfinite_steps`` consecutive steps."""


class TrainOutOfMemory(RuntimeError):
    """CUDA ran out of memory; the message names the remedies and the intact checkpoint."""


# ----------------------------------------------------------------------------------------------
# State
# ----------------------------------------------------------------------------------------------
@dataclass
class Progress:
    """Counters that move during training; all of them go into every checkpoint."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # optimizer steps done in the epoch in progress
    global_step: int = 0  # optimizer steps done in the whole run (skipped ones included)
    best_metric: float | None = None
    best_epoch: int | None = None  # 1-based epoch of the best validation
    nonfinite_streak: int = 0
    nonfinite_total: int = 0
    overflow_total: int = 0  # steps not applied because a gradient was inf/NaN (fp16 scale search included)
    broken_total: int = 0
    last_val: dict[str, float] = field(default_factory=dict)
    last_checkpoint: str | None = None
    best_checkpoint: str | None = None


@dataclass
class Loaders:
    """The data side of a run: the seeded sampler, the current stage's train loader, the val loader."""

    sampler: EpochSampler
    val: DataLoader | None = None
    train: DataLoader | None = None  # rebuilt when a progressive stage begins
    stage: StageSettings | None = None  # the stage ``train`` was built for


@dataclass
class Run:
    """Everything one training run holds; built by build_run, driven by train."""

    cfg: Config  # cfg.run_dir: rank 0's run folder on every rank
    info: DistInfo
    data: DataBundle
    model: nn.Module  # the bare model: state_dict, evaluation, EMA source
    train_model: nn.Module  # what the step calls: model, DDP(model) and/or torch.compile(...)
    ddp: nn.parallel.DistributedDataParallel | None
    ema: ModelEma | None
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: NoScaler
    criterion: nn.Module
    monitor: TrainMonitor
    checkpoints: CheckpointManager
    early_stop: EarlyStopping | None
    loaders: Loaders
    steps_per_epoch: int
    progress: Progress = field(default_factory=Progress)

    @property
    def run_dir(self) -> Path:
        return Path(str(self.cfg.run_dir))

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    @property
    def channels_last(self) -> bool:
        return channels_last(self.cfg)

    @property
    def stage(self) -> StageSettings | None:
        return self.loaders.stage

    def log(self, line: str) -> None:
        self.monitor.log(line)


@dataclass
class TrainResult:
    run_dir: Path
    epochs_done: int
    global_step: int
    best_metric: float | None
    best_epoch: int | None
    last_val: dict[str, float]
    last_checkpoint: str | None
    best_checkpoint: str | None
    nonfinite_total: int
    broken_total: int
    overflow_total: int = 0


# ----------------------------------------------------------------------------------------------
# Set-up
# ----------------------------------------------------------------------------------------------
def _agreed_run_dir(cfg: Config, info: DistInfo) -> Path:
    """Rank 0's run folder on every rank (a new folder's name holds rank 0's clock)."""
    if info.distributed:
        holder = [cfg.run_dir]
        dist.broadcast_object_list(holder, src=0)
        cfg.run_dir = holder[0]
    return Path(str(cfg.run_dir))


def build_run(cfg: Config, data: DataBundle, ckpt: dict | None) -> Run:
    info = init_distributed(cfg.device_target, cfg.dist_backend)
    seed_everything(cfg.seed, info.rank)
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        reuse_freed_memory_if_requested()  # EFFNET_MALLOC=tuned: keep freed host memory for reuse
    num_classes = data.num_classes
    batches, steps = plan_epoch(len(data.train), cfg, info.world_size)
    model = build_network(cfg, num_classes, info, resuming=ckpt is not None)
    train_model, ddp = wrap_model(model, cfg, info)
    schedule = LRSchedule.from_config(cfg, steps, info.world_size)
    run_dir = _agreed_run_dir(cfg, info)
    run = Run(
        cfg=cfg, info=info, data=data, model=model, train_model=train_model, ddp=ddp,
        ema=ModelEma(model, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay > 0 else None,
        optimizer=build_optimizer(model, cfg, schedule.lr_at(0)), schedule=schedule,
        scaler=build_scaler(cfg.amp, cfg.loss_scale, info.device), criterion=build_loss(cfg, num_classes),
        monitor=TrainMonitor(run_dir, cfg.epoch_size, steps, cfg.log_interval, info.is_main, device=info.device),
        checkpoints=CheckpointManager(run_dir, cfg.model, cfg.keep_checkpoint_max),
        early_stop=EarlyStopping(cfg.early_stop_patience) if cfg.early_stop_patience > 0 else None,
        loaders=Loaders(EpochSampler(len(data.train), cfg.batch_size, batches, cfg.seed, True, info.rank,
                                     info.world_size)),
        steps_per_epoch=steps)
    run.loaders.val = make_val_loader(run)
    describe(run)
    if ckpt is not None:
        restore(run, ckpt)
    return run


def describe(run: Run) -> None:
    """One line with the numbers that decide the optimisation: processes, global batch, steps, LR."""
    cfg, info = run.cfg, run.info
    global_batch = cfg.batch_size * info.world_size * cfg.accumulate_grad_batches
    lr = f"lr_max {format_lr(run.schedule.lr_max)}"
    if cfg.scale_lr:
        lr += f" (scale_lr: {format_lr(cfg.lr_max)} x {global_batch} / {cfg.lr_base_batch})"
    run.log(f"training {cfg.model} ({run.num_classes} classes) on {info.device}: {info.world_size} process(es) x "
            f"batch {cfg.batch_size} x accumulate {cfg.accumulate_grad_batches} = global batch {global_batch}; "
            f"{run.steps_per_epoch} steps per epoch, {cfg.epoch_size} epochs, {lr}, amp {cfg.amp}")


# ----------------------------------------------------------------------------------------------
# Data loaders
# ----------------------------------------------------------------------------------------------
def _loader_kwargs(run: Run) -> dict[str, Any]:
    workers = run.cfg.num_workers
    return dict(num_workers=workers, collate_fn=collate_skip_broken, pin_memory=run.info.device.type == "cuda",
                persistent_workers=workers > 0,
                # A private generator: creating a loader iterator must not draw from the global RNG.
                generator=torch.Generator().manual_seed(run.cfg.seed))


def make_train_loader(run: Run, stage: StageSettings) -> DataLoader:
    """Loader for a progressive stage (or the whole run): the stage's transform, the seeded sampler."""
    transform = build_train_transform(augment_config(run.cfg, stage), stage.image_size, run.data.interpolation,
                                      eval_resize=stage_resize(stage.image_size, run.data.preprocess))
    run.data.train.transform = transform  # type: ignore[attr-defined]
    if run.cfg.dataset == "wds":  # a stream of tar shards: it follows the sampler's epoch plan itself
        from src.data.shards import make_train_loader as make_shard_train_loader
        return make_shard_train_loader(run.data.train, run.loaders.sampler, **_loader_kwargs(run))  # type: ignore[arg-type]
    return DataLoader(SeededDataset(run.data.train, run.cfg.seed), batch_size=run.cfg.batch_size,
                      sampler=run.loaders.sampler, drop_last=False, **_loader_kwargs(run))


def make_val_loader(run: Run) -> DataLoader | None:
    if run.data.val is None:
        return None
    val = run.data.val
    if run.cfg.dataset == "wds":  # each shard's samples on one rank, no padding
        from src.data.shards import make_eval_loader as make_shard_eval_loader
        return make_shard_eval_loader(val, run.info.rank, run.info.world_size,  # type: ignore[arg-type]
                                      run.cfg.eval_batch_size or run.cfg.batch_size, **_loader_kwargs(run))
    sampler = ShardedEvalSampler(len(val), run.info.rank, run.info.world_size)  # type: ignore[arg-type]
    return DataLoader(val, batch_size=run.cfg.eval_batch_size or run.cfg.batch_size, drop_last=False,
                      sampler=sampler, **_loader_kwargs(run))


def loader_for_epoch(run: Run, epoch: int) -> DataLoader:
    """The current loader, rebuilt (with the model's dropout) when a progressive stage begins."""
    stage = stage_settings(run.cfg, epoch, run.data.image_size)
    loaders = run.loaders
    if loaders.train is None or stage != loaders.stage:
        if run.cfg.progressive:
            run.log(f"progressive stage {stage.index + 1}/{len(run.cfg.progressive)} from epoch {epoch + 1}: "
                    f"image_size {stage.image_size}, dropout {stage.dropout}, randaug_magnitude "
                    f"{stage.randaug_magnitude}, mixup {stage.mixup}")
        loaders.train = None  # shut persistent workers of the previous stage down first
        loaders.train = make_train_loader(run, stage)
        set_dropout(run.model, stage.dropout)
        loaders.stage = stage
    return loaders.train


# ----------------------------------------------------------------------------------------------
# One optimizer step
# ----------------------------------------------------------------------------------------------
def set_train_mode(run: Run) -> None:
    """Train mode; a frozen backbone stays in eval so its BN statistics and stochastic depth stay off."""
    run.model.train()
    if run.cfg.freeze_backbone:
        run.model.features.eval()


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _stand_in_batch(run: Run) -> Batch:
    """Zero images with loss weight 0: a rank whose whole batch was unreadable still joins DDP's all-reduce."""
    size = run.stage.image_size if run.stage else run.data.image_size
    images = torch.zeros((EMPTY_BATCH_STAND_IN, 3, size, size), dtype=torch.uint8)
    return Batch(images, torch.zeros(EMPTY_BATCH_STAND_IN, dtype=torch.int64), [])


def _min_batch_for_batchnorm(run: Run) -> int:
    """BatchNorm in train mode needs two values per channel: two images once the last map is 1x1."""
    size = run.stage.image_size if run.stage else run.data.image_size
    return 2 if size <= NETWORK_STRIDE and not run.cfg.freeze_backbone else 1  # a frozen backbone's BN is in eval


def forward_backward(run: Run, batch: Batch, last_micro: bool, micro: int) -> torch.Tensor:
    """Loss of one micro-batch, backpropagated (scaled by the accumulation count); returns it detached."""
    cfg, info = run.cfg, run.info
    weight = 1.0 / cfg.accumulate_grad_batches
    if batch.labels.numel() < _min_batch_for_batchnorm(run):  # unreadable images took the rest of the batch
        if not info.distributed:
            return torch.zeros((), device=info.device)
        batch, weight = _stand_in_batch(run), 0.0
    pre = run.data.preprocess
    x = to_device_normalized(batch.images, pre.mean, pre.std, info.device, run.channels_last)
    target: torch.Tensor = batch.labels.to(info.device, non_blocking=True)
    mixup = run.stage.mixup if run.stage else cfg.mixup
    if mixup > 0 or cfg.cutmix > 0:
        x, target = mix_batch(x, target, run.num_classes, mixup, cfg.cutmix,
                              seed=(cfg.seed, run.progress.global_step, micro, info.rank))
    no_sync = run.ddp.no_sync() if run.ddp is not None and not last_micro else contextlib.nullcontext()
    with no_sync:
        with autocast(info.device, cfg.amp):
            loss = run.criterion(run.train_model(x), target)
        run.scaler.backward(loss * weight)
    return loss.detach().float() * (weight * cfg.accumulate_grad_batches)


def nonfinite_loss(loss: torch.Tensor, run: Run) -> torch.Tensor:
    """1 when the loss is NaN/inf on any rank, else 0: a tensor on the loss's device, so no host sync
    here; ranks agree (all-reduce) or their weights would diverge."""
    flag = (~torch.isfinite(loss)).to(torch.float32).reshape(1)
    if run.info.distributed:
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return flag


def optimizer_step(run: Run, loss: torch.Tensor) -> bool:
    """Clip, step, update the EMA; a step whose loss (on any rank) or gradients are not finite is
    skipped and counted, and too many non-finite losses in a row stop the run."""
    p, cfg = run.progress, run.cfg
    bad_loss = nonfinite_loss(loss, run)
    if cfg.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        nn.utils.clip_grad_norm_([q for q in run.model.parameters() if q.grad is not None], cfg.grad_clip)
    # One host read per step, for loss and gradients together (in scaler.step), as GradScaler's own step has;
    # a skip with no read at all needs optimizers that take a device found_inf (torch's fused ones, not RMSpropTF).
    applied = run.scaler.step(run.optimizer, bad_loss)
    run.optimizer.zero_grad(set_to_none=True)
    if applied:
        p.nonfinite_streak = 0
        if run.ema is not None:
            run.ema.update(run.model)
        return True
    if not bad_loss.item():  # read on skipped steps only: the gradients overflowed, the loss was finite
        p.nonfinite_streak = 0
        p.overflow_total += 1
        return False
    p.nonfinite_streak += 1
    p.nonfinite_total += 1
    run.log(f"warning: non-finite loss at epoch {p.epoch + 1} step {p.step_in_epoch + 1}; step skipped "
            f"({p.nonfinite_streak} in a row, {p.nonfinite_total} in all)")
    if p.nonfinite_streak >= cfg.max_nonfinite_steps:
        kept = p.last_checkpoint or "none saved yet"
        raise NonFiniteLossError(
            f"the loss was NaN/inf for {p.nonfinite_streak} consecutive steps (max_nonfinite_steps); "
            f"training stopped. Lower --lr_max, set --grad_clip, or use --amp bf16/none. "
            f"Last good checkpoint: {kept}")
    return False


def train_one_epoch(run: Run, loader: DataLoader, epoch: int) -> None:
    """Optimizer steps from ``progress.step_in_epoch`` to the end of ``epoch``."""
    cfg, p = run.cfg, run.progress
    accum = cfg.accumulate_grad_batches
    set_train_mode(run)
    if cfg.qat:
        qat.start_epoch(run.model, epoch)
    run.loaders.sampler.set_epoch(epoch, p.step_in_epoch * accum)
    run.monitor.start_epoch(epoch, first_step=p.step_in_epoch)  # a resumed epoch keeps its step numbers
    broken = 0
    batches = iter(loader)
    while p.step_in_epoch < run.steps_per_epoch:
        lr = run.schedule.lr_at(p.global_step)
        set_lr(run.optimizer, lr)
        loss_sum, images, waited = torch.zeros((), device=run.info.device), 0, 0.0
        for micro in range(accum):
            start = time.perf_counter()
            batch = next(batches)
            waited += time.perf_counter() - start
            broken += len(batch.broken)
            images += batch.labels.numel()
            loss_sum += forward_backward(run, batch, micro == accum - 1, micro)
        optimizer_step(run, loss_sum / accum)
        p.global_step += 1
        p.step_in_epoch += 1
        run.monitor.update(loss_sum / accum, lr, images * run.info.world_size, waited)
        if _mid_epoch_save_due(run):
            save_checkpoint(run, epoch + 1, p.step_in_epoch)
    broken = _sum_over_ranks(broken, run)
    p.broken_total += broken
    run.monitor.end_epoch(broken_images=broken)


def _sum_over_ranks(value: int, run: Run) -> int:
    if not run.info.distributed:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=run.info.device)
    dist.all_reduce(t)
    return int(t.item())


def _mid_epoch_save_due(run: Run) -> bool:
    n = run.cfg.save_checkpoint_steps
    return (run.cfg.save_checkpoint and n > 0 and run.progress.global_step % n == 0
            and run.progress.step_in_epoch < run.steps_per_epoch)


# ----------------------------------------------------------------------------------------------
# Replicas, validation, checkpoints
# ----------------------------------------------------------------------------------------------
def sync_replicas(run: Run) -> None:
    """Copy rank 0's BN statistics (model and EMA) to every rank; once per epoch, before validation.

    Parameters are identical on all ranks by construction (DDP averages gradients); the running
    statistics are updated from each rank's own batch after DDP's per-forward broadcast. A mid-epoch
    checkpoint needs no sync: it holds rank 0's state, every rank's next forward starts from rank 0's
    buffers (DDP broadcasts them), and the EMA's are overwritten by rank 0's at the epoch's end.
    """
    if not run.info.distributed:
        return
    modules = [run.model] + ([run.ema.module] if run.ema is not None else [])
    for module in modules:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def validate(run: Run, epoch: int) -> float | None:
    """Top-1/top-5 of the model (and its EMA); returns the metric that drives best / early stop."""
    if run.loaders.val is None:
        return None
    pre, info = run.data.preprocess, run.info
    results = {"model": run.model} | ({"ema": run.ema.module} if run.ema is not None else {})
    metric = None
    for tag, module in results.items():
        with qat.observers_paused(module):
            res = evaluate(module, run.loaders.val, info.device, pre.mean, pre.std, run.num_classes,
                           channels_last=run.channels_last, amp=run.cfg.amp)
        run.monitor.log_val(epoch, res.top1, res.top5, res.loss, tag=None if tag == "model" else tag)
        run.progress.last_val.update({f"{tag}_top1": res.top1, f"{tag}_top5": res.top5, f"{tag}_count": res.count})
        metric = res.top1  # the EMA's when there is one (evaluated last), as timm does
    return metric


def gather_rng_states(run: Run) -> list[dict] | None:
    """Every rank's RNG state (ranks draw different dropout masks), collected on all ranks."""
    if not run.info.distributed:
        return None
    states: list[Any] = [None] * run.info.world_size
    dist.all_gather_object(states, rng_state())
    return states


def checkpoint_state(run: Run) -> dict[str, Any]:
    """The checkpoint dict (model, epoch, step, config, classes, preprocess) plus what exact resume
    needs; plain data only, so it loads with weights_only=True."""
    p = run.progress
    early = run.early_stop.state_dict() if run.early_stop is not None else None
    return {
        "model": run.model.state_dict(), "epoch": p.epoch, "step": p.global_step, "step_in_epoch": p.step_in_epoch,
        "steps_per_epoch": run.steps_per_epoch, "world_size": run.info.world_size,
        "config": run.cfg.to_dict(), "model_name": run.cfg.model, "num_classes": run.num_classes,
        "classes": list(run.data.classes), "preprocess": run.data.preprocess.to_dict(),
        "optimizer": run.optimizer.state_dict(), "lr_state": run.schedule.state_dict(),
        "ema": run.ema.state_dict() if run.ema is not None else None, "scaler": run.scaler.state_dict(),
        "rng": rng_state(), "rng_per_rank": gather_rng_states(run), "best_metric": p.best_metric,
        "best_epoch": p.best_epoch, "best_checkpoint": p.best_checkpoint, "early_stop": early,
        "nonfinite_total": p.nonfinite_total, "overflow_total": p.overflow_total, "broken_total": p.broken_total,
        QAT_KEY: qat.checkpoint_entry(run.model),
    }


def save_checkpoint(run: Run, epoch_tag: int, step_tag: int, periodic: bool = True, best: bool = False) -> None:
    """Rank 0 writes ``<model>-<epoch>_<step>.pth`` and/or ``<model>-best.pth``; every rank takes part."""
    if not run.cfg.save_checkpoint or not (periodic or best):
        return
    if best:
        run.progress.best_checkpoint = str(run.run_dir / f"{run.cfg.model}-{BEST_TAG}{CHECKPOINT_SUFFIX}")
    state = checkpoint_state(run)  # collective (RNG gather): every rank builds it
    if not run.info.is_main:
        return
    written = []
    if periodic:
        path = run.checkpoints.save(state, epoch_tag, step_tag)
        run.progress.last_checkpoint = str(path)
        written.append(str(path))
    if best:
        written.append(str(run.checkpoints.save_best(state)) + " (new best)")
    run.log("saved checkpoint " + ", ".join(written))


def restore(run: Run, ckpt: dict) -> None:
    """Load every piece of state from a resume checkpoint into the built run."""
    p, path = run.progress, run.cfg.resume
    p.epoch, p.step_in_epoch = int(ckpt["epoch"]), int(ckpt.get("step_in_epoch", 0))
    if p.step_in_epoch and ckpt.get("steps_per_epoch") != run.steps_per_epoch:
        run.log(f"warning: {path} was saved mid-epoch with {ckpt.get('steps_per_epoch')} steps per epoch, this run "
                f"has {run.steps_per_epoch}; epoch {p.epoch + 1} restarts from its beginning")
        p.step_in_epoch = 0
    p.global_step = p.epoch * run.steps_per_epoch + p.step_in_epoch
    lr_state = dict(ckpt["lr_state"])
    lr_state.setdefault("total_epochs", ckpt["config"].get("epoch_size", run.cfg.epoch_size))  # older checkpoints
    try:
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        extended = run.schedule.load_state_dict(lr_state, resume_epoch=p.global_step / run.steps_per_epoch)
        if run.ema is not None and ckpt.get("ema") is not None:
            run.ema.load_state_dict(ckpt["ema"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} does not fit this run ({str(exc).splitlines()[0]})") from None
    run.scaler.load_state_dict(ckpt.get("scaler"))
    if run.early_stop is not None and ckpt.get("early_stop") is not None:
        run.early_stop.load_state_dict(ckpt["early_stop"])
    p.best_metric, p.best_epoch = ckpt.get("best_metric"), ckpt.get("best_epoch")
    p.best_checkpoint = ckpt.get("best_checkpoint")
    p.nonfinite_total, p.broken_total = int(ckpt.get("nonfinite_total", 0)), int(ckpt.get("broken_total", 0))
    p.overflow_total = int(ckpt.get("overflow_total", 0))
    p.last_checkpoint = str(path)
    _restore_rng(run, ckpt)
    run.monitor.resume_from(p.epoch, p.global_step)  # summary.csv and TensorBoard drop what came after
    run.log(f"resumed from {path}: {p.epoch} epochs + {p.step_in_epoch} steps done, global step {p.global_step}, "
            f"lr {format_lr(run.schedule.lr_at(p.global_step))}")
    if extended:
        run.log(f"note: {extended}")


def _restore_rng(run: Run, ckpt: dict) -> None:
    per_rank = ckpt.get("rng_per_rank")
    if per_rank is not None and len(per_rank) == run.info.world_size:
        restore_rng_state(per_rank[run.info.rank])
    elif ckpt.get("rng") is not None and run.info.world_size == ckpt.get("world_size", 1):
        restore_rng_state(ckpt["rng"])
    else:  # another world size: a fresh, still deterministic, stream per rank
        seed_everything(run.cfg.seed + run.progress.global_step, run.info.rank)


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------
def end_of_epoch(run: Run, epoch: int) -> bool:
    """Validate, update best / plateau / early stopping, save; True when early stopping fires."""
    cfg, p = run.cfg, run.progress
    last = epoch + 1 == cfg.epoch_size
    sync_replicas(run)
    metric = validate(run, epoch) if ((epoch + 1) % cfg.eval_interval == 0 or last) else None
    stop, best = False, False
    if metric is not None and math.isfinite(metric):
        best = is_improvement(metric, p.best_metric)
        if best:
            p.best_metric, p.best_epoch = metric, epoch + 1
        if run.schedule.on_validation(metric):
            run.log(f"validation stalled: lr reduced to {format_lr(run.schedule.lr_at(p.global_step))}")
        if run.early_stop is not None and run.early_stop.step(metric):
            run.log(f"early stopping: no improvement for {run.early_stop.patience} validations "
                    f"(best top-1 {run.early_stop.best:.5f})")
            stop = True
    periodic = stop or last or (epoch + 1) % cfg.save_checkpoint_epochs == 0
    save_checkpoint(run, epoch + 1, run.steps_per_epoch, periodic=periodic, best=best)
    return stop


def train(run: Run) -> TrainResult:
    p = run.progress
    if p.epoch >= run.cfg.epoch_size:
        run.log(f"nothing to do: {p.epoch} of {run.cfg.epoch_size} epochs are already done")
    for epoch in range(p.epoch, run.cfg.epoch_size):
        loader = loader_for_epoch(run, epoch)
        train_one_epoch(run, loader, epoch)
        p.epoch, p.step_in_epoch = epoch + 1, 0
        if end_of_epoch(run, epoch):
            break
    run.loaders.train = run.loaders.val = None  # stop persistent workers before the process group goes
    run.monitor.close()
    return TrainResult(run.run_dir, p.epoch, p.global_step, p.best_metric, p.best_epoch, dict(p.last_val),
                       p.last_checkpoint, p.best_checkpoint, p.nonfinite_total, p.broken_total, p.overflow_total)


def report(run: Run, result: TrainResult) -> None:
    """The closing lines: accuracy, best checkpoint, skipped steps and images."""
    val = result.last_val
    if "model_top1" in val:
        line = f"final accuracy: top-1 {val['model_top1']:.5f}, top-5 {val['model_top5']:.5f}"
        if "ema_top1" in val:
            line += f"; EMA top-1 {val['ema_top1']:.5f}, top-5 {val['ema_top5']:.5f}"
        run.log(line + f" ({val['model_count']} validation images)")
    elif run.data.val is None:
        run.log("final accuracy: no validation set (add DIR/val/<class>/* or set --val_split)")
    if result.best_metric is not None:
        where = f": {result.best_checkpoint}" if result.best_checkpoint else ""
        run.log(f"best top-1 {result.best_metric:.5f} after epoch {result.best_epoch}{where}")
    if result.last_checkpoint:
        run.log(f"last checkpoint: {result.last_checkpoint}")
    if result.nonfinite_total or result.overflow_total or result.broken_total:
        line = f"skipped: {result.nonfinite_total} non-finite steps, {result.broken_total} unreadable images"
        if result.overflow_total:
            line += (f"; {result.overflow_total} steps not applied for non-finite gradients "
                     "(with fp16 this includes the loss-scale search)")
        run.log(line)
    run.log(f"run folder: {result.run_dir}")


# ----------------------------------------------------------------------------------------------
# Entry
# ----------------------------------------------------------------------------------------------
def run_training(cfg: Config) -> TrainResult:
    """Train as ``cfg`` says; raises TrainInputError & co. for bad input, NonFiniteLossError, TrainOutOfMemory."""
    cfg, data, ckpt, notes = prepare(cfg)
    announce(cfg, Path(str(cfg.run_dir)), notes)
    run: Run | None = None
    try:
        run = build_run(cfg, data, ckpt)
        result = train(run)
        report(run, result)
        barrier()
        return result
    except torch.cuda.OutOfMemoryError:
        raise TrainOutOfMemory(_oom_message(cfg, run)) from None
    finally:
        if is_initialized():
            dist.destroy_process_group()


def _oom_message(cfg: Config, run: Run | None) -> str:
    kept = (run.progress.last_checkpoint if run is not None else None) or "none saved yet"
    size = cfg.image_size or get_variant(cfg.model).train_size
    if run is not None and run.stage is not None:
        size = run.stage.image_size
    return (f"out of GPU memory training {cfg.model} at batch_size {cfg.batch_size}, image_size "
            f"{size}, amp {cfg.amp}. Try a smaller --batch_size "
            f"with --accumulate_grad_batches (same global batch), --amp fp16 or bf16, --grad_checkpointing true, "
            f"or a smaller --image_size. Last checkpoint (intact): {kept}")


__all__ = ["NonFiniteLossError", "TrainInputError", "TrainOutOfMemory", "TrainResult", "run_training"]
