"""WebDataset tar shards: the converter and the readers train.py and eval.py use.

Why shards: on a cluster's network file system opening 1.28 million small files costs more than
decoding them; reading a few hundred large tar files front to back does not. The layout is the
WebDataset convention (what timm reads and what ``timm/imagenet-1k-wds`` on the Hugging Face hub
holds): consecutive tar members ``<key>.jpg`` (the image file's own bytes) and ``<key>.cls`` (the
class index as decimal text) make one sample.

Convert an ImageNet-layout folder (IMAGE_ROOT/train/<class>/*, IMAGE_ROOT/val/<class>/*)::

    python -m src.data.shards IMAGE_ROOT OUT_DIR [--shard_size_mb 256] [--workers 8]

This writes OUT_DIR/train-000000.tar ..., OUT_DIR/val-000000.tar ... and OUT_DIR/shards.json (class
names in order, samples per shard, skipped files). Images keep their bytes (a PNG stays ``.png``),
so training and evaluation decode exactly the pixels the folder gives. Unreadable files (the
project's checks: full decode, src.common.preprocess.MAX_IMAGE_PIXELS) are skipped and listed. The same
input gives byte-identical shards: the training split is shuffled once with a fixed seed (shards
hold a mix of classes), the val split keeps the folder order, and every tar header is fixed.

Reading (``--dataset wds``): ``--dataset_path`` is a folder of shards (train.py takes train-*.tar
and val-*.tar, eval.py val-*.tar; the hub's ``*-train-*.tar`` / ``*-validation-*.tar`` too), an
index file (shards.json, or the hub's _info.json), or a shard pattern such as
``DIR/train-{000000..000127}.tar`` or ``pipe:curl -s URL/train-{0000..1023}.tar``, opened by
webdataset. Sample counts come from the index; without one, local shards are counted by reading
them (``python -m src.data.shards --index DIR`` does that once and writes DIR/shards.json).

Training (`ShardTrainStream`): per epoch the shards are shuffled from (seed, epoch) and dealt out
so every (rank, loader worker) reads its own; each worker shuffles through a seeded buffer and
stops after exactly its share of the rank's batches (cycling its shards if they run short), so
every rank takes the same number of steps however uneven the shards. Augmentation is seeded per
sample from (seed, epoch, stream, position). The data of an epoch is therefore a function of
(seed, epoch, world size, loader workers): a resume at an epoch boundary, and mid-epoch too
(the consumed samples are read again but not decoded), repeats the uninterrupted run exactly
with the same world size and num_workers (a checkpoint's config keeps both).

Evaluation (`ShardEvalStream`): shards are dealt to ranks and workers, every sample is scored
exactly once, no padding; with fewer shards than processes each rank reads all shards and keeps
every world-th sample.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import multiprocessing
import os
import random
import sys
import warnings
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from src.common.errors import EXIT_FAILED, BrokenImageWarning, InputError, report_error
from src.common.preprocess import DatasetError, UnreadableImage, list_class_folders, load_rgb
from src.data.sampler import sample_seed
from src.runtime.distributed import default_num_workers

__all__ = ["DEFAULT_SHARD_MB", "INDEX_FILE", "ShardEvalStream", "ShardSet", "ShardTrainStream",
           "class_names", "convert", "find_shards", "index_folder", "main", "make_eval_loader", "make_train_loader",
           "sibling_val"]

INDEX_FILE = "shards.json"
INDEX_FORMAT = "effnet-wds-1"
HUB_INDEX_FILE = "_info.json"  # timm / Hugging Face hub shard sets: splits with filenames and shard_lengths
DEFAULT_SHARD_MB = 256.0
MB = 1 << 20
TAR_BLOCK = 512
CONVERT_SEED = 0  # shuffles the training split once, so shards mix classes (and conversion stays reproducible)
SHUFFLE_BUFFER = 1000  # samples per loader worker; ~110 MB of ImageNet JPEGs
LABEL_KEY = "cls"
# Member extensions read as the image, in this order (Pillow identifies the format from the bytes).
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm", "pgm")
SPLIT_NAMES = {"train": ("train",), "val": ("val", "validation")}
KEY_DIGITS = 8

Transform = Callable[[Any], torch.Tensor]
Item = tuple["torch.Tensor | None", int, "str | None"]  # (image, label, name of a broken sample)


# --------------------------------------------------------------------------------------------
# Converter
# --------------------------------------------------------------------------------------------
def _split_folders(root: Path) -> dict[str, Path]:
    """{'train': root/train, 'val': root/val} as present; a folder of class folders is 'train'."""
    if not root.is_dir():
        raise DatasetError(f"image root {root} is not a folder; expected {root}/train/<class>/* and {root}/val/<class>/*")
    found = {split: root / split for split in ("train", "val") if (root / split).is_dir()}
    return found or {"train": root}


def _check_image(path: str) -> str | None:
    """None when the project's decoder reads the file fully, else why not (run in a worker)."""
    try:
        load_rgb(path)
    except UnreadableImage as e:
        return e.reason
    return None


