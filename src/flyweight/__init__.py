"""flyweight: cheaper transformers with structured matrices and approximate attention, measured."""

from flyweight.convert import convert
from flyweight.linear import (
    DenseLinear,
    LowRankLinear,
    MonarchLinear,
    SS1Linear,
    StructuredLinear,
    make_linear,
)

__version__ = "0.1.0"

__all__ = [
    "DenseLinear",
    "LowRankLinear",
    "MonarchLinear",
    "SS1Linear",
    "StructuredLinear",
    "__version__",
    "convert",
    "make_linear",
]
