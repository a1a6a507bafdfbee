#!/usr/bin/env bash
# Evaluate a checkpoint on a dataset (ModelZoo's run_eval.sh, for eval.py).
#   bash scripts/run_eval.sh [DATA_DIR] [CHECKPOINT_PATH] [extra eval.py flags...]
# DEVICE_NUM=N (N > 1) runs N processes under torchrun; every image is still scored exactly once
# and the numbers equal a single-process run.
set -euo pipefail

usage() {
  cat >&2 <<'USAGE'
Usage: bash scripts/run_eval.sh [DATA_DIR] [CHECKPOINT_PATH] [extra eval.py flags...]
  DATA_DIR         dataset root (its val/ is used), a folder of class folders, or a CIFAR-10/100 folder
  CHECKPOINT_PATH  a train.py checkpoint, or a state_dict file (then add --model NAME)
  extra flags      passed to eval.py, e.g. --device_target CPU --batch_size 128 --output_json m.json
Environment: DEVICE_NUM processes under torchrun (default 1), PYTHON interpreter (default: active venv, .venv, python3).
Example: DEVICE_NUM=8 bash scripts/run_eval.sh /data/imagenet checkpoint/efficientnet_b2-350_625.pth
USAGE
}

fail() {
  echo "error: $1" >&2
  usage
  exit 2
}

[ $# -ge 2 ] || fail "expected DATA_DIR and CHECKPOINT_PATH, got $# argument(s)"
DATA_DIR=$1
CHECKPOINT_PATH=$2
shift 2
[ -d "$DATA_DIR" ] || fail "DATA_DIR '$DATA_DIR' is not a directory"
[ -f "$CHECKPOINT_PATH" ] || fail "CHECKPOINT_PATH '$CHECKPOINT_PATH' is not a file"

DEVICE_NUM=${DEVICE_NUM:-1}
case $DEVICE_NUM in
  '' | *[!0-9]* | 0) fail "DEVICE_NUM must be a positive integer, got '$DEVICE_NUM'" ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/python_env.sh
source "$ROOT/scripts/python_env.sh"
require_python torch torchvision numpy PIL yaml

if [ "$DEVICE_NUM" -gt 1 ]; then
  # Validate once in a single process first: a bad input then ends with eval.py's one error line
  # instead of every rank failing and torchrun printing its own failure report.
  "$PYTHON" "$ROOT/eval.py" --dataset_path "$DATA_DIR" --checkpoint_path "$CHECKPOINT_PATH" "$@" --check \
    >/dev/null || exit $?
  # --standalone: one node, torchrun picks a free rendezvous port itself.
  exec "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$DEVICE_NUM" "$ROOT/eval.py" \
    --dataset_path "$DATA_DIR" --checkpoint_path "$CHECKPOINT_PATH" "$@"
fi
exec "$PYTHON" "$ROOT/eval.py" --dataset_path "$DATA_DIR" --checkpoint_path "$CHECKPOINT_PATH" "$@"
