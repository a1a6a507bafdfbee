# shellcheck shell=bash
# Shared checks of the training launchers (sourced by run_standalone_train.sh, run_distribute_train.sh
# and run_distribute_resume.sh; not run on its own). Each launcher defines usage() first.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/python_env.sh
source "$ROOT/scripts/python_env.sh"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# One line and exit 1 when $PYTHON lacks what train.py imports (after the argument checks).
require_train_python() {
  require_python torch torchvision numpy PIL yaml
}

# Bad launcher arguments: the reason, then the usage, exit status 2 (bad input, as train.py).
fail() {
  echo "error: $1" >&2
  usage
  exit 2
}

require_positive_int() {  # NAME VALUE
  case $2 in
    '' | *[!0-9]* | 0 | 0*) fail "$1 must be a positive integer, got '$2'" ;;
  esac
}

require_index() {  # NAME VALUE: 0, 1, 2, ...
  case $2 in
    '' | *[!0-9]*) fail "$1 must be a non-negative integer, got '$2'" ;;
  esac
}

require_dir() {  # NAME PATH
  [ -d "$2" ] || fail "$1 '$2' is not a directory"
}

# NNODES, NODE_RANK and MASTER_PORT of a torchrun launch (defaults 1, 0, 29500).
require_launch_env() {
  require_positive_int NNODES "${NNODES:-1}"
  require_index NODE_RANK "${NODE_RANK:-0}"
  [ "${NODE_RANK:-0}" -lt "${NNODES:-1}" ] || fail "NODE_RANK must be below NNODES (${NNODES:-1}), got '${NODE_RANK}'"
  require_positive_int MASTER_PORT "${MASTER_PORT:-29500}"
  [ "${MASTER_PORT:-29500}" -le 65535 ] || fail "MASTER_PORT must be at most 65535, got '${MASTER_PORT}'"
}

# train.py --check as rank 0 of a launch of WORLD processes: bad input ends the launcher here with
# train.py's one error line (exit 2), before torchrun starts processes that would all fail and
# print its failure report. A run folder made for the run is removed again.
check_train_inputs() {  # WORLD RUN_DIR_TO_REMOVE_OR_EMPTY TRAIN_ARGS...
  local world=$1 made=$2 status=0
  shift 2
  WORLD_SIZE=$world RANK=0 LOCAL_RANK=0 "$PYTHON" "$ROOT/train.py" --check "$@" >/dev/null || status=$?
  if [ "$status" -ne 0 ]; then
    [ -z "$made" ] || rmdir -- "$made" 2>/dev/null || true
    exit "$status"
  fi
}

# device_target as train.py will resolve it from --config / --key value flags (GPU or CPU).
# Use as TARGET=$(resolved_device_target ...): a bad flag prints train.py's one-line error and,
# under set -e, ends the launcher with status 2.
resolved_device_target() {
  local resolved target
  resolved=$("$PYTHON" -m src.config "$@") || return 2
  target=$(sed -n 's/^device_target: //p' <<<"$resolved")
  if [ "$target" = null ]; then  # unset: train.py takes the GPU when CUDA has one
    if [ "$(visible_gpus)" -gt 0 ]; then target=GPU; else target=CPU; fi
  fi
  echo "$target"
}

# GPUs this process can use (honours CUDA_VISIBLE_DEVICES).
visible_gpus() {
  "$PYTHON" -c 'import torch; print(torch.cuda.device_count())'
}

# Physical GPUs of the machine (DEVICE_ID of the standalone script is a physical index).
physical_gpus() {
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi -L | grep -c '^GPU' || true
  else
    env -u CUDA_VISIBLE_DEVICES "$PYTHON" -c 'import torch; print(torch.cuda.device_count())'
  fi
}

# A new run folder under ${RUN_ROOT:-runs}: <prefix>_<date>_<time>[_N].
new_run_dir() {  # PREFIX
  local base dir n=1
  base="${RUN_ROOT:-runs}/$1_$(date +%Y%m%d_%H%M%S)"
  dir=$base
  while [ -e "$dir" ]; do
    n=$((n + 1))
    dir="${base}_$n"
  done
  mkdir -p "$dir"
  echo "$dir"
}

# The run folder and how train.py starts in it: RUN_DIR when set (created if missing; a run there
# continues: --resume auto), else a new ${RUN_ROOT:-runs}/train_<date>_<time>. Sets RUN_DIR, MADE
# (the folder made here, removed again when the input check fails) and RESUME (train.py's flags).
# shellcheck disable=SC2034  # MADE and RESUME are the launchers' (this file is sourced)
choose_run_dir() {
  if [ -n "${RUN_DIR:-}" ]; then
    mkdir -p "$RUN_DIR"
    MADE="" RESUME=(--resume auto)
  else
    RUN_DIR=$(new_run_dir train)
    MADE=$RUN_DIR RESUME=()
  fi
}

# Run a command with its output shown and appended to LOG, passing SIGTERM and SIGUSR1 on to it (what
# SLURM, Kubernetes and spot reclaimers send; train.py then checkpoints and exits 143). SIGINT is not
# passed on: a terminal's Ctrl-C already reaches the whole process group, and a second one would make
# train.py stop at once. Sets STATUS: the command's, or 143 / 130 when a signal stopped it and the
# command (torchrun) reported only its own failure.
run_forwarding_signals() {  # LOG CMD...
  local log=$1 child stop=""
  shift
  "$@" > >(tee -a "$log") 2>&1 &
  child=$!
  trap 'stop=143; kill -TERM "$child" 2>/dev/null' TERM
  trap 'stop=143; kill -USR1 "$child" 2>/dev/null' USR1
  trap 'stop=130' INT
  while true; do
    STATUS=0
    wait "$child" || STATUS=$?
    if [ "$STATUS" -gt 128 ] && kill -0 "$child" 2>/dev/null; then continue; fi  # a signal woke wait up
    break
  done
  trap - TERM USR1 INT
  if [ -n "$stop" ] && [ "$STATUS" -ne 0 ]; then STATUS=$stop; fi
}

# torchrun's launch arguments for DEVICE_NUM processes on this node (sets LAUNCH): MAX_RESTARTS (3)
# restarts of failed workers (each resumes from the run's newest checkpoint), the preemption signals
# passed on to the workers, and a c10d rendezvous (restarts need one): for NNODES > 1 at
# MASTER_ADDR:MASTER_PORT, which a node coming back rejoins; on one node torchrun's --standalone
# (a free local port).
# shellcheck disable=SC2034  # LAUNCH is the launchers' (this file is sourced)
torchrun_launch() {  # DEVICE_NUM
  LAUNCH=(--nproc_per_node "$1" --max-restarts "${MAX_RESTARTS:-3}"
          --signals-to-handle "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1")
  if [ "${NNODES:-1}" -gt 1 ]; then
    LAUNCH+=(--nnodes "$NNODES" --rdzv-backend c10d --rdzv-endpoint "${MASTER_ADDR:-127.0.0.1}:${MASTER_PORT:-29500}"
             --rdzv-id "${RDZV_ID:-${SLURM_JOB_ID:-effnet_train}}")
  else
    LAUNCH+=(--standalone --nnodes 1)
  fi
}