def _tar_size(nbytes: int) -> int:
    """Bytes one member takes in a tar file: a header block plus its data rounded up to blocks."""
    return TAR_BLOCK + -(-nbytes // TAR_BLOCK) * TAR_BLOCK


def _member_ext(path: str) -> str:
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    return "jpg" if ext == "jpeg" else ext


def _open_writer(out_dir: Path, name: str) -> tuple[Any, Any]:
    """A TarWriter whose headers depend on the content only: mtime 0, uid/gid 0 (tarfile's
    default), empty user/group names, mode 0444, USTAR format; members in sorted key order."""
    handle = open(out_dir / (name + ".tmp"), "wb")
    return handle, wds.TarWriter(handle, user="", group="", mode=0o444, encoder=False, mtime=0)


def _write_split(split: str, samples: Sequence[tuple[str, int]], out_dir: Path, limit: int) -> list[dict]:
    """Write ``split-NNNNNN.tar`` files of at most ``limit`` member bytes (one sample at least)."""
    shards: list[dict] = []
    handle = writer = None
    size = 0

    def finish() -> None:
        writer.close()
        handle.close()
        os.replace(out_dir / (shards[-1]["file"] + ".tmp"), out_dir / shards[-1]["file"])

    for n, (path, label) in enumerate(samples):
        data = Path(path).read_bytes()
        cls = str(label).encode()
        member = _tar_size(len(data)) + _tar_size(len(cls))
        if writer is None or size + member > limit:
            if writer is not None:
                finish()
            shards.append({"file": f"{split}-{len(shards):06d}.tar", "samples": 0})
            handle, writer = _open_writer(out_dir, shards[-1]["file"])
            size = 0
        writer.write({"__key__": f"{n:0{KEY_DIGITS}d}", _member_ext(path): data, LABEL_KEY: cls})
        shards[-1]["samples"] += 1
        size += member
    if writer is not None:
        finish()
    return shards


def _readable(samples: list[tuple[str, int]], workers: int) -> tuple[list[tuple[str, int]], list[str | None]]:
    """(readable samples in input order, reason or None per input sample)."""
    paths = [p for p, _ in samples]
    if workers > 1 and len(paths) > 1:
        with multiprocessing.get_context().Pool(workers) as pool:
            reasons = list(pool.imap(_check_image, paths, chunksize=64))
    else:
        reasons = [_check_image(p) for p in paths]
    return [s for s, r in zip(samples, reasons) if r is None], reasons


def convert(image_root: str | os.PathLike, out_dir: str | os.PathLike, shard_size_mb: float = DEFAULT_SHARD_MB,
            workers: int = 1, seed: int = CONVERT_SEED, log: Callable[[str], None] = print) -> dict:
    """Write the shards and shards.json for every split of ``image_root``; returns the index."""
    root, out = Path(image_root), Path(out_dir)
    if shard_size_mb <= 0:
        raise DatasetError(f"--shard_size_mb must be positive, got {shard_size_mb}")
    folders = _split_folders(root)
    listed = {split: list_class_folders(folder) for split, folder in folders.items()}
    classes = next(iter(listed.values()))[0]
    for split, (names, _) in listed.items():
        if names != classes:
            raise DatasetError(f"class folders differ between the splits of {root} (train/ and val/ need the same "
                               f"classes; first difference in {split}/: {sorted(set(names) ^ set(classes))[:3]})")
    out.mkdir(parents=True, exist_ok=True)
    stale = sorted(p.name for p in out.glob("*-[0-9]*.tar")) + ([INDEX_FILE] if (out / INDEX_FILE).exists() else [])
    if stale:
        raise DatasetError(f"{out} already holds shards ({', '.join(stale[:3])}...); choose an empty folder")
    index: dict[str, Any] = {"format": INDEX_FORMAT, "classes": classes, "splits": {}}
    for split, (_, samples) in listed.items():
        good, reasons = _readable(samples, workers)
        skipped = [{"file": os.path.relpath(p, folders[split]), "reason": r.replace(p, os.path.relpath(p, root))}
                   for (p, _), r in zip(samples, reasons) if r is not None]  # the index names no absolute path
        for entry in skipped:
            log(f"warning: skipping unreadable image {folders[split] / entry['file']}: {entry['reason']}")
        if split == "train":
            random.Random(seed).shuffle(good)
        shards = _write_split(split, good, out, int(shard_size_mb * MB))
        index["splits"][split] = {"samples": len(good), "shards": shards, "skipped": skipped}
        log(f"{split}: {len(good)} images in {len(classes)} classes -> {len(shards)} shards in {out} "
            f"({len(skipped)} unreadable skipped)")
    _write_index(index, out)
    return index


def _write_index(index: dict, folder: Path) -> None:
    """shards.json, atomically; ASCII with escapes, so class names that are not UTF-8 survive."""
    tmp = folder / (INDEX_FILE + ".tmp")
    tmp.write_text(json.dumps(index, indent=1) + "\n", encoding="ascii")
    os.replace(tmp, folder / INDEX_FILE)


def index_folder(folder: str | os.PathLike, log: Callable[[str], None] = print) -> dict:
    """shards.json for a folder of shards written elsewhere (e.g. the hub's), counted by reading them
    once, so later runs (and every process of a launch) do not read them all to count."""
    out = Path(folder)
    if not out.is_dir():
        raise DatasetError(f"{out} is not a folder of shards")
    if (out / INDEX_FILE).exists():
        raise DatasetError(f"{out / INDEX_FILE} already exists")
    index: dict[str, Any] = {"format": INDEX_FORMAT, "classes": None, "splits": {}}
    for split in SPLIT_NAMES:
        found = _glob_split(out, split)
        if found:
            counted = _count_by_reading(found, str(out))
            index["splits"][split] = {"samples": counted.total, "shards": [
                {"file": Path(u).name, "samples": n} for u, n in zip(counted.urls, counted.counts)]}
            if counted.max_label is not None:
                index["max_label"] = max(index.get("max_label", -1), counted.max_label)
            log(f"{split}: {counted.total} samples in {len(found)} shards")
    if not index["splits"]:
        raise DatasetError(f"no train or val shards in {out} (train-*.tar, *-train-*.tar, val-*.tar, *-validation-*.tar)")
    _write_index(index, out)
    return index


# --------------------------------------------------------------------------------------------
# Finding shards and their sample counts
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShardSet:
    """One split's shards: URLs or paths as webdataset opens them, samples per shard, class names
    (None when the shards carry class indices only, as the hub's do), where they came from."""

    urls: tuple[str, ...]
    counts: tuple[int, ...]
    classes: tuple[str, ...] | None
    where: str
    max_label: int | None = None  # known when the shards were counted by reading them

    @property
    def total(self) -> int:
        return sum(self.counts)


def _is_local(url: str) -> bool:
    return ":" not in url.split("/")[0] or url.startswith("file:")


def _local_path(url: str) -> str:
    return url[len("file:"):] if url.startswith("file:") else url


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read shard index {path}: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("splits"), dict):
        raise DatasetError(f"{path} is not a shard index (no 'splits'); write one with python -m src.data.shards")
    return data


