"""Which top-k accuracies mean something: top-5 only for more than 5 classes.

With 5 classes or fewer every image is in its top 5, so a "top-5 accuracy" of 100% says nothing;
eval.py, train.py's logs and the ONNX runner show top-k only for k < the number of classes (the
result line and JSON keep their top-5 keys, set to None, and the summary says why).
"""
from __future__ import annotations

TOP_K = 5  # the "top-5" of ImageNet reporting
NOT_SHOWN = f"top-{TOP_K}: not shown ({TOP_K} classes or fewer: every image would count)"


def shows_top_k(num_classes: int, k: int = TOP_K) -> bool:
    """Whether top-``k`` accuracy is worth showing for ``num_classes`` classes (k < classes)."""
    return k < num_classes
