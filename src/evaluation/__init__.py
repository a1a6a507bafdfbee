"""What eval.py runs: its settings (settings.py), the data it scores (data.py), exact metrics
reduced across processes (metrics.py) and what it tells the user (report.py).

May import src.common, src.runtime, infer, src.models, src.data and src.config (the layers below);
never src.export (same layer), src.training, bench/ or the entry points.
"""
