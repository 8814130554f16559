"""The one schema of the training settings: typed dataclasses registered in Hydra's ConfigStore.

The groups ``model``, ``data``, ``optim`` and ``trainer`` have their defaults here and nowhere else
(no YAML copy): ``model: gpt2`` is ``ModelConfig``, ``data: base`` is ``flyweight.data.DataConfig``,
``optim: adamw`` is ``flyweight.train.OptimConfig``, ``trainer: default`` is
``flyweight.train.lm.TrainerConfig``. Hydra then checks every override against them before any work: a
misspelt key (``trainer.max_step=5``) or a wrong type (``trainer.max_steps=abc``) is an error naming the
key. Experiments (YAML) only set values.
"""

from __future__ import annotations

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
    linear: dict[str, Any] = field(default_factory=dict)  # ss1/lowrank {compression: R}, monarch {nblocks: b}
    n_layer: int | None = None          # null: the size's
    n_embd: int | None = None
    n_head: int | None = None
    n_positions: int = 1024
    vocab_size: int | None = None       # null: the tokenizer's (50257 for GPT-2)
    pad_vocab_to: int | None = None     # e.g. 64: embedding/lm_head rows padded to a multiple (50257 -> 50304);
                                        # padded logits are -inf; params/FLOPs count the real vocabulary
    dropout: float = 0.1
    attention: str = "auto"             # auto (Triton flash attention on CUDA, SDPA on CPU) | sdpa | triton


GROUPS = {("model", "gpt2"): ModelConfig, ("data", "base"): DataConfig, ("optim", "adamw"): OptimConfig,
          ("trainer", "default"): TrainerConfig}


def register() -> None:
    cs = ConfigStore.instance()
    for (group, name), node in GROUPS.items():
        cs.store(group=group, name=name, node=node)
