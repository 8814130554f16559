"""Model surgery: swap linear layers for structured kinds, from scratch or by projection."""

from flyweight.convert.checkpoint import (
    StructureMismatchError,
    apply_structure,
    load_structured,
    save_structured,
)
from flyweight.convert.init import normal_init_
from flyweight.convert.roles import ROLE_ALIASES, ROLE_PRESETS
from flyweight.convert.surgery import ConversionReport, LayerChange, convert, get_structure, linear_modules

__all__ = [
    "ROLE_ALIASES",
    "ROLE_PRESETS",
    "ConversionReport",
    "LayerChange",
    "StructureMismatchError",
    "apply_structure",
    "convert",
    "get_structure",
    "linear_modules",
    "load_structured",
    "normal_init_",
    "save_structured",
]
