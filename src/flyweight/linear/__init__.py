"""Structured drop-in replacements for ``nn.Linear``, chosen by registry name."""

from flyweight.linear.base import (
    LINEAR_KINDS,
    StructuredLinear,
    linear_class,
    make_linear,
    register_linear,
    validate_linear,
    unregister_linear,
)
from flyweight.linear.dense import DenseLinear
from flyweight.linear.lowrank import LowRankLinear, rank_for_compression
from flyweight.linear.monarch import MonarchLinear
from flyweight.linear.ss1 import SS1Linear

__all__ = [
    "LINEAR_KINDS",
    "DenseLinear",
    "LowRankLinear",
    "MonarchLinear",
    "SS1Linear",
    "StructuredLinear",
    "linear_class",
    "make_linear",
    "rank_for_compression",
    "register_linear",
    "validate_linear",
    "unregister_linear",
]
