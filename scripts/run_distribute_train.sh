#!/usr/bin/env bash
# Data-parallel training with torchrun: DEVICE_NUM processes on this node, one per GPU (or CPU
# processes with gloo when --device_target CPU is among the extra args).
#   bash scripts/run_distribute_train.sh [DEVICE_NUM] [DATA_DIR] [extra train.py args...]
# Multi-node: run the same command on every node with NNODES, MASTER_ADDR (node 0's address) and
# MASTER_PORT set (NODE_RANK too; the c10d rendezvous assigns the ranks). batch_size is per process:
# the global batch is batch_size x DEVICE_NUM x NNODES (add --scale_lr true to scale the LR with it).
# A run survives the cluster: RUN_DIR=<run folder> continues the run there (--resume auto: the same
# command after a requeue goes on); torchrun restarts failed workers MAX_RESTARTS (3) times, and a
# restarted train.py resumes from the run's newest checkpoint; SIGTERM / SIGUSR1 checkpoint the step
# reached and end the launch with status 143.
set -euo pipefail

usage() {
  cat >&2 <<'USAGE'
Usage: bash scripts/run_distribute_train.sh [DEVICE_NUM] [DATA_DIR] [extra train.py args...]
  DEVICE_NUM  processes on this node (GPUs; at most the visible GPUs unless --device_target CPU)
  DATA_DIR    dataset root: DIR/train/<class>/* and DIR/val/<class>/*
  extra args  any train.py flag, e.g. --config configs/efficientnet_b2_imagenet.yaml
Environment: NNODES (1), NODE_RANK (0), MASTER_ADDR (127.0.0.1), MASTER_PORT (29500), RDZV_ID (the
             rendezvous id of a multi-node run: SLURM_JOB_ID, else effnet_train), MAX_RESTARTS (3),
             RUN_DIR (continue the run in this folder), RUN_ROOT parent of new run folders (runs),
             PYTHON (active venv, .venv, python3).
Examples:
  bash scripts/run_distribute_train.sh 8 /data/imagenet --config configs/efficientnet_b2_imagenet.yaml
  RUN_DIR=runs/b2 bash scripts/run_distribute_train.sh 8 /data/imagenet --config ...   # again: continues
  NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash scripts/run_distribute_train.sh 8 /data/imagenet --config ...
  bash scripts/run_distribute_train.sh 2 data/digits --device_target CPU --config configs/digits.yaml
USAGE
}

# shellcheck source=scripts/train_common.sh
source "$(dirname "${BASH_SOURCE[0]}")/train_common.sh"

[ $# -ge 2 ] || fail "expected DEVICE_NUM and DATA_DIR, got $# argument(s)"
DEVICE_NUM=$1
DATA_DIR=$2
shift 2
require_positive_int DEVICE_NUM "$DEVICE_NUM"
require_dir DATA_DIR "$DATA_DIR"
require_train_python
require_launch_env

TARGET=$(resolved_device_target --dataset_path "$DATA_DIR" "$@")
if [ "$TARGET" = GPU ]; then
  gpus=$(visible_gpus)
  [ "$DEVICE_NUM" -le "$gpus" ] || fail "DEVICE_NUM $DEVICE_NUM but $gpus GPU(s) are visible; add --device_target CPU for CPU processes"
fi

choose_run_dir
ARGS=(--dataset_path "$DATA_DIR" --save_checkpoint_path "$RUN_DIR" "${RESUME[@]}" "$@")
check_train_inputs $((DEVICE_NUM * ${NNODES:-1})) "$MADE" "${ARGS[@]}"
torchrun_launch "$DEVICE_NUM"
echo "run folder: $RUN_DIR (console log: $RUN_DIR/log.txt)"
run_forwarding_signals "$RUN_DIR/log.txt" "$PYTHON" -m torch.distributed.run "${LAUNCH[@]}" "$ROOT/train.py" "${ARGS[@]}"
echo "run folder: $RUN_DIR"
exit "$STATUS"
