"""Hydra task ``bench``: the layer grid, then the model benchmark, with one config."""

from __future__ import annotations

from flyweight.bench import layers, models


def run(cfg, out_dir) -> dict:
    return {"layers": layers.run(cfg, out_dir)["rows"], "models": models.run(cfg, out_dir)["rows"]}
