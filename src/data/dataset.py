"""Datasets, splits, batching and device-side normalisation for training and eval.

Datasets hand each sample's *path* to the transform (so training can pick a crop before
decoding) and return `(uint8 CHW tensor, label, None)`, or `(None, label, path)` when the file
cannot be decoded; `collate_skip_broken` drops those and reports their paths, so one corrupt
JPEG in a million costs a warning, not the run.

Layouts accepted by `build_datasets` (cfg.dataset_path):
  root/train/<class>/* and root/val/<class>/*   class lists must agree
  root/train/<class>/* only, or root/<class>/*  split by cfg.val_split (stratified, seeded)
  CIFAR-10/100 python-format files               root/cifar-10-batches-py/ or root/cifar-100-python/
  WebDataset tar shards (dataset 'wds')          a folder of train-*.tar / val-*.tar, an index, a pattern
                                                 (src/data/shards.py)
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import random
import shutil
import tarfile
import urllib.parse
import urllib.request
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from src.common.errors import BrokenImageWarning
from src.common.preprocess import DatasetError, UnreadableImage, list_class_folders

__all__ = [
    "CIFAR_SOURCES", "ArrayImageDataset", "Batch", "CifarSource",
    "DataSplits", "DatasetError", "ImageFolderDataset", "ShardedEvalSampler",
    "build_datasets", "collate_skip_broken", "count_images", "download_and_extract",
    "detect_cifar", "load_cifar", "load_cifar_split", "md5sum", "restricted_unpickle", "stratified_split",
    "to_device_normalized",
]

DEFAULT_VAL_SPLIT = 0.1
DATASET_KINDS = ("auto", "folder", "cifar10", "cifar100", "wds")
DOWNLOAD_CHUNK = 1 << 20
UINT8_MAX = 255.0

Sample = tuple[Any, int]
Transform = Callable[[Any], torch.Tensor]


class Batch(NamedTuple):
    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor  # int64 (N,)
    broken: list[str]     # paths of samples dropped from this batch


class DataSplits(NamedTuple):
    train: Dataset
    val: Dataset | None   # None when there is no val/ folder and val_split is 0
    classes: list[str]


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------
class ImageFolderDataset(Dataset):
    """(path, label) samples decoded by `transform(path)` -> (tensor, label, None).

    A file that fails to decode gives (None, label, path) after a BrokenImageWarning.
    """

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str],
                 transform: Transform) -> None:
        self.samples = list(samples)
        self.classes = list(classes)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor | None, int, str | None]:
        path, label = self.samples[index]
        try:
            return self.transform(path), label, None
        except UnreadableImage as e:
            warnings.warn(f"skipping unreadable image {path}: {e.reason}", BrokenImageWarning,
                          stacklevel=2)
            return None, label, str(path)


class ArrayImageDataset(Dataset):
    """In-memory uint8 NHWC images (CIFAR) -> transform(PIL image) -> (tensor, label, None)."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], classes: Sequence[str],
                 transform: Transform, name: str = "array") -> None:
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be uint8 (N, H, W, 3), got {images.dtype} {images.shape}")
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images = images
        self.labels = [int(v) for v in labels]
        self.classes = list(classes)
        self.transform = transform
        self.samples = [(f"{name}[{i}]", label) for i, label in enumerate(self.labels)]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, None]:
        img = Image.fromarray(self.images[index], "RGB")
        return self.transform(img), self.labels[index], None


def collate_skip_broken(batch: Sequence[tuple[torch.Tensor | None, int, str | None]]) -> Batch:
    """Stack the decodable samples; list the broken ones. All broken -> empty tensors."""
    good = [(x, y) for x, y, _ in batch if x is not None]
    broken = [str(p) for x, _, p in batch if x is None]
    if not good:
        return Batch(torch.empty((0, 3, 0, 0), dtype=torch.uint8),
                     torch.empty((0,), dtype=torch.int64), broken)
    images = torch.stack([x for x, _ in good])
    labels = torch.tensor([y for _, y in good], dtype=torch.int64)
    return Batch(images, labels, broken)


def count_images(samples: Sequence[Sample], classes: Sequence[str]) -> dict[str, int]:
    """Images per class name, in class order (classes without images count 0)."""
    counts = Counter(label for _, label in samples)
    return {name: counts.get(i, 0) for i, name in enumerate(classes)}


