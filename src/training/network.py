"""The network a run trains: built for its weights, frozen / checkpointed / SyncBN as configured,
then wrapped in DDP and torch.compile for the training step."""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from src.config import Config
from src.runtime.distributed import DistInfo
from src.models import qat
from src.models import build_model, get_variant, load_weights, resolve_weights


def build_network(cfg: Config, num_classes: int, info: DistInfo, resuming: bool) -> nn.Module:
    """The bare model on its device: pretrained weights, frozen backbone, checkpointing, SyncBN.

    With --pretrained the network is built with the padding and BatchNorm eps the weights need
    (Google's checkpoints: TensorFlow's SAME, eps 1e-3); both are written into ``cfg`` so every
    checkpoint's config rebuilds the same network in eval.py and export.py."""
    options = dict(dropout=cfg.dropout, drop_path_rate=cfg.drop_path_rate)
    if cfg.pretrained and not resuming:
        model = _load_pretrained(cfg, num_classes, info, options)
    else:
        cfg.padding = "symmetric" if cfg.padding == "auto" else cfg.padding
        model = build_model(cfg.model, num_classes=num_classes, padding=cfg.padding, bn_eps=cfg.bn_eps, **options)
    if cfg.freeze_backbone:
        model.features.requires_grad_(False)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    if cfg.qat:  # BatchNorm statistics are frozen in QAT: nothing for SyncBN to synchronise
        model = qat.prepare_for_training(model, cfg.image_size or get_variant(cfg.model).train_size)
    elif cfg.sync_bn and info.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(info.device)
    if channels_last(cfg):
        model.to(memory_format=torch.channels_last)
    return model


def _load_pretrained(cfg: Config, num_classes: int, info: DistInfo, options: dict[str, Any]) -> nn.Module:
    """cfg.model built as the --pretrained weights need (any layout; cfg.padding forces the padding),
    with them loaded; records the padding and eps in cfg. Rank 0 prints what was loaded."""
    forced = None if cfg.padding == "auto" else cfg.padding
    with warnings.catch_warnings():  # torch's pickle-protocol warning before it refuses a file
        warnings.simplefilter("ignore", UserWarning)
        weights = resolve_weights(cfg.model, cfg.pretrained, info.is_main, forced)
    model = build_model(weights.model_name, num_classes=num_classes, padding=weights.padding,
                        bn_eps=cfg.bn_eps or weights.bn_eps, **options)
    cfg.padding, cfg.bn_eps = weights.padding, model.bn_eps
    load_weights(model, weights)
    if info.is_main:  # layout, padding, eps, preprocessing, EMA, then a re-initialised head
        print("\n".join(weights.notes), flush=True)
    return model


def channels_last(cfg: Config) -> bool:
    """On unless the config says otherwise: NHWC is faster for the depthwise convolutions on GPUs
    (cuDNN) and CPUs (oneDNN; B0 224 px here: 1.46x training, 1.25x inference)."""
    return True if cfg.channels_last is None else cfg.channels_last


def wrap_model(model: nn.Module, cfg: Config, info: DistInfo) -> tuple[nn.Module, Any]:
    """(callable for the training step, DDP wrapper or None): DDP when distributed, then compile."""
    ddp = None
    train_model = model
    if info.distributed:
        device_ids = [info.device.index] if info.device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        train_model = ddp
    if cfg.compile:
        train_model = torch.compile(train_model)
    return train_model, ddp

