"""The EfficientNet project's code, grouped into packages by job (ARCHITECTURE.md, "The house").

- ``src.common``: torch-free basics: error types and the one error line, writable-folder checks,
  eval preprocessing (Pillow + numpy), the class mapping.
- ``src.runtime``: processes and precision: distributed set-up, mixed precision, host memory.
- ``src.models``: architectures, published weights, loading any weights, the checkpoint file
  format, QAT as a model transform.
- ``src.data``: data sets (folders, CIFAR, shards), transforms, samplers, mixup.
- ``src.config``: the one validated Config of train.py, eval.py and export.py.
- ``src.evaluation``: what eval.py does: settings, data, metrics, report.
- ``src.export``: what export.py does: ONNX/TorchScript export, the parity check, QAT export.
- ``src.training``: what train.py does: the run, optimizer, LR, loss, EMA, monitor, checkpoints.

Outside src/: ``infer`` (the torch-free ONNX runner), ``bench`` (benchmark modes) and the entry
points (train.py, eval.py, export.py, benchmark.py at the repo root, scripts/*.py).

PACKAGE_ORDER lists the layers, lowest first. A module may import from its own package and from
packages in lower layers only; packages in the same layer may not import each other. infer/ may
import nothing from src/ except src.common. tests/test_architecture.py enforces both.
"""

PACKAGE_ORDER: tuple[tuple[str, ...], ...] = (
    ("src.common",),                      # torch-free basics, imports no project code
    ("src.runtime", "infer"),             # processes and precision; the torch-free ONNX runner
    ("src.models", "src.data"),           # what every job is built from
    ("src.config",),                      # the one Config, over models and data
    ("src.evaluation", "src.export"),     # the eval and export jobs
    ("src.training",),                    # the training job (may reuse evaluation's metrics)
    ("bench",),                           # benchmark modes, over every job
    ("entry points",),                    # repo-root *.py and scripts/*.py
)
