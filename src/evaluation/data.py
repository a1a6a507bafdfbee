"""The images eval.py scores: which data set --dataset_path holds, its classes as the model's, its loader.

A dataset root (its val/) or any folder of class folders, a CIFAR-10/100 folder (its test batch), or
tar shards (val-*.tar). Classes map to model outputs by src.common.class_mapping, the rule the ONNX runner
uses too, so both score the same image as the same class.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader, Dataset

from src.common.class_mapping import ClassMapping, map_classes
from src.data.dataset import (ArrayImageDataset, ImageFolderDataset, ShardedEvalSampler, collate_skip_broken, detect_cifar,
                         load_cifar_split)
from src.runtime.distributed import DistInfo
from src.models.loading import LoadedModel
from src.common.preprocess import DatasetError, Preprocess, list_class_folders, resolve_eval_folder
from src.data.transforms import build_eval_transform

EVAL_DATASET_KINDS = ("auto", "folder", "cifar10", "cifar100", "wds")


@dataclass
class EvalData:
    """The images to score: (name, label) samples, the data set's class names, where they are.

    ``images`` holds CIFAR's decoded test batch (samples are then ``cifar10/test[i]``); for a
    folder it is None and samples are file paths.
    """

    samples: list[tuple[str, int]]
    classes: list[str]
    where: str
    images: np.ndarray | None = None
    name: str = "folder"
    shards: Any = None  # src.data.shards.ShardSet for --dataset wds (samples then stay empty)

    def class_word(self, plural: bool = False) -> str:
        """What a class is in this data set, for messages: 'class folder(s)' or 'cifar10 class(es)'."""
        if self.shards is not None:
            return "shard classes" if plural else "shard class"
        if self.images is None:
            return "class folders" if plural else "class folder"
        return f"{self.name} classes" if plural else f"{self.name} class"

    def describe(self) -> str:
        count = self.shards.total if self.shards is not None else len(self.samples)
        return f"{count} images in {len(self.classes)} {self.class_word(plural=True)} of {self.where}"


def _has_class_folders(root: Path) -> bool:
    """Whether ``root`` looks like a train.py image-folder root (it has train/ or val/)."""
    return (root / "train").is_dir() or (root / "val").is_dir()


def read_eval_data(dataset_path: str, kind: str = "auto") -> EvalData:
    """The data to score, chosen as train.py chooses (``kind``: one of EVAL_DATASET_KINDS).

    folder: the class folders of the root's val/ (or of the folder itself); cifarN: the test batch;
    wds: val shards. auto: CIFAR when the root holds CIFAR files, else folders; a root with both is
    an error, so nothing is scored by guess.
    """
    if kind == "wds":
        return _read_shards(dataset_path)
    root = Path(dataset_path)
    if kind == "auto":
        cifar = detect_cifar(root)
        if cifar is not None and _has_class_folders(root):
            raise DatasetError(f"{root} holds both {cifar} files and train/ or val/ class folders; "
                               f"pass --dataset {cifar} or --dataset folder")
        kind = cifar or "folder"
    if kind != "folder":
        images, labels, classes = load_cifar_split(root, kind, "test")
        return EvalData([(f"{kind}/test[{i}]", label) for i, label in enumerate(labels)], classes,
                        f"{root} ({kind} test batch)", images, kind)
    folder = resolve_eval_folder(root)
    classes, samples = list_class_folders(folder)
    return EvalData(samples, classes, str(folder))


def _read_shards(dataset_path: str) -> EvalData:
    """val shards; shards without class names (the hub's) score their labels as the model's indices."""
    from src.data.shards import find_shards  # webdataset is needed only for shards
    shards = find_shards(dataset_path, "val")
    if shards is None or not shards.urls:
        raise DatasetError(f"no validation shards in {dataset_path}: expected val-*.tar, an index file or a "
                           "shard pattern (python -m src.data.shards IMAGE_ROOT OUT_DIR writes them)")
    return EvalData([], list(shards.classes or []), shards.where, name="wds", shards=shards)


def map_to_model(data: EvalData, loaded: LoadedModel) -> ClassMapping:
    """The data set's classes as the model's outputs (src.common.class_mapping's rule)."""
    return map_classes(data.classes, loaded.classes, loaded.num_classes, data.where, data.class_word(),
                       data.class_word(plural=True), owner="checkpoint")


def build_loader(data: EvalData, mapping: ClassMapping, pre: Preprocess, batch_size: int, num_workers: int,
                 info: DistInfo) -> DataLoader:
    """This rank's share of ``data``, labelled with model indices, decoded and cropped as ``pre`` says."""
    transform = build_eval_transform(pre)
    pin_memory = info.device.type == "cuda"
    if data.shards is not None:
        from src.data.shards import ShardEvalStream, make_eval_loader
        label_map = mapping.model_index if data.classes else None  # no names: labels are model indices
        stream = ShardEvalStream(data.shards, mapping.names, transform, label_map)
        return make_eval_loader(stream, info.rank, info.world_size, batch_size, num_workers=num_workers,
                                collate_fn=collate_skip_broken, pin_memory=pin_memory)
    samples = [(name, mapping.model_index[label]) for name, label in data.samples]
    dataset: Dataset
    if data.images is not None:
        dataset = ArrayImageDataset(data.images, [label for _, label in samples], mapping.names, transform,
                                    f"{data.name}/test")
    else:
        dataset = ImageFolderDataset(samples, mapping.names, transform)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False,
                      sampler=ShardedEvalSampler(len(dataset), info.rank, info.world_size),
                      num_workers=num_workers, collate_fn=collate_skip_broken, pin_memory=pin_memory,
                      drop_last=False)
