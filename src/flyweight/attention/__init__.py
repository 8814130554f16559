"""Approximate attention variants behind one interface, chosen by registry name.

``make_attention("full" | "local" | "performer" | "sblocal", window_size=..., nb_features=..., seed=...)``
returns a module called as ``attn(q, k, v, softmax_temp=None, key_padding_mask=None)`` on (B, H, T, E).
"""

from flyweight.attention.base import (
    ATTENTION_KINDS,
    Attention,
    AttentionCost,
    make_attention,
    register_attention,
    unregister_attention,
)
from flyweight.attention.budget import matched_budget
from flyweight.attention.full import FullAttention
from flyweight.attention.local import LocalAttention
from flyweight.attention.performer import PerformerAttention
from flyweight.attention.sblocal import SBLocalAttention

__all__ = [
    "ATTENTION_KINDS",
    "Attention",
    "AttentionCost",
    "FullAttention",
    "LocalAttention",
    "PerformerAttention",
    "SBLocalAttention",
    "make_attention",
    "matched_budget",
    "register_attention",
    "unregister_attention",
]
