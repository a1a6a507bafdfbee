"""Benchmarks behind ``python benchmark.py MODE``: each mode compares us with what users would otherwise run."""
