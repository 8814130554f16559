"""The Hydra application behind ``python run.py`` and the ``flyweight`` command."""

from __future__ import annotations

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from flyweight.runner import run_task


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def main(cfg: DictConfig):
    return run_task(cfg, HydraConfig.get().runtime.output_dir)