def stratified_split(samples: Sequence[Sample], val_fraction: float,
                     seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split per class: round(n * val_fraction) images to val, at least 1 when the class has
    >= 2 images, never all of them. Deterministic for (samples, val_fraction, seed); both
    outputs keep the input order."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_split must be in (0, 1), got {val_fraction!r}")
    by_class: dict[int, list[int]] = {}
    for index, (_, label) in enumerate(samples):
        by_class.setdefault(label, []).append(index)
    rng = random.Random(seed)
    val_indices: set[int] = set()
    for label in sorted(by_class):
        indices = by_class[label]
        n = len(indices)
        n_val = 0 if n < 2 else min(n - 1, max(1, round(n * val_fraction)))
        val_indices.update(rng.sample(indices, n_val))
    train = [s for i, s in enumerate(samples) if i not in val_indices]
    val = [s for i, s in enumerate(samples) if i in val_indices]
    return train, val


# --------------------------------------------------------------------------------------------
# Building the splits from a config
# --------------------------------------------------------------------------------------------
def _cfg(cfg: Any, key: str, default: Any) -> Any:
    value = cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)
    return default if value is None else value


def build_datasets(cfg: Any, train_transform: Transform, eval_transform: Transform) -> DataSplits:
    """Train/val datasets from cfg.dataset_path (see module doc for layouts).

    Keys read: dataset_path, dataset ('auto'|'folder'|'cifar10'|'cifar100'|'wds'; auto recognises the
    CIFAR folders), val_split (default 0.1, 0 = no val when there is no val/), seed, download,
    class_num (shards that carry class indices only). CIFAR uses its training batches for train and
    its test batch for val (val_split unused); shards bring their own val split.
    """
    path = _cfg(cfg, "dataset_path", None)
    if not path:
        raise DatasetError("dataset_path is not set; pass --dataset_path <folder>")
    root = Path(path).expanduser()
    kind = str(_cfg(cfg, "dataset", "auto")).lower()
    if kind not in DATASET_KINDS:
        raise DatasetError(f"dataset must be one of {DATASET_KINDS}, got {kind!r}")
    if kind == "wds":
        return _shard_splits(str(path), cfg, train_transform, eval_transform)
    if kind == "auto":
        kind = detect_cifar(root) or "folder"
    elif kind == "folder" and not (root / "train").is_dir() and detect_cifar(root):
        found = detect_cifar(root)
        raise DatasetError(f"{root} holds {found} files, not class folders; pass --dataset {found}")
    if kind in CIFAR_SOURCES:
        return _cifar_splits(root, kind, bool(_cfg(cfg, "download", False)),
                             train_transform, eval_transform)
    return _folder_splits(root, float(_cfg(cfg, "val_split", DEFAULT_VAL_SPLIT)),
                          int(_cfg(cfg, "seed", 0)), train_transform, eval_transform)


def _shard_splits(path: str, cfg: Any, train_transform: Transform, eval_transform: Transform) -> DataSplits:
    from src.data.shards import shard_splits  # webdataset is needed only for shards
    if float(_cfg(cfg, "val_split", 0.0)) > 0:
        raise DatasetError("val_split holds out images of a folder; shards bring their own val split "
                           "(convert IMAGE_ROOT/val too), so drop --val_split with --dataset wds")
    train, val, classes = shard_splits(path, train_transform, eval_transform, int(_cfg(cfg, "seed", 0)),
                                       _cfg(cfg, "class_num", None))
    return DataSplits(train, val, classes)


def _folder_splits(root: Path, val_split: float, seed: int, train_transform: Transform,
                   eval_transform: Transform) -> DataSplits:
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
        return DataSplits(ImageFolderDataset(train_samples, classes, train_transform),
                          ImageFolderDataset(val_samples, classes, eval_transform), classes)
    folder = train_dir if train_dir.is_dir() else root
    classes, samples = list_class_folders(folder)
    if val_split <= 0:
        return DataSplits(ImageFolderDataset(samples, classes, train_transform), None, classes)
    train_samples, val_samples = stratified_split(samples, val_split, seed)
    if not val_samples:
        raise DatasetError(f"val_split={val_split} left no validation images in {folder} "
                           f"(every class has fewer than 2 images); add images or set "
                           f"--val_split 0")
    return DataSplits(ImageFolderDataset(train_samples, classes, train_transform),
                      ImageFolderDataset(val_samples, classes, eval_transform), classes)


