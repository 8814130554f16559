"""Exact PyTorch path of the SS1 operator (CPU, and any device without the Triton kernels).

Never materialises the dense weight: per phase (at most block_k // vec of them) it sketches the
input once -- rotate the R chunks of every supergroup and sum them -- and runs one matmul of depth
K/R against the weight rows of the output blocks of that phase. Autograd differentiates it.
"""

from __future__ import annotations

import torch

from flyweight.kernels.ss1_layout import SS1Layout


class SS1Tables:
    """Index tensors of one layout on one device (built once, reused every call)."""

    def __init__(self, layout: SS1Layout, device: torch.device):
        self.phases = layout.used_phases
        self.gather = [layout.sketch_gather_index(p).to(device) for p in self.phases]
        self.columns = [layout.output_columns(p).to(device) for p in self.phases]
        order = torch.cat(self.columns)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=device)
        self.inverse = inverse
        # When every phase owns a contiguous equal share there is nothing to un-permute.
        self.identity_order = bool(torch.equal(order, torch.arange(order.numel(), device=device)))


def sketch(x2d: torch.Tensor, layout: SS1Layout, gather: torch.Tensor) -> torch.Tensor:
    """(M, padded_in) -> (M, padded_in // R): rotate-and-sum the chunks of every supergroup."""
    m = x2d.shape[0]
    rotated = x2d.index_select(1, gather)
    return rotated.view(m, layout.num_supergroups, layout.compression, layout.block_k).sum(2).view(
        m, layout.compressed_in
    )


def ss1_linear_torch(
    x2d: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    layout: SS1Layout,
    tables: SS1Tables,
) -> torch.Tensor:
    """y = x W^T + b for the SS1 weight, x of shape (M, in_features) (already padded if needed)."""
    parts = [
        sketch(x2d, layout, gather) @ weight.index_select(0, cols).t()
        for gather, cols in zip(tables.gather, tables.columns)
    ]
    y = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    if not tables.identity_order:
        y = y.index_select(1, tables.inverse)
    if bias is not None:
        y = y + bias
    return y
