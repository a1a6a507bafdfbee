"""ONNX Runtime inference for exported EfficientNet models.

Everything in this package runs without torch or torchvision: only onnxruntime, numpy, Pillow
and torch-free modules of src/ (``src.common.preprocess``, ``src.common.class_mapping``, ``src.common.errors``,
``src.common.writable``), so a model exported by ``export.py`` can be served
on a machine where only ``onnxruntime`` (or ``onnxruntime-gpu``) is installed.
Entry point: ``python infer/infer_onnx.py MODEL.onnx DATA`` or ``python -m infer.infer_onnx``
(the command line only); the runner as a library (``run_inference``, ``report_lines``) is ``infer/runner.py``.
May import nothing from src/ except src.common (and never torch); src/ may import infer.
"""
