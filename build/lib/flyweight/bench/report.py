"""The comparison report: one table (report.md + results.csv) and three plots.

Rows are produced by ``flyweight.bench.compare``; this module only formats them, so the report, the
CSV and the console table always agree.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

REPORT_COLUMNS = [
    "variant", "kind", "settings", "params", "flops_per_token", "val_ppl", "train_tokens_per_s",
    "infer_tokens_per_s", "decode_ms_per_token", "speedup_vs_dense", "train_tokens", "train_steps",
    "train_seconds", "corpus", "split", "device",
]

PLOTS = {
    "ppl_vs_throughput": "ppl_vs_throughput.png",
    "ppl_vs_params": "ppl_vs_params.png",
    "loss_curves": "loss_curves.png",
}


def pareto_front(throughput: list[float], ppl: list[float]) -> list[int]:
    """Indices of variants no other variant beats on both axes (higher throughput, lower perplexity)."""
    front = []
    for i, (t, p) in enumerate(zip(throughput, ppl)):
        dominated = any(
            (t2 >= t and p2 <= p) and (t2 > t or p2 < p) for j, (t2, p2) in enumerate(zip(throughput, ppl)) if j != i
        )
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: throughput[i])


def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown_table(rows: list[dict]) -> str:
    head = ["variant", "kind", "settings", "params (M)", "MFLOP/token", "val ppl", "train tok/s",
            "infer tok/s", "decode ms/tok", "speedup vs dense"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["variant"], r["kind"], r["settings"], f"{r['params'] / 1e6:.2f}", f"{r['flops_per_token'] / 1e6:.2f}",
            _fmt(r["val_ppl"]), _fmt(r["train_tokens_per_s"], 0), _fmt(r["infer_tokens_per_s"], 0),
            _fmt(r["decode_ms_per_token"], 2), _fmt(r["speedup_vs_dense"], 2) + "x",
        ]) + " |")
    return "\n".join(lines)


def write_results_csv(rows: list[dict], path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=REPORT_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c) for c in REPORT_COLUMNS})


def _labelled_scatter(ax, names: list[str], xs: list[float], ys: list[float]) -> None:
    for name, x, y in zip(names, xs, ys):
        ax.scatter([x], [y], s=50, label=name, zorder=3)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)


def _save(plt, fig, ax, path: Path, xlabel: str, ylabel: str, title: str) -> None:
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_all(rows: list[dict], curves: dict[str, list[tuple[int, float]]], out: Path) -> tuple[dict[str, Path], dict[str, int]]:
    """Write the three PNGs; return their paths and how many data series each one shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {k: out / v for k, v in PLOTS.items()}
    names = [r["variant"] for r in rows]
    ppl = [float(r["val_ppl"]) for r in rows]
    series = {}

    thr = [float(r["infer_tokens_per_s"]) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    _labelled_scatter(ax, names, thr, ppl)
    front = pareto_front(thr, ppl)
    ax.plot([thr[i] for i in front], [ppl[i] for i in front], "k--o", mfc="none", ms=13, lw=1,
            label="Pareto front", zorder=2)
    series["ppl_vs_throughput"] = len(ax.collections)
    _save(plt, fig, ax, paths["ppl_vs_throughput"], "inference throughput (tokens/s)", "validation perplexity",
          "quality vs speed (down-right is better)")

    fig, ax = plt.subplots(figsize=(6, 4.5))
    _labelled_scatter(ax, names, [r["params"] / 1e6 for r in rows], ppl)
    series["ppl_vs_params"] = len(ax.collections)
    _save(plt, fig, ax, paths["ppl_vs_params"], "parameters (M)", "validation perplexity",
          "quality vs size (down-left is better)")

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name in names:
        pts = curves.get(name) or []
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, lw=1.2)
    series["loss_curves"] = len(ax.lines)
    _save(plt, fig, ax, paths["loss_curves"], "training tokens", "training loss", "loss curves")
    return paths, series


def write_report(rows: list[dict], curves: dict[str, list[tuple[int, float]]], out_dir: str | Path,
                 meta: dict, command: str) -> dict[str, Path]:
    """report.md, results.csv and the plots in ``out_dir``; returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_results_csv(rows, out / "results.csv")
    plots, series = plot_all(rows, curves, out)
    front = pareto_front([float(r["infer_tokens_per_s"]) for r in rows], [float(r["val_ppl"]) for r in rows])
    lines = [
        "# flyweight comparison report",
        "",
        f"Command: `{command}`",
        "",
        ", ".join(f"{k}: {v}" for k, v in meta.items()),
        "",
        markdown_table(rows),
        "",
        "Perplexity is exp(total NLL / total tokens) over the whole held-out split named above. "
        "Speedup is inference throughput relative to dense. "
        f"Pareto front (no variant both faster and better): {', '.join(rows[i]['variant'] for i in front)}.",
        "",
        f"![perplexity vs throughput]({PLOTS['ppl_vs_throughput']})",
        f"![perplexity vs parameters]({PLOTS['ppl_vs_params']})",
        f"![loss curves]({PLOTS['loss_curves']})",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    return {"report": out / "report.md", "csv": out / "results.csv", **plots, "series": series}
