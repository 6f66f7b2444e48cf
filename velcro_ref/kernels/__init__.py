"""Numba kernels: arrays and ints in, executed MACs out. Each has a NumPy twin in reference/."""
