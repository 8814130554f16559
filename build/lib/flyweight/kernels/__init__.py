"""Compute kernels behind the operators: exact PyTorch paths and (on CUDA) Triton kernels."""

from flyweight.kernels.ss1 import SS1Layout, draw_hash_coeffs, ss1_linear

__all__ = ["SS1Layout", "draw_hash_coeffs", "ss1_linear"]
