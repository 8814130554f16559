"""The ``model`` group of an "lm" config: the keyword arguments of ``flyweight.models.gpt2.build_gpt2``.

``ModelConfig`` holds the group's typed defaults (Hydra's ``model: gpt2``, registered by
``configs.schema``; ``train.validate`` fills a plain-dict config from it), next to ``gpt2_kwargs``,
which turns a model config into ``build_gpt2``'s arguments.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class ModelConfig:
    """GPT-2 with structured block linears: the keyword arguments of ``flyweight.models.gpt2.build_gpt2``."""

    size: str = "small"                 # tiny | small (124M) | medium | large
    kind: str = "dense"                 # dense | ss1 | monarch | lowrank: the kind of every converted role
    roles: list[str] = field(default_factory=lambda: ["mlp", "attn_qkv", "attn_out"])
    lm_head: bool = False               # true: the lm_head is converted too (and untied from the embedding)
    settings: dict[str, Any] = field(default_factory=dict)  # ss1/lowrank {compression: R}, monarch {nblocks: b}
    linear: dict[str, Any] = field(default_factory=dict)  # the old name of settings: merged into it, with a warning
    n_layer: int | None = None          # null: the size's
    n_embd: int | None = None
    n_head: int | None = None
    n_positions: int = 1024
    vocab_size: int | None = None       # null: the tokenizer's (50257 for GPT-2)
    pad_vocab_to: int | None = None     # e.g. 64: embedding/lm_head rows padded to a multiple (50257 -> 50304);
                                        # padded logits are -inf; params/FLOPs count the real vocabulary
    dropout: float = 0.1
    attention: str = "auto"             # auto (Triton flash attention on CUDA, SDPA on CPU) | sdpa | triton


DEPRECATED_LINEAR = ("model.linear is deprecated: it is model.settings now (the kind's settings, e.g. "
                     "model.settings.compression=8)")


def gpt2_kwargs(model_cfg: Mapping) -> dict[str, Any]:
    """``model_cfg`` without its None values, the keyword arguments of ``build_gpt2``.

    ``model.linear``, the old name of ``model.settings`` that configs and commands may still use, is
    merged into ``settings`` (its keys win, as an override on the command line did) with a FutureWarning:
    a warning meant for the person running the command, so Python shows it.
    """
    kwargs = {k: v for k, v in dict(model_cfg).items() if v is not None}
    old = kwargs.pop("linear", None)
    if old:
        warnings.warn(DEPRECATED_LINEAR, FutureWarning, stacklevel=1)  # one place: shown once per run
        kwargs["settings"] = {**dict(kwargs.get("settings") or {}), **dict(old)}
    return kwargs
