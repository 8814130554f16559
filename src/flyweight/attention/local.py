"""Exact softmax inside a 1-D window over the token order, computed block by block (no T x T matrix).

On CUDA fp16/bf16 (``impl="auto"``) the Triton sliding-window kernel (flyweight.kernels.local_attention)
computes the same function, forward and backward; ``impl="torch"`` forces this module's PyTorch path.
"""

from __future__ import annotations

import torch

from flyweight.attention.base import (
    Attention,
    AttentionCost,
    block_size_for,
    check_impl,
    check_window_size,
    blocked_queries,
    compute_dtype,
    no_queries,
    register_attention,
    unblock,
    use_kernel,
    window_bounds,
    window_mask,
    windowed_keys,
)


@register_attention("local")
class LocalAttention(Attention):
    """Query i attends keys j with -floor(w/2) <= j - i <= ceil(w/2) - 1 (clipped at the ends);
    causal: the w keys i-w+1 .. i."""

    ACCEPTS = ("window_size", "causal", "impl")
    # both backward kernels pass the H200 check in fp16 and bf16 (BENCHMARKS.md "Approximate attention")
    backward_kernel_dtypes = (torch.float16, torch.bfloat16)

    def __init__(self, window_size: int = 256, causal: bool = False, impl: str = "auto"):
        super().__init__()
        self.window_size = check_window_size(window_size)
        self.causal = bool(causal)
        self.impl = check_impl(impl)

    def forward(self, q, k, v, softmax_temp=None, key_padding_mask=None):
        self._check(q, k, v, key_padding_mask)
        if (empty := no_queries(q, v)) is not None:  # T = 0: no window to build
            return empty
        B, H, T, E = q.shape
        w = min(self.window_size, 2 * T)  # a window wider than the sequence sees everything anyway
        scale = self._temp(softmax_temp, E)
        if use_kernel(self.impl, q, k, v, self.backward_kernel_dtypes):
            from flyweight.kernels.local_attention import local_attention

            left, right = window_bounds(w, self.causal)
            return local_attention(
                q, k, v, left=left, right=right, scale=scale, key_padding_mask=key_padding_mask
            )
        block = block_size_for(w, T)
        dt = compute_dtype(q)  # scores in >= fp32: q.k of large fp16 activations can exceed the fp16 range
        qb = blocked_queries(q.to(dt), block)
        keys = windowed_keys(k.to(dt), w, block, self.causal)
        scores = torch.einsum("bhnre,bhnce->bhnrc", qb, keys) * scale
        mask = window_mask(T, w, block, q.device, key_padding_mask, self.causal)
        scores = scores.masked_fill(~mask, float("-inf"))
        # rows with no visible key (all keys padding) give 0, not NaN
        # (scores.dtype, not dt: under autocast the einsum runs in bf16/fp16)
        row_max = scores.amax(-1, keepdim=True).clamp_min(torch.finfo(scores.dtype).min)
        probs = torch.exp(scores - row_max)
        probs = probs / probs.sum(-1, keepdim=True).clamp_min(1e-30)
        out = torch.einsum("bhnrc,bhnce->bhnre", probs.to(v.dtype), windowed_keys(v, w, block, self.causal))
        return unblock(out, T)

    def cost(self, T, head_dim):
        w = min(self.window_size, T)
        return AttentionCost(memory=T * w, flops=4 * T * w * head_dim)

    def extra_repr(self):
        return f"window_size={self.window_size}, causal={self.causal}, impl={self.impl}"
