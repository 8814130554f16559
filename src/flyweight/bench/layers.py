"""Layer benchmark: every kind at one shape -- parameters, FLOPs, latency, projection error."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.utils.benchmark as tbench
from rich.console import Console
from rich.table import Table

from flyweight.linear import LINEAR_KINDS, make_linear

DEFAULT_SETTINGS = {"dense": {}, "lowrank": {"compression": 8}, "monarch": {"nblocks": 4}, "ss1": {"compression": 4}}


@dataclass
class LayerRow:
    kind: str
    settings: str
    in_features: int
    out_features: int
    tokens: int
    params: int
    flops_per_token: int
    latency_us: float
    speedup: float
    projection_rel_error: float


def time_cpu_us(fn, min_run_time: float = 0.3) -> float:
    """Median wall time of ``fn()`` in microseconds (torch.utils.benchmark, CPU)."""
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn})
    return timer.blocked_autorange(min_run_time=min_run_time).median * 1e6


def layer_rows(in_features: int, out_features: int, tokens: int, seed: int = 0) -> list[LayerRow]:
    torch.manual_seed(seed)
    x = torch.randn(tokens, in_features)
    # a weight with decaying spectrum, like a trained layer, for the projection error column
    u, _ = torch.linalg.qr(torch.randn(out_features, out_features))
    v, _ = torch.linalg.qr(torch.randn(in_features, in_features))
    k = min(in_features, out_features)
    target = (u[:, :k] * torch.linspace(1.0, 0.05, k)) @ v[:, :k].T
    rows = []
    dense_us = None
    for kind in LINEAR_KINDS:
        settings = DEFAULT_SETTINGS.get(kind, {})
        layer = make_linear(kind, in_features, out_features, **settings)
        proj = type(layer).from_dense(target, **settings)
        err = float(torch.linalg.norm(proj.to_dense() - target) / torch.linalg.norm(target))
        with torch.no_grad():
            us = time_cpu_us(lambda: layer(x))
        dense_us = us if kind == "dense" else dense_us
        rows.append(
            LayerRow(kind, ",".join(f"{a}={b}" for a, b in settings.items()) or "-", in_features,
                     out_features, tokens, layer.num_parameters(), layer.flops_per_token(), us,
                     (dense_us or us) / us, err)
        )
    return rows


def print_rows(rows: list[LayerRow], title: str) -> None:
    table = Table(title=title)
    for col in ("kind", "settings", "params", "MFLOP/token", "latency us", "speedup", "proj. rel. error"):
        table.add_column(col, justify="right" if col not in ("kind", "settings") else "left")
    for r in rows:
        table.add_row(r.kind, r.settings, f"{r.params:,}", f"{r.flops_per_token / 1e6:.2f}",
                      f"{r.latency_us:.0f}", f"{r.speedup:.2f}x", f"{r.projection_rel_error:.3f}")
    Console(width=120).print(table)


def run(cfg, out_dir) -> dict:
    """Hydra task ``layers``: print the table and return its rows (written to results.json)."""
    c = cfg.layers
    rows = layer_rows(int(c.in_features), int(c.out_features), int(c.tokens), seed=int(cfg.seed))
    print_rows(rows, f"{c.in_features}->{c.out_features}, {c.tokens} tokens, float32 on "
                     f"{torch.get_num_threads()} CPU threads (projection of a decaying-spectrum weight)")
    return {"rows": rows_as_dicts(rows)}


def rows_as_dicts(rows: list[LayerRow]) -> list[dict]:
    return [asdict(r) for r in rows]
