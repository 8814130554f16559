"""Attention settings at a matched memory budget (a fraction of full attention's T x T score memory).

Accounting as in ``Attention.cost``: local T*w, performer 2*T*m (q and k features), sblocal
T*w + 2*T*m. At 1/32 this reproduces the spec's T2T-ViT budgets: T = 3136 -> local 98, performer 49,
sblocal w 49 + m 24; T = 784 -> 24, 12, 12 + 6.
"""

from __future__ import annotations

import math


def matched_budget(name: str, T: int, fraction: float = 1 / 32, seed: int | None = None) -> dict:
    """The registry spec of variant `name` whose attention memory is at most ``fraction * T * T``."""
    per_token = T * fraction  # elements of attention memory per query allowed
    if name == "full":
        spec = {"name": "full"}
    elif name == "local":
        spec = {"name": "local", "window_size": max(1, math.floor(per_token))}
    elif name == "performer":
        spec = {"name": "performer", "nb_features": max(1, math.floor(per_token / 2))}
    elif name == "sblocal":
        # half the budget to the exact window, the rest to cosh features (an even count, at least 2)
        w = max(1, math.floor(per_token / 2))
        m = max(2, 2 * math.floor((per_token - w) / 4))
        if w + 2 * m > per_token:
            w = max(1, math.floor(per_token - 2 * m))
        spec = {"name": "sblocal", "window_size": w, "nb_features": m}
    else:
        raise ValueError(f"unknown attention {name!r}; valid: full, local, performer, sblocal")
    if seed is not None and name in ("performer", "sblocal"):
        spec["seed"] = int(seed)
    return spec
