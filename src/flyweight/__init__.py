"""flyweight: cheaper transformers with structured matrices and approximate attention, measured.

    import flyweight
    from flyweight import SS1Config
    report = flyweight.convert(model, SS1Config(compression=4), target_modules="all-linear")
    model = flyweight.from_pretrained("out/")        # any flyweight checkpoint, exactly as saved
    flyweight.models.gpt2.build_gpt2("tiny", kind="ss1")

Subpackages (``models``, ``attention``, ``bench``, ``data``, ``kernels``, ``train``, ``integrations``)
load on first access.
"""

import importlib

from flyweight import convert  # the package; it is callable: flyweight.convert(model, config, ...)
from flyweight.convert.checkpoint import from_pretrained
from flyweight.integrations import transformers as _transformers_hook  # noqa: F401  (registers the loader)
from flyweight.linear import (
    DenseLinear,
    LowRankLinear,
    MonarchLinear,
    SS1Linear,
    StructuredLinear,
    make_linear,
    register_linear,
)
from flyweight.linear.config import DenseConfig, LinearConfig, LowRankConfig, MonarchConfig, SS1Config
from flyweight.utils.env import warn_unknown_switches

__version__ = "0.1.0"

warn_unknown_switches()  # a misspelt FLYWEIGHT_* name would otherwise be ignored without a word

_SUBPACKAGES = ("attention", "bench", "data", "integrations", "kernels", "models", "train")

__all__ = [
    "DenseConfig",
    "DenseLinear",
    "LinearConfig",
    "LowRankConfig",
    "LowRankLinear",
    "MonarchConfig",
    "MonarchLinear",
    "SS1Config",
    "SS1Linear",
    "StructuredLinear",
    "__version__",
    "convert",
    "from_pretrained",
    "make_linear",
    "register_linear",
]


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
