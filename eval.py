"""Evaluate a checkpoint on a folder of class folders (or CIFAR's test set): loss, top-1, top-5 over every image.

    python eval.py --checkpoint_path checkpoint/efficientnet_b2-350_625.pth --dataset_path /data/imagenet
    python eval.py --model efficientnet_b0 --pretrained --dataset_path /data/imagenet   # torchvision weights
    torchrun --nproc_per_node 8 eval.py --checkpoint_path ... --dataset_path ...     # same numbers, faster
    python eval.py --checkpoint_path ... --dataset wds --dataset_path /data/imagenet-wds  # tar shards (val-*.tar)

The checkpoint is a train.py checkpoint (model name, classes and preprocessing are read from it), a
plain state_dict such as torchvision's (``--model`` names the variant; the class count comes from
``classifier.1.weight``), or ``--pretrained [imagenet|PATH]``. ``--dataset_path`` is a dataset root
(its val/ is used), any folder of class folders, or a CIFAR-10/100 folder as train.py reads it (its
test batch is scored). Bad input ends with one ``error: ...`` line and exit status 2.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from src.checkpoint import CheckpointError
from src.config import Config, ConfigError, read_yaml
from src.dataset import (
    ArrayImageDataset, ImageFolderDataset, ShardedEvalSampler, collate_skip_broken, detect_cifar, load_cifar_split,
    one_line_broken_image_warnings,
)
from src.distributed import DistInfo, DistributedError, cleanup, init_distributed
from src.evaluate import AMP_DTYPES, EvalResult, evaluate, format_result_line, format_summary, write_confusion_csv
from src.host_memory import reuse_freed_memory
from src.model_loading import (
    IMAGENET, LoadedModel, ModelLoadError, apply_eval_overrides, load_published, load_trained,
)
from src.models import PADDINGS, WeightMismatchError, get_variant
from src.preprocess import (INTERPOLATIONS, MAX_IMAGE_SIZE, DatasetError, Preprocess, list_class_folders,
                            resolve_eval_folder)
from src.transforms import build_eval_transform
from src.writable import unwritable_output

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
DEFAULT_BATCH_SIZE = 64
EVAL_DATASET_KINDS = ("auto", "folder", "cifar10", "cifar100", "wds")
MAX_DEFAULT_WORKERS = 8
# Config keys eval.py honours when a --config YAML sets them (command-line flags still win).
# `pretrained` is left out on purpose: in a training YAML it names the fine-tuning start, not what to score.
CONFIG_KEYS = ("model", "dataset", "dataset_path", "checkpoint_path", "device_target", "batch_size",
               "eval_batch_size", "num_workers", "image_size", "eval_resize", "eval_crop", "interpolation",
               "normalization", "amp", "channels_last", "class_num")


class EvalInputError(ValueError):
    """Bad command-line input; eval.py prints it as one ``error:`` line and exits with status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise EvalInputError(f"{message} (see python eval.py --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--checkpoint_path", metavar="PATH", help="train.py checkpoint or a plain state_dict file")
    add("--dataset_path", metavar="DIR", help="dataset root (its val/ is used), a folder of class folders, or a "
                                              "CIFAR-10/100 folder (its test batch)")
    add("--dataset", choices=EVAL_DATASET_KINDS,
        help="what --dataset_path holds (default: the config's, else auto: CIFAR files or class folders; "
             "wds: tar shards, a folder of val-*.tar, an index or a pattern such as 'DIR/val-{000000..000007}.tar')")
    add("--model", metavar="NAME", help="variant name; needed for plain state_dicts and --pretrained")
    add("--config", metavar="FILE", help="YAML config; its model, batch, worker and eval_* keys are used")
    add("--device_target", type=str.upper, choices=("GPU", "CPU"),
        help="default: the config's, else GPU when CUDA is available, else CPU")
    add("--batch_size", type=int, metavar="N", help=f"images per batch per process (default {DEFAULT_BATCH_SIZE})")
    add("--num_workers", type=int, metavar="N", help="data loader processes per process")
    add("--padding", choices=PADDINGS, help="force the conv padding of a weight file (default: what "
        "the file says or its layout implies; same = TensorFlow's, for Google's checkpoints)")
    add("--use_ema", nargs="?", const="true", type=str.lower, choices=("true", "false"),
        help="true: the checkpoint's EMA weights, false: its raw weights (default: EMA when it has them, "
             "the weights its best was chosen by)")
    add("--pretrained", nargs="?", const=IMAGENET, metavar="imagenet|PATH",
        help="torchvision's ImageNet weights for --model (downloaded once), or a local weight file")
    add("--output_json", metavar="PATH", help="write all metrics (per class too) to this JSON file")
    add("--confusion_csv", metavar="PATH", help="write the confusion matrix (rows: true, columns: predicted)")
    add("--resize", type=int, metavar="N", help="resize the shorter side to N (alone: keeps the crop ratio)")
    add("--crop", type=int, metavar="N", help="center crop N (alone: keeps the resize/crop ratio)")
    add("--interpolation", choices=sorted(INTERPOLATIONS), help="resize filter")
    add("--amp", choices=tuple(AMP_DTYPES), help="autocast dtype (default none)")
    add("--channels_last", type=str.lower, choices=("true", "false"),
        help="NHWC memory format (default true: faster on GPUs and CPUs)")
    add("--check", action="store_true", help="only validate the inputs (data, weights, classes) and exit; "
        "run_eval.sh uses it before a torchrun launch so bad input gives one error line")
    return p