def _split_entry(index: dict, split: str, path: Path) -> tuple[list[str], list[int]] | None:
    """(file names, counts) of ``split`` in our index or the hub's _info.json; None when absent."""
    for name in SPLIT_NAMES[split]:
        entry = index["splits"].get(name)
        try:
            if isinstance(entry, dict) and "shards" in entry:  # shards.json
                files, counts = [s["file"] for s in entry["shards"]], [int(s["samples"]) for s in entry["shards"]]
            elif isinstance(entry, dict) and "filenames" in entry:  # _info.json
                files, counts = list(entry["filenames"]), [int(n) for n in entry["shard_lengths"]]
            else:
                continue
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{path}: split {name!r} is malformed ({type(e).__name__}: {e})") from None
        if len(files) != len(counts) or not all(isinstance(f, str) for f in files):
            raise DatasetError(f"{path}: split {name!r} lists {len(files)} files but {len(counts)} sample counts")
        return files, counts
    return None


def _from_index(path: Path, split: str) -> ShardSet | None:
    index = _read_json(path)
    entry = _split_entry(index, split, path)
    if entry is None:
        return None
    files, counts = entry
    urls = [f if "/" in f or ":" in f else str(path.parent / f) for f in files]
    _check_local_files(urls)
    classes, max_label = index.get("classes"), index.get("max_label")
    return ShardSet(tuple(urls), tuple(counts), tuple(classes) if classes else None, str(path),
                    int(max_label) if isinstance(max_label, int) else None)


