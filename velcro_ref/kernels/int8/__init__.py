"""Numba int8 kernels: exact int32 accumulation, requantization in the `ort` and `fixed_point`
modes, masked variants that skip masked output elements. NumPy twins in reference/int8.py."""
