"""A training run's data: the splits of --dataset_path, the eval preprocessing, the epoch plan, and the
DataLoaders of each progressive stage.

The data sets are opened once (src.data.sources: folders, CIFAR or shards, with one rule for the
validation split); a training stage's transform is built when its loader is, from the stage's crop
size and RandAugment magnitude, so nothing is built twice or swapped on a built dataset.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import torch
from torch.utils.data import DataLoader

from src.common.preprocess import Preprocess
from src.config import Config
from src.data.loaders import eval_loader, train_loader
from src.data.sampler import EpochSampler
from src.data.sources import Split, open_splits
from src.data.transforms import AugmentConfig, build_eval_transform, build_train_transform, resolve_augment
from src.models import default_preprocess, get_variant
from src.models.preprocessing import resolve_preprocess
from src.runtime.distributed import DistInfo
from src.training.errors import TrainInputError
from src.training.preemption import ignore_in_worker
from src.training.progressive import StageSettings


@dataclass
class DataBundle:
    train: Split
    val: Split | None
    classes: list[str]
    image_size: int  # training crop of the final stage (the run's image_size)
    interpolation: str
    preprocess: Preprocess  # eval preprocessing, stored in checkpoints for eval.py and infer/
    num_classes: int = 0  # classifier outputs: class_num, or the number of class folders


def load_data(cfg: Config) -> tuple[DataBundle, list[str]]:
    """The run's splits (src.data.sources.open_splits), image size and eval preprocessing; the notes
    the data gives (e.g. a val_split the data's own validation set leaves unused)."""
    if cfg.dataset_path is None:
        raise TrainInputError("no dataset: pass --dataset_path DIR (DIR/train/<class>/*, DIR/val/<class>/*)")
    splits = open_splits(cfg.dataset_path, cfg.dataset, val_split=cfg.val_split, seed=cfg.seed,
                         download=cfg.download, class_num=cfg.class_num or None)
    image_size = cfg.image_size or get_variant(cfg.model).train_size
    interpolation = cfg.interpolation or default_preprocess(cfg.model).interpolation
    pre = resolve_preprocess(cfg.model, image_size=cfg.image_size, resize=cfg.eval_resize, crop=cfg.eval_crop,
                             interpolation=cfg.interpolation, normalization=cfg.normalization)
    return DataBundle(splits.train, splits.val, list(splits.classes), image_size, interpolation, pre), splits.notes


def plan_epoch(num_train: int, batch_size: int, accumulate: int, world_size: int) -> tuple[int, int]:
    """(micro-batches per process, optimizer steps) of an epoch: the whole global batches
    (batch_size x accumulate x processes) the training images hold; the rest of the images wait for
    the next epoch's order. The same for every split of one global batch (src.data.sampler)."""
    global_batch = batch_size * accumulate * world_size
    steps = num_train // global_batch
    if steps < 1:
        raise TrainInputError(
            f"{num_train} training images are less than one optimizer step of batch_size {batch_size} x "
            f"accumulate_grad_batches {accumulate} x {world_size} process(es) = {global_batch}; "
            f"lower --batch_size or --accumulate_grad_batches")
    return steps * accumulate, steps


def augment_settings(cfg: Config, stage: StageSettings | None = None) -> AugmentConfig:
    """The run's augmentation (config keys, the named preset filling what was not set), with a
    progressive stage's RandAugment magnitude, which counts as set (a preset cannot override it)."""
    values = {item.name: getattr(cfg, item.name) for item in fields(AugmentConfig) if hasattr(cfg, item.name)}
    explicit = set(cfg.explicit)
    if stage is not None:
        values["randaug_magnitude"] = stage.randaug_magnitude
        if stage.index >= 0 and "randaug_magnitude" in (cfg.progressive[stage.index] or {}):
            explicit.add("randaug_magnitude")
    return resolve_augment(values, explicit)


def loader_options(cfg: Config, info: DistInfo) -> dict[str, Any]:
    workers = cfg.num_workers or 0
    return dict(num_workers=workers, pin_memory=info.device.type == "cuda", persistent_workers=workers > 0,
                # A private generator: creating a loader iterator must not draw from the global RNG.
                generator=torch.Generator().manual_seed(cfg.seed),
                worker_init_fn=ignore_in_worker if workers else None)  # stop signals are the main process's


def make_train_loader(cfg: Config, data: DataBundle, stage: StageSettings, sampler: EpochSampler,
                      info: DistInfo) -> DataLoader:
    """The loader of a progressive stage (or of the whole run): the stage's transform over the
    training split, in the seeded sampler's order."""
    eval_resize = data.preprocess.at_crop(stage.image_size).resize  # the 'none' strength: the eval ratio
    transform = build_train_transform(augment_settings(cfg, stage), stage.image_size, data.interpolation,
                                      eval_resize=eval_resize)
    return train_loader(data.train.train_dataset(transform, cfg.seed), sampler, cfg.seed, **loader_options(cfg, info))


def make_val_loader(cfg: Config, data: DataBundle, info: DistInfo) -> DataLoader | None:
    """Every validation image once across the processes, through the eval preprocessing."""
    return None if data.val is None else _eval_loader_of(data.val, cfg, data, info)


def make_probe_loader(cfg: Config, data: DataBundle, info: DistInfo) -> DataLoader:
    """The training images through the eval preprocessing (at the run's size, no augmentation), each
    once across the processes: what the linear probe's features are computed from."""
    return _eval_loader_of(data.train, cfg, data, info)


def _eval_loader_of(split: Split, cfg: Config, data: DataBundle, info: DistInfo) -> DataLoader:
    dataset = split.eval_dataset(build_eval_transform(data.preprocess))
    return eval_loader(dataset, info.rank, info.world_size, cfg.eval_batch_size or cfg.batch_size,
                       **loader_options(cfg, info))
