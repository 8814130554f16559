"""Run a job from a resolved Hydra config: seed, record the config, dispatch on ``cfg.task``.

A task is a function ``run(cfg, out_dir) -> dict | None`` in the module named below; the result
(if any) is written as ``results.json`` beside ``resolved_config.yaml``.
"""

from __future__ import annotations

import importlib
import json
import random
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

# task name -> "module:function"
TASKS: dict[str, str] = {
    "layers": "flyweight.bench.layers:run",
    "lm": "flyweight.train.lm:run",
    "imagenet_eval": "flyweight.train.image_eval:run",
    "fmnist_t2t": "flyweight.train.fmnist_t2t:run",
    "models": "flyweight.bench.models:run",
    "bench": "flyweight.bench.suite:run",
    "compare": "flyweight.bench.compare:run",
}


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_task(name: str):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    module, func = TASKS[name].split(":")
    return getattr(importlib.import_module(module), func)


def run_task(cfg: DictConfig, out_dir: str | Path) -> Any:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fn = resolve_task(cfg.task)
    (out / "resolved_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    seed_everything(int(cfg.seed))
    result = fn(cfg, out)
    if result is not None:
        (out / "results.json").write_text(json.dumps(result, indent=2, default=str))
    return result
