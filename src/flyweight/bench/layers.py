"""Layer speed benchmark: every kind x setting over shapes, token counts, dtypes and passes.

Rows follow ``LAYER_COLUMNS`` (a fixed CSV schema); files are named after the environment
(``layers_<device>_torch<version>.csv``) so results from different machines never overwrite each other.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path
from typing import Iterable

import torch
from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

from flyweight.bench.timing import env_tag, peak_memory_bytes, time_us
from flyweight.convert.autoselect import settings_label
from flyweight.linear import linear_class, make_linear
from flyweight.utils.device import device_name, resolve_device
from flyweight.utils.dtypes import dtype_named
from flyweight.utils.io import atomic_write

LAYER_COLUMNS = [
    "device", "torch", "kind", "settings", "in_features", "out_features", "tokens", "dtype", "pass",
    "compile", "latency_us", "dense_latency_us", "speedup", "tflops", "params", "param_mb",
    "flops_per_token", "peak_mem_mb",
]

# (in_features, out_features) of the projections of well-known models
SHAPES: dict[str, list[tuple[int, int]]] = {
    "gpt2-small": [(768, 3072), (3072, 768), (768, 2304), (768, 768)],
    "gpt2-medium": [(1024, 4096), (4096, 1024), (1024, 3072), (1024, 1024)],
    "gpt2-xl": [(1600, 6400)],
    "llama-8b": [(4096, 14336), (14336, 4096), (4096, 4096)],
}



def parse_shapes(names: Iterable) -> list[tuple[int, int]]:
    """Shape presets by name, or explicit [in, out] pairs."""
    shapes: list[tuple[int, int]] = []
    for item in names:
        if isinstance(item, str):
            if item not in SHAPES:
                raise ValueError(f"unknown shape preset {item!r}; valid: {', '.join(SHAPES)} or [in, out]")
            shapes += SHAPES[item]
        else:
            k, n = (int(v) for v in item)
            shapes.append((k, n))
    return shapes


def _make(kind: str, k: int, n: int, settings: dict, dtype, device):
    settings = linear_class(kind).settings_for(k, n, settings)  # e.g. SS1 pads GPT-2 XL's widths
    return make_linear(kind, k, n, dtype=dtype, device=device, **settings)


def bench_layer(kind: str, settings: dict, k: int, n: int, tokens: int, dtype: str, pass_: str,
                compile_: bool, device: torch.device, budget_s: float = 0.2) -> dict:
    """One row: latency, TFLOP/s and memory of one layer configuration."""
    torch_dtype = dtype_named(dtype)
    layer = _make(kind, k, n, settings, torch_dtype, device)
    fn_layer = torch.compile(layer) if compile_ else layer
    x = torch.randn(tokens, k, device=device, dtype=torch_dtype)
    if pass_ == "fwd":
        def step():
            with torch.no_grad():
                return fn_layer(x)
        flops = layer.flops_per_token() * tokens
    elif pass_ == "fwd+bwd":
        x.requires_grad_(True)
        grad = torch.randn(tokens, n, device=device, dtype=torch_dtype)

        def step():
            fn_layer(x).backward(grad)
        flops = 3 * layer.flops_per_token() * tokens
    else:
        raise ValueError(f"pass must be 'fwd' or 'fwd+bwd', got {pass_!r}")
    latency = time_us(step, device, budget_s=budget_s)
    peak = peak_memory_bytes(step, device)
    params = layer.num_parameters()
    return {
        "device": device_name(device), "torch": torch.__version__, "kind": kind,
        "settings": settings_label(settings), "in_features": k, "out_features": n, "tokens": tokens,
        "dtype": dtype, "pass": pass_, "compile": bool(compile_), "latency_us": latency,
        "dense_latency_us": float("nan"), "speedup": float("nan"), "tflops": flops / latency / 1e6,
        "params": params, "param_mb": params * x.element_size() / 2**20,
        "flops_per_token": layer.flops_per_token(), "peak_mem_mb": peak / 2**20,
    }


def run_layer_grid(kinds: dict[str, list[dict]], shapes: list[tuple[int, int]], tokens: list[int],
                   dtypes: list[str], passes: list[str], compile_modes: list[bool], device: torch.device,
                   budget_s: float = 0.2) -> list[dict]:
    """Every combination; each row also gets the dense latency of the same case and the speedup."""
    variants = [(kind, s) for kind, options in kinds.items() for s in (options or [{}])]
    if not any(kind == "dense" for kind, _ in variants):
        variants.insert(0, ("dense", {}))  # speedups need the baseline
    cases = list(itertools.product(shapes, tokens, dtypes, passes, compile_modes))
    rows: list[dict] = []
    with tqdm(total=len(cases) * len(variants), desc="layers", unit="case") as bar:
        for (k, n), m, dtype, pass_, comp in cases:
            dense_us = None
            for kind, settings in sorted(variants, key=lambda v: v[0] != "dense"):
                bar.set_postfix_str(f"{kind} {settings_label(settings)} {k}x{n} M={m} {dtype} {pass_}")
                row = bench_layer(kind, settings, k, n, m, dtype, pass_, comp, device, budget_s)
                if kind == "dense":
                    dense_us = row["latency_us"]
                row["dense_latency_us"] = dense_us
                row["speedup"] = dense_us / row["latency_us"]
                rows.append(row)
                bar.update()
    return rows


def write_csv(rows: list[dict], path: Path, columns: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: row.get(c) for c in columns})
    return path


def print_layer_rows(rows: list[dict], title: str) -> None:
    table = Table(title=title)
    cols = ["kind", "settings", "shape", "M", "dtype", "pass", "latency us", "speedup", "TFLOP/s", "params",
            "peak MB"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("kind", "settings", "dtype", "pass") else "right")
    for r in rows:
        table.add_row(r["kind"], r["settings"], f"{r['in_features']}x{r['out_features']}", str(r["tokens"]),
                      r["dtype"], r["pass"] + (" (compiled)" if r["compile"] else ""), f"{r['latency_us']:.1f}",
                      f"{r['speedup']:.2f}x", f"{r['tflops']:.3f}", f"{r['params']:,}", f"{r['peak_mem_mb']:.1f}")
    Console(width=140).print(table)


def run(cfg, out_dir) -> dict:
    """Hydra task ``layers``: the layer grid of ``cfg.layers``; CSV into out_dir and cfg.layers.results_dir."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg.layers, resolve=True)
    device = resolve_device(cfg.device)
    rows = run_layer_grid(c["kinds"], parse_shapes(c["shapes"]), c["tokens"], c["dtypes"], c["passes"],
                          c["compile"], device, c.get("budget_s", 0.2))
    print_layer_rows(rows, f"linear layers on {device_name(device)} (median latency; speedup vs dense)")
    name = f"layers_{env_tag(device)}.csv"
    write_csv(rows, Path(out_dir) / name, LAYER_COLUMNS)
    if c.get("results_dir"):
        print(f"saved {write_csv(rows, Path(c['results_dir']) / name, LAYER_COLUMNS)}")
    return {"rows": rows}
