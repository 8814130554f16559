"""Floating-point dtypes by the names configs and CSV files use ("float32", "bfloat16", ...)."""

from __future__ import annotations

from collections.abc import Iterable

import torch

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
LOW_PRECISION = ("float32", "bfloat16", "float16")  # what training and evaluation run in


def dtype_named(name: str, what: str = "dtype", allowed: Iterable[str] = tuple(DTYPES)) -> torch.dtype:
    """The torch dtype called ``name``; a ValueError naming the setting (``what``) and the choices."""
    allowed = tuple(allowed)
    if name not in allowed:
        raise ValueError(f"{what} must be one of {sorted(allowed)}, got {name!r}")
    return DTYPES[name]
