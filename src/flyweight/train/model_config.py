"""The ``model`` group of an "lm" config as the keyword arguments of ``flyweight.models.gpt2.build_gpt2``."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

DEPRECATED_LINEAR = ("model.linear is deprecated: it is model.settings now (the kind's settings, e.g. "
                     "model.settings.compression=8)")


def gpt2_kwargs(model_cfg: Mapping) -> dict[str, Any]:
    """``model_cfg`` without its None values, the keyword arguments of ``build_gpt2``.

    ``model.linear``, the old name of ``model.settings`` that configs and commands may still use, is
    merged into ``settings`` (its keys win, as an override on the command line did) with a FutureWarning:
    a warning meant for the person running the command, so Python shows it.
    """
    kwargs = {k: v for k, v in dict(model_cfg).items() if v is not None}
    old = kwargs.pop("linear", None)
    if old:
        warnings.warn(DEPRECATED_LINEAR, FutureWarning, stacklevel=1)  # one place: shown once per run
        kwargs["settings"] = {**dict(kwargs.get("settings") or {}), **dict(old)}
    return kwargs
