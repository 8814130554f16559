"""Auto-selection: keep a layer dense where the structured kind was measured slower.

Reads a layer benchmark table (rows of ``flyweight.bench.layers``, or its CSV) and answers, for a
layer of shape (in, out) at an expected token count, whether the candidate kind beats dense. The
nearest measured token count (in log space) stands in for the expected one; a shape that was never
measured stays dense, with that reason given, because a guess is not a measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from flyweight.bench.layers import read_csv, settings_label


@dataclass(frozen=True)
class Decision:
    use_structured: bool
    speedup: float | None
    reason: str


class SpeedTable:
    """Measured speedups of (kind, settings) over dense, keyed by shape, tokens, dtype and pass."""

    def __init__(self, rows: list[dict]):
        self._speedups: dict[tuple, dict[int, float]] = {}
        for r in rows:
            if r["kind"] == "dense":
                continue
            key = (r["kind"], r["settings"], int(r["in_features"]), int(r["out_features"]), r["dtype"], r["pass"])
            self._speedups.setdefault(key, {})[int(r["tokens"])] = float(r["speedup"])

    @classmethod
    def from_csv(cls, *paths: str | Path) -> "SpeedTable":
        rows: list[dict] = []
        for p in paths:
            rows += read_csv(Path(p))
        return cls(rows)

    def decide(self, kind: str, settings: dict, in_features: int, out_features: int, tokens: int,
               dtype: str = "bfloat16", pass_: str = "fwd", min_speedup: float = 1.0) -> Decision:
        key = (kind, settings_label(settings), in_features, out_features, dtype, pass_)
        measured = self._speedups.get(key)
        if not measured:
            return Decision(False, None, f"no measurement for {kind} {settings_label(settings)} "
                                         f"{in_features}x{out_features} {dtype} {pass_}: kept dense")
        nearest = min(measured, key=lambda m: abs(math.log(m) - math.log(max(tokens, 1))))
        speedup = measured[nearest]
        if speedup > min_speedup:
            return Decision(True, speedup, f"measured {speedup:.2f}x over dense at M={nearest}")
        return Decision(False, speedup, f"measured {speedup:.2f}x (<= {min_speedup:.2f}x) at M={nearest}: kept dense")

    def keep_dense(self, kind: str, settings: dict, tokens: int, dtype: str = "bfloat16", pass_: str = "fwd",
                   min_speedup: float = 1.0):
        """A ``filter_fn`` for ``flyweight.convert``: the reason to keep a layer dense, or None to convert it.

        ``flyweight.convert(model, "ss1", compression=4,
                            filter_fn=table.keep_dense("ss1", {"compression": 4}, tokens=8192))``
        """

        def reason(name: str, in_features: int, out_features: int) -> str | None:
            d = self.decide(kind, settings, in_features, out_features, tokens, dtype, pass_, min_speedup)
            return None if d.use_structured else d.reason

        return reason
