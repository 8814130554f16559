"""Monarch linear: two block-diagonal factors with a stride permutation between them.

With b = nblocks, p_in = ceil(in/b), p_out = ceil(out/b) and middle width r = min(p_in, p_out):

    h[k*r + t] = sum_i W1[k, t, i] * x[k*p_in + i]      (block k reads a contiguous input slice)
    y[s*b + l] = sum_j W2[l, s, j] * h[j*b + l]         (block l gathers every b-th middle value)

Input is zero-padded to b*p_in, output cut to out_features.

Execution. ``_matmul`` above is the exact PyTorch path (CPU, float32/float64). On CUDA in float16 /
bfloat16 (or under autocast to them) the layer runs the Triton kernels of ``flyweight.kernels.monarch``
instead: the permutation lives in the kernels' index maps, the bias is fused, accumulation is fp32.
``backend`` ("auto", "torch", "triton"; an attribute, not part of the structure) narrows the choice.

Projection. Middle index m = k*r + t = j*b + l ties W1 row (k, t) to W2 column (l, j), so the
(l, k) sub-block of the dense weight -- rows s*b + l, columns k*p_in + i -- is the sum of
outer products W2[l, :, m//b] W1[k, m%r, :] over the m with m % b == l and m // r == k. Every
parameter belongs to exactly one such sub-block, so the least-squares projection splits into
independent truncated SVDs, one per (l, k), of rank |{m}| (rank 1 when b*b = n, the classic case;
r / b in general). This is optimal in Frobenius norm for square AND rectangular weights.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from flyweight.kernels.monarch import compute_dtype, monarch_linear, monarch_sizes, route, slot_table
from flyweight.linear.base import StructuredLinear, check_positive_int, register_linear, uniform_


@register_linear("monarch")
class MonarchLinear(StructuredLinear):
    backend: str = "auto"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        nblocks: int = 4,
        device=None,
        dtype=None,
    ):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self.nblocks = check_positive_int("nblocks", nblocks)
        if nblocks > min(in_features, out_features):
            raise ValueError(
                f"nblocks={nblocks} exceeds min(in_features, out_features)="
                f"{min(in_features, out_features)}; valid: 1..{min(in_features, out_features)}"
            )
        self.p_in = math.ceil(in_features / nblocks)
        self.p_out = math.ceil(out_features / nblocks)
        self.mid = min(self.p_in, self.p_out)
        self.w1 = nn.Parameter(torch.empty(nblocks, self.mid, self.p_in, device=device, dtype=dtype))
        self.w2 = nn.Parameter(torch.empty(nblocks, self.p_out, self.mid, device=device, dtype=dtype))
        self.sizes = monarch_sizes(in_features, out_features, nblocks)  # the ints every kernel call passes
        # the kernels' slot table (stride permutation); derived from the sizes, so not in the state dict
        self.register_buffer("slot_table", torch.empty(0, dtype=torch.int32), persistent=False)
        self.build_slot_table()
        self.reset_parameters()

    def build_slot_table(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the slot-table buffer, e.g. after ``to_empty()`` left it uninitialised."""
        device = torch.device(self.w1.device if device is None else device)
        self.slot_table = slot_table(self.sizes).to(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if route(x, self.backend) == "torch":
            return super().forward(x)
        self._check_input(x)
        lead = x.shape[:-1]
        table = self.slot_table
        if table.get_device() != x.get_device() or table.numel() != 3 * self.nblocks * self.mid:
            self.build_slot_table(x.device)  # a layer moved without .to() (or built on the meta device)
            table = self.slot_table
        y = monarch_linear(x.reshape(-1, self.in_features), self.w1, self.w2, self.bias, table, self.sizes,
                           compute_dtype(x))
        return y.view(*lead, self.out_features)

    def reset_parameters(self) -> None:
        uniform_(self.w1, self.p_in)
        uniform_(self.w2, self.mid)
        if self.bias is not None:
            uniform_(self.bias, self.in_features)

    # ---- forward: two batched matmuls ------------------------------------------------------
    def _matmul(self, x2d: torch.Tensor) -> torch.Tensor:
        b, r, m = self.nblocks, self.mid, x2d.shape[0]
        pad = b * self.p_in - self.in_features
        if pad:
            x2d = F.pad(x2d, (0, pad))
        x = x2d.view(m, b, self.p_in).transpose(0, 1)  # (b, M, p_in)
        h = torch.bmm(x, self._weight_like(self.w1, x2d).transpose(1, 2))  # (b=k, M, r=t)
        # middle vector index k*r + t, re-read as j*b + l -> (l, M, j)
        h = h.transpose(0, 1).reshape(m, r, b).permute(2, 0, 1)
        y = torch.bmm(h, self._weight_like(self.w2, x2d).transpose(1, 2))  # (b=l, M, p_out=s)
        y = y.permute(1, 2, 0).reshape(m, self.p_out * b)  # index s*b + l
        return y[:, : self.out_features]

    # ---- dense form: P_out . blockdiag(W2) . P_mid . blockdiag(W1) --------------------------
    def to_dense(self) -> torch.Tensor:
        b, r, p_out = self.nblocks, self.mid, self.p_out
        w1 = torch.block_diag(*self.w1.detach())  # (b*r, b*p_in)
        w2 = torch.block_diag(*self.w2.detach())  # (b*p_out, b*r)
        # z[l*r + j] = h[j*b + l]
        l, j = torch.meshgrid(torch.arange(b), torch.arange(r), indexing="ij")
        mid_perm = (j * b + l).reshape(-1).to(w1.device)
        # y[s*b + l] = u[l*p_out + s]
        s, l2 = torch.meshgrid(torch.arange(p_out), torch.arange(b), indexing="ij")
        out_perm = (l2 * p_out + s).reshape(-1).to(w1.device)
        dense = w2[out_perm] @ w1[mid_perm]
        return dense[: self.out_features, : self.in_features]

    # ---- projection ------------------------------------------------------------------------
    def _mid_pairs(self, l: int, k: int) -> tuple[list[int], list[int]]:
        """For sub-block (l, k): W2 columns j and W1 rows t that meet there, paired by m."""
        b, r = self.nblocks, self.mid
        ms = [m for m in range(k * r, (k + 1) * r) if m % b == l]
        return [m // b for m in ms], [m % r for m in ms]

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, **kwargs):
        layer = cls._empty_like_dense(weight, bias, kwargs)
        in_features, out_features = layer.in_features, layer.out_features
        b, p_in = layer.nblocks, layer.p_in
        work = torch.float64 if weight.dtype == torch.float64 else torch.float32
        w = weight.detach().to(work)
        w1 = torch.zeros(layer.w1.shape, dtype=work, device=w.device)
        w2 = torch.zeros(layer.w2.shape, dtype=work, device=w.device)
        for l in range(b):
            rows = torch.arange(l, out_features, b, device=w.device)  # real outputs s*b + l
            s_idx = (rows - l) // b
            for k in range(b):
                c0, c1 = k * p_in, min((k + 1) * p_in, in_features)
                js, ts = layer._mid_pairs(l, k)
                if not js or c1 <= c0 or rows.numel() == 0:
                    continue
                u, sv, vh = torch.linalg.svd(w[rows, c0:c1], full_matrices=False)
                q = min(len(js), sv.numel())
                root = sv[:q].sqrt()
                j_idx = torch.tensor(js[:q], device=w.device)
                t_idx = torch.tensor(ts[:q], device=w.device)
                w2[l][s_idx[:, None], j_idx[None, :]] = u[:, :q] * root
                w1[k][t_idx[:, None], torch.arange(c1 - c0, device=w.device)[None, :]] = (
                    root[:, None] * vh[:q]
                )
        with torch.no_grad():
            layer.w1.copy_(w1)
            layer.w2.copy_(w2)
        layer._copy_bias(bias)
        return layer

    def flops_per_token(self) -> int:
        return 2 * self.nblocks * self.mid * (self.p_in + self.p_out)

    @torch.no_grad()
    def normal_init_(self, std: float, generator: torch.Generator | None = None) -> "MonarchLinear":
        """An entry of sub-block (l, k) sums ~mid/b products: both factors get std (std^2 b / mid)^(1/4)."""
        factor_std = (std**2 * self.nblocks / self.mid) ** 0.25
        self.w1.normal_(0.0, factor_std, generator=generator)
        self.w2.normal_(0.0, factor_std, generator=generator)
        self._zero_bias()
        return self

    def settings(self) -> dict:
        return {"nblocks": self.nblocks}
