"""The images eval.py scores: which data set --dataset_path holds, its classes as the model's, its loader.

A dataset root (its val/) or any folder of class folders, a CIFAR-10/100 folder (its test batch), or
tar shards (val-*.tar), read by the factory train.py uses (src.data.sources). Classes map to model
outputs by src.common.class_mapping, the rule the ONNX runner uses too, so both score the same image
as the same class.
"""
from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

from src.common.class_mapping import ClassMapping, map_classes
from src.common.preprocess import Preprocess
from src.data.dataset import collate_skip_broken
from src.data.loaders import eval_loader
from src.data.sources import AUTO, DATASET_KINDS, Split, open_eval_split
from src.data.transforms import build_eval_transform
from src.models.loading import LoadedModel
from src.runtime.distributed import DistInfo

EVAL_DATASET_KINDS = (AUTO, *DATASET_KINDS)


def read_eval_data(dataset_path: str, kind: str = AUTO) -> Split:
    """The split to score (src.data.sources.open_eval_split: folders' val/, CIFAR's test batch, val shards)."""
    return open_eval_split(dataset_path, kind)


def map_to_model(data: Split, loaded: LoadedModel) -> ClassMapping:
    """The data set's classes as the model's outputs (src.common.class_mapping's rule)."""
    return map_classes(data.classes, loaded.classes, loaded.num_classes, data.where, data.class_word(),
                       data.class_word(plural=True), owner="checkpoint")


class PathBatch(NamedTuple):
    """A batch whose images are tied to their files (src.data.dataset.Batch plus ``paths``)."""

    images: torch.Tensor
    labels: torch.Tensor
    broken: list[str]
    paths: list[str]  # of the images in the batch, in order (CIFAR: "cifar10[i]")


class WithPaths(Dataset):
    """A map-style eval data set whose items also carry their sample's path, so that a prediction can
    be tied to its photo (the mistakes report)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Any, int, str | None, str]:
        return (*self.dataset[index], str(self.dataset.samples[index][0]))


def collate_with_paths(items: Sequence[tuple[Any, int, str | None, str]]) -> PathBatch:
    """collate_skip_broken, plus the paths of the images it kept."""
    batch = collate_skip_broken([item[:3] for item in items])
    return PathBatch(*batch, [path for image, _, _, path in items if image is not None])


def build_loader(data: Split, mapping: ClassMapping, pre: Preprocess, batch_size: int, num_workers: int,
                 info: DistInfo, with_paths: bool = False) -> DataLoader:
    """This rank's share of ``data``, labelled with model indices, decoded and cropped as ``pre`` says;
    ``with_paths``: batches carry their images' paths (folders and CIFAR; tar shards have none)."""
    dataset = data.eval_dataset(build_eval_transform(pre), mapping.model_index, mapping.names)
    options: dict[str, Any] = dict(num_workers=num_workers, pin_memory=info.device.type == "cuda")
    if with_paths and hasattr(dataset, "samples"):
        dataset, options["collate_fn"] = WithPaths(dataset), collate_with_paths
    return eval_loader(dataset, info.rank, info.world_size, batch_size, **options)
