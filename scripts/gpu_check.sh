#!/usr/bin/env bash
# GPU acceptance check (scripts/gpu_check.py): AMP fp16/bf16 training steps, a 1-process NCCL DDP run,
# --compile, gradient checkpointing, eval.py, export.py on the CUDA/TensorRT providers and benchmark.py,
# each with its own timeout, in about five minutes on one H100/H200-class GPU; one JSON summary.
#   bash scripts/gpu_check.sh [--output gpu_check.json] [--workdir DIR] [--steps train_fp16,eval,...]
# Without CUDA it says so in one line and exits 0. Installs nothing; PYTHON as for the other launchers.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/python_env.sh
source "$ROOT/scripts/python_env.sh"
exec "$PYTHON" "$ROOT/scripts/gpu_check.py" "$@"