# --------------------------------------------------------------------------------------------
# CIFAR (python-format pickles, read with a restricted unpickler)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class CifarSource:
    url: str
    md5: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str


CIFAR_SOURCES: dict[str, CifarSource] = {
    "cifar10": CifarSource(
        url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        md5="c58f30108f718f92721af3b95e74349a", folder="cifar-10-batches-py",
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)), test_files=("test_batch",),
        meta_file="batches.meta", label_key="labels", names_key="label_names"),
    "cifar100": CifarSource(
        url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        md5="eb9058c3a382ffc7106e4002c42a8d85", folder="cifar-100-python",
        train_files=("train",), test_files=("test",), meta_file="meta",
        label_key="fine_labels", names_key="fine_label_names"),
}
CIFAR_SIDE = 32


def _safe_codecs_encode(text: str, encoding: str = "latin1") -> bytes:
    """Python 3 protocol-2 pickles rebuild bytes as codecs.encode(str, 'latin1'); allow only that."""
    if encoding.lower().replace("-", "").replace("_", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"refusing codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


_NDARRAY_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]
_NDARRAY_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
# Exactly the globals a pickled numpy array needs; anything else (os.system, eval, ...) is refused.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _NDARRAY_RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _NDARRAY_RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _NDARRAY_FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _NDARRAY_FROMBUFFER,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _safe_codecs_encode,
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global {module}.{name}: only numpy arrays are allowed") from None


def restricted_unpickle(data: bytes) -> Any:
    """Unpickle plain containers and numpy arrays only (CIFAR's python-format files).

    latin1 decodes Python 2 byte strings, which is how numpy arrays pickled by Python 2 load.
    """
    return _NumpyOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()


