"""The training run: set-up from a Config, the epoch loop, validation, checkpoints and the closing report.

``run_training(cfg)`` is all train.py calls. The pieces, in the order a run uses them:

1. ``prepare`` (src.training.preflight) - the resume checkpoint's config, the automatic choices, the
   data and every input check, before any process group is joined (bad input fails fast on every
   rank).
2. ``build_run`` - process group, network (src.training.network), the trainer (optimizer, LR, scaler,
   EMA, loss: src.training.trainer), monitor, checkpoint policy, early stopping.
3. ``train`` - epochs of ``train_one_epoch`` (optimizer steps of the trainer), then validation,
   checkpoints, best model and early stopping (``end_of_epoch``).

Exact resume: the data order and augmentation are functions of (seed, epoch, position)
(src.data.sampler), the LR a function of the global step (src.training.lr_generator), and everything
else (weights, optimizer, EMA, scaler, RNG of every rank, best metric, early-stopping and plateau
state) is in the checkpoint, so a run killed at any checkpoint and resumed ends with bitwise the same
weights as one never interrupted.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from src.config import Config
from src.data.sampler import EpochSampler
from src.models import get_variant
from src.models.files import CHECKPOINT_SUFFIX, CheckpointError
from src.runtime.distributed import (MAX_PROBE_SECONDS, DistInfo, barrier, init_distributed, is_initialized,
                                     is_main_launch, is_timeout, seed_everything, silent_ranks)
from src.runtime.host_memory import reuse_freed_memory_if_requested
from src.training.best import EarlyStopping, is_improvement
from src.training.checkpoints import BEST_TAG, STOPPED_KEY, CheckpointManager, restore_rng_state, rng_state
from src.training.data import DataBundle, make_probe_loader, make_train_loader, make_val_loader, plan_epoch
from src.training.errors import ProcessTimeout, TrainOutOfMemory
from src.training.monitor import TrainMonitor, format_lr
from src.training.network import build_network, channels_last
from src.training.probe import probe_head
from src.training.preemption import StopRequest, Stopped, stop_requests
from src.training.preflight import prepare
from src.training.progressive import StageSettings, set_dropout, stage_settings
from src.training.run_dir import CONFIG_FILE
from src.training.trainer import Trainer


PROBE_SHARE = 0.2  # of dist_timeout, at most MAX_PROBE_SECONDS: naming a silent rank after a timeout


@dataclass
class Progress:
    """Where the run is; all of it goes into every checkpoint."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # optimizer steps done in the epoch in progress
    global_step: int = 0  # optimizer steps done in the whole run (skipped ones included)
    best_metric: float | None = None
    best_epoch: int | None = None  # 1-based epoch of the best validation
    broken_total: int = 0
    last_val: dict[str, float] = field(default_factory=dict)
    last_checkpoint: str | None = None
    best_checkpoint: str | None = None


@dataclass
class Run:
    """One training run: its config and data, the trainer, and what watches and saves it."""

    cfg: Config  # cfg.run_dir: rank 0's run folder on every rank
    info: DistInfo
    data: DataBundle
    trainer: Trainer
    sampler: EpochSampler
    val_loader: DataLoader | None
    monitor: TrainMonitor
    checkpoints: CheckpointManager
    early_stop: EarlyStopping | None
    steps_per_epoch: int
    stop: StopRequest = field(default_factory=StopRequest)  # SIGTERM / SIGUSR1 / SIGINT received
    progress: Progress = field(default_factory=Progress)
    train_loader: DataLoader | None = None  # rebuilt when a progressive stage begins
    stage: StageSettings | None = None  # the stage train_loader was built for

    @property
    def run_dir(self) -> Path:
        return Path(str(self.cfg.run_dir))

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
def announce(cfg: Config, notes: list[str]) -> None:
    """Rank 0: print the resolved config and save it as config.yaml in the run folder."""
    if not is_main_launch():
        return
    path = cfg.save(Path(str(cfg.run_dir)) / CONFIG_FILE)
    print(f"resolved config (saved to {path}):\n{cfg.to_yaml()}", end="", flush=True)
    for note in notes:
        print(note, flush=True)


def _agreed_run_dir(cfg: Config, info: DistInfo) -> Path:
    """Rank 0's run folder on every rank (a new folder's name holds rank 0's clock)."""
    if info.distributed:
        holder = [cfg.run_dir]
        dist.broadcast_object_list(holder, src=0)
        cfg.run_dir = holder[0]
    return Path(str(cfg.run_dir))