def _check_local_files(urls: Sequence[str]) -> None:
    missing = [u for u in urls if _is_local(u) and not Path(_local_path(u)).is_file()]
    if missing:
        raise DatasetError(f"{len(missing)} shard files not found, e.g. {missing[0]}; check --dataset_path")


def _count_by_reading(urls: Sequence[str], where: str) -> ShardSet:
    """Samples per shard and the largest label, read once (sets without an index)."""
    counts, max_label = [], -1
    for url in urls:
        n = 0
        for sample in _raw_samples(url):
            if "__error__" not in sample:
                n += 1
                with contextlib.suppress(KeyError, ValueError):
                    max_label = max(max_label, int(sample[LABEL_KEY]))
        counts.append(n)
    return ShardSet(tuple(urls), tuple(counts), None, where, max_label if max_label >= 0 else None)


def _index_beside(folder: Path) -> Path | None:
    return next((folder / n for n in (INDEX_FILE, HUB_INDEX_FILE) if (folder / n).is_file()), None)


def _from_urls(urls: list[str], where: str) -> ShardSet:
    """Explicit shards: counts from an index in their folder, else by reading them (local only)."""
    _check_local_files(urls)
    if all(_is_local(u) for u in urls):
        index = _index_beside(Path(_local_path(urls[0])).parent)
        if index is not None:
            data = _read_json(index)
            known = {}
            for split in SPLIT_NAMES:
                entry = _split_entry(data, split, index)
                if entry:
                    known.update(zip(entry[0], entry[1]))
            if all(Path(u).name in known for u in urls):
                classes = data.get("classes")
                return ShardSet(tuple(urls), tuple(known[Path(u).name] for u in urls),
                                tuple(classes) if classes else None, where)
        return _count_by_reading(urls, where)
    raise DatasetError(f"no sample counts for {where}: streamed shards need an index; pass --dataset_path "
                       f"INDEX.json (a shards.json or _info.json whose file names are these URLs)")


