"""Exact softmax attention through ``scaled_dot_product_attention`` (fused kernels where available)."""

from __future__ import annotations

import torch.nn.functional as F

from flyweight.attention.base import Attention, AttentionCost, register_attention


@register_attention("full")
class FullAttention(Attention):
    ACCEPTS = ()

    def forward(self, q, k, v, softmax_temp=None, key_padding_mask=None):
        self._check(q, k, v, key_padding_mask)
        mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
        return F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, scale=self._temp(softmax_temp, q.shape[-1])
        )

    def cost(self, T, head_dim):
        return AttentionCost(memory=T * T, flops=4 * T * T * head_dim)

    def extra_repr(self):
        return "full"
