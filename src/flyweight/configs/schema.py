"""The one schema of the training settings: typed dataclasses registered in Hydra's ConfigStore.

The groups ``model``, ``data``, ``optim`` and ``trainer`` have their defaults here and nowhere else
(no YAML copy): ``model: gpt2`` is ``ModelConfig``, ``data: base`` is ``flyweight.data.DataConfig``,
``optim: adamw`` is ``flyweight.train.OptimConfig``, ``trainer: default`` is
``flyweight.train.lm.TrainerConfig``. Hydra then checks every override against them before any work: a
misspelt key (``trainer.max_step=5``) or a wrong type (``trainer.max_steps=abc``) is an error naming the
key. Experiments (YAML) only set values.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from flyweight.data.datamodule import DataConfig
from flyweight.train.lm import TrainerConfig
from flyweight.train.optim import OptimConfig

MODEL_SIZES = ("tiny", "small", "medium", "large")


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


# Config keys that were renamed; the old name still works on the command line, with a FutureWarning
# (meant for the person running the command, so Python shows it). In YAML, model.linear is a field of
# ModelConfig that flyweight.train.model_config merges into model.settings.
RENAMED_KEYS = {"model.linear": "model.settings"}


def renamed_overrides(overrides: list[str]) -> list[str]:
    """Command-line overrides with each renamed key (``model.linear.compression=8``) given its new name."""
    out = []
    for arg in overrides:
        for old, new in RENAMED_KEYS.items():
            m = re.match(rf"^([+~]*){re.escape(old)}(?=[.=]|$)", arg)
            if m:
                warnings.warn(f"{old} is deprecated: it is {new} now ({arg} -> {m[1]}{new}{arg[m.end():]})",
                              FutureWarning, stacklevel=2)
                arg = f"{m[1]}{new}{arg[m.end():]}"
        out.append(arg)
    return out


GROUPS = {("model", "gpt2"): ModelConfig, ("data", "base"): DataConfig, ("optim", "adamw"): OptimConfig,
          ("trainer", "default"): TrainerConfig}


def register() -> None:
    cs = ConfigStore.instance()
    for (group, name), node in GROUPS.items():
        cs.store(group=group, name=name, node=node)