def find_shards(path: str, split: str) -> ShardSet | None:
    """The ``split`` ('train' or 'val') shards at ``path`` (see module doc); None when a folder or
    index has none of that split. A shard pattern is taken as the split asked for."""
    p = Path(path).expanduser()
    if path.endswith(".json"):
        if not p.is_file():
            raise DatasetError(f"shard index {p} not found")
        return _from_index(p, split)
    if p.is_dir():
        index = _index_beside(p)
        if index is not None:
            return _from_index(index, split)
        files = _glob_split(p, split)
        if not files:
            return None
        warnings.warn(f"{p} has no index: counting the samples of {len(files)} shards by reading them "
                      f"(python -m src.data.shards --index {p} writes one)", stacklevel=2)
        return _count_by_reading(files, str(p))
    if _is_local(path) and "{" not in path and not path.endswith(".tar"):
        raise DatasetError(f"dataset path does not exist: {p}; give a folder of shards, an index file or a "
                           "shard pattern such as 'DIR/train-{000000..000127}.tar'")
    urls = wds.shardlists.expand_urls(path)
    if not urls:
        raise DatasetError(f"no shards in {path!r}")
    return _from_urls(urls, path)


def _glob_split(folder: Path, split: str) -> list[str]:
    """Shard files of ``split`` in ``folder``: ours (train-*.tar) and the hub's (*-validation-*.tar)."""
    return sorted({f for name in SPLIT_NAMES[split] for pattern in (f"{name}-*.tar", f"*-{name}-*.tar")
                   for f in map(str, folder.glob(pattern))})


def sibling_val(path: str) -> ShardSet | None:
    """train.py's validation shards when --dataset_path is a train pattern: the val split of the
    index in the same folder, if there is one."""
    if path.endswith(".json") or Path(path).expanduser().is_dir():
        return find_shards(path, "val")
    urls = wds.shardlists.expand_urls(path)
    if not urls or not _is_local(urls[0]):
        return None
    index = _index_beside(Path(_local_path(urls[0])).parent)
    return _from_index(index, "val") if index is not None else None


def class_names(shards: ShardSet, class_num: int | None) -> list[str]:
    """The index's class names; for shards that carry indices only, '0' .. 'N-1' with N from
    class_num or the largest label read."""
    if shards.classes:
        return list(shards.classes)
    n = class_num or (shards.max_label + 1 if shards.max_label is not None else 0)
    if not n:
        raise DatasetError(f"{shards.where} carries class indices but no class names; pass --class_num N")
    return [str(i) for i in range(n)]


# --------------------------------------------------------------------------------------------
# Reading samples
# --------------------------------------------------------------------------------------------
def _raw_samples(url: str) -> Iterator[dict]:
    """webdataset's samples of one shard; a read error ends the shard with one ``__error__`` sample
    (a corrupt tar header or a missing file costs the rest of that shard, not the run)."""
    errors: list[str] = []

    def handler(exn: Exception) -> bool:
        errors.append(f"{type(exn).__name__}: {exn.args[0] if exn.args else exn}")
        return False  # stop this shard

    for sample in wds.tarfile_samples([{"url": url}], handler=handler):
        yield sample
    if errors:
        yield {"__key__": "(rest of shard)", "__url__": url, "__error__": errors[0]}


@contextlib.contextmanager
def _seeded(seed: int, in_worker: bool) -> Iterator[None]:
    """Seed torch's, python's and numpy's generators (the transforms draw from them, as
    src.data.sampler.SeededDataset does); in the main process restore them afterwards."""
    saved = None if in_worker else (torch.get_rng_state(), random.getstate(), np.random.get_state())
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    try:
        yield
    finally:
        if saved is not None:
            torch.set_rng_state(saved[0])
            random.setstate(saved[1])
            np.random.set_state(saved[2])


