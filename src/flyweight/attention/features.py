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


def causal_feature_sums(fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor, chunk: int = 64):
    """Prefix low-rank sums, chunk by chunk: (sum_{j<=i} (fq_i.fk_j) v_j, sum_{j<=i} fq_i.fk_j) per query.

    fq, fk (B, H, T, m), v (B, H, T, E), one dtype. Each chunk adds the state of the chunks before it
    (m x E per chunk) and its own causal (chunk x chunk) block: never a T x m x E prefix tensor.
    Returns ((B, H, T, E), (B, H, T, 1)).
    """
    B, H, T, m = fq.shape
    nb = math.ceil(T / chunk)
    pad = nb * chunk - T

    def blocks(x):
        return torch.nn.functional.pad(x, (0, 0, 0, pad)).view(B, H, nb, chunk, x.shape[-1])

    fqb, fkb, vb = blocks(fq), blocks(fk), blocks(v)
    kv = torch.einsum("bhncm,bhnce->bhnme", fkb, vb)
    ks = fkb.sum(-2)
    # exclusive prefix over chunks (a shifted cumsum, not cumsum - self: no cancellation)
    kv_prev = torch.cat([torch.zeros_like(kv[:, :, :1]), kv[:, :, :-1].cumsum(2)], dim=2)
    ks_prev = torch.cat([torch.zeros_like(ks[:, :, :1]), ks[:, :, :-1].cumsum(2)], dim=2)
    intra = torch.einsum("bhncm,bhndm->bhncd", fqb, fkb).tril()  # j <= i inside the chunk
    num = torch.einsum("bhncm,bhnme->bhnce", fqb, kv_prev) + torch.einsum("bhncd,bhnde->bhnce", intra, vb)
    mass = torch.einsum("bhncm,bhnm->bhnc", fqb, ks_prev) + intra.sum(-1)
    return num.reshape(B, H, nb * chunk, -1)[:, :, :T], mass.reshape(B, H, nb * chunk, 1)[:, :, :T]
