#!/usr/bin/env bash
# Train on one device (ModelZoo's run_standalone_train.sh for train.py).
#   bash scripts/run_standalone_train.sh [DEVICE_ID] [DATA_DIR] [extra train.py args...]
# Output (checkpoints, config.yaml, train.log, metrics.jsonl, curves.png, log.txt) goes to a new
# run folder ${RUN_ROOT:-runs}/train_<date>_<time>, printed at the start and at the end; with
# RUN_DIR=<run folder> to that folder, continuing the run there (--resume auto). SIGTERM / SIGUSR1
# checkpoint the step reached and end it with status 143: the same command continues.
set -euo pipefail

usage() {
  cat >&2 <<'USAGE'
Usage: bash scripts/run_standalone_train.sh [DEVICE_ID] [DATA_DIR] [extra train.py args...]
  DEVICE_ID   GPU index (0, 1, ...); becomes CUDA_VISIBLE_DEVICES. Ignored with --device_target CPU.
  DATA_DIR    dataset root: DIR/train/<class>/* and DIR/val/<class>/* (or class folders + --val_split)
  extra args  any train.py flag, e.g. --config configs/efficientnet_b2_imagenet.yaml --amp bf16
Environment: RUN_DIR (continue the run in this folder), RUN_ROOT parent of new run folders (default runs),
             PYTHON interpreter (default: active venv, .venv, python3).
Examples:
  bash scripts/run_standalone_train.sh 0 /data/imagenet --config configs/efficientnet_b0_imagenet.yaml
  bash scripts/run_standalone_train.sh 0 data/digits --config configs/digits.yaml --device_target CPU
USAGE
}

# shellcheck source=scripts/train_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/train_common.sh"

[ $# -ge 2 ] || fail "expected DEVICE_ID and DATA_DIR, got $# argument(s)"
DEVICE_ID=$1
DATA_DIR=$2
shift 2
require_index DEVICE_ID "$DEVICE_ID"
require_dir DATA_DIR "$DATA_DIR"
require_train_python

TARGET=$(resolved_device_target --dataset_path "$DATA_DIR" "$@")
if [ "$TARGET" = GPU ]; then
  gpus=$(physical_gpus)
  [ "$DEVICE_ID" -lt "$gpus" ] || fail "DEVICE_ID $DEVICE_ID but this machine has $gpus GPU(s); add --device_target CPU to train on the CPU"
  export CUDA_VISIBLE_DEVICES=$DEVICE_ID
fi

choose_run_dir
ARGS=(--dataset_path "$DATA_DIR" --save_checkpoint_path "$RUN_DIR" "${RESUME[@]}" "$@")
check_train_inputs 1 "$MADE" "${ARGS[@]}"
echo "run folder: $RUN_DIR (console log: $RUN_DIR/log.txt)"
run_forwarding_signals "$RUN_DIR/log.txt" "$PYTHON" "$ROOT/train.py" "${ARGS[@]}"
echo "run folder: $RUN_DIR"
exit "$STATUS"