class _Decoder:
    """sample dict -> (uint8 CHW tensor, label, None), or (None, label, name) after a
    BrokenImageWarning when the sample cannot be used."""

    def __init__(self, transform: Transform, num_classes: int, label_map: Sequence[int] | None = None) -> None:
        self.transform, self.num_classes, self.label_map = transform, num_classes, label_map

    def __call__(self, sample: dict) -> Item:
        name = f"{sample.get('__url__')}:{sample.get('__key__')}"
        label, reason = -1, sample.get("__error__")
        if reason is None:
            label, reason = self._label(sample)
        if reason is None:
            image = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
            if image is None:
                reason = f"no image member ({', '.join(IMAGE_KEYS)})"
            else:
                member = io.BytesIO(image)
                try:
                    return self.transform(member), label, None
                except UnreadableImage as e:
                    reason = e.reason.replace(repr(member), "the member's bytes")
        warnings.warn(f"skipping unreadable image {name}: {reason}", BrokenImageWarning, stacklevel=2)
        return None, max(label, 0), name

    def _label(self, sample: dict) -> tuple[int, str | None]:
        try:
            label = int(sample[LABEL_KEY])
        except KeyError:
            return -1, f"no '{LABEL_KEY}' member"
        except ValueError:
            return -1, f"'{LABEL_KEY}' is not an integer"
        if not 0 <= label < (len(self.label_map) if self.label_map is not None else self.num_classes):
            return -1, f"class index {label} out of range for {self.num_classes} classes"
        return (self.label_map[label] if self.label_map is not None else label), None


def _worker() -> tuple[int, int]:
    info = get_worker_info()
    return (0, 1) if info is None else (info.id, info.num_workers)


