"""ONNX graph helpers: what a file holds (operator counts, before and after onnxruntime's optimiser)
and the clean-up every exported graph gets (weights re-exposed through Identity nodes)."""
from __future__ import annotations

import os
import tempfile
from collections import Counter

import onnx
import onnxruntime as ort

from infer.session import session_options


def drop_initializer_identities(model: onnx.ModelProto) -> int:
    """Remove ``Identity`` nodes whose input is a weight; returns how many were removed.

    The exporter deduplicates equal constants (e.g. zero biases) and re-exposes each copy through
    an Identity node. They compute nothing; wiring consumers to the weight directly keeps the
    file's op counts honest.
    """
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    outputs = {o.name for o in graph.output}
    rename = {n.output[0]: n.input[0] for n in graph.node
              if n.op_type == "Identity" and n.input[0] in weights and n.output[0] not in outputs}
    if not rename:
        return 0
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in rename)]
    for node in kept:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    del graph.node[:]
    graph.node.extend(kept)
    return len(rename)


def op_counts(path: str | os.PathLike) -> Counter:
    """Operator types in the file, e.g. Counter({'Conv': 81, 'Mul': 65, ...})."""
    return Counter(node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node)


def optimized_op_counts(path: str | os.PathLike) -> Counter:
    """Operator types after onnxruntime's basic+extended graph optimisations (what actually runs,
    before CPU-specific layout changes): shows BN folded and SiLU fused."""
    with tempfile.TemporaryDirectory() as tmp:
        options = session_options(1)
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return op_counts(options.optimized_model_filepath)


def format_op_counts(counts: Counter) -> str:
    return ", ".join(f"{op} {n}" for op, n in counts.most_common())
