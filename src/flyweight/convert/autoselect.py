"""Auto-selection: keep a layer dense where the structured kind was measured slower.

Reads a layer benchmark table (rows of ``flyweight.bench.layers``, or its CSV) and answers, for a
layer of shape (in, out) at an expected token count, whether the candidate kind beats dense. The
nearest measured token count (in log space) stands in for the expected one; a shape that was never
measured stays dense, with that reason given, because a guess is not a measurement.

``flyweight.convert(model, SS1Config(compression=4), auto=True)`` applies it with ``AutoSelect()``'s
defaults; ``auto=AutoSelect(tokens=8, pass_="fwd")`` describes a decode workload instead. The table
is, in order: ``AutoSelect(table=...)``, the file named by ``FLYWEIGHT_SPEED_TABLE``, the one
measured on this GPU (``benchmarks/ss1_gpu.py --install-table`` writes it to ``user_table_path()``),
or the table shipped for the H200 (``shipped_table_path()``; a warning says so on another GPU).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from flyweight.utils.env import env_path
from flyweight.utils.io import read_csv

log = logging.getLogger(__name__)

SHIPPED_TABLE = Path(__file__).parent / "data" / "speed_h200.csv"
SHIPPED_GPU = "H200"


@dataclass(frozen=True)
class Decision:
    use_structured: bool
    speedup: float | None
    reason: str


def _flag(value) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes")


def settings_label(settings: dict) -> str:
    """How a speed table names a kind's settings: ``compression=4,pad=False`` (``-`` for none)."""
    return ",".join(f"{k}={v}" for k, v in sorted(settings.items())) or "-"


def _parse_settings(label: str) -> dict[str, str]:
    if label in ("", "-"):
        return {}
    return dict(item.split("=", 1) for item in label.split(","))


class SpeedTable:
    """Measured speedups of (kind, settings) over dense, keyed by shape, tokens, dtype, pass and compile."""

    def __init__(self, rows: list[dict], source: str = "rows"):
        self.source = source
        self._speedups: dict[tuple, dict[int, float]] = {}
        self._labels: dict[str, set[str]] = {}
        for r in rows:
            if r["kind"] == "dense":
                continue
            key = (r["kind"], r["settings"], int(r["in_features"]), int(r["out_features"]), r["dtype"], r["pass"],
                   _flag(r.get("compile", False)))
            self._speedups.setdefault(key, {})[int(r["tokens"])] = float(r["speedup"])
            self._labels.setdefault(r["kind"], set()).add(r["settings"])

    @classmethod
    def from_csv(cls, *paths: str | Path) -> "SpeedTable":
        rows: list[dict] = []
        for p in paths:
            rows += read_csv(Path(p))
        return cls(rows, source=", ".join(str(p) for p in paths))

    def decide(self, kind: str, settings: dict, in_features: int, out_features: int, tokens: int,
               dtype: str = "bfloat16", pass_: str = "fwd", min_speedup: float = 1.0,
               compiled: bool = False) -> Decision:
        mode = "compiled" if compiled else "eager"
        key = (kind, settings_label(settings), in_features, out_features, dtype, pass_, compiled)
        measured = self._speedups.get(key)
        if not measured:
            return Decision(False, None, f"no measurement for {kind} {settings_label(settings)} "
                                         f"{in_features}x{out_features} {dtype} {pass_} {mode}: kept dense")
        nearest = min(measured, key=lambda m: abs(math.log(m) - math.log(max(tokens, 1))))
        speedup = measured[nearest]
        if speedup > min_speedup:
            return Decision(True, speedup, f"measured {speedup:.2f}x over dense at M={nearest} ({mode})")
        return Decision(False, speedup, f"measured {speedup:.2f}x (<= {min_speedup:.2f}x) at M={nearest} "
                                        f"({mode}): kept dense")

    def settings_for(self, kind: str, settings: dict, defaults: dict) -> dict:
        """The measured settings label that a layer built with ``settings`` matches (or the settings)."""
        for label in sorted(self._labels.get(kind, ())):
            wanted = _parse_settings(label)
            if all(str(settings.get(k, defaults.get(k))) == v for k, v in wanted.items()):
                return {k: settings.get(k, defaults.get(k)) for k in wanted}
        return dict(settings)

    def keep_dense(self, kind: str, settings: dict, tokens: int, dtype: str = "bfloat16", pass_: str = "fwd",
                   min_speedup: float = 1.0, compiled: bool = False):
        """A ``filter_fn`` for ``flyweight.convert``: the reason to keep a layer dense, or None to convert it.

        ``flyweight.convert(model, "ss1", compression=4,
                            filter_fn=table.keep_dense("ss1", {"compression": 4}, tokens=8192))``
        """

        def reason(name: str, in_features: int, out_features: int) -> str | None:
            d = self.decide(kind, settings, in_features, out_features, tokens, dtype, pass_, min_speedup, compiled)
            return None if d.use_structured else d.reason

        return reason


@dataclass(frozen=True)
class AutoSelect:
    """The workload ``convert(..., auto=...)`` decides for: rows per call, pass, dtype, compile mode."""

    tokens: int = 16384  # rows of one layer call: micro-batch x sequence length
    pass_: str = "fwd+bwd"  # "fwd" for inference
    dtype: str = "bfloat16"
    compiled: bool = True
    min_speedup: float = 1.0
    table: str | Path | None = None


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def user_table_path(gpu_name: str | None = None) -> Path:
    """Where the speed table measured on this machine's GPU lives (one file per GPU model)."""
    name = gpu_name or _gpu_name() or "cpu"
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "flyweight" / f"speed_{re.sub(r'[^A-Za-z0-9]+', '-', name).strip('-')}.csv"


def shipped_table_path() -> Path:
    return SHIPPED_TABLE


def find_table(policy: AutoSelect) -> SpeedTable:
    """The speed table ``policy`` names, else this GPU's measured one, else the shipped H200 table."""
    explicit = policy.table or env_path("FLYWEIGHT_SPEED_TABLE")
    if explicit:
        if not Path(explicit).is_file():
            raise FileNotFoundError(f"speed table {explicit} not found (AutoSelect(table=...) or "
                                    "FLYWEIGHT_SPEED_TABLE); write one with benchmarks/ss1_gpu.py --out DIR")
        return SpeedTable.from_csv(explicit)
    gpu = _gpu_name()
    mine = user_table_path(gpu)
    if mine.is_file():
        return SpeedTable.from_csv(mine)
    if gpu is None or SHIPPED_GPU not in gpu:
        log.warning("auto-selection: no speed table measured on %s (%s); using the one measured on an %s. "
                    "Measure this GPU with `python benchmarks/ss1_gpu.py --out DIR --install-table`.",
                    gpu or "this machine (no CUDA)", mine, SHIPPED_GPU)
    return SpeedTable.from_csv(SHIPPED_TABLE)


def auto_filter(kind: str, settings: dict, policy: AutoSelect, layer_class=None):
    """``convert``'s filter for ``auto=``: keep dense every layer the table does not show faster."""
    table = find_table(policy)
    defaults = {}
    if layer_class is not None:
        defaults = {n: p.default for n, p in inspect.signature(layer_class).parameters.items()
                    if p.default is not inspect.Parameter.empty}
    measured = table.settings_for(kind, settings, defaults)
    log.info("auto-selection for %s %s from %s", kind, settings_label(measured), table.source)
    return table.keep_dense(kind, measured, policy.tokens, policy.dtype, policy.pass_, policy.min_speedup,
                            policy.compiled)
