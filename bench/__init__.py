"""Benchmarks behind ``python benchmark.py MODE``: each mode compares us with what users would otherwise run.

May import any src/ package and infer/; never the entry points (benchmark.py imports bench, not the reverse).
"""
