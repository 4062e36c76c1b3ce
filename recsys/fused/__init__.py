"""The fused training step: the towers, heads and losses in NumPy and Numba on Paddle's own parameter memory."""
