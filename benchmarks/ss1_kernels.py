"""Headline figures of the SS1 kernel benchmark, from the CSVs that gpu_ss1_check.py writes.

    python benchmarks/ss1_kernels.py benchmarks/results/ss1_h200_run2_grid.csv \
        benchmarks/results/ss1_h200_run3_r4_fwd.csv

Later files override earlier ones case by case (shape, M, R, dtype, pass). Prints, for the eager
timing (do_bench of the Python call) and the CUDA-graph timing (GPU time, no launch overhead), the
issue's targets and whether each is met. ``gpu_ss1_check.py`` calls ``summarize`` on its own rows.
"""

from __future__ import annotations

import argparse
import csv
import math

LLAMA = ("llama-up", "llama-down", "llama-qo")
GPT2_SMALL = ("gpt2-fc", "gpt2-proj", "gpt2-qkv", "gpt2-attn-out")
GRID_M = (16, 256, 2048, 8192)
INT_COLS = ("K", "N", "M", "R", "block_n")
STR_COLS = ("shape", "dtype", "pass", "fwd_config", "sketch_config", "bwd_config")


def geomean(vals) -> float:
    vals = [v for v in vals if v > 0]
    return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else float("nan")


def load(paths) -> list[dict]:
    merged: dict[tuple, dict] = {}
    for path in paths:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                for k, v in row.items():
                    if k in INT_COLS:
                        row[k] = int(v)
                    elif k not in STR_COLS:
                        row[k] = float(v) if v not in ("", None) else float("nan")
                row["block_n"] = int(row.get("block_n") or 64)  # older files: the default
                merged[(row["shape"], row["M"], row["R"], row["dtype"], row["pass"], row["block_n"])] = row
    return list(merged.values())


def targets(rows, col: str) -> list[tuple[str, float, float, str]]:
    """(name, measured, target, how) for every target of the issue, on speedup column ``col``.

    The targets are defined at the default hash block width (block_n 64); the best block_n is
    reported separately (``best_block_n``).
    """
    rows = [r for r in rows if int(r.get("block_n") or 64) == 64]
    out = []
    v = [r[col] for r in rows if r["dtype"] == "bfloat16" and r["pass"] == "fwd" and r["R"] == 4
         and r["shape"] in LLAMA and r["M"] >= 2048]
    out.append(("fwd R=4 Llama M>=2048 (min)", min(v, default=float("nan")), 3.2, f"geomean {geomean(v):.2f}"))
    v = [r[col] for r in rows if r["dtype"] == "bfloat16" and r["pass"] == "fwd" and r["R"] == 4
         and r["shape"] in LLAMA and r["M"] <= 16]
    out.append(("fwd R=4 Llama M<=16 (min)", min(v, default=float("nan")), 2.5, f"geomean {geomean(v):.2f}"))
    v = [r[col] for r in rows if r["dtype"] == "bfloat16" and r["pass"] == "fwd" and r["R"] == 4
         and r["shape"] in GPT2_SMALL and r["M"] == 8192]
    out.append(("fwd R=4 GPT-2 small M=8192 (min)", min(v, default=float("nan")), 2.0, f"geomean {geomean(v):.2f}"))
    for r_, goal in ((2, 1.5), (4, 2.0), (8, 2.5)):
        v7 = [r[col] for r in rows if r["dtype"] == "bfloat16" and r["pass"] == "fwd" and r["R"] == r_
              and r["M"] in GRID_M and r["shape"] != "gpt2xl-fc"]
        v8 = [r[col] for r in rows if r["dtype"] == "bfloat16" and r["pass"] == "fwd" and r["R"] == r_
              and r["M"] in GRID_M]
        out.append((f"fwd geomean R={r_}, 7 shapes x M in 16..8192", geomean(v7), goal,
                    f"{len(v7)} cases; with GPT-2 XL {geomean(v8):.2f} ({len(v8)} cases)"))
    v = [r[col] for r in rows if r["dtype"] == "bfloat16" and r["pass"] == "fwd+bwd" and r["R"] == 4
         and r["shape"] in LLAMA and r["M"] == 8192]
    out.append(("fwd+bwd R=4 Llama M=8192 (min)", min(v, default=float("nan")), 2.5, f"geomean {geomean(v):.2f}"))
    slow = [r for r in rows if r["M"] >= 256 and r["R"] >= 2 and r[col] < 1.0]
    out.append(("cases with M>=256 slower than dense", float(len(slow)), 0.0,
                f"of {sum(1 for r in rows if r['M'] >= 256)}"))
    return out


def best_block_n(rows) -> list[tuple[str, int, int, float, float]]:
    """(shape, M, best block_n, its speedup_graph, block_n 64's) for cases timed at several widths."""
    cases: dict[tuple, dict[int, float]] = {}
    for r in rows:
        if r["pass"] == "fwd" and r["dtype"] == "bfloat16" and "speedup_graph" in r:
            cases.setdefault((r["shape"], r["M"], r["R"]), {})[int(r.get("block_n") or 64)] = r["speedup_graph"]
    out = []
    for (shape, m, _), by_bn in sorted(cases.items()):
        if len(by_bn) > 1:
            bn = max(by_bn, key=by_bn.get)
            out.append((shape, m, bn, by_bn[bn], by_bn.get(64, float("nan"))))
    return out


def summarize(rows, log=print) -> None:
    cols = [("speedup", "eager (do_bench of the Python call)")]
    if rows and "speedup_graph" in rows[0]:
        cols.append(("speedup_graph", "CUDA graph replay (GPU time)"))
    for col, what in cols:
        log(f"\n=== SS1 vs dense F.linear, bf16, {what}; speedup = dense time / SS1 time ===")
        for name, got, goal, how in targets(rows, col):
            if name.startswith("cases"):
                log(f"{name:48s} {int(got):4d} {how}")
            else:
                log(f"{name:48s} {got:5.2f}x  target {goal:.1f}x  {'MET' if got >= goal else 'missed'}  ({how})")
    for shape, m, bn, best, default in best_block_n(rows):
        log(f"best hash block_n, {shape} M={m} R=4 fwd (graph): block_n={bn} {best:.2f}x (block_n=64: {default:.2f}x)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv", nargs="+")
    args = ap.parse_args()
    summarize(load(args.csv))


if __name__ == "__main__":
    main()
