"""eval.py's settings: the command line over a --config YAML over the checkpoint over the variant.

Precedence, highest first: a command-line flag; a key the YAML sets explicitly (schema defaults are
not used, so an unset key never overrides a checkpoint); what the checkpoint stores (its eval
preprocessing); the variant's published settings; eval.py's own defaults.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any

import torch

from src.config import read_explicit
from src.runtime.distributed import default_num_workers, is_main_launch
from src.models.loading import LoadedModel, load_published, load_trained, use_ema_flag
from src.models.preprocessing import resolve_preprocess
from src.common.preprocess import MAX_IMAGE_SIZE, Preprocess
from src.common.writable import unwritable_output, why_not_writable
from src.common.errors import InputError

DEFAULT_BATCH_SIZE = 64
# Config keys eval.py honours when a --config YAML sets them (command-line flags still win).
# `pretrained` is left out on purpose: in a training YAML it names the fine-tuning start, not what to score.
CONFIG_KEYS = ("model", "dataset", "dataset_path", "checkpoint_path", "device_target", "batch_size",
               "eval_batch_size", "num_workers", "image_size", "eval_resize", "eval_crop", "interpolation",
               "normalization", "amp", "channels_last", "class_num")


class EvalInputError(InputError):
    """Bad command-line input; eval.py prints it as one ``error:`` line and exits with status 2."""


@dataclass
class Settings:
    """Command line merged over the --config YAML (only keys the YAML sets explicitly)."""

    checkpoint_path: str | None
    dataset_path: str
    dataset: str  # auto, folder, cifar10, cifar100 or wds
    model: str | None
    model_origin: str  # "--model" or "config key 'model'", for error messages
    pretrained: str | None
    device_target: str
    batch_size: int
    num_workers: int
    use_ema: bool | None  # None: the EMA when the checkpoint has one
    amp: str
    channels_last: bool
    class_num: int | None
    config: dict[str, Any]
    args: argparse.Namespace


def merge_settings(args: argparse.Namespace) -> Settings:
    """eval.py's parsed flags over its --config YAML; EvalInputError for what cannot work."""
    cfg = read_explicit(args.config, CONFIG_KEYS)

    def pick(name: str, default: Any = None) -> Any:
        value = getattr(args, name, None)
        return value if value is not None else cfg.get(name, default)

    dataset_path = pick("dataset_path")
    if not dataset_path:
        raise EvalInputError("--dataset_path is required (a dataset root, a folder of class folders or a CIFAR folder)")
    if args.checkpoint_path and args.pretrained:
        raise EvalInputError("give either --checkpoint_path or --pretrained, not both")
    checkpoint_path = None if args.pretrained else pick("checkpoint_path")
    if not checkpoint_path and not args.pretrained:
        raise EvalInputError("nothing to evaluate: pass --checkpoint_path FILE or --model NAME --pretrained")
    device_target = pick("device_target") or ("GPU" if torch.cuda.is_available() else "CPU")
    batch_size = next(v for v in (args.batch_size, cfg.get("eval_batch_size"), cfg.get("batch_size"),
                                  DEFAULT_BATCH_SIZE) if v is not None)
    num_workers = pick("num_workers", default_num_workers())  # CPUs shared by the processes of this node
    if batch_size < 1 or num_workers < 0:
        raise EvalInputError(f"--batch_size must be >= 1 and --num_workers >= 0, "
                             f"got {batch_size} and {num_workers}")
    channels_last = cfg.get("channels_last") if args.channels_last is None else args.channels_last == "true"
    return Settings(checkpoint_path=checkpoint_path, dataset_path=str(dataset_path), dataset=pick("dataset", "auto"),
                    model=pick("model"), model_origin="--model" if args.model else "config key 'model'",
                    pretrained=args.pretrained, device_target=device_target, batch_size=int(batch_size),
                    num_workers=int(num_workers), use_ema=use_ema_flag(args.use_ema), amp=pick("amp", "none"),
                    channels_last=True if channels_last is None else channels_last,
                    class_num=cfg.get("class_num") or None, config=cfg, args=args)


def load_model(s: Settings) -> LoadedModel:
    """--checkpoint_path (train.py checkpoint or plain state_dict) or --pretrained, via src.models.loading;
    only the first process of a launch shows download progress."""
    if s.checkpoint_path:
        return load_trained(s.checkpoint_path, s.model, s.use_ema, s.model_origin, s.class_num, s.args.padding)
    return load_published(s.model, str(s.pretrained), progress=is_main_launch(), class_num=s.class_num,
                          padding=s.args.padding)


def eval_preprocess(loaded: LoadedModel, s: Settings) -> Preprocess:
    """The base (the checkpoint's own preprocessing; else the YAML's image_size at the variant's crop
    ratio; else the variant's published settings) < the YAML's eval_* / normalization keys <
    --resize/--crop/--interpolation.

    One of resize and crop alone keeps the base ratio (B0 at ``--crop 32``: resize 37, as 256 -> 224).
    """
    cfg, args = s.config, s.args
    for flag, value in (("--resize", args.resize), ("--crop", args.crop)):
        if value is not None and not 1 <= value <= MAX_IMAGE_SIZE:
            raise EvalInputError(f"{flag} must be a number of pixels from 1 to {MAX_IMAGE_SIZE}, got {value}")
    resize = args.resize if args.resize is not None else cfg.get("eval_resize")
    crop = args.crop if args.crop is not None else cfg.get("eval_crop")
    return resolve_preprocess(loaded.name, loaded.preprocess, image_size=cfg.get("image_size"), resize=resize, crop=crop,
                              interpolation=args.interpolation or cfg.get("interpolation"),
                              normalization=cfg.get("normalization"))


def check_output_files(args: argparse.Namespace) -> None:
    """--output_json / --confusion_csv folders and the --report folder must take files before the
    evaluation runs, not after."""
    for flag, value in (("--output_json", args.output_json), ("--confusion_csv", args.confusion_csv)):
        complaint = unwritable_output(flag, value) if value and is_main_launch() else None
        if complaint is not None:
            raise EvalInputError(complaint)
    reason = why_not_writable(args.report) if args.report and is_main_launch() else None
    if reason is not None:
        raise EvalInputError(f"--report {args.report}: cannot write there ({reason}); choose a writable folder")
