"""``benchmark.py data --source shards``: images/s per loader worker, the same JPEGs read from a folder
of files vs from WebDataset tar shards, both through train.py's training pipeline.

Both sides run what one DataLoader worker of train.py runs (``num_workers 0``, so the number is per
worker): the folder side ``ImageFolderDataset`` + ``SeededDataset`` + ``EpochSampler``, the shard
side ``ShardTrainStream`` (tar reading, the seeded shuffle buffer, decoding from memory); both apply
the same train transform ("light" augmentation, JPEG draft decoding) and the same collate. On a
local disk with a warm page cache the two read at about the same speed (decoding dominates); the
shards' gain is on network file systems and object stores, where opening each small file costs
a round trip the tar stream pays once per shard.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.utils.data import DataLoader

from src.data.dataset import ImageFolderDataset, collate_skip_broken
from src.data.sampler import EpochSampler, SeededDataset
from src.data.shards import ShardTrainStream, convert, find_shards, make_train_loader
from src.data.transforms import build_train_transform, resolve_augment

from .common import format_table, machine_info, paired_rounds

SEED = 0
CLASSES = 2  # files are dealt to two class folders so the converter sees an ImageNet layout


def _layout(files: list[str], root: Path) -> Path:
    """root/train/c<k>/<name>.jpg links to the generated JPEGs (the converter copies their bytes)."""
    for i, f in enumerate(files):
        link = root / "train" / f"c{i % CLASSES}" / Path(f).name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(os.path.abspath(f))
    return root


def _count(loader_factory) -> int:
    return sum(len(b.labels) for b in loader_factory())


def run_shards(args: argparse.Namespace, kinds, generate_jpegs, image_size: int, batch: int) -> dict:
    """One row per JPEG kind and source (see module doc); ``kinds``/``generate_jpegs`` from bench.data."""
    torch.set_num_threads(1)
    transform = build_train_transform(resolve_augment({"augment": "light"}), image_size, args.train_interpolation)
    data_dir = args.data_dir or os.path.join(tempfile.gettempdir(), "effnet_bench_jpegs")
    results, files_info = [], []
    for kind, count in kinds:
        files = [str(p) for p in generate_jpegs(data_dir, kind, count)]
        with tempfile.TemporaryDirectory() as tmp:
            root = _layout(files, Path(tmp) / "layout")
            convert(root, Path(tmp) / "shards", shard_size_mb=args.shard_size_mb, log=lambda line: None)
            shards = find_shards(str(Path(tmp) / "shards"), "train")
            classes = [f"c{k}" for k in range(CLASSES)]
            folder = ImageFolderDataset([(str(p), i % CLASSES) for i, p in enumerate(sorted(
                (root / "train").glob("c*/*.jpg"), key=lambda p: (p.parent.name, p.name)))], classes, transform)
            batches = len(files) // batch or 1
            per = min(batch, len(files))
            sampler = EpochSampler(len(folder), per, batches, SEED)
            plan = SimpleNamespace(epoch=0, start_batch=0, num_batches=batches, batch_size=per, rank=0, world_size=1)
            stream = ShardTrainStream(shards, classes, transform, SEED)
            loaders = {
                "files": lambda: DataLoader(SeededDataset(folder, SEED), batch_size=per, sampler=sampler,
                                            collate_fn=collate_skip_broken),
                "shards": lambda: make_train_loader(stream, plan, num_workers=0, collate_fn=collate_skip_broken),
            }
            counts = {name: [] for name in loaders}
            runners = {name: (lambda n=name: counts[n].append(_count(loaders[n]))) for name in loaders}
            for run in runners.values():
                run()  # warm-up: page cache, first decodes
            times = paired_rounds(runners, args.rounds, 1, torch.device("cpu"))
            mean_kb = statistics.mean(os.path.getsize(f) for f in files) / 1024
            files_info.append(dict(kind=kind.name, width=kind.width, height=kind.height, count=len(files),
                                   mean_kb=mean_kb, shards=len(shards.urls)))
            for name, t in times.items():
                images = min(counts[name])
                results.append(dict(kind=kind.name, source=name, images=images,
                                    images_per_sec=images / statistics.median(t),
                                    vs_files=statistics.median(a / b for a, b in zip(times["files"], t))))
    return dict(mode="data", source="shards", image_size=image_size, batch=batch, rounds=args.rounds,
                shard_size_mb=args.shard_size_mb, per="worker (one process, torch threads = 1)",
                machine=machine_info(), files=files_info, results=results)


def print_report(payload: dict) -> None:
    m = payload["machine"]
    print(f"train pipeline from files vs tar shards, images/s per worker: crop {payload['image_size']} px, "
          f"batch {payload['batch']}; {m['cpu']}, 1 thread")
    sizes = {f["kind"]: f"{f['width']}x{f['height']}, {f['mean_kb']:,.0f} KB, {f['shards']} shard(s)"
             for f in payload["files"]}
    rows = [[f"{r['kind']} ({sizes[r['kind']]})", r["source"], r["images_per_sec"], f"{r['vs_files']:.2f}x"]
            for r in payload["results"]]
    print(format_table(["JPEGs", "read from", "images/s per worker",
                        f"vs files (median of {payload['rounds']} rounds)"], rows))
