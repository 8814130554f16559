"""Low-rank linear: y = B(A x) + b with A: in -> r and B: r -> out."""

from __future__ import annotations

import torch
from torch import nn

from flyweight.linear.base import StructuredLinear, register_linear, uniform_


def rank_for_compression(in_features: int, out_features: int, compression: float) -> int:
    """r = floor(in*out / ((in+out) * f)): the rank whose parameter count is ~ dense / f."""
    if not compression > 0:
        raise ValueError(f"compression must be > 0, got {compression!r}")
    return int(in_features * out_features // ((in_features + out_features) * compression))


@register_linear("lowrank")
class LowRankLinear(StructuredLinear):
    """Rank-r factorisation; ``rank`` directly, or ``compression`` (default 8) picks it."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        rank: int | None = None,
        compression: float | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        full = min(in_features, out_features)
        if rank is not None and compression is not None:
            raise ValueError(
                f"LowRankLinear: pass rank or compression, not both (got rank={rank!r}, "
                f"compression={compression!r}); e.g. rank={rank!r} alone"
            )
        if rank is None:
            compression = 8 if compression is None else compression
            rank = rank_for_compression(in_features, out_features, compression)
            if rank < 1:
                raise ValueError(
                    f"rank < 1: compression={compression} leaves no rank for a {in_features}->"
                    f"{out_features} layer; use compression <= "
                    f"{in_features * out_features / (in_features + out_features):.3g} or pass rank"
                )
        elif isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank must be an integer >= 1, got {rank!r}")
        if rank > full:
            raise ValueError(
                f"rank={rank} exceeds full rank min(in_features, out_features)={full}; valid: 1..{full}"
            )
        self.rank = rank
        self.A = nn.Parameter(torch.empty(rank, in_features, device=device, dtype=dtype))
        self.B = nn.Parameter(torch.empty(out_features, rank, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_(self.A, self.in_features)
        uniform_(self.B, self.rank)
        if self.bias is not None:
            uniform_(self.bias, self.in_features)

    def _matmul(self, x2d: torch.Tensor) -> torch.Tensor:
        return (x2d @ self._weight_like(self.A, x2d).t()) @ self._weight_like(self.B, x2d).t()

    def to_dense(self) -> torch.Tensor:
        return (self.B @ self.A).detach()

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, **kwargs):
        """Truncated SVD: A = sqrt(S_r) V_r^T, B = U_r sqrt(S_r) (optimal in Frobenius norm)."""
        layer = cls._empty_like_dense(weight, bias, kwargs)
        work = torch.float64 if weight.dtype == torch.float64 else torch.float32
        u, s, vh = torch.linalg.svd(weight.detach().to(work), full_matrices=False)
        root = s[: layer.rank].sqrt()
        with torch.no_grad():
            layer.A.copy_(root[:, None] * vh[: layer.rank])
            layer.B.copy_(u[:, : layer.rank] * root[None, :])
        layer._copy_bias(bias)
        return layer

    def flops_per_token(self) -> int:
        return 2 * self.rank * (self.in_features + self.out_features)

    @torch.no_grad()
    def normal_init_(self, std: float, generator: torch.Generator | None = None) -> "LowRankLinear":
        """An entry of B A sums r products: balanced factors of std (std^2 / r)^(1/4) each, so Adam's
        equal step sizes move both alike."""
        factor_std = (std**2 / self.rank) ** 0.25
        self.A.normal_(0.0, factor_std, generator=generator)
        self.B.normal_(0.0, factor_std, generator=generator)
        self._zero_bias()
        return self

    def settings(self) -> dict:
        return {"rank": self.rank}
