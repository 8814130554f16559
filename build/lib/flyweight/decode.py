"""Greedy decoding with a static KV cache: the path where SS1's R x fewer weight bytes become speed.

A decode step multiplies a handful of rows by every weight matrix, so it is bound by the bytes of
the weights (and, in eager mode, by launch overhead). Hugging Face ``generate`` with
``cache_implementation="static"`` allocates the KV cache once at its final length, and on CUDA it
then compiles the decode step with ``torch.compile(mode="reduce-overhead")``: fixed shapes, the
whole step replayed as one CUDA graph. SS1 layers trace into that graph as PyTorch ops (the sketch
fuses with the layer norm or activation before it), so nothing about SS1 needs a separate loop:

    ids = greedy_generate(model, prompt_ids, max_new_tokens=128)

``compile``: None follows transformers (compiled on CUDA, eager on CPU); True compiles on every
device with ``fullgraph=True``; False never compiles.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def greedy_generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int, *,
                    attention_mask: torch.Tensor | None = None, static_cache: bool = True,
                    compile: bool | None = None, stop_at_eos: bool = False) -> torch.Tensor:
    """Prompt + ``max_new_tokens`` greedy tokens (B, T + new) from a transformers causal LM.

    ``stop_at_eos=False`` (the default, for benchmarks) always produces ``max_new_tokens`` tokens:
    randomly initialised models emit the end-of-sequence token at arbitrary steps.
    """
    if not hasattr(model, "generate") or not hasattr(model, "generation_config"):
        raise TypeError(f"greedy_generate needs a transformers generation model, got {type(model).__name__}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, tokens), got shape {tuple(input_ids.shape)}")
    from transformers import CompileConfig

    config = copy.deepcopy(model.generation_config)
    config.do_sample = False
    config.num_beams = 1
    config.max_new_tokens = int(max_new_tokens)
    config.min_new_tokens = None
    config.max_length = None
    for name in ("temperature", "top_p", "top_k"):  # sampling settings would only draw warnings
        setattr(config, name, None)
    if not stop_at_eos:
        config.eos_token_id = []  # None would be refilled from the model's defaults
    if config.pad_token_id is None:
        config.pad_token_id = 0
    if static_cache:
        config.cache_implementation = "static"
    if compile is False:
        config.disable_compile = True
    elif compile is True:
        config.compile_config = CompileConfig(fullgraph=True, mode="reduce-overhead")
        config.compile_config._compile_all_devices = True
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    with torch.no_grad():
        return model.generate(input_ids, attention_mask=attention_mask, generation_config=config)
