"""Train an EfficientNet: from scratch with a published recipe, or fine-tune on your own folders.

    python train.py --config configs/digits.yaml --dataset_path data/digits --device_target CPU
    python train.py --config configs/finetune.yaml --dataset_path /data/photos
    python train.py --config configs/efficientnet_b2_imagenet.yaml --dataset_path /data/imagenet
    python train.py --config ... --resume checkpoint/efficientnet_b2-120_625.pth
    torchrun --nproc_per_node 8 train.py --config ... --dataset_path ...   # or scripts/run_distribute_train.sh
    python train.py --check --config ... --dataset_path ...   # only validate the inputs, then exit

Every config key can be given as ``--key value`` (``python -m src.config --markdown`` lists them).
Exit status: 0 done, 1 stopped (a persistently non-finite loss, or a full disk: checkpoints already
written stay intact), 2 bad input (one ``error:`` line), 3 out of GPU memory (the line names the
remedies), 130 interrupted.
"""

from __future__ import annotations

import errno
import sys
from typing import Sequence

from src.models.files import CheckpointError, CheckpointWriteError
from src.config import ConfigError, load_config
from src.data.dataset import one_line_broken_image_warnings
from src.runtime.distributed import DistributedError
from src.models import WeightMismatchError
from src.common.preprocess import DatasetError
from src.training.preflight import TrainInputError, check_inputs
from src.training.trainer import NonFiniteLossError, TrainOutOfMemory, run_training
from src.common.errors import EXIT_BAD_INPUT

EXIT_TRAINING_FAILED = 1
EXIT_OUT_OF_MEMORY = 3
EXIT_INTERRUPTED = 130
BAD_INPUT_ERRORS = (ConfigError, DatasetError, CheckpointError, TrainInputError, WeightMismatchError,
                    DistributedError, FileNotFoundError)
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _error(message: object, status: int) -> int:
    """One line on stderr: multi-line exception texts are joined so scripts can grep them."""
    text = " ".join(str(message).split())
    print(f"error: {text}", file=sys.stderr, flush=True)
    return status


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
    except BAD_INPUT_ERRORS as exc:
        return _error(exc, EXIT_BAD_INPUT)
    except (NonFiniteLossError, CheckpointWriteError) as exc:
        return _error(exc, EXIT_TRAINING_FAILED)
    except TrainOutOfMemory as exc:
        return _error(exc, EXIT_OUT_OF_MEMORY)
    except KeyboardInterrupt:
        return _error("interrupted; resume with --resume <the last checkpoint>", EXIT_INTERRUPTED)
    except OSError as exc:  # e.g. the log or metrics file on a full disk
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        return _error(f"could not write {exc.filename or 'a file'} ({exc.strerror}): free disk space, then resume "
                      "with --resume <the last checkpoint>", EXIT_TRAINING_FAILED)
    return 0


if __name__ == "__main__":
    sys.exit(main())
