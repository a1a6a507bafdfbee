"""The photo sets of ``benchmark.py finetune``: ``ROOT[:PER_CLASS]`` specs, checked, and their seeded subsets.

A set is a dataset root with train/<class>/* and val/<class>/* (or ``digits``: scikit-learn's
8x8 digits written out by scripts/make_digits.py). ``:PER_CLASS`` trains on that many images per
class, drawn by the run's seed (each seed its own subset), as a tree of symlinks; val/ is always
the whole of the set's val/.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.common.errors import InputError
from src.common.preprocess import list_class_folders

DIGITS = "digits"  # the set name that means scikit-learn's digits (a folder of that name: ./digits)


@dataclass(frozen=True)
class SetSpec:
    """One ``ROOT[:PER_CLASS]`` of --sets; per_class None = every training image."""

    root: str
    per_class: int | None = None

    @property
    def label(self) -> str:
        name = self.root if self.root == DIGITS else Path(self.root).name or self.root
        return name if self.per_class is None else f"{name}:{self.per_class}"


def parse_set(text: str) -> SetSpec:
    """``flowers17`` -> (flowers17, None); ``flowers17:10`` -> (flowers17, 10). A colon whose tail is
    not a whole number belongs to the path when that path exists."""
    head, sep, tail = text.rpartition(":")
    if not sep or (not tail.lstrip("-").isdigit() and os.path.exists(text)):
        return SetSpec(text)
    if not head:
        raise InputError(f"--sets {text}: no ROOT before ':'; expected ROOT[:PER_CLASS], e.g. flowers17:10")
    if not tail.lstrip("-").isdigit():
        raise InputError(f"--sets {text}: PER_CLASS must be a whole number, got {tail!r}")
    if int(tail) < 1:
        raise InputError(f"--sets {text}: PER_CLASS must be >= 1, got {tail}")
    return SetSpec(head, int(tail))


@dataclass(frozen=True)
class PhotoSet:
    """A checked set: its root, classes and training images per class."""

    spec: SetSpec
    root: Path
    classes: list[str]
    train_per_class: list[int]
    val_images: int

    @property
    def train_images(self) -> int:
        per = self.spec.per_class
        return sum(self.train_per_class) if per is None else per * len(self.classes)


def labelled_samples(root: str | os.PathLike) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]]]:
    """(classes, train samples, val samples) of a dataset root; val's labels follow train's class
    names (a val/ may lack classes; a class only in val/ is an InputError)."""
    root = Path(root)
    classes, train = list_class_folders(root / "train")  # DatasetError (an InputError) names the problem
    val_classes, val = list_class_folders(root / "val")
    unknown = sorted(set(val_classes) - set(classes))
    if unknown:
        raise InputError(f"{root}/val has classes that train/ lacks: {', '.join(unknown[:5])}")
    index = {name: classes.index(name) for name in val_classes}
    return classes, train, [(path, index[val_classes[c]]) for path, c in val]


def check_set(spec: SetSpec, digits_root: Path | None = None) -> PhotoSet:
    """The set behind ``spec``, checked (folders, classes, PER_CLASS against the smallest class)."""
    root = digits_root if spec.root == DIGITS else Path(spec.root)
    if root is None:
        raise ValueError("the digits set needs digits_root (write_digits)")
    if not root.is_dir():
        raise InputError(f"--sets {spec.root}: no such folder")
    if not (root / "train").is_dir() or not (root / "val").is_dir():
        raise InputError(f"--sets {spec.root}: expected a dataset root with train/<class>/* and val/<class>/*")
    classes, train, val = labelled_samples(root)
    counts = np.bincount([c for _, c in train], minlength=len(classes)).tolist()
    if spec.per_class is not None and spec.per_class > min(counts):
        small = classes[counts.index(min(counts))]
        raise InputError(f"--sets {spec.root}:{spec.per_class}: class {small!r} has only {min(counts)} training "
                         f"images; PER_CLASS must be <= {min(counts)}")
    return PhotoSet(spec, root, classes, counts, len(val))


def write_digits(folder: Path) -> Path:
    """scikit-learn's digits as a dataset root under ``folder`` (scripts/make_digits.py writes it)."""
    if importlib.util.find_spec("sklearn") is None:
        raise InputError("--sets digits needs scikit-learn: pip install -r requirements-demo.txt")
    from .train_loop import ensure_digits

    root = Path(folder) / DIGITS
    ensure_digits(root)
    return root


def training_root(photo_set: PhotoSet, seed: int, folder: Path) -> Path:
    """The root train.py and the plain loop get: the set itself, or for ``:PER_CLASS`` a new tree
    under ``folder`` of that many seeded picks per class (symlinks) beside a link to the whole val/."""
    per = photo_set.spec.per_class
    if per is None:
        return photo_set.root
    rng = np.random.default_rng(seed)
    _, train, _ = labelled_samples(photo_set.root)
    out = Path(folder)
    for c, name in enumerate(photo_set.classes):
        files = [path for path, label in train if label == c]
        picks = sorted(rng.choice(len(files), size=per, replace=False))
        class_dir = photo_set.root / "train" / name
        (out / "train" / name).mkdir(parents=True)
        for i in picks:
            source = Path(files[i])
            link = out / "train" / name / "__".join(source.relative_to(class_dir).parts)
            link.symlink_to(source.resolve())
    (out / "val").symlink_to((photo_set.root / "val").resolve(), target_is_directory=True)
    return out