def _load_pickle_dict(path: Path) -> dict[str, Any]:
    try:
        obj = restricted_unpickle(path.read_bytes())
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise DatasetError(f"cannot read CIFAR file {path}: {e}") from e
    if not isinstance(obj, dict):
        raise DatasetError(f"cannot read CIFAR file {path}: expected a dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_folder(root: Path, name: str) -> Path | None:
    source = CIFAR_SOURCES[name]
    for candidate in (root / source.folder, root):
        if (candidate / source.meta_file).is_file() and (candidate / source.test_files[0]).is_file():
            return candidate
    return None


def detect_cifar(root: str | os.PathLike) -> str | None:
    """'cifar10' or 'cifar100' when root (or its CIFAR sub-folder) holds that data set's files."""
    return next((name for name in CIFAR_SOURCES if _cifar_folder(Path(root), name)), None)


def _read_batches(folder: Path, files: Sequence[str], label_key: str) -> tuple[np.ndarray, list[int]]:
    images, labels = [], []
    for file_name in files:
        path = folder / file_name
        if not path.is_file():
            raise DatasetError(f"missing CIFAR file {path}; re-extract the archive or use --download True")
        batch = _load_pickle_dict(path)
        try:
            data = np.asarray(batch["data"], dtype=np.uint8)
            batch_labels = [int(v) for v in batch[label_key]]
        except KeyError as e:
            raise DatasetError(f"CIFAR file {path} lacks key {e}") from e
        except (TypeError, ValueError) as e:
            raise DatasetError(f"CIFAR file {path} has unreadable data or labels: {e}") from e
        pixels = 3 * CIFAR_SIDE * CIFAR_SIDE
        if data.ndim != 2 or data.shape[1] != pixels or len(data) == 0:
            raise DatasetError(f"CIFAR file {path}: expected 'data' of shape (N, {pixels}) with N > 0, "
                               f"got {data.shape}")
        if len(batch_labels) != len(data):
            raise DatasetError(f"CIFAR file {path} has {len(data)} images but {len(batch_labels)} labels")
        images.append(data.reshape(-1, 3, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1))
        labels.extend(batch_labels)
    return np.ascontiguousarray(np.concatenate(images)), labels


def load_cifar(root: str | os.PathLike, name: str) -> tuple[np.ndarray, list[int], np.ndarray,
                                                              list[int], list[str]]:
    """(train_images NHWC uint8, train_labels, test_images, test_labels, class names)."""
    train_x, train_y, classes = load_cifar_split(root, name, "train")
    test_x, test_y, _ = load_cifar_split(root, name, "test")
    return train_x, train_y, test_x, test_y, classes


def load_cifar_split(root: str | os.PathLike, name: str, split: str) -> tuple[np.ndarray, list[int], list[str]]:
    """One split ('train' or 'test') of CIFAR-10/100: (images NHWC uint8, labels, class names)."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    source = CIFAR_SOURCES[name]
    folder = _cifar_folder(Path(root), name)
    if folder is None:
        raise DatasetError(
            f"{name} files not found under {root} (expected {Path(root) / source.folder}/"
            f"{source.meta_file}, {', '.join(source.train_files + source.test_files)}); "
            f"train.py --download True fetches {source.url}")
    meta = _load_pickle_dict(folder / source.meta_file)
    classes = [str(c) for c in meta.get(source.names_key, [])]
    files = source.train_files if split == "train" else source.test_files
    images, labels = _read_batches(folder, files, source.label_key)
    if not classes or max(labels) >= len(classes):
        raise DatasetError(f"{folder / source.meta_file} lists {len(classes)} class names, "
                           f"fewer than the labels need")
    return images, labels, classes


def _cifar_splits(root: Path, name: str, download: bool, train_transform: Transform,
                  eval_transform: Transform) -> DataSplits:
    if download and _cifar_folder(root, name) is None:
        source = CIFAR_SOURCES[name]
        download_and_extract(source.url, root, source.md5)
    train_x, train_y, test_x, test_y, classes = load_cifar(root, name)
    return DataSplits(ArrayImageDataset(train_x, train_y, classes, train_transform, f"{name}/train"),
                      ArrayImageDataset(test_x, test_y, classes, eval_transform, f"{name}/test"),
                      classes)


def md5sum(path: str | os.PathLike) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(DOWNLOAD_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def download_and_extract(url: str, dest_dir: str | os.PathLike, md5: str,
                         filename: str | None = None) -> Path:
    """Fetch `url` (https:// or file://) into dest_dir, check its md5, extract the tarball there.

    The archive is written as `<name>.part` and renamed only after the md5 matches; a mismatch
    deletes it and raises DatasetError. Extraction uses tarfile's 'data' filter (no absolute
    paths, links out of dest_dir or device files).
    """
    dest = Path(dest_dir)
    dest.mkdir(parents=True, exist_ok=True)
    archive = dest / (filename or os.path.basename(urllib.parse.urlparse(url).path))
    if not archive.is_file() or md5sum(archive) != md5:
        part = archive.with_name(archive.name + ".part")
        try:
            with urllib.request.urlopen(url) as response, open(part, "wb") as out:
                shutil.copyfileobj(response, out, DOWNLOAD_CHUNK)
        except OSError as e:
            part.unlink(missing_ok=True)
            raise DatasetError(f"download of {url} failed: {e}; download it by hand into {dest}") from e
        actual = md5sum(part)
        if actual != md5:
            part.unlink()
            raise DatasetError(f"md5 mismatch for {url}: expected {md5}, got {actual}; "
                               f"retry, or download it by hand into {dest}")
        part.replace(archive)
    try:
        with tarfile.open(archive, "r:*") as tar:
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, OSError) as e:
        raise DatasetError(f"cannot extract {archive}: {e}; delete it and retry") from e
    return archive


# --------------------------------------------------------------------------------------------
# Device side and distributed eval
# --------------------------------------------------------------------------------------------
def to_device_normalized(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                         device: torch.device | str, channels_last: bool = False,
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 NCHW -> (x / 255 - mean) / std on `device` (same float32 arithmetic as the eval
    preprocessing), then cast to `dtype`. The uint8 copy is non-blocking (pin the batch)."""
    x = images.to(device, non_blocking=True).to(torch.float32).div_(UINT8_MAX)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    x = x.sub_(mean_t).div_(std_t).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return x


class ShardedEvalSampler(Sampler[int]):
    """Indices rank, rank + world, ... : every index exactly once across ranks, no padding, so
    summed metrics cover the dataset exactly (DistributedSampler pads with repeats)."""

    def __init__(self, n: int, rank: int, world: int) -> None:
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"need 0 <= rank < world, got rank={rank}, world={world}")
        self.n, self.rank, self.world = n, rank, world

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world))
