"""Train an EfficientNet: from scratch with a published recipe, or fine-tune on your own folders.

    python train.py --config configs/digits.yaml --dataset_path data/digits --device_target CPU
    python train.py --config configs/finetune.yaml --dataset_path /data/photos
    python train.py --config configs/efficientnet_b2_imagenet.yaml --dataset_path /data/imagenet
    python train.py --config ... --resume checkpoint/efficientnet_b2-120_625.pth
    python train.py --config ... --save_checkpoint_path runs/b2 --resume auto   # its newest good checkpoint
    torchrun --nproc_per_node 8 train.py --config ... --dataset_path ...   # or scripts/run_distribute_train.sh
    python train.py --check --config ... --dataset_path ...   # only validate the inputs, then exit

Every config key can be given as ``--key value`` (``python -m src.config --markdown`` lists them).
Exit status: 0 done, 1 failed (a persistently non-finite loss, a full disk, a process that stopped
answering: checkpoints already written stay intact), 2 bad input (one ``error:`` line), 3 out of GPU
memory (the line names the remedies), 143 preempted (SIGTERM or SIGUSR1) and 130 interrupted (SIGINT):
both after writing the checkpoint of the step reached; the same command continues the run.
"""

from __future__ import annotations

import errno
import sys
from typing import Sequence

from src.common.errors import (EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OUT_OF_MEMORY, InputError,
                               one_line_broken_image_warnings, report_error)
from src.config import load_config
from src.models.files import CheckpointWriteError
from src.training.preflight import check_inputs
from src.training.errors import NonFiniteLossError, ProcessTimeout, TrainOutOfMemory
from src.training.loop import run_training
from src.training.preemption import Stopped

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def main(argv: Sequence[str] | None = None) -> int:
    one_line_broken_image_warnings()
    args = list(sys.argv[1:] if argv is None else argv)
    check_only = "--check" in args
    args = [a for a in args if a != "--check"]
    try:
        if check_only:
            print(check_inputs(load_config(args)), flush=True)
            return 0
        run_training(load_config(args))
    except InputError as exc:
        return report_error(exc)
    except (NonFiniteLossError, CheckpointWriteError, ProcessTimeout) as exc:
        return report_error(exc, EXIT_FAILED)
    except TrainOutOfMemory as exc:
        return report_error(exc, EXIT_OUT_OF_MEMORY)
    except Stopped as exc:  # the checkpoint of the step reached is written and rank 0 said where
        return exc.status
    except KeyboardInterrupt:
        return report_error("interrupted; resume with --resume <the last checkpoint>", EXIT_INTERRUPTED)
    except OSError as exc:  # e.g. the log or metrics file on a full disk
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        return report_error(f"could not write {exc.filename or 'a file'} ({exc.strerror}): free disk space, then "
                            "resume with --resume <the last checkpoint>", EXIT_FAILED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
