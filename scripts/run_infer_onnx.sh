#!/bin/bash
# ONNX Runtime inference over a folder: accuracy on a labelled folder, predictions otherwise,
# plus throughput and latency. Needs only onnxruntime(-gpu), numpy and Pillow (no torch).
#
#   bash scripts/run_infer_onnx.sh [ONNX_PATH] [DATA_PATH] [DEVICE_TARGET] [extra infer_onnx.py args...]
#
# DEVICE_TARGET is GPU (default; TensorRT/CUDA, falling back to CPU with one notice) or CPU.
# Extra arguments go to infer/infer_onnx.py, e.g. --batch_size 64 --output preds.csv.
# Set PYTHON to choose the interpreter (default: the active venv's python, else .venv/bin/python, else python3).
set -euo pipefail

usage() {
    cat >&2 <<USAGE
Usage: bash $0 [ONNX_PATH] [DATA_PATH] [DEVICE_TARGET] [extra args...]
  ONNX_PATH      model written by export.py
  DATA_PATH      dataset root (uses val/), folder of class folders, folder of images, or a .txt list
  DEVICE_TARGET  GPU (default) or CPU
  extra args     passed to infer/infer_onnx.py (see python infer/infer_onnx.py --help)
Example: bash $0 efficientnet_b0.onnx /data/imagenet GPU --batch_size 64
USAGE
}

fail() {
    echo "error: $1" >&2
    usage
    exit 2
}

if [ $# -lt 2 ]; then
    fail "expected at least ONNX_PATH and DATA_PATH, got $# argument(s)"
fi
ONNX_PATH=$1
DATA_PATH=$2
shift 2
DEVICE_TARGET=GPU
if [ $# -gt 0 ] && [[ $1 != --* ]]; then  # the third argument is optional: flags may follow DATA_PATH
    DEVICE_TARGET=$1
    shift
fi

[ -f "$ONNX_PATH" ] || fail "ONNX_PATH is not a file: $ONNX_PATH"
[ -e "$DATA_PATH" ] || fail "DATA_PATH does not exist: $DATA_PATH"
DEVICE_TARGET=$(echo "$DEVICE_TARGET" | tr '[:lower:]' '[:upper:]')
case "$DEVICE_TARGET" in
    GPU|CPU) ;;
    *) fail "DEVICE_TARGET must be GPU or CPU, got $DEVICE_TARGET" ;;
esac

ROOT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/python_env.sh
source "$ROOT_DIR/scripts/python_env.sh"
require_python onnxruntime numpy PIL
exec "$PYTHON" "$ROOT_DIR/infer/infer_onnx.py" --onnx_path "$ONNX_PATH" --dataset_path "$DATA_PATH" \
    --device_target "$DEVICE_TARGET" "$@"
