"""The Hydra application behind ``python run.py`` and the ``flyweight`` command."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from flyweight.configs.schema import renamed_overrides
from flyweight.runner import run_task
from flyweight.utils.errors import user_errors_reported


@hydra.main(version_base="1.3", config_path="configs", config_name="config")
def _app(cfg: DictConfig):
    with user_errors_reported():  # a bad value prints its message, not a traceback
        return run_task(cfg, HydraConfig.get().runtime.output_dir)


def main():
    """Hydra's command line (``sys.argv``), renamed config keys (``model.linear``) given their new name first."""
    sys.argv = [sys.argv[0], *renamed_overrides(sys.argv[1:])]
    return _app()
