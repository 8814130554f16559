"""The one schema of the training settings: typed dataclasses registered in Hydra's ConfigStore.

The groups ``model``, ``data``, ``optim`` and ``trainer`` have their defaults in one dataclass each,
beside the code they configure, and nowhere else (no YAML copy): ``model: gpt2`` is
``flyweight.train.model_config.ModelConfig``, ``data: base`` is ``flyweight.data.DataConfig``,
``optim: adamw`` is ``flyweight.train.OptimConfig``, ``trainer: default`` is
``flyweight.train.lm.TrainerConfig``. Hydra then checks every override against them before any work: a
misspelt key (``trainer.max_step=5``) or a wrong type (``trainer.max_steps=abc``) is an error naming the
key. Experiments (YAML) only set values.
"""

from __future__ import annotations

import re
import warnings

from hydra.core.config_store import ConfigStore

from flyweight.data.datamodule import DataConfig
from flyweight.train.lm import TrainerConfig
from flyweight.train.model_config import ModelConfig
from flyweight.train.optim import OptimConfig

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
