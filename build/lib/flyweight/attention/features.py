"""Random features for softmax kernels: seeded block-orthogonal Gaussian projections and the feature maps.

With x' = tau^1/2 x and rows w_r of W:
  positive ("exp") map:  phi(x) = m^-1/2 [exp(w_r x' - |x'|^2/2)]_r              (m rows -> m features)
  "cosh" map:            phi(x) = m^-1/2 [exp(+-w_r x' - |x'|^2/2)]_r           (m/2 rows -> m features)
so that E[phi(q).phi(k)] = exp(tau q.k). Both are returned as (log-scale feature, per-row offset) so
callers can keep every exponent <= 0 and stay finite in fp16/bf16.
"""

from __future__ import annotations

import math

import torch


def gaussian_orthogonal_matrix(rows: int, dim: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """(rows, dim): blocks of `dim` orthonormal rows, each row rescaled to the norm of a Gaussian vector.

    The orthogonality lowers the estimator's variance (FAVOR+); the chi-distributed norms keep each row
    marginally N(0, I). Deterministic for a given seed, independent of the global RNG.
    """
    gen = torch.Generator().manual_seed(int(seed))
    blocks = []
    for _ in range(math.ceil(rows / dim)):
        g = torch.randn(dim, dim, generator=gen, dtype=torch.float64)
        q, r = torch.linalg.qr(g)
        q = q * torch.sign(torch.diagonal(r))[None, :]  # unique QR -> Haar-distributed q
        blocks.append(q.T)
    w = torch.cat(blocks)[:rows]
    norms = torch.randn(rows, dim, generator=gen, dtype=torch.float64).norm(dim=1)
    return (w * norms[:, None]).to(dtype)


def log_features(x: torch.Tensor, proj: torch.Tensor, temp: float, cosh: bool) -> torch.Tensor:
    """Logs of the unnormalised features (.., T, E) -> (.., T, m): log phi = w x' - |x'|^2/2 (>= fp32)."""
    dt = torch.promote_types(x.dtype, torch.float32)
    x = x.to(dt) * math.sqrt(temp)
    wx = x @ proj.to(dt).T
    if cosh:
        wx = torch.cat([wx, -wx], dim=-1)
    return wx - 0.5 * (x * x).sum(-1, keepdim=True)