def build_run(cfg: Config, data: DataBundle, ckpt: dict | None) -> Run:
    info = init_distributed(cfg.device_target, cfg.dist_backend, cfg.dist_timeout)
    seed_everything(cfg.seed, info.rank)
    if info.device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        reuse_freed_memory_if_requested()  # EFFNET_MALLOC=tuned: keep freed host memory for reuse
    batches, steps = plan_epoch(len(data.train), cfg.batch_size, cfg.accumulate_grad_batches, info.world_size)
    model = build_network(cfg, data.num_classes, info, resuming=ckpt is not None)
    run_dir = _agreed_run_dir(cfg, info)
    monitor = TrainMonitor(run_dir, cfg.epoch_size, steps, cfg.log_interval, info.is_main, device=info.device)
    if cfg.linear_probe and ckpt is None:  # before the trainer: the EMA and DDP start from the fitted head
        linear_probe(cfg, data, model, info, monitor.log)
    run = Run(
        cfg=cfg, info=info, data=data,
        trainer=Trainer(cfg, info, model, data.num_classes, data.preprocess, steps, monitor.log),
        sampler=EpochSampler(len(data.train), cfg.batch_size, batches, cfg.seed, True, info.rank, info.world_size,
                             cfg.accumulate_grad_batches),
        val_loader=make_val_loader(cfg, data, info), monitor=monitor,
        checkpoints=CheckpointManager(run_dir, cfg.model, cfg.keep_checkpoint_max),
        early_stop=EarlyStopping(cfg.early_stop_patience) if cfg.early_stop_patience > 0 else None,
        steps_per_epoch=steps)
    describe(run)
    if ckpt is not None:
        restore(run, ckpt)
    return run


def linear_probe(cfg: Config, data: DataBundle, model: torch.nn.Module, info: DistInfo, log: Any) -> None:
    """LP-FT's first stage (src.training.probe): the classifier fitted on frozen features, with one line."""
    start = time.perf_counter()
    pre = data.preprocess
    probe = probe_head(model, make_probe_loader(cfg, data, info), data.num_classes, pre.mean, pre.std, info.device,
                       channels_last(cfg))
    log(f"linear probe: {len(data.train)} training images at {pre.crop} px, {model.classifier[1].in_features} "
        f"features -> {data.num_classes} classes; L2 {probe.l2:g} (cross-validated accuracy "
        f"{probe.cv_accuracy:.3f}), training accuracy {probe.train_accuracy:.3f}; {time.perf_counter() - start:.1f} s")


def describe(run: Run) -> None:
    """One line with the numbers that decide the optimisation: processes, global batch, steps, LR."""
    cfg, info = run.cfg, run.info
    global_batch = cfg.batch_size * info.world_size * cfg.accumulate_grad_batches
    lr = f"lr_max {format_lr(run.trainer.schedule.lr_max)}"
    if cfg.scale_lr:
        lr += f" (scale_lr: {format_lr(cfg.lr_max)} x {global_batch} / {cfg.lr_base_batch})"
    run.log(f"training {cfg.model} ({run.data.num_classes} classes) on {info.device}: {info.world_size} process(es) x "
            f"batch {cfg.batch_size} x accumulate {cfg.accumulate_grad_batches} = global batch {global_batch}; "
            f"{run.steps_per_epoch} steps per epoch, {cfg.epoch_size} epochs, {lr}, amp {cfg.amp}")


def loader_for_epoch(run: Run, epoch: int) -> DataLoader:
    """The current loader, rebuilt (with the model's dropout) when a progressive stage begins."""
    stage = stage_settings(run.cfg, epoch, run.data.image_size)
    if run.train_loader is None or stage != run.stage:
        if run.cfg.progressive:
            run.log(f"progressive stage {stage.index + 1}/{len(run.cfg.progressive)} from epoch {epoch + 1}: "
                    f"image_size {stage.image_size}, dropout {stage.dropout}, randaug_magnitude "
                    f"{stage.randaug_magnitude}, mixup {stage.mixup}")
        run.train_loader = None  # shut persistent workers of the previous stage down first
        run.train_loader = make_train_loader(run.cfg, run.data, stage, run.sampler, run.info)
        set_dropout(run.trainer.model, stage.dropout)
        run.stage = stage
    return run.train_loader


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------
def train_one_epoch(run: Run, loader: DataLoader, epoch: int) -> None:
    """Optimizer steps from ``progress.step_in_epoch`` to the end of ``epoch``."""
    cfg, p, trainer = run.cfg, run.progress, run.trainer
    assert run.stage is not None
    trainer.train_mode(epoch)
    run.sampler.set_epoch(epoch, p.step_in_epoch * cfg.accumulate_grad_batches)
    run.monitor.start_epoch(epoch, first_step=p.step_in_epoch)  # a resumed epoch keeps its step numbers
    broken = 0
    batches = iter(loader)
    while p.step_in_epoch < run.steps_per_epoch:
        stats = trainer.train_step(batches, p.global_step, run.stage, f"epoch {epoch + 1} step {p.step_in_epoch + 1}",
                                   p.last_checkpoint, stop=run.stop.requested)
        broken += stats.broken
        p.global_step += 1
        p.step_in_epoch += 1
        run.monitor.update(stats.loss, stats.lr, stats.images * run.info.world_size, stats.waited)
        if stats.stop:
            stop_here(run, epoch + 1, p.step_in_epoch)
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


