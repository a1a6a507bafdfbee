"""Evaluate a checkpoint on a folder of class folders (or CIFAR's test set): loss, top-1, top-5 over every image.

    python eval.py --checkpoint_path checkpoint/efficientnet_b2-350_625.pth --dataset_path /data/imagenet
    python eval.py --model efficientnet_b0 --pretrained --dataset_path /data/imagenet   # torchvision weights
    torchrun --nproc_per_node 8 eval.py --checkpoint_path ... --dataset_path ...     # same numbers, faster
    python eval.py --checkpoint_path ... --dataset wds --dataset_path /data/imagenet-wds  # tar shards (val-*.tar)
    python eval.py --checkpoint_path ... --dataset_path photos --report runs/report   # + pictures of the mistakes

The checkpoint is a train.py checkpoint (model name, classes and preprocessing are read from it), a
plain state_dict such as torchvision's (``--model`` names the variant; the class count comes from
``classifier.1.weight``), or ``--pretrained NAME`` (imagenet, a registry name, hf-hub:REPO or a file). ``--dataset_path`` is a dataset root
(its val/ is used), any folder of class folders, or a CIFAR-10/100 folder as train.py reads it (its
test batch is scored). Bad input ends with one ``error: ...`` line and exit status 2.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

import torch

from src.common.errors import (EXIT_FAILED, EXIT_INTERRUPTED, InputError, OneLineParser,
                               one_line_broken_image_warnings, report_error)
from src.runtime.amp import AMP_DTYPES
from src.runtime.distributed import cleanup, init_distributed
from src.evaluation.data import EVAL_DATASET_KINDS, build_loader, map_to_model, read_eval_data
from src.evaluation.settings import (DEFAULT_BATCH_SIZE, EvalInputError, check_output_files, eval_preprocess, load_model,
                               merge_settings)
from src.evaluation.report import print_report, save_report_dir, save_reports, start_lines
from src.evaluation.metrics import evaluate
from src.evaluation.mistakes import MistakeRecorder
from src.runtime.host_memory import reuse_freed_memory_if_requested
from src.models.loading import add_use_ema_argument
from src.models.pretrained import IMAGENET
from src.models import PADDINGS
from src.common.preprocess import INTERPOLATIONS, DatasetError



def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                      help_hint="python eval.py --help", raise_as=EvalInputError)  # main adds the rank
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
    add("--padding", choices=PADDINGS, help="force the conv padding of a weight file (default: what the file "
        "says, its layout implies or, timm's layout, its BatchNorm statistics fit; same = TensorFlow's, for Google's)")
    add_use_ema_argument(p)
    add("--pretrained", nargs="?", const=IMAGENET, metavar="NAME",
        help="published weights by name (imagenet: the --model's reference weights; a registry name, python -m "
             "src.models --weights; hf-hub:OWNER/REPO for timm's on the Hugging Face hub) or a local weight file")
    add("--output_json", metavar="PATH", help="write all metrics (per class too) to this JSON file")
    add("--confusion_csv", metavar="PATH", help="write the confusion matrix (rows: true, columns: predicted)")
    add("--report", metavar="DIR", help="write eval.json, confusion.csv, mistakes.csv (the most confident mistakes) "
        "and confusion.png, per_class.png, mistakes.png into DIR")
    add("--resize", type=int, metavar="N", help="resize the shorter side to N (alone: keeps the crop ratio)")
    add("--crop", type=int, metavar="N", help="center crop N (alone: keeps the resize/crop ratio)")
    add("--interpolation", choices=sorted(INTERPOLATIONS), help="resize filter")
    add("--amp", choices=tuple(AMP_DTYPES), help="autocast dtype (default none)")
    add("--channels_last", type=str.lower, choices=("true", "false"),
        help="NHWC memory format (default true: faster on GPUs and CPUs)")
    add("--check", action="store_true", help="only validate the inputs (data, weights, classes) and exit; "
        "run_eval.sh uses it before a torchrun launch so bad input gives one error line")
    return p


def run(argv: Sequence[str] | None) -> int:
    s = merge_settings(build_parser().parse_args(argv))
    # Everything that can be wrong with the input is checked before joining the process group,
    # so a bad path fails fast on every rank instead of leaving others waiting in a collective.
    data = read_eval_data(s.dataset_path, s.dataset)
    loaded = load_model(s)
    mapping = map_to_model(data, loaded)
    pre = eval_preprocess(loaded, s)
    check_output_files(s.args)
    if s.args.check:
        print(f"ok: {loaded.source} ({loaded.name}, {loaded.num_classes} classes) fits; {data.describe()}")
        return 0
    info = init_distributed(s.device_target)
    if info.device.type == "cpu":
        reuse_freed_memory_if_requested()  # EFFNET_MALLOC=tuned
    try:
        if info.is_main:
            for line in start_lines(loaded, mapping, data.describe(), pre, s.batch_size, info):
                print(line, flush=True)
        model = loaded.model.to(info.device)
        if s.channels_last:
            model = model.to(memory_format=torch.channels_last)
        mistakes = MistakeRecorder() if s.args.report else None
        loader = build_loader(data, mapping, pre, s.batch_size, s.num_workers, info, with_paths=mistakes is not None)
        result = evaluate(model, loader, info.device, pre.mean, pre.std, loaded.num_classes,
                          channels_last=s.channels_last, amp=s.amp, mistakes=mistakes)
        if result.count == 0:
            raise DatasetError(f"none of the {result.broken} images in {data.where} could be read")
        if info.is_main:
            print_report(result, mapping.names, loaded.source)
            save_reports(result, mapping.names, loaded, pre, data.where, info, s.args.output_json,
                         s.args.confusion_csv)
            if mistakes is not None:
                save_report_dir(result, mapping.names, loaded, pre, data.where, info, s.args.report, mistakes)
    finally:
        cleanup()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: 0 on success, 2 with one ``error:`` line on bad input."""
    one_line_broken_image_warnings()
    try:
        return run(argv)
    except InputError as exc:
        return report_error(exc, rank=os.environ.get("RANK"))
    except OSError as exc:  # a file system that failed under a check that passed (a lost mount, a full disk)
        return report_error(exc, EXIT_FAILED, rank=os.environ.get("RANK"))
    except KeyboardInterrupt:
        return report_error("interrupted", EXIT_INTERRUPTED)


if __name__ == "__main__":
    sys.exit(main())
