"""Error types raised on both sides of the project: the torch half (src/) and the torch-free ONNX
runner (infer/). Defined here, without torch, so both import the one class."""
from __future__ import annotations


class ModelLoadError(ValueError):
    """A weight or model file cannot become the requested model (a checkpoint that does not fit,
    an ONNX file onnxruntime cannot load); the one-line message says what to pass instead."""