def validate(run: Run, epoch: int) -> float | None:
    """Validation of the model (and its EMA), logged; returns the metric that drives best / early stop."""
    if run.val_loader is None:
        return None
    metric = None
    for tag, res in run.trainer.validate(run.val_loader).items():
        run.monitor.log_val(epoch, res.top1, res.top5, res.loss, tag=None if tag == "model" else tag)
        run.progress.last_val.update({f"{tag}_top1": res.top1, f"{tag}_top5": res.top5, f"{tag}_count": res.count})
        metric = res.top1  # the EMA's when there is one (evaluated last)
    return metric


def end_of_epoch(run: Run, epoch: int) -> bool:
    """Validate, update best / plateau / early stopping, save; True when early stopping fires."""
    cfg, p, schedule = run.cfg, run.progress, run.trainer.schedule
    last = epoch + 1 == cfg.epoch_size
    run.trainer.sync_replicas()
    metric = validate(run, epoch) if ((epoch + 1) % cfg.eval_interval == 0 or last) else None
    stop, best = False, False
    if metric is not None and math.isfinite(metric):
        best = is_improvement(metric, p.best_metric)
        if best:
            p.best_metric, p.best_epoch = metric, epoch + 1
        if schedule.on_validation(metric):
            run.log(f"validation stalled: lr reduced to {format_lr(schedule.lr_at(p.global_step))}")
        if run.early_stop is not None and run.early_stop.step(metric):
            run.log(f"early stopping: no improvement for {run.early_stop.patience} validations "
                    f"(best top-1 {run.early_stop.best:.5f})")
            stop = True
    periodic = stop or last or (epoch + 1) % cfg.save_checkpoint_epochs == 0
    save_checkpoint(run, epoch + 1, run.steps_per_epoch, periodic=periodic, best=best)
    return stop


def stop_here(run: Run, epoch_tag: int, step_tag: int) -> None:
    """A stop signal reached some rank: rank 0 writes the checkpoint of the step reached (every rank
    takes part), says where and how long the write took, and every rank raises Stopped."""
    p = run.progress
    start = time.perf_counter()
    save_checkpoint(run, epoch_tag, step_tag, stopped=True)
    seconds = time.perf_counter() - start
    where = (f"checkpoint {p.last_checkpoint} (written in {seconds:.1f} s)" if run.cfg.save_checkpoint
             else "no checkpoint (save_checkpoint is false)")
    again = ("run the same command again to continue" if {"save_checkpoint_path", "resume"} & run.cfg.command_line
             else f"run the same command with --save_checkpoint_path {run.run_dir} to continue")
    run.log(f"{run.stop.word()} at epoch {epoch_tag} step {step_tag}: {where}; {again}")
    run.monitor.close()
    raise Stopped(f"{run.stop.word()} by {run.stop.signal.name if run.stop.signal else 'another rank'}",
                  run.stop.exit_status())