@dataclass
class Settings:
    """Command line merged over the --config YAML (only keys the YAML sets explicitly)."""

    checkpoint_path: str | None
    dataset_path: str
    dataset: str  # auto, folder, cifar10 or cifar100
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


def read_config(path: str | None) -> dict[str, Any]:
    """The validated keys a YAML sets explicitly (schema defaults are not used by eval.py)."""
    if path is None:
        return {}
    values = read_yaml(path)
    cfg = Config(**values)  # validates types and ranges, naming the key
    return {key: getattr(cfg, key) for key in CONFIG_KEYS if key in values}


def merge_settings(args: argparse.Namespace) -> Settings:
    cfg = read_config(args.config)

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
    num_workers = pick("num_workers", min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))
    if batch_size < 1 or num_workers < 0:
        raise EvalInputError(f"--batch_size must be >= 1 and --num_workers >= 0, "
                             f"got {batch_size} and {num_workers}")
    channels_last = cfg.get("channels_last") if args.channels_last is None else args.channels_last == "true"
    return Settings(checkpoint_path=checkpoint_path, dataset_path=str(dataset_path), dataset=pick("dataset", "auto"),
                    model=pick("model"),
                    model_origin="--model" if args.model else "config key 'model'", pretrained=args.pretrained,
                    device_target=device_target, batch_size=int(batch_size),
                    num_workers=int(num_workers), use_ema=None if args.use_ema is None else args.use_ema == "true", amp=pick("amp", "none"),
                    channels_last=True if channels_last is None else channels_last,
                    class_num=cfg.get("class_num") or None, config=cfg, args=args)


# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------
def load_model(s: Settings, progress: bool) -> LoadedModel:
    """--checkpoint_path (train.py checkpoint or plain state_dict) or --pretrained, via src.model_loading."""
    if s.checkpoint_path:
        return load_trained(s.checkpoint_path, s.model, s.use_ema, s.model_origin, s.class_num, s.args.padding)
    return load_published(s.model, str(s.pretrained), progress=progress, class_num=s.class_num, padding=s.args.padding)


# --------------------------------------------------------------------------------------------
# Preprocessing and classes
# --------------------------------------------------------------------------------------------
def base_preprocess(loaded: LoadedModel, s: Settings) -> Preprocess:
    """The checkpoint's own preprocessing; else the YAML's image_size at the variant's crop ratio;
    else the variant's published settings."""
    if loaded.preprocess is not None:
        return loaded.preprocess
    spec = get_variant(loaded.name)
    image_size = s.config.get("image_size")
    return Preprocess.for_image_size(image_size, spec) if image_size else Preprocess.for_variant(spec)


def resolve_preprocess(base: Preprocess, s: Settings) -> Preprocess:
    """``base`` < the YAML's eval_* / normalization keys < --resize/--crop/--interpolation.

    One of resize and crop alone keeps the base ratio (B0 at ``--crop 32``: resize 37, as 256 -> 224).
    """
    cfg, args = s.config, s.args
    for flag, value in (("--resize", args.resize), ("--crop", args.crop)):
        if value is not None and not 1 <= value <= MAX_IMAGE_SIZE:
            raise EvalInputError(f"{flag} must be a number of pixels from 1 to {MAX_IMAGE_SIZE}, got {value}")
    resize = args.resize if args.resize is not None else cfg.get("eval_resize")
    crop = args.crop if args.crop is not None else cfg.get("eval_crop")
    return apply_eval_overrides(base, resize, crop, args.interpolation or cfg.get("interpolation"),
                                cfg.get("normalization"))


