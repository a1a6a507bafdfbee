"""What a ``--dataset_path`` holds, as splits before any decoding: the one factory train.py and eval.py use.

A data set is one of four kinds (``DATASET_KINDS``); ``auto`` tells CIFAR files from class folders.

  folder    root/train/<class>/* and root/val/<class>/* (class lists must agree); or root/train/<class>/*
            only, or root/<class>/*: training splits by ``val_split`` (stratified, seeded)
  cifar10   CIFAR-10/100 python-format files (root/cifar-10-batches-py/ ...): training batches for
  cifar100  training, the test batch for validation and for eval.py (src/data/cifar.py)
  wds       WebDataset tar shards: a folder of train-*.tar / val-*.tar, an index or a pattern
            (src/data/shards.py)

One rule for a held-out validation split, whatever the kind: when the data brings its own (a val/
folder, val shards, CIFAR's test batch), that is the validation set and ``val_split`` goes unused,
with a note saying so; only a folder without val/ is split by ``val_split``.

A ``Split`` knows its samples and classes; it becomes a Dataset only when a transform is chosen
(``train_dataset`` / ``eval_dataset``), so a training run builds each stage's transform once.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from torch.utils.data import Dataset

from src.common.preprocess import DatasetError, list_class_folders, resolve_eval_folder

from .cifar import CIFAR_SOURCES, detect_cifar, download_if_missing, load_cifar_split
from .dataset import ArrayImageDataset, ImageFolderDataset, Transform, stratified_split
from .shards import ShardEvalStream, ShardSet, ShardTrainStream, class_names, find_shards, sibling_val

AUTO = "auto"
FOLDER, WDS = "folder", "wds"
DATASET_KINDS = (FOLDER, *CIFAR_SOURCES, WDS)  # what --dataset names; eval.py also takes AUTO
SPLIT_TOOL = "python -m src.data.shards IMAGE_ROOT OUT_DIR"


@dataclass
class Split:
    """One split of a data set: samples and class names, not yet decoded.

    folder: ``samples`` are (file path, label); CIFAR: ``images`` holds the pixels and samples are
    (``cifar10/test[i]``, label); wds: ``shards`` (samples stay empty: the shards are streamed).
    """

    kind: str
    classes: list[str]
    where: str
    samples: list[tuple[str, int]] = field(default_factory=list)
    images: np.ndarray | None = None
    shards: ShardSet | None = None
    name: str = ""  # CIFAR: "cifar10/test", the prefix of its sample names

    def __len__(self) -> int:
        return self.shards.total if self.shards is not None else len(self.samples)

    def class_word(self, plural: bool = False) -> str:
        """What a class is in this data set, for messages: 'class folder(s)', 'cifar10 class(es)', ..."""
        if self.kind == WDS:
            return "shard classes" if plural else "shard class"
        if self.kind == FOLDER:
            return "class folders" if plural else "class folder"
        return f"{self.kind} classes" if plural else f"{self.kind} class"

    def describe(self) -> str:
        return f"{len(self)} images in {len(self.classes)} {self.class_word(plural=True)} of {self.where}"

    def train_dataset(self, transform: Transform, seed: int) -> Dataset:
        """Training samples through ``transform`` (shards: a seeded stream the trainer's sampler plans)."""
        if self.shards is not None:
            return ShardTrainStream(self.shards, self.classes, transform, seed)
        return self._mapped_dataset(transform, self.samples, self.classes)

    def eval_dataset(self, transform: Transform, label_map: Sequence[int] | None = None,
                     classes: Sequence[str] | None = None) -> Dataset:
        """Every sample once through ``transform``; ``label_map`` renumbers labels (the data set's class i
        is model output label_map[i]) and ``classes`` names the outputs."""
        classes = list(self.classes if classes is None else classes)
        if self.shards is not None:  # shards without class names carry model indices already
            return ShardEvalStream(self.shards, classes, transform, label_map if self.classes else None)
        samples = self.samples if label_map is None else [(name, label_map[label]) for name, label in self.samples]
        return self._mapped_dataset(transform, samples, classes)

    def _mapped_dataset(self, transform: Transform, samples: list[tuple[str, int]], classes: list[str]) -> Dataset:
        if self.images is not None:
            return ArrayImageDataset(self.images, [label for _, label in samples], classes, transform, self.name)
        return ImageFolderDataset(samples, classes, transform)


@dataclass
class Splits:
    """train.py's data: the training split, the validation split (None: none), class names, notes to print."""

    train: Split
    val: Split | None
    classes: list[str]
    notes: list[str] = field(default_factory=list)


def resolve_kind(root: Path, kind: str) -> str:
    """``kind`` itself, or for ``auto`` the CIFAR name when ``root`` holds CIFAR files, else folder; a
    root holding both CIFAR files and train/ or val/ folders is an error, so nothing is read by guess."""
    kind = kind.lower()
    if kind not in (AUTO, *DATASET_KINDS):
        raise DatasetError(f"dataset must be one of {', '.join((AUTO, *DATASET_KINDS))}, got {kind!r}")
    found = detect_cifar(root) if kind in (AUTO, FOLDER) else None
    has_folders = (root / "train").is_dir() or (root / "val").is_dir()
    if kind == AUTO:
        if found and has_folders:
            raise DatasetError(f"{root} holds both {found} files and train/ or val/ class folders; "
                               f"pass --dataset {found} or --dataset folder")
        return found or FOLDER
    if kind == FOLDER and found and not has_folders:
        raise DatasetError(f"{root} holds {found} files, not class folders; pass --dataset {found}")
    return kind


def open_splits(path: str, kind: str = AUTO, *, val_split: float = 0.0, seed: int = 0, download: bool = False,
                class_num: int | None = None) -> Splits:
    """train.py's splits of ``path`` (see the module doc). ``val_split`` holds out that fraction of a
    folder without val/ (stratified by ``seed``); ``download`` fetches CIFAR; ``class_num`` names the
    classes of shards that carry class indices only."""
    if kind == WDS:
        return _shard_splits(path, val_split, class_num)
    root = Path(path).expanduser()
    kind = resolve_kind(root, kind)
    if kind in CIFAR_SOURCES:
        if download:
            download_if_missing(root, kind)
        train, test = (_cifar_split(root, kind, split) for split in ("train", "test"))
        notes = [_unused(val_split, f"{kind}'s test batch is the validation set")] if val_split > 0 else []
        return Splits(train, test, train.classes, notes)
    return _folder_splits(root, val_split, seed)


def open_eval_split(path: str, kind: str = AUTO) -> Split:
    """eval.py's images: a folder's val/ (or the folder itself, of class folders), CIFAR's test batch,
    or the val shards (shards without class names score their labels as the model's indices)."""
    if kind == WDS:
        shards = find_shards(path, "val")
        if shards is None or not shards.urls:
            raise DatasetError(f"no validation shards in {path}: expected val-*.tar, an index file or a "
                               f"shard pattern ({SPLIT_TOOL} writes them)")
        return Split(WDS, list(shards.classes or []), shards.where, shards=shards)
    root = Path(path)
    kind = resolve_kind(root, kind)
    if kind in CIFAR_SOURCES:
        return _cifar_split(root, kind, "test")
    folder = resolve_eval_folder(root)
    classes, samples = list_class_folders(folder)
    return Split(FOLDER, classes, str(folder), samples)


def _unused(val_split: float, why: str) -> str:
    return f"note: val_split {val_split:g} unused: {why}"


def _cifar_split(root: Path, name: str, split: str) -> Split:
    images, labels, classes = load_cifar_split(root, name, split)
    return Split(name, classes, f"{root} ({name} {split} batch{'es' if split == 'train' else ''})",
                 [(f"{name}/{split}[{i}]", label) for i, label in enumerate(labels)], images, name=f"{name}/{split}")


def _folder_splits(root: Path, val_split: float, seed: int) -> Splits:
    if not root.exists():
        raise DatasetError(f"dataset path does not exist: {root}")
    train_dir, val_dir = root / "train", root / "val"
    if val_dir.is_dir() and not train_dir.is_dir():
        raise DatasetError(f"{root} has val/ but no train/; add {train_dir} with one folder "
                           f"per class, or point --dataset_path at a folder of class folders")
    if train_dir.is_dir() and val_dir.is_dir():
        classes, train_samples = list_class_folders(train_dir)
        val_classes, val_samples = list_class_folders(val_dir)
        if val_classes != classes:
            only_train = sorted(set(classes) - set(val_classes))
            only_val = sorted(set(val_classes) - set(classes))
            raise DatasetError(
                f"class folders differ between {train_dir} and {val_dir}: only in train/: "
                f"{only_train or '-'}; only in val/: {only_val or '-'}; both need the same classes")
        notes = [_unused(val_split, f"{val_dir} is the validation set")] if val_split > 0 else []
        return Splits(Split(FOLDER, classes, str(train_dir), train_samples),
                      Split(FOLDER, classes, str(val_dir), val_samples), classes, notes)
    folder = train_dir if train_dir.is_dir() else root
    classes, samples = list_class_folders(folder)
    if val_split <= 0:
        return Splits(Split(FOLDER, classes, str(folder), samples), None, classes)
    train_samples, val_samples = stratified_split(samples, val_split, seed)
    if not val_samples:
        raise DatasetError(f"val_split={val_split} left no validation images in {folder} "
                           f"(every class has fewer than 2 images); add images or set --val_split 0")
    return Splits(Split(FOLDER, classes, str(folder), train_samples),
                  Split(FOLDER, classes, f"{folder} (val_split {val_split:g})", val_samples), classes)


def _shard_splits(path: str, val_split: float, class_num: int | None) -> Splits:
    train = find_shards(path, "train")
    if train is None or not train.urls:
        raise DatasetError(f"no training shards in {path}: expected train-*.tar ({SPLIT_TOOL}), an index "
                           "file or a shard pattern")
    if train.total < 1:
        raise DatasetError(f"the training shards of {train.where} hold no samples")
    classes = class_names(train, class_num)
    val = sibling_val(path)
    if val is not None and val.classes and train.classes and list(val.classes) != list(train.classes):
        raise DatasetError(f"the train and val shards of {path} list different classes")
    has_val = val is not None and bool(val.urls)
    if val_split > 0 and not has_val:  # a stream cannot hold images out: the split is made when converting
        raise DatasetError(f"val_split {val_split:g} holds out images of a folder, and {path} has no val shards "
                           f"to use instead; convert IMAGE_ROOT/val too ({SPLIT_TOOL}), or set --val_split 0")
    notes = [_unused(val_split, f"the val shards of {path} are the validation set")] if val_split > 0 else []
    return Splits(Split(WDS, classes, train.where, shards=train),
                  Split(WDS, classes, val.where, shards=val) if has_val else None, classes, notes)
