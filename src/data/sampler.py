"""Deterministic, resumable training data order and augmentation randomness.

Exact resume needs two things to be a function of (seed, epoch, position) only, never of the
run's history or of how many processes share the work:

* the order: ``EpochSampler`` draws one permutation per epoch from ``seed + epoch`` (as
  torch's DistributedSampler does) and cuts it into micro-batches of ``batch_size`` consecutive
  positions. Optimizer step k of the epoch takes the global batch of positions
  [k G, (k + 1) G) with G = batch_size x world_size x accumulate; its micro-batch j (0 .. world x
  accumulate - 1) is block k x world x accumulate + j, and rank r runs micro-batches
  j = r x accumulate + m, m = 0 .. accumulate - 1. So 2 processes x accumulate 1 and 1 process x
  accumulate 2 feed the same images, in the same micro-batches, to each optimizer step, and a run
  can resume part-way through an epoch on another number of processes: it starts at position
  k G and skips *indices* (the skipped images are never loaded). No padding: an epoch is the whole
  global batches the data holds;
* the augmentation: ``SeededDataset`` re-seeds the random generators before each sample from
  (seed, epoch, index). Results therefore do not depend on the number of loader workers,
  on persistent workers carrying generator state across epochs, or on where a run was
  interrupted.
"""

from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, get_worker_info

from src.runtime.distributed import NUMPY_SEED_MODULUS

SEED_MASK = (1 << 63) - 1  # torch seeds are 64-bit; keep them non-negative
# Odd 64-bit multipliers (splitmix64 constants) spread (seed, epoch, index) over the seed space.
_MIX_SEED, _MIX_EPOCH, _MIX_INDEX = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of dataset item ``index`` in ``epoch``."""
    mixed = (seed + 1) * _MIX_SEED ^ (epoch + 1) * _MIX_EPOCH ^ (index + 1) * _MIX_INDEX
    return (mixed ^ (mixed >> 31)) & SEED_MASK


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields ``(epoch, index)`` for this rank's micro-batches of one epoch, in a seeded order.

    ``num_batches`` micro-batches of ``batch_size`` per rank (``accumulate`` per optimizer step),
    starting after ``start_batch`` micro-batches that an interrupted run already consumed (of this
    rank's count: step x accumulate). Call ``set_epoch(epoch, start_batch)`` before iterating.
    """

    def __init__(self, dataset_len: int, batch_size: int, num_batches: int, seed: int, shuffle: bool = True,
                 rank: int = 0, world_size: int = 1, accumulate: int = 1) -> None:
        if dataset_len < 1 or batch_size < 1 or num_batches < 1 or accumulate < 1:
            raise ValueError(f"need dataset_len, batch_size, num_batches, accumulate >= 1, got "
                             f"{dataset_len}, {batch_size}, {num_batches}, {accumulate}")
        if not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if num_batches % accumulate:
            raise ValueError(f"num_batches {num_batches} is not a whole number of steps of {accumulate} micro-batches")
        if num_batches * batch_size * world_size > dataset_len:
            raise ValueError(f"{num_batches} batches of {batch_size} on {world_size} process(es) exceed the "
                             f"{dataset_len} samples")
        self.dataset_len, self.batch_size, self.num_batches = dataset_len, batch_size, num_batches
        self.seed, self.shuffle, self.rank, self.world_size = seed, shuffle, rank, world_size
        self.accumulate = accumulate
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        if not 0 <= start_batch <= self.num_batches:
            raise ValueError(f"start_batch must be in [0, {self.num_batches}], got {start_batch}")
        self.epoch, self.start_batch = epoch, start_batch

    def epoch_order(self) -> list[int]:
        """The epoch's permutation of the dataset (the same on every rank)."""
        if not self.shuffle:
            return list(range(self.dataset_len))
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.dataset_len, generator=generator).tolist()

    def block(self, local_batch: int) -> int:
        """The epoch's micro-batch number (its positions: block x batch_size onwards) of this rank's
        ``local_batch``-th micro-batch."""
        step, micro = divmod(local_batch, self.accumulate)
        return (step * self.world_size + self.rank) * self.accumulate + micro

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order, size = self.epoch_order(), self.batch_size
        return iter([(self.epoch, order[self.block(b) * size + i])
                     for b in range(self.start_batch, self.num_batches) for i in range(size)])

    def __len__(self) -> int:
        return (self.num_batches - self.start_batch) * self.batch_size


class SeededDataset(Dataset):
    """Wraps a map-style dataset; item ``(epoch, index)`` is drawn with its own seed.

    Transforms draw from torch's, python's and numpy's global generators (as torchvision's do).
    In a loader worker we simply re-seed them; in the main process (num_workers 0) their state
    is saved and restored around the sample so the training step's own randomness (dropout,
    stochastic depth) is not disturbed.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> Any:
        epoch, index = key
        seed = sample_seed(self.seed, epoch, index)
        if get_worker_info() is not None:
            _seed_all(seed)
            return self.dataset[index]
        saved = (torch.get_rng_state(), random.getstate(), np.random.get_state())
        try:
            _seed_all(seed)
            return self.dataset[index]
        finally:
            torch.set_rng_state(saved[0])
            random.setstate(saved[1])
            np.random.set_state(saved[2])


def _seed_all(seed: int) -> None:
    torch.default_generator.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % NUMPY_SEED_MODULUS)


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