@dataclass
class EvalData:
    """The images to score: (name, label) samples, the data set's class names, where they are.

    ``images`` holds CIFAR's decoded test batch (samples are then ``cifar10/test[i]``); for a
    folder it is None and samples are file paths.
    """

    samples: list[tuple[str, int]]
    classes: list[str]
    where: str
    images: np.ndarray | None = None
    name: str = "folder"
    shards: Any = None  # src.shards.ShardSet for --dataset wds (samples then stay empty)

    def class_word(self, plural: bool = False) -> str:
        """What a class is in this data set, for messages: 'class folder(s)' or 'cifar10 class(es)'."""
        if self.shards is not None:
            return "shard classes" if plural else "shard class"
        if self.images is None:
            return "class folders" if plural else "class folder"
        return f"{self.name} classes" if plural else f"{self.name} class"

    def describe(self) -> str:
        count = self.shards.total if self.shards is not None else len(self.samples)
        return f"{count} images in {len(self.classes)} {self.class_word(plural=True)} of {self.where}"


def _has_class_folders(root: Path) -> bool:
    """Whether ``root`` looks like a train.py image-folder root (it has train/ or val/)."""
    return (root / "train").is_dir() or (root / "val").is_dir()


def read_eval_data(dataset_path: str, kind: str = "auto") -> EvalData:
    """The data to score, chosen as train.py chooses (``kind``: auto, folder, cifar10, cifar100).

    folder: the class folders of the root's val/ (or of the folder itself); cifarN: the test batch.
    auto: CIFAR when the root holds CIFAR files, else folders; a root with both is an error, so
    nothing is scored by guess.
    """
    if kind == "wds":
        return _read_shards(dataset_path)
    root = Path(dataset_path)
    if kind == "auto":
        cifar = detect_cifar(root)
        if cifar is not None and _has_class_folders(root):
            raise EvalInputError(f"{root} holds both {cifar} files and train/ or val/ class folders; "
                                 f"pass --dataset {cifar} or --dataset folder")
        kind = cifar or "folder"
    if kind != "folder":
        images, labels, classes = load_cifar_split(root, kind, "test")
        return EvalData([(f"{kind}/test[{i}]", label) for i, label in enumerate(labels)], classes,
                        f"{root} ({kind} test batch)", images, kind)
    folder = resolve_eval_folder(root)
    classes, samples = list_class_folders(folder)
    return EvalData(samples, classes, str(folder))


def _read_shards(dataset_path: str) -> EvalData:
    """val shards; shards without class names (the hub's) score their labels as the model's indices."""
    from src.shards import find_shards  # webdataset is needed only for shards
    shards = find_shards(dataset_path, "val")
    if shards is None or not shards.urls:
        raise DatasetError(f"no validation shards in {dataset_path}: expected val-*.tar, an index file or a "
                           "shard pattern (python -m src.shards IMAGE_ROOT OUT_DIR writes them)")
    return EvalData([], list(shards.classes or []), shards.where, name="wds", shards=shards)


def map_classes(data: EvalData, loaded: LoadedModel) -> tuple[list[str], list[tuple[str, int]]]:
    """(class names in model output order, samples relabelled to model indices).

    With class names in the checkpoint, the data set's classes match by name (a subset is fine).
    Without them the i-th class (sorted folder) is class i, as in training.
    """
    if loaded.classes is not None:
        index = {name: i for i, name in enumerate(loaded.classes)}
        unknown = [name for name in data.classes if name not in index]
        if unknown:
            shown = ", ".join(loaded.classes[:5]) + (", ..." if len(loaded.classes) > 5 else "")
            raise DatasetError(f"{data.class_word()} {unknown[0]!r} in {data.where} is not one of the checkpoint's "
                               f"{len(loaded.classes)} classes ({shown})"
                               + (f"; {len(unknown)} {data.class_word(plural=True)} do not match"
                                  if len(unknown) > 1 else ""))
        relabel = [index[name] for name in data.classes]
        return list(loaded.classes), [(path, relabel[label]) for path, label in data.samples]
    if len(data.classes) > loaded.num_classes:
        raise DatasetError(f"{data.where} has {len(data.classes)} {data.class_word(plural=True)} but the model "
                           f"has only {loaded.num_classes} classes; point --dataset_path at the matching data")
    names = list(data.classes) + [f"class_{i}" for i in range(len(data.classes), loaded.num_classes)]
    return names, data.samples


# --------------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------------
def build_loader(data: EvalData, samples: list[tuple[str, int]], classes: list[str], pre: Preprocess,
                 s: Settings, info: DistInfo) -> DataLoader:
    """``samples`` are ``data``'s, relabelled to the model's class indices."""
    transform = build_eval_transform(pre)
    dataset: Dataset
    if data.shards is not None:
        from src.shards import ShardEvalStream, make_eval_loader
        index = {name: i for i, name in enumerate(classes)}
        label_map = [index[name] for name in data.classes] if data.classes else None
        stream = ShardEvalStream(data.shards, classes, transform, label_map)
        return make_eval_loader(stream, info.rank, info.world_size, s.batch_size, num_workers=s.num_workers,
                                collate_fn=collate_skip_broken, pin_memory=info.device.type == "cuda")
    if data.images is not None:
        dataset = ArrayImageDataset(data.images, [label for _, label in samples], classes, transform,
                                    f"{data.name}/test")
    else:
        dataset = ImageFolderDataset(samples, classes, transform)
    return DataLoader(dataset, batch_size=s.batch_size, shuffle=False,
                      sampler=ShardedEvalSampler(len(dataset), info.rank, info.world_size),
                      num_workers=s.num_workers, collate_fn=collate_skip_broken,
                      pin_memory=info.device.type == "cuda", drop_last=False)


