"""Torch-free basics every layer shares: the base of every bad-input error and the one way an
error is printed (errors.py), the writable-folder check (writable.py), eval preprocessing with
Pillow + numpy only (preprocess.py) and the class mapping of a labelled data set (class_mapping.py).

The lowest layer: it imports nothing from the project outside src.common, and never torch, so
infer/ can use it on a machine with onnxruntime alone.
"""
