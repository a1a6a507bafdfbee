"""What train.py runs: the run itself (trainer.py), pre-flight checks, the network set-up,
optimizer, LR generator, loss, EMA, progressive stages, the monitor and its logs and plots, run
folders, and the checkpoint policy (checkpoints.py, best.py: rotation, best, RNG state, resume).

May import every src/ package below it (src.common, src.runtime, infer, src.models, src.data,
src.config, src.evaluation, src.export); never bench/ or the entry points.
"""
