"""A job's config as plain Python containers, whether it came from Hydra or from a dict."""

from __future__ import annotations

import copy
from collections.abc import Mapping


def plain_config(cfg) -> dict:
    """A resolved OmegaConf / Hydra config as nested dicts and lists; a plain mapping deep-copied (the
    caller's dict is never changed). OmegaConf is imported only for OmegaConf configs."""
    if isinstance(cfg, Mapping) and not hasattr(cfg, "_metadata"):
        return copy.deepcopy(dict(cfg))
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)
