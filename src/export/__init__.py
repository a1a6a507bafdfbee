"""What export.py runs: ONNX / TorchScript export (onnx_export.py), the parity check against
PyTorch (check.py), the QAT QDQ graph (qat_onnx.py) and export.py's steps (steps.py).

May import src.common, src.runtime, infer, src.models, src.data and src.config (the layers below);
never src.evaluation (same layer), src.training, bench/ or the entry points.
"""
