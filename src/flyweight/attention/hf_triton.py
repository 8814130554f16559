"""flyweight's Triton flash attention as a Hugging Face attention implementation.

    from flyweight.attention.hf_triton import use_triton_attention
    use_triton_attention(model)          # every attention layer of a HF model (GPT-2 here) uses it

Hugging Face models look their attention function up by ``config._attn_implementation`` in
``transformers.AttentionInterface``; this module registers ``"flyweight_triton"`` there (and the SDPA
mask builder under the same name, so a causal batch without padding gets no mask at all, as with
SDPA). The function runs ``flyweight.kernels.flash_attention`` when the call is plain causal or full
self-attention (no mask, no attention dropout, as many queries as keys), and hands every other call
(a padding mask, dropout in training, KV-cache decoding) to Hugging Face's SDPA function, which
handles them exactly as before.
"""

from __future__ import annotations

from torch import nn

__all__ = ["TRITON_ATTENTION", "register", "use_triton_attention", "triton_attention_forward"]

TRITON_ATTENTION = "flyweight_triton"


def triton_attention_forward(module: nn.Module, query, key, value, attention_mask, dropout: float = 0.0,
                             scaling: float | None = None, is_causal: bool | None = None, **kwargs):
    """HF attention-interface signature: q/k/v (B, H, T, D) -> ((B, T, H, D) output, None)."""
    from flyweight.kernels.flash_attention import flash_attention

    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    plain = (attention_mask is None and dropout == 0.0 and query.shape[2] == key.shape[2]
             and not kwargs.get("output_attentions", False))
    if not plain:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      is_causal=is_causal, **kwargs)
    out = flash_attention(query, key, value, causal=bool(causal), scale=scaling)
    return out.transpose(1, 2), None


def register() -> str:
    """Register ``"flyweight_triton"`` with transformers (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(TRITON_ATTENTION, triton_attention_forward)
    ALL_MASK_ATTENTION_FUNCTIONS.register(TRITON_ATTENTION, sdpa_mask)
    return TRITON_ATTENTION


def use_triton_attention(model: nn.Module) -> nn.Module:
    """Switch a Hugging Face model (in place) to the Triton flash attention; returns the model."""
    name = register()
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "_attn_implementation"):
        raise ValueError(f"use_triton_attention needs a Hugging Face model with a config, got {type(model).__name__}")
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:  # older transformers: the config attribute is what the layers read
        config._attn_implementation = name
    return model
