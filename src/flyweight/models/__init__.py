"""Models: GPT-2 with structured layers (``gpt2``), T2T-ViT (``t2t_vit``) and its checkpoint converter.

Submodules load on first access, so ``import flyweight; flyweight.models.gpt2.build_gpt2`` works.
"""

import importlib

_SUBMODULES = ("gpt2", "t2t_vit", "t2t_vit_checkpoint")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}; submodules: {', '.join(_SUBMODULES)}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
