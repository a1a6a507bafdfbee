#!/usr/bin/env bash
# The offline demo: scikit-learn's handwritten digits -> train EfficientNet-B0 at 32 px on the CPU
# -> evaluate the best checkpoint -> export it to ONNX -> run it in ONNX Runtime on the same val
# split and check both accuracies agree. No network needed.
#   bash scripts/run_demo.sh [extra train.py args...]
# Environment: DATA (default ./data/digits; written once), RUN_DIR (default runs/demo_<date>_<time>),
# PYTHON (default: the active venv's python, else .venv/bin/python, else python3).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/python_env.sh
source "$ROOT/scripts/python_env.sh"
require_python torch torchvision numpy PIL yaml sklearn onnx onnxscript onnxruntime
DATA=${DATA:-./data/digits}
RUN_DIR=${RUN_DIR:-runs/demo_$(date +%Y%m%d_%H%M%S)}
CONFIG="$ROOT/configs/digits.yaml"
START=$(date +%s)

if [ -d "$DATA/train" ] && [ -d "$DATA/val" ]; then
  echo "using the digits already in $DATA"
else
  "$PYTHON" "$ROOT/scripts/make_digits.py" "$DATA"
fi

echo "== train (run folder: $RUN_DIR)"
"$PYTHON" "$ROOT/train.py" --config "$CONFIG" --dataset_path "$DATA" --save_checkpoint_path "$RUN_DIR" "$@"

CKPT="$RUN_DIR/efficientnet_b0-best.pth"
if [ ! -f "$CKPT" ]; then  # no validation set: the newest periodic checkpoint
  CKPT=$(find "$RUN_DIR" -maxdepth 1 -name 'efficientnet_b0-*_*.pth' -printf '%T@ %p\n' | sort -n | tail -n 1 | cut -d' ' -f2-)
fi

# eval.py and export.py use the EMA weights when the checkpoint has them (its best was chosen by them).
echo "== evaluate $CKPT on $DATA/val"
"$PYTHON" "$ROOT/eval.py" --config "$CONFIG" --checkpoint_path "$CKPT" --dataset_path "$DATA" \
  --output_json "$RUN_DIR/eval.json"

ACCURACY=$("$PYTHON" -c '
import json, sys
r = json.load(open(sys.argv[1]))
print("%.2f%% (%d/%d)" % (r["Top_1_Acc"] * 100, r["correct_top1"], r["images"]))' "$RUN_DIR/eval.json")

echo "== export $CKPT to ONNX"
"$PYTHON" "$ROOT/export.py" --checkpoint_path "$CKPT" --file_name "$RUN_DIR/digits" --no_op_counts

echo "== ONNX Runtime on $DATA/val"
"$PYTHON" "$ROOT/infer/infer_onnx.py" "$RUN_DIR/digits.onnx" "$DATA" --device_target CPU | tee "$RUN_DIR/infer.log"

# eval.py and the ONNX runner share the preprocessing, so they must agree to the image.
"$PYTHON" - "$RUN_DIR/eval.json" "$RUN_DIR/infer.log" <<'PY'
import json, re, sys
top1 = json.load(open(sys.argv[1]))["Top_1_Acc"]
onnx = float(re.search(r"^top-1 accuracy: ([0-9.]+)$", open(sys.argv[2]).read(), re.M).group(1))
if abs(top1 - onnx) > 5e-6:
    sys.exit(f"demo: eval.py top-1 {top1:.5f} and ONNX Runtime top-1 {onnx:.5f} disagree")
print(f"demo: eval.py and ONNX Runtime agree: top-1 {onnx:.5f}")
PY
echo "demo: top-1 accuracy $ACCURACY on $DATA/val; checkpoint $CKPT; ONNX $RUN_DIR/digits.onnx; $(($(date +%s) - START)) s"
