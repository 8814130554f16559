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


class StaticDecoder:
    """Greedy decoding in flyweight's own loop: a static KV cache and one compiled decode step.

    ``generate`` above pays transformers' per-token Python (logits processors, stopping criteria,
    a host sync per token) on top of the CUDA-graph replay: about 1.6 ms a token on an H200 for any
    small model, so dense and SS1 decode at the same speed whatever their weight bytes. This loop
    runs the prompt once, then replays one compiled step per token (``mode="reduce-overhead"``:
    a CUDA graph on CUDA) with no host sync until the end, so a step costs what its kernels cost.

    The cache is allocated once for ``batch_size`` x ``max_length`` and reused by every call, so
    the step compiles and records once:

        decoder = StaticDecoder(model, batch_size=8, max_length=256)
        ids = decoder.generate(prompt_ids, max_new_tokens=128)

    ``compile``: None compiles on CUDA only; True compiles on every device (``backend`` picks
    Inductor's stand-in on CPU tests); False runs the step eagerly.
    """

    def __init__(self, model: nn.Module, *, batch_size: int, max_length: int, compile: bool | None = None,
                 backend: str = "inductor"):
        from transformers import StaticCache

        if not hasattr(model, "config") or not callable(getattr(model, "forward", None)):
            raise TypeError(f"StaticDecoder needs a transformers causal LM, got {type(model).__name__}")
        if batch_size < 1 or max_length < 2:
            raise ValueError(f"batch_size must be >= 1 and max_length >= 2, got {batch_size} and {max_length}")
        self.model = model
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.cache = StaticCache(config=model.config, max_cache_len=self.max_length)
        device = next(model.parameters()).device
        if compile is None:
            compile = device.type == "cuda"
        self._step = self._decode_step
        if compile:
            mode = "reduce-overhead" if device.type == "cuda" and backend == "inductor" else None
            self._step = torch.compile(self._decode_step, mode=mode, fullgraph=True, backend=backend)

    def _decode_step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=token, past_key_values=self.cache, cache_position=position,
                            use_cache=True).logits
        return logits[:, -1].argmax(-1, keepdim=True)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Prompt + ``max_new_tokens`` greedy tokens, (batch, T + new); never stops early."""
        if input_ids.dim() != 2 or input_ids.shape[0] != self.batch_size:
            raise ValueError(f"input_ids must be ({self.batch_size}, tokens) for this decoder, "
                             f"got shape {tuple(input_ids.shape)}; build a StaticDecoder per batch size")
        prompt = input_ids.shape[1]
        if max_new_tokens < 1 or prompt + max_new_tokens > self.max_length:
            raise ValueError(f"prompt ({prompt}) + max_new_tokens ({max_new_tokens}) must fit in "
                             f"max_length={self.max_length} and max_new_tokens must be >= 1")
        if self.cache.is_initialized:
            self.cache.reset()
        positions = torch.arange(prompt + max_new_tokens, device=input_ids.device)
        logits = self.model(input_ids=input_ids, past_key_values=self.cache, cache_position=positions[:prompt],
                            use_cache=True).logits
        tokens = [logits[:, -1].argmax(-1, keepdim=True)]
        for i in range(prompt, prompt + max_new_tokens - 1):
            # clone: a CUDA-graph replay overwrites its output buffer on the next replay
            tokens.append(self._step(tokens[-1], positions[i:i + 1]).clone())
        return torch.cat([input_ids, *tokens], dim=1)
