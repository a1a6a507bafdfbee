"""DataLoaders for any data set of src.data.sources: the trainer's seeded, resumable training loader and
the evaluation loader that scores every image exactly once across processes. The shard streams need
their own loaders (src.data.shards); this is the one place that tells them apart."""
from __future__ import annotations

from typing import Any

from torch.utils.data import DataLoader, Dataset

from .dataset import collate_skip_broken
from .sampler import EpochSampler, SeededDataset, ShardedEvalSampler
from .shards import ShardEvalStream, ShardTrainStream, make_eval_loader, make_train_loader


def train_loader(dataset: Dataset, sampler: EpochSampler, seed: int, **loader_kwargs: Any) -> DataLoader:
    """Batches of ``sampler.batch_size`` in the sampler's seeded order (augmentation seeded per sample:
    src.data.sampler), ``sampler.num_batches`` per rank; a shard stream follows the sampler's plan."""
    loader_kwargs.setdefault("collate_fn", collate_skip_broken)
    if isinstance(dataset, ShardTrainStream):
        return make_train_loader(dataset, sampler, **loader_kwargs)
    return DataLoader(SeededDataset(dataset, seed), batch_size=sampler.batch_size, sampler=sampler, drop_last=False,
                      **loader_kwargs)


def eval_loader(dataset: Dataset, rank: int, world: int, batch_size: int, **loader_kwargs: Any) -> DataLoader:
    """This process's share of ``dataset``: every sample exactly once across ``world`` processes, no
    padding, no sample dropped (DistributedSampler pads with repeats)."""
    loader_kwargs.setdefault("collate_fn", collate_skip_broken)
    if isinstance(dataset, ShardEvalStream):
        return make_eval_loader(dataset, rank, world, batch_size, **loader_kwargs)
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, drop_last=False,
                      sampler=ShardedEvalSampler(len(dataset), rank, world), **loader_kwargs)