class ShardTrainStream(IterableDataset):
    """Training samples from shards; ``len()`` is the index's sample count (one epoch's worth).

    The epoch, batch plan and rank come from ``plan`` (the trainer's `src.data.sampler.EpochSampler`:
    epoch, start_batch, num_batches, batch_size, rank, world_size), read when a loader starts
    its workers (`make_train_loader` keeps them non-persistent for that reason).
    """

    def __init__(self, shards: ShardSet, classes: Sequence[str], transform: Transform, seed: int,
                 shuffle_buffer: int = SHUFFLE_BUFFER) -> None:
        self.shards, self.classes, self.transform = shards, list(classes), transform
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.plan: Any = None

    def __len__(self) -> int:
        return self.shards.total

    def _stream_shards(self, slot: int, slots: int, epoch: int) -> list[str]:
        urls = self.shards.urls
        order = torch.randperm(len(urls), generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        mine = order[slot::slots] or [order[slot % len(order)]]  # fewer shards than streams: share
        return [urls[i] for i in mine]

    def _cycle(self, shards: list[str], slot: int, epoch: int) -> Iterator[dict]:
        """The stream's shards, then again in a new seeded order, as long as the quota needs."""
        for round_ in range(1 << 62):
            produced = 0
            if round_:
                random.Random(sample_seed(self.seed, epoch, slot * 7919 + round_)).shuffle(shards)
            for url in shards:
                for sample in _raw_samples(url):
                    produced += 1
                    yield sample
            if not produced:
                raise DatasetError(f"shards {shards[:2]} hold no samples")

    def __iter__(self) -> Iterator[Item]:
        plan = self.plan
        worker, workers = _worker()
        stream = (worker + plan.start_batch) % workers  # loader worker j yields batch start + j first
        slots, slot = plan.world_size * workers, plan.rank * workers + stream
        done = len(range(stream, plan.start_batch, workers))
        left = len(range(stream, plan.num_batches, workers)) - done
        shards = self._stream_shards(slot, slots, plan.epoch)
        skip = done * plan.batch_size
        # Never buffer more than the stream yields or its shards hold: filling it would read samples
        # only to drop them at the end of the epoch.
        count = dict(zip(self.shards.urls, self.shards.counts))
        held = sum(count[u] for u in shards)
        size = max(1, min(self.shuffle_buffer, skip + left * plan.batch_size, held))
        rng = random.Random(sample_seed(self.seed, plan.epoch, slot))
        samples = wds.shuffle(size, initial=size, rng=rng)(self._cycle(shards, slot, plan.epoch))
        decode = _Decoder(self.transform, len(self.classes))
        in_worker = get_worker_info() is not None
        for position, sample in enumerate(islice(samples, skip + left * plan.batch_size)):
            if position < skip:
                continue  # consumed before a mid-epoch checkpoint: read, not decoded
            with _seeded(sample_seed(self.seed, plan.epoch, position * slots + slot), in_worker):
                yield decode(sample)


class ShardEvalStream(IterableDataset):
    """Every sample once, split over ranks (set ``rank``/``world``) and loader workers; no padding."""

    def __init__(self, shards: ShardSet, classes: Sequence[str], transform: Transform,
                 label_map: Sequence[int] | None = None) -> None:
        self.shards, self.classes, self.transform = shards, list(classes), transform
        self.label_map = label_map
        self.rank, self.world = 0, 1

    def __len__(self) -> int:
        return self.shards.total

    def __iter__(self) -> Iterator[Item]:
        worker, workers = _worker()
        urls = list(enumerate(self.shards.urls))
        by_shard = len(urls) >= self.world
        mine = urls[self.rank::self.world] if by_shard else urls
        decode = _Decoder(self.transform, len(self.classes), self.label_map)
        for shard_index, url in mine[worker::workers]:
            for position, sample in enumerate(_raw_samples(url)):
                if by_shard or (shard_index + position) % self.world == self.rank:
                    yield decode(sample)


# --------------------------------------------------------------------------------------------
# Loaders for the trainer and eval.py (src.data.loaders picks them for shard streams)
# --------------------------------------------------------------------------------------------
def _worker_count(requested: int, streams: int) -> int:
    """Loader workers beyond the number of shards a process reads would only idle."""
    return max(0, min(requested, streams))


def make_train_loader(dataset: ShardTrainStream, plan: Any, **loader_kwargs: Any) -> DataLoader:
    """The trainer's loader for shards: batches of plan.batch_size, exactly plan.num_batches per rank.

    Workers are not persistent: each epoch's iterator starts them with the plan's current epoch.
    """
    dataset.plan = plan
    shards = len(dataset.shards.urls)
    workers = _worker_count(int(loader_kwargs.pop("num_workers", 0)), max(1, shards // plan.world_size))
    kwargs = {**loader_kwargs, "num_workers": workers, "persistent_workers": False}
    return DataLoader(dataset, batch_size=plan.batch_size, drop_last=False, **kwargs)


def make_eval_loader(dataset: ShardEvalStream, rank: int, world: int, batch_size: int,
                     **loader_kwargs: Any) -> DataLoader:
    """Loader that scores each sample once across ``world`` processes (see ShardEvalStream)."""
    dataset.rank, dataset.world = rank, world
    shards = len(dataset.shards.urls)
    per_rank = len(range(rank, shards, world)) if shards >= world else shards
    workers = _worker_count(int(loader_kwargs.pop("num_workers", 0)), per_rank)
    kwargs = {**loader_kwargs, "num_workers": workers}
    if workers == 0:
        kwargs.pop("persistent_workers", None)
        kwargs.pop("prefetch_factor", None)
    return DataLoader(dataset, batch_size=batch_size, drop_last=False, **kwargs)


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m src.data.shards", description=__doc__.split("\n\n")[0])
    parser.add_argument("image_root", help="IMAGE_ROOT/train/<class>/* and IMAGE_ROOT/val/<class>/*")
    parser.add_argument("out_dir", nargs="?", help="folder for train-NNNNNN.tar, val-NNNNNN.tar and shards.json")
    parser.add_argument("--index", action="store_true",
                        help="IMAGE_ROOT is a folder of shards written elsewhere (e.g. the hub's): count them once "
                             "and write its shards.json")
    parser.add_argument("--shard_size_mb", type=float, default=DEFAULT_SHARD_MB, help="largest shard (default 256)")
    parser.add_argument("--workers", type=int, default=default_num_workers(),
                        help="processes that check the images (default: CPUs, at most 8)")
    args = parser.parse_args(argv)
    try:
        if args.index:
            index_folder(args.image_root)
            return 0
        if args.out_dir is None:
            raise DatasetError("OUT_DIR is missing: python -m src.data.shards IMAGE_ROOT OUT_DIR")
        convert(args.image_root, args.out_dir, args.shard_size_mb, max(1, args.workers))
    except InputError as exc:
        return report_error(exc)
    except OSError as exc:  # writing OUT_DIR failed (a full disk, no permission)
        return report_error(exc, EXIT_FAILED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
