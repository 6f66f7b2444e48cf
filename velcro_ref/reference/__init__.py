"""Plain-NumPy twins of the kernels, same arguments, used as test oracles."""
