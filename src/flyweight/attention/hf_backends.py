"""flyweight's attention implementations for Hugging Face models.

    from flyweight.attention.hf_backends import use_attention
    use_attention(model, "triton")     # every attention layer of a HF model (GPT-2 here) switched in place

Hugging Face models look their attention function up by ``config._attn_implementation`` in
``transformers.AttentionInterface``. This module registers two implementations:

* ``"flyweight_triton"``: ``flyweight.kernels.flash_attention`` (Triton, causal blocks skipped) for
  plain self-attention (no mask, no attention dropout, as many queries as keys); every other call (a
  padding mask, dropout in training, KV-cache decoding) goes to Hugging Face's SDPA function.
* ``"flyweight_sdpa"``: Hugging Face's own SDPA function.

Both honour the keyword ``flyweight_causal_batch=True`` (passed through the model's forward, as
``NextTokenNLL`` does for its unpadded training and evaluation windows): the caller promises that
every row is an unpadded causal window, so the mask is dropped and attention runs with
``is_causal=True``. Without it a mask built by transformers is used as is. Why the promise is needed:
under ``torch.compile`` with torch < 2.14, transformers cannot look at the position ids to rule out
packed sequences, so it materialises a (T x T) mask for every batch; SDPA then runs a kernel that
computes the masked half of the scores too, and the Triton kernel could not be used at all.
"""

from __future__ import annotations

from torch import nn

from flyweight.utils.optional import require_triton

__all__ = ["CAUSAL_BATCH", "IMPLEMENTATIONS", "register", "use_attention"]

CAUSAL_BATCH = "flyweight_causal_batch"  # forward keyword: every row is an unpadded causal window

# build_gpt2(attention=...) name -> Hugging Face attention implementation
IMPLEMENTATIONS = {"sdpa": "flyweight_sdpa", "triton": "flyweight_triton"}


def _mask_unless_promised(query, key, attention_mask, kwargs: dict):
    """None when the caller promised unpadded causal windows (``CAUSAL_BATCH``, popped from kwargs)
    and the queries are the keys; else the mask transformers built."""
    if kwargs.pop(CAUSAL_BATCH, False) and query.shape[2] == key.shape[2]:
        return None
    return attention_mask


def _triton_attention_forward(module: nn.Module, query, key, value, attention_mask, dropout: float = 0.0,
                              scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """HF attention-interface signature: q/k/v (B, H, T, D) -> ((B, T, H, D) output, None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from flyweight.kernels.flash_attention import flash_attention

    attention_mask = _mask_unless_promised(query, key, attention_mask, kwargs)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    plain = (attention_mask is None and dropout == 0.0 and query.shape[2] == key.shape[2]
             and not kwargs.get("output_attentions", False))
    if not plain:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = flash_attention(query, key, value, causal=bool(causal), scale=scaling)
    return out.transpose(1, 2), None


def _sdpa_attention_forward(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """Hugging Face's SDPA function, without the mask when the caller promises causal windows."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    attention_mask = _mask_unless_promised(query, key, attention_mask, kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def register() -> None:
    """Register both implementations with transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(IMPLEMENTATIONS["triton"], _triton_attention_forward)
    AttentionInterface.register(IMPLEMENTATIONS["sdpa"], _sdpa_attention_forward)
    for name in IMPLEMENTATIONS.values():  # masks exactly as for stock "sdpa"
        ALL_MASK_ATTENTION_FUNCTIONS.register(name, sdpa_mask)


def use_attention(model: nn.Module, attention: str) -> nn.Module:
    """Switch a Hugging Face model (in place) to ``attention`` ("sdpa" or "triton"); returns the model."""
    if attention not in IMPLEMENTATIONS:
        raise ValueError(f"unknown attention {attention!r}; valid: {', '.join(IMPLEMENTATIONS)}")
    if attention == "triton":
        require_triton("attention='triton'")
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "_attn_implementation"):
        raise ValueError(f"use_attention needs a Hugging Face model with a config, got {type(model).__name__}")
    register()
    name = IMPLEMENTATIONS[attention]
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:  # older transformers: the config attribute is what the layers read
        config._attn_implementation = name
    return model
