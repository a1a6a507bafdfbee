"""CIFAR-10/100 in their python-format files: found, downloaded (md5-checked) and read with an
unpickler that can build numpy arrays and nothing else, so a tampered file cannot run code.

``train.py --dataset cifar10 --download true`` fetches the archive; eval.py scores the test batch.
"""
from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import tarfile
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from src.common.preprocess import DatasetError

DOWNLOAD_CHUNK = 1 << 20


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


def download_if_missing(root: str | os.PathLike, name: str) -> None:
    """Fetch and extract CIFAR ``name`` into ``root`` unless its files are already there."""
    if _cifar_folder(Path(root), name) is None:
        source = CIFAR_SOURCES[name]
        download_and_extract(source.url, root, source.md5)
