"""The dense baseline: an ordinary (out, in) weight."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flyweight.linear.base import StructuredLinear, register_linear, uniform_


@register_linear("dense")
class DenseLinear(StructuredLinear):
    """Plain y = x W^T + b, the reference every structured kind is compared with."""

    torchao_quantizable = True

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_(self.weight, self.in_features)
        if self.bias is not None:
            uniform_(self.bias, self.in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        bias = None if self.bias is None else self._weight_like(self.bias, x)
        return F.linear(x, self._weight_like(self.weight, x), bias)

    def to_dense(self) -> torch.Tensor:
        return self.weight.detach().clone()

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, **kwargs):
        layer = cls._empty_like_dense(weight, bias, kwargs)
        with torch.no_grad():
            layer.weight.copy_(weight)
        layer._copy_bias(bias)
        return layer

    def flops_per_token(self) -> int:
        return 2 * self.in_features * self.out_features

    @torch.no_grad()
    def normal_init_(self, std: float, generator: torch.Generator | None = None) -> "DenseLinear":
        self.weight.normal_(0.0, std, generator=generator)
        self._zero_bias()
        return self