def report(result: EvalResult, loaded: LoadedModel, classes: list[str], pre: Preprocess, folder: str,
           s: Settings, info: DistInfo) -> None:
    """Rank 0: the ModelZoo result line, a readable summary, and the optional JSON/CSV files."""
    print(format_result_line(result, loaded.source), flush=True)
    print(format_summary(result, classes), flush=True)
    if result.broken:
        shown = ", ".join(result.broken_paths[:3])
        print(f"warning: {result.broken} unreadable images were not scored (e.g. {shown})", file=sys.stderr)
    if s.args.output_json:
        payload = {**result.to_dict(classes), "checkpoint": loaded.source, "model": loaded.name,
                   "num_classes": loaded.num_classes, "use_ema": loaded.use_ema, "preprocess": pre.to_dict(),
                   "dataset": str(folder), "world_size": info.world_size, "device": str(info.device)}
        path = Path(s.args.output_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"metrics written to {path}")
    if s.args.confusion_csv:
        path = Path(s.args.confusion_csv)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_confusion_csv(result, classes, str(path))
        print(f"confusion matrix written to {path}")


def check_output_files(args: argparse.Namespace) -> None:
    """--output_json / --confusion_csv folders must take files before the evaluation runs, not after."""
    for flag, value in (("--output_json", args.output_json), ("--confusion_csv", args.confusion_csv)):
        complaint = unwritable_output(flag, value) if value and _is_main_launch() else None
        if complaint is not None:
            raise EvalInputError(complaint)


def _is_main_launch() -> bool:
    """Before the process group exists: rank 0 (or no launcher) prints and shows download progress."""
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


def run(argv: Sequence[str] | None) -> int:
    s = merge_settings(build_parser().parse_args(argv))
    # Everything that can be wrong with the input is checked before joining the process group,
    # so a bad path fails fast on every rank instead of leaving others waiting in a collective.
    data = read_eval_data(s.dataset_path, s.dataset)
    loaded = load_model(s, progress=_is_main_launch())
    classes, samples = map_classes(data, loaded)
    pre = resolve_preprocess(base_preprocess(loaded, s), s)
    check_output_files(s.args)
    if s.args.check:
        print(f"ok: {loaded.source} ({loaded.name}, {loaded.num_classes} classes) fits; {data.describe()}")
        return 0
    info = init_distributed(s.device_target)
    if info.device.type == "cpu":
        reuse_freed_memory()
    try:
        if info.is_main:
            if loaded.weights_note:
                print(loaded.weights_note, flush=True)
            if loaded.import_note:  # a timm / efficientnet_pytorch file: its layout, padding, preprocessing
                print(loaded.import_note, flush=True)
            print(f"evaluating {loaded.name} ({loaded.num_classes} classes{', EMA weights' if loaded.use_ema else ''}) "
                  f"on {data.describe()}; "
                  f"resize {pre.resize} -> crop {pre.crop} {pre.interpolation}, batch {s.batch_size} x "
                  f"{info.world_size} process(es), device {info.device}; padding {loaded.padding}, mean "
                  f"{'/'.join(f'{v:g}' for v in pre.mean)}, std {'/'.join(f'{v:g}' for v in pre.std)}", flush=True)
        model = loaded.model.to(info.device)
        if s.channels_last:
            model = model.to(memory_format=torch.channels_last)
        result = evaluate(model, build_loader(data, samples, classes, pre, s, info), info.device, pre.mean, pre.std,
                          loaded.num_classes, channels_last=s.channels_last, amp=s.amp)
        if result.count == 0:
            raise DatasetError(f"none of the {result.broken} images in {data.where} could be read")
        if info.is_main:
            report(result, loaded, classes, pre, data.where, s, info)
    finally:
        cleanup()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 on success, 2 with one ``error:`` line on bad input."""
    one_line_broken_image_warnings()
    try:
        return run(argv)
    except (EvalInputError, ModelLoadError, CheckpointError, DatasetError, WeightMismatchError, ConfigError,
            DistributedError, OSError) as exc:
        rank = "" if _is_main_launch() else f"[rank {os.environ.get('RANK')}] "
        print(f"error: {rank}{exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
