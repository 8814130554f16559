"""Run a job from a resolved Hydra config: seed, record the config, dispatch on ``cfg.task``.

A task is a function ``run(cfg, out_dir) -> dict | None`` in the module named below; the result
(if any) is written as ``results.json`` beside ``resolved_config.yaml``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from flyweight.utils.io import atomic_write_text

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


def resolve_task(name: str):
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid tasks: {', '.join(sorted(TASKS))}")
    module, func = TASKS[name].split(":")
    return getattr(importlib.import_module(module), func)


def run_task(cfg: DictConfig, out_dir: str | Path) -> Any:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fn = resolve_task(cfg.task)
    atomic_write_text(out / "resolved_config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    from flyweight.utils.rng import seed_all  # torch and numpy load with the task, not before

    seed_all(int(cfg.seed))
    result = fn(cfg, out)
    if result is not None:
        atomic_write_text(out / "results.json", json.dumps(result, indent=2, default=str))
    return result
