"""Normal initialisation of linear layers with a given std, in the dense-equivalent sense.

GPT-2 draws every weight from N(0, std). For a structured layer we ask the same of its dense
equivalent W = to_dense(): every entry of W has mean 0 and variance std**2, so for uncorrelated
inputs the output variance equals that of a dense GPT-2 layer (K * std**2 * Var(x)).

Each kind owns how it gets there (``StructuredLinear.normal_init_``), so a kind registered with
``@register_linear`` is initialised without any change here:

- dense / SS1: each entry of W is a copy of ONE stored weight, so the stored weight ~ N(0, std).
- low-rank W = B A: an entry sums r products, Var = r * sA^2 * sB^2. The factors are balanced,
  sA = sB = (std^2 / r)^(1/4), so Adam's equal step sizes move both factors alike.
- Monarch: an entry of sub-block (l, k) sums the products of the middle indices m with
  m % b == l and m // r == k, r/b of them on average, so sA = sB = (std^2 * b / r)^(1/4).
Biases are zeroed (GPT-2 does the same).
"""

from __future__ import annotations

import torch
from torch import nn

from flyweight.convert.surgery import conv1d_class
from flyweight.linear import StructuredLinear


@torch.no_grad()
def normal_init_(layer: nn.Module, std: float, generator: torch.Generator | None = None) -> nn.Module:
    """Initialise ``layer`` so its dense equivalent has i.i.d.-like N(0, std^2) entries; zero bias."""
    if isinstance(layer, StructuredLinear):
        return layer.normal_init_(std, generator=generator)
    if isinstance(layer, (nn.Linear, conv1d_class())):
        layer.weight.normal_(0.0, std, generator=generator)
        if layer.bias is not None:
            layer.bias.zero_()
        return layer
    raise TypeError(f"normal_init_ expects a linear layer, got {type(layer).__name__}")
