"""Processes and precision: process groups and the launch environment for torchrun / SLURM
(distributed.py), mixed precision and loss scaling (amp.py), and the opt-in host-memory
allocator settings (host_memory.py).

May import only src.common from the project (the layer below); nothing of models, data or the jobs.
"""
