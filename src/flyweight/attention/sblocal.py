"""Scatterbrain "sblocal": exact local attention plus a low-rank (random-feature) estimate of the rest.

With s_ij = tau q_i.k_j, p_ij = phi(q_i).phi(k_j) ("cosh" features) and L(i) the local window:
  Z_i = sum_{j in L(i)} exp(s_ij) + max(sum_j p_ij - sum_{j in L(i)} p_ij, 1e-24)
  o_i = [ sum_{j in L(i)} (exp(s_ij) - p_ij) v_j + phi(q_i)^T sum_j phi(k_j) v_j^T ] / Z_i
Inside the window the low-rank estimate is swapped for the exact term (no double counting); outside it
stays. Every exponent is shifted by a per-query offset M_i >= all of the row's log-terms, so nothing
overflows in any dtype. Memory O(T * (w + m)); never a T x T matrix.

``causal=True``: the window is the w keys i-w+1 .. i and the low-rank sums run over j <= i.
On CUDA fp16/bf16 (``impl="auto"``) Triton kernels compute it, forward and backward: non-causal
(flyweight.kernels.scatterbrain_attention, one pass / sblocal_backward) and causal
(causal_feature_attention / causal_lowrank_backward). ``impl="torch"`` forces the PyTorch path.
"""

from __future__ import annotations

import math

import torch

from flyweight.attention.base import (
    AttentionCost,
    block_size_for,
    check_window_size,
    window_bounds,
    blocked_queries,
    no_queries,
    register_attention,
    unblock,
    window_mask,
    windowed_keys,
)
from flyweight.attention.features import causal_feature_sums, log_features
from flyweight.attention.performer import RandomFeatureAttention

_LOG_FLOOR = math.log(1e-24)


@register_attention("sblocal")
class SBLocalAttention(RandomFeatureAttention):
    ACCEPTS = ("window_size", "nb_features", "seed", "causal", "impl")
    cosh = True

    def __init__(self, window_size: int = 256, nb_features: int = 256, seed: int = 0, causal: bool = False,
                 impl: str = "auto"):
        super().__init__(nb_features=nb_features, seed=seed, causal=causal, impl=impl)
        self.window_size = check_window_size(window_size)

    def forward(self, q, k, v, softmax_temp=None, key_padding_mask=None):
        self._check(q, k, v, key_padding_mask)
        if (empty := no_queries(q, v)) is not None:  # T = 0: no window to build
            return empty
        B, H, T, E = q.shape
        temp = self._temp(softmax_temp, E)
        proj = self._projection(E, q.device)
        w = min(self.window_size, 2 * T)
        if self._use_kernel(q, k, v):
            from flyweight.kernels.causal_lowrank_backward import causal_sblocal_attention
            from flyweight.kernels.sblocal_backward import sblocal_attention

            left, right = window_bounds(w, self.causal)
            if self.causal:  # forward and backward kernels
                return causal_sblocal_attention(q, k, v, proj, temp, left, key_padding_mask)
            return sblocal_attention(q, k, v, proj, temp, left, right, key_padding_mask)
        return self._torch_forward(q, k, v, proj, temp, w, key_padding_mask)

    def _torch_forward(self, q, k, v, proj, temp, w, key_padding_mask):
        B, H, T, E = q.shape
        block = block_size_for(w, T)
        causal = self.causal

        # low-rank features in log space: log p_ij = cq_i + ck + log(fq_i . fk_j) - log m
        lq = log_features(q, proj, temp, cosh=True)
        lk = log_features(k, proj, temp, cosh=True)
        dt = lq.dtype  # >= fp32
        if key_padding_mask is not None:  # padded keys get zero features and do not set the offset
            lk = lk.masked_fill(key_padding_mask[:, None, :, None], float("-inf"))
        vf = v.to(dt)
        cq = lq.amax(-1, keepdim=True)  # (B, H, T, 1)
        ck = lk.amax((-2, -1), keepdim=True).clamp_min(torch.finfo(dt).min)  # (B, H, 1, 1)
        fq = torch.exp(lq - cq)
        fk = torch.exp(lk - ck)
        log_scale = cq + ck - math.log(self.nb_features)  # (B, H, T, 1): p_ij = exp(log_scale_i) * fq_i.fk_j

        # exact scores and low-rank estimates inside the window, block by block
        mask = window_mask(T, w, block, q.device, key_padding_mask, causal)
        s = torch.einsum(
            "bhnre,bhnce->bhnrc", blocked_queries(q.to(dt), block), windowed_keys(k.to(dt), w, block, causal)
        )
        s = (s * temp).masked_fill(~mask, float("-inf"))
        p_win = torch.einsum(
            "bhnrm,bhncm->bhnrc", blocked_queries(fq, block), windowed_keys(fk, w, block, causal)
        )
        p_win = p_win.masked_fill(~mask, 0.0)
        g = blocked_queries(log_scale, block)  # (B, H, nb, block, 1)
        offset = torch.maximum(g, s.amax(-1, keepdim=True))  # M_i: no exponent below is positive
        exact = torch.exp(s - offset)  # exp(-inf) = 0 outside the window
        lowrank_scale = torch.exp(g - offset)
        p_win = lowrank_scale * p_win
        local_num = torch.einsum("bhnrc,bhnce->bhnre", exact - p_win, windowed_keys(vf, w, block, causal))

        # the low-rank sums over all keys (causal: over keys j <= i)
        if causal:
            lr_num, lr_mass = causal_feature_sums(fq, fk, vf)
        else:
            lr_num = torch.einsum("bhtm,bhme->bhte", fq, torch.einsum("bhtm,bhte->bhme", fk, vf))
            lr_mass = torch.einsum("bhtm,bhm->bht", fq, fk.sum(-2))[..., None]
        lr_num = blocked_queries(lr_num, block) * lowrank_scale
        lr_mass = blocked_queries(lr_mass, block) * lowrank_scale
        floor = torch.exp((_LOG_FLOOR - offset).clamp(max=80.0))
        z = exact.sum(-1, keepdim=True) + torch.maximum(lr_mass - p_win.sum(-1, keepdim=True), floor)
        out = (local_num + lr_num) / z
        return unblock(out, T).to(v.dtype)

    def cost(self, T, head_dim):
        w, m, E = min(self.window_size, T), self.nb_features, head_dim
        # features 2*2*T*E*(m/2); phi(K)^T V, phi(Q)(.) 2*T*m*E each; normaliser 4*T*m;
        # local scores + weighted sum 4*T*w*E; in-window low-rank estimates 2*T*w*m
        flops = 2 * T * E * m + 4 * T * m * E + 4 * T * m + 4 * T * w * E + 2 * T * w * m
        return AttentionCost(memory=T * w + 2 * T * m, flops=flops)

    def extra_repr(self):
        return f"window_size={self.window_size}, {super().extra_repr()}"
