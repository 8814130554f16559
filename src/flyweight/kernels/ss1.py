"""Dispatch for the SS1 operator: one entry point, the backend chosen by device.

This is the seam for the Triton kernels: ``ss1_linear`` is the only function ``SS1Linear`` calls.
"""

from __future__ import annotations

import torch

from flyweight.kernels.ss1_layout import SS1Layout
from flyweight.kernels.ss1_torch import SS1Tables, ss1_linear_torch


def ss1_linear(
    x2d: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    layout: SS1Layout,
    tables: SS1Tables,
) -> torch.Tensor:
    """SS1 forward for x of shape (M, padded_in); differentiable with respect to all tensors."""
    return ss1_linear_torch(x2d, weight, bias, layout, tables)
