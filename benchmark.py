"""One benchmark command: ``python benchmark.py MODE [options]`` (``--help`` per mode).

Every mode prints a table comparing this project with what a user would otherwise run, measured
in the same process on the same inputs, and can write the numbers as JSON (``--json``).
"""
import argparse
import os
import sys

from bench import data as data_mode
from bench import finetune as finetune_mode
from bench import memory as memory_mode
from bench import model as model_mode
from bench import onnx_bench as onnx_mode
from bench import train_bench as train_mode
from bench.common import check_args, write_json
from src.common.errors import EXIT_FAILED, InputError, report_error

MODES = {
    "model": (model_mode, "train-step and inference images/s: ours vs torchvision/timm"),
    "data": (data_mode, "images/s per worker of the train/eval pipelines: ours vs torchvision's chain"),
    "onnx": (onnx_mode, "inference images/s: onnxruntime vs PyTorch eager; --int8: fp32 vs int8 onnxruntime"),
    "memory": (memory_mode, "peak memory of a training step: checkpointing and AMP on/off, ours vs torchvision"),
    "train": (train_mode, "end-to-end train.py images/s vs a plain PyTorch loop"),
    "finetune": (finetune_mode, "fine-tuning val top-1 over sets and seeds: the recipe vs a plain loop"),
}



def set_allocator(choice: str | None) -> None:
    """Apply ``--malloc`` here and, through the environment, in every child process."""
    from src.runtime.host_memory import ENV_VAR, TRIM_NEVER, reuse_freed_memory

    if choice == "default":
        os.environ.pop(ENV_VAR, None)  # no EFFNET_MALLOC=tuned from the caller's shell
    elif choice == "reuse" and reuse_freed_memory():  # declined: no glibc, or the user's own MALLOC_* settings
        os.environ.update(MALLOC_MMAP_MAX_="0", MALLOC_TRIM_THRESHOLD_=str(TRIM_NEVER))  # glibc reads these at start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--malloc", choices=("default", "reuse"), default=None,
                        help="host allocator for this process and the ones it starts: glibc's defaults, or "
                             "reuse freed memory (src/runtime/host_memory.py) everywhere; unset: as shipped "
                             "(glibc's defaults; train.py and eval.py reuse on CPU with EFFNET_MALLOC=tuned)")
    sub = parser.add_subparsers(dest="mode", required=True)
    for name, (module, help_text) in MODES.items():
        mode_parser = sub.add_parser(name, help=help_text)
        module.add_arguments(mode_parser)
        mode_parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)
    set_allocator(args.malloc)
    try:
        module = MODES[args.mode][0]
        check_args(args, module.MINIMUMS)
        payload = module.run(args)
        module.print_report(payload)
        write_json(args.json, payload)
    except InputError as exc:  # bad options or input: one line, no traceback
        return report_error(exc)
    except RuntimeError as exc:  # a measured child process (train.py, memory) failed; the line says why
        return report_error(exc, EXIT_FAILED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