def _stop_agreed(run: Run) -> bool:
    """Whether any rank was asked to stop (one all-reduce; called at epoch ends only)."""
    if not run.info.distributed:
        return run.stop.requested
    flag = torch.tensor([float(run.stop.requested)], device=run.info.device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


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
        if epoch + 1 < run.cfg.epoch_size and _stop_agreed(run):  # a signal during validation or saving
            stop_here(run, epoch + 1, run.steps_per_epoch)
    run.train_loader = run.val_loader = None  # stop persistent workers before the process group goes
    run.monitor.close()
    return TrainResult(run.run_dir, p.epoch, p.global_step, p.best_metric, p.best_epoch, dict(p.last_val),
                       p.last_checkpoint, p.best_checkpoint, run.trainer.nonfinite_total, p.broken_total,
                       run.trainer.overflow_total)


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------
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
    return {
        **run.trainer.state_dict(),
        "epoch": p.epoch, "step": p.global_step, "step_in_epoch": p.step_in_epoch,
        "steps_per_epoch": run.steps_per_epoch, "world_size": run.info.world_size,
        "config": run.cfg.to_dict(), "model_name": run.cfg.model, "num_classes": run.data.num_classes,
        "classes": list(run.data.classes), "preprocess": run.data.preprocess.to_dict(),
        "rng": rng_state(), "rng_per_rank": gather_rng_states(run), "best_metric": p.best_metric,
        "best_epoch": p.best_epoch, "best_checkpoint": p.best_checkpoint,
        "early_stop": run.early_stop.state_dict() if run.early_stop is not None else None,
        "broken_total": p.broken_total,
    }


def save_checkpoint(run: Run, epoch_tag: int, step_tag: int, periodic: bool = True, best: bool = False,
                    stopped: bool = False) -> None:
    """Rank 0 writes ``<model>-<epoch>_<step>.pth`` and/or ``<model>-best.pth``; every rank takes part.
    ``stopped``: the checkpoint of a run a signal stopped (the same command continues it)."""
    if not run.cfg.save_checkpoint or not (periodic or best):
        return
    if best:
        run.progress.best_checkpoint = str(run.run_dir / f"{run.cfg.model}-{BEST_TAG}{CHECKPOINT_SUFFIX}")
    state = checkpoint_state(run)  # collective (RNG gather): every rank builds it
    if stopped:
        state[STOPPED_KEY] = run.stop.signal.name if run.stop.signal else "a signal on another rank"
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
    try:
        extended = run.trainer.load_state_dict(ckpt, resume_epoch=p.global_step / run.steps_per_epoch)
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path} does not fit this run ({str(exc).splitlines()[0]})") from None
    if run.early_stop is not None and ckpt.get("early_stop") is not None:
        run.early_stop.load_state_dict(ckpt["early_stop"])
    p.best_metric, p.best_epoch = ckpt.get("best_metric"), ckpt.get("best_epoch")
    p.best_checkpoint = ckpt.get("best_checkpoint")
    p.broken_total = int(ckpt.get("broken_total", 0))
    p.last_checkpoint = str(path)
    _restore_rng(run, ckpt)
    run.monitor.resume_from(p.epoch, p.global_step)  # summary.csv and TensorBoard drop what came after
    run.log(f"resumed from {path}: {p.epoch} epochs + {p.step_in_epoch} steps done, global step {p.global_step}, "
            f"lr {format_lr(run.trainer.schedule.lr_at(p.global_step))}")
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
# The end of a run, and the entry
# ----------------------------------------------------------------------------------------------
def report(run: Run, result: TrainResult) -> None:
    """The closing lines: accuracy, best checkpoint, skipped steps and images."""
    val = result.last_val
    if "model_top1" in val:
        line = "final accuracy: " + "; EMA ".join(
            f"top-1 {val[f'{tag}_top1']:.5f}" + ("" if val[f"{tag}_top5"] is None else f", top-5 {val[f'{tag}_top5']:.5f}")
            for tag in ("model", "ema") if f"{tag}_top1" in val)
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


def run_training(cfg: Config) -> TrainResult:
    """Train as ``cfg`` says; raises TrainInputError & co. for bad input, NonFiniteLossError, TrainOutOfMemory,
    and Stopped after the checkpoint of a SIGTERM / SIGUSR1 / SIGINT."""
    cfg, data, ckpt, notes = prepare(cfg)
    announce(cfg, notes)
    run: Run | None = None
    try:
        run = build_run(cfg, data, ckpt)
        with stop_requests() as run.stop:  # from here on a signal means: checkpoint the step reached, stop
            result = train(run)
        report(run, result)
        barrier()
        return result
    except torch.cuda.OutOfMemoryError:
        raise TrainOutOfMemory(_oom_message(cfg, run)) from None
    except RuntimeError as exc:
        if run is None or not run.info.distributed or not is_timeout(exc):
            raise
        raise ProcessTimeout(_timeout_message(cfg, run)) from None
    finally:
        if is_initialized():
            dist.destroy_process_group()


def _timeout_message(cfg: Config, run: Run) -> str:
    wait = min(MAX_PROBE_SECONDS, PROBE_SHARE * cfg.dist_timeout * 60)  # the others time out about together
    silent = silent_ranks(run.info.rank, run.info.world_size, wait)
    who = (f"rank {', '.join(map(str, silent))}" if silent else "another process") + " stopped answering"
    return (f"rank {run.info.rank}: {who}: a collective waited dist_timeout {cfg.dist_timeout:g} min; under torchrun "
            f"--max-restarts the group restarts and resumes from the last checkpoint "
            f"({run.progress.last_checkpoint or 'none saved yet'})")


def _oom_message(cfg: Config, run: Run | None) -> str:
    kept = (run.progress.last_checkpoint if run is not None else None) or "none saved yet"
    size = cfg.image_size or get_variant(cfg.model).train_size
    if run is not None and run.stage is not None:
        size = run.stage.image_size
    return (f"out of GPU memory training {cfg.model} at batch_size {cfg.batch_size}, image_size "
            f"{size}, amp {cfg.amp}. Try a smaller --batch_size "
            f"with --accumulate_grad_batches (same global batch), --amp fp16 or bf16, --grad_checkpointing true, "
            f"or a smaller --image_size. Last checkpoint (intact): {kept}")
