"""Model surgery: swap linear layers for structured kinds, from scratch or by projection.

``flyweight.convert`` is this package AND callable: ``flyweight.convert(model, SS1Config(...))`` is
``flyweight.convert.convert(...)``, and ``import flyweight.convert as fc; fc.save_structured`` works
too (the package's module object is of a callable subclass of ``ModuleType``).
"""

import sys
import types

from flyweight.convert.checkpoint import (
    StructureMismatchError,
    apply_structure,
    from_pretrained,
    load_structured,
    save_structured,
)
from flyweight.convert.roles import ALL_LINEAR, ROLE_ALIASES, ROLE_PRESETS
from flyweight.convert.surgery import ConversionReport, LayerChange, convert, get_structure, linear_modules
from flyweight.linear.config import DenseConfig, LinearConfig, LowRankConfig, MonarchConfig, SS1Config

__all__ = [
    "ALL_LINEAR",
    "ROLE_ALIASES",
    "ROLE_PRESETS",
    "ConversionReport",
    "DenseConfig",
    "LayerChange",
    "LinearConfig",
    "LowRankConfig",
    "MonarchConfig",
    "SS1Config",
    "StructureMismatchError",
    "apply_structure",
    "convert",
    "from_pretrained",
    "get_structure",
    "linear_modules",
    "load_structured",
    "save_structured",
]


class _CallablePackage(types.ModuleType):
    """The package's module type: calling it calls ``convert``."""

    def __call__(self, *args, **kwargs):
        return convert(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage
