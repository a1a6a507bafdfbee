"""The images eval.py scores: which data set --dataset_path holds, its classes as the model's, its loader.

A dataset root (its val/) or any folder of class folders, a CIFAR-10/100 folder (its test batch), or
tar shards (val-*.tar), read by the factory train.py uses (src.data.sources). Classes map to model
outputs by src.common.class_mapping, the rule the ONNX runner uses too, so both score the same image
as the same class.
"""
from __future__ import annotations

from torch.utils.data import DataLoader

from src.common.class_mapping import ClassMapping, map_classes
from src.common.preprocess import Preprocess
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


def build_loader(data: Split, mapping: ClassMapping, pre: Preprocess, batch_size: int, num_workers: int,
                 info: DistInfo) -> DataLoader:
    """This rank's share of ``data``, labelled with model indices, decoded and cropped as ``pre`` says."""
    dataset = data.eval_dataset(build_eval_transform(pre), mapping.model_index, mapping.names)
    return eval_loader(dataset, info.rank, info.world_size, batch_size, num_workers=num_workers,
                       pin_memory=info.device.type == "cuda")
