#!/usr/bin/env bash
# Resume a (data-parallel) training run from one of its checkpoints with torchrun.
#   bash scripts/run_distribute_resume.sh [DEVICE_NUM] [DATA_DIR] [CHECKPOINT] [extra train.py args...]
# The checkpoint carries the config and the whole training state (weights, optimizer, LR position,
# EMA, loss scaler, RNG, data position); flags given here override its config keys. The run
# continues in the checkpoint's folder (new checkpoints next to it) and logs to
# <that folder>/log_resume_<date>_<time>.txt. Bitwise the same result as if it had never stopped, on
# any DEVICE_NUM that divides the global batch (accumulate_grad_batches is recomputed to keep it).
# RUN_DIR=<folder> bash scripts/run_distribute_train.sh ... continues from the newest checkpoint by itself.
set -euo pipefail

usage() {
  cat >&2 <<'USAGE'
Usage: bash scripts/run_distribute_resume.sh [DEVICE_NUM] [DATA_DIR] [CHECKPOINT] [extra train.py args...]
  DEVICE_NUM  processes on this node (another number keeps the global batch through accumulate_grad_batches)
  DATA_DIR    the dataset root the run was trained on
  CHECKPOINT  a train.py checkpoint, e.g. runs/train_20250101_120000/efficientnet_b2-120_625.pth
  extra args  train.py flags overriding the checkpoint's config, e.g. --epoch_size 400
Environment: NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT, PYTHON as for run_distribute_train.sh.
USAGE
}

# shellcheck source=scripts/train_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/train_common.sh"

[ $# -ge 3 ] || fail "expected DEVICE_NUM, DATA_DIR and CHECKPOINT, got $# argument(s)"
DEVICE_NUM=$1
DATA_DIR=$2
CHECKPOINT=$3
shift 3
require_positive_int DEVICE_NUM "$DEVICE_NUM"
require_dir DATA_DIR "$DATA_DIR"
require_launch_env
[ -f "$CHECKPOINT" ] || fail "CHECKPOINT '$CHECKPOINT' is not a file"
require_train_python

# The device comes from the checkpoint's config unless a flag overrides it; reading it also
# rejects unusable or unsafe checkpoint files with train.py's one-line error (exit 2).
TARGET=$("$PYTHON" -c '
import sys
from src.models.files import CheckpointError
from src.config import ConfigError, load_config
from src.training.preflight import resolve_resume
try:
    print(resolve_resume(load_config(sys.argv[1:]))[0].device_target)
except (CheckpointError, ConfigError) as exc:
    sys.exit(f"error: {exc}")
' --resume "$CHECKPOINT" --dataset_path "$DATA_DIR" "$@") || exit 2
if [ "$TARGET" = GPU ]; then
  gpus=$(visible_gpus)
  [ "$DEVICE_NUM" -le "$gpus" ] || fail "DEVICE_NUM $DEVICE_NUM but $gpus GPU(s) are visible; add --device_target CPU for CPU processes"
fi

RUN_DIR=$(cd "$(dirname "$CHECKPOINT")" && pwd)
check_train_inputs $((DEVICE_NUM * ${NNODES:-1})) "" --resume "$CHECKPOINT" --dataset_path "$DATA_DIR" \
  --save_checkpoint_path "$RUN_DIR" "$@"
LOG="$RUN_DIR/log_resume_$(date +%Y%m%d_%H%M%S).txt"
echo "resuming in run folder: $RUN_DIR (console log: $LOG)"
torchrun_launch "$DEVICE_NUM"
run_forwarding_signals "$LOG" "$PYTHON" -m torch.distributed.run "${LAUNCH[@]}" "$ROOT/train.py" \
  --resume "$CHECKPOINT" --dataset_path "$DATA_DIR" --save_checkpoint_path "$RUN_DIR" "$@"
echo "run folder: $RUN_DIR"
exit "$STATUS"
