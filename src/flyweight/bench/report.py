"""The comparison report: report.md + results.csv, the plots, and one plain sentence per kind.

Rows are produced by ``flyweight.bench.compare``; this module only formats and compares them, so the
report, the CSV and the console table always agree. Two comparisons of quality: at equal training
tokens (every variant's budget) and at equal training time (each variant's held-out perplexity-vs-time
curve). Speeds are medians with quartiles; a speed ratio whose difference from 1 lies inside the
measured spread is reported as "same speed", so a busy machine cannot flip a verdict.
"""

from __future__ import annotations

import csv
import math
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from flyweight.utils.io import atomic_path, atomic_write, atomic_write_text

REPORT_COLUMNS = [
    "variant", "kind", "settings", "params", "block_params", "flops_per_token", "val_ppl", "test_ppl",
    "ppl_at_equal_time", "time_to_dense_ppl", "train_tokens_per_s", "train_tokens_per_s_p25",
    "train_tokens_per_s_p75", "train_vs_dense", "train_mfu", "infer_tokens_per_s", "infer_tokens_per_s_p25",
    "infer_tokens_per_s_p75", "infer_vs_dense", "decode_ms_per_token", "peak_train_memory_gib", "weight_mib",
    "train_tokens", "train_steps", "train_seconds", "compile_seconds", "micro_batch_size", "accumulation",
    "corpus", "split", "device", "load_before", "load_after", "extra_eval_ppl",
]

COLUMN_DEFINITIONS = {
    "params (M)": "all trainable parameters, millions (tied embedding counted once)",
    "block params (M)": "parameters inside the transformer blocks (the linears the kinds replace, plus biases and "
                        "norms); embedding and head excluded",
    "MFLOP/token": "forward FLOPs per token of the model (2 per multiply-add; linears, head and attention scores), "
                   "millions; training costs about 3x",
    "val ppl": "held-out perplexity at the end of the shared token budget (equal tokens): exp(total NLL / total "
               "predicted tokens) over the whole validation split",
    "ppl @ equal time": "held-out perplexity after the training time of the fastest-finishing variant, read off each "
                        "variant's perplexity-vs-time curve (log-linear interpolation between evaluations)",
    "time to dense ppl": "training time to reach dense's final perplexity, relative to dense's time (< 1: sooner); "
                         "'not reached' when the variant's curve never gets there within its budget",
    "train tok/s": "training tokens per second (forward, backward, AdamW step), median with the 25th-75th percentile "
                   "range: on a CPU over round-robin repeats on the final models (so machine load hits every variant "
                   "alike), on a GPU over the logged optimizer steps of the run (first 2 skipped)",
    "train vs dense": "training speed ratio to dense; 'same' when the difference is inside the combined spread",
    "infer tok/s": "prefill throughput of the final model (batch and dtype above), median of repeats",
    "decode ms/tok": "greedy decoding latency per new token with the KV cache, batch 1, median of repeats",
    "train seconds": "time spent in optimizer steps (evaluation and compilation excluded), summed across resumes",
}

PLOTS = {
    "ppl_vs_time": "ppl_vs_time.png",
    "ppl_vs_tokens": "ppl_vs_tokens.png",
    "ppl_vs_throughput": "ppl_vs_throughput.png",
    "ppl_vs_params": "ppl_vs_params.png",
    "loss_curves": "loss_curves.png",
}

KIND_NAMES = {"dense": "Dense", "ss1": "SS1", "monarch": "Monarch", "lowrank": "Low-rank"}
BARELY_TRAINED_PPL = 200.0  # above this the ranking of kinds says little about their final quality
MIN_NOISE = 0.03  # speed differences below 3% are never called a difference


# ---- comparisons --------------------------------------------------------------------------------
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


def speed_ratio(a: dict, b: dict) -> tuple[float | None, bool]:
    """(median ratio a/b, whether it is a real difference): same speed when |ratio - 1| is within the
    two spreads combined (half the interquartile range relative to the median, added), or below 3%."""
    if not a or not b or not a.get("median") or not b.get("median"):
        return None, False
    ratio = a["median"] / b["median"]

    def rel(s):
        return (s["p75"] - s["p25"]) / (2 * s["median"])

    noise = max(MIN_NOISE, rel(a) + rel(b))
    return ratio, abs(ratio - 1) > noise


def ppl_at_time(evals: list[dict], seconds: float) -> float | None:
    """Perplexity on the curve at ``seconds`` of training (log-linear interpolation); None outside it."""
    pts = [(e["seconds"], e["ppl"]) for e in evals]
    if not pts or seconds < pts[0][0] or seconds > pts[-1][0] + 1e-9:
        return None
    for (t0, p0), (t1, p1) in zip(pts, pts[1:]):
        if t0 <= seconds <= t1:
            w = 0.0 if t1 == t0 else (seconds - t0) / (t1 - t0)
            return math.exp((1 - w) * math.log(p0) + w * math.log(p1))
    return pts[-1][1]


def time_to_ppl(evals: list[dict], target: float) -> float | None:
    """Training seconds at which the curve first reaches ``target`` (log-linear interpolation); None if never."""
    prev = None
    for e in evals:
        if e["ppl"] <= target:
            if prev is None or prev["ppl"] == e["ppl"]:
                return e["seconds"]
            w = (math.log(prev["ppl"]) - math.log(target)) / (math.log(prev["ppl"]) - math.log(e["ppl"]))
            return prev["seconds"] + w * (e["seconds"] - prev["seconds"])
        prev = e
    return None


def annotate(rows: list[dict]) -> dict | None:
    """Add the comparisons to dense to every row (in place); returns dense's row (None without one)."""
    dense = next((r for r in rows if r["kind"] == "dense"), None)
    equal_time = min(r["evals"][-1]["seconds"] for r in rows if r.get("evals"))
    for r in rows:
        r["ppl_at_equal_time"] = ppl_at_time(r.get("evals") or [], equal_time)
        r["train_vs_dense"], r["train_differs"] = speed_ratio(r["train_tokens_per_s"], dense and dense["train_tokens_per_s"])
        r["infer_vs_dense"], r["infer_differs"] = speed_ratio(r["infer_tokens_per_s"], dense and dense["infer_tokens_per_s"])
        r["time_to_dense_ppl"] = None
        if dense and r.get("evals") and dense.get("evals"):
            t = time_to_ppl(r["evals"], dense["val_ppl"])
            r["time_to_dense_ppl"] = t / dense["evals"][-1]["seconds"] if t is not None and dense["evals"][-1]["seconds"] else None
    return dense


def _times(ratio: float | None, differs: bool) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.2f}x" if differs else f"same ({ratio:.2f}x)"


def sentence(r: dict, dense: dict | None, equal_time: float) -> str:
    """One plain sentence on what this kind buys over dense in this run."""
    name = f"{KIND_NAMES.get(r['kind'], r['kind'])} {r['settings'] if r['settings'] != '-' else ''}".strip()
    if dense is None or r is dense:
        return (f"**{r['variant']}** ({name}) is the reference: held-out perplexity {r['val_ppl']:,.1f} after "
                f"{r['train_tokens']:,} tokens in {r['train_seconds']:.0f} s of training.")
    parts = [f"{dense['block_params'] / r['block_params']:.1f}x fewer block parameters",
             f"{dense['flops_per_token'] / r['flops_per_token']:.2f}x fewer FLOPs per token"]
    speed = r["train_vs_dense"]
    if speed is not None:
        parts.append(f"trained at {speed:.2f}x dense's tokens/s" if r["train_differs"]
                     else f"trained at the same speed as dense ({speed:.2f}x, inside the timing noise)")
    delta = r["val_ppl"] / dense["val_ppl"] - 1
    parts.append(f"perplexity {abs(delta):.0%} {'higher' if delta > 0 else 'lower'} than dense at equal tokens "
                 f"({r['val_ppl']:,.1f} vs {dense['val_ppl']:,.1f})")
    if r["time_to_dense_ppl"] is not None:
        parts.append(f"reached dense's final perplexity in {r['time_to_dense_ppl']:.2f}x the time")
    else:
        parts.append("did not reach dense's final perplexity within its budget")
    return f"**{r['variant']}** ({name}): " + "; ".join(parts) + "."


# ---- formatting ---------------------------------------------------------------------------------
def _fmt(value, digits: int = 2) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _med(stat, digits: int = 0) -> str:
    if not stat or stat.get("median") is None:
        return "-"
    return f"{stat['median']:,.{digits}f} ({stat['p25']:,.{digits}f}-{stat['p75']:,.{digits}f})"


TABLE_HEAD = ["variant", "kind", "settings", "params (M)", "block params (M)", "MFLOP/token", "val ppl",
              "ppl @ equal time", "time to dense ppl", "train tok/s", "train vs dense", "infer tok/s",
              "infer vs dense", "decode ms/tok", "train seconds"]


def markdown_table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(TABLE_HEAD) + " |", "|" + "---|" * len(TABLE_HEAD)]
    for r in rows:
        ttd = r.get("time_to_dense_ppl")
        lines.append("| " + " | ".join([
            r["variant"], r["kind"], r["settings"], f"{r['params'] / 1e6:.2f}", f"{r['block_params'] / 1e6:.2f}",
            f"{r['flops_per_token'] / 1e6:.2f}", _fmt(r["val_ppl"]), _fmt(r.get("ppl_at_equal_time")),
            (f"{ttd:.2f}x" if ttd is not None else "not reached"), _med(r["train_tokens_per_s"]),
            _times(r.get("train_vs_dense"), r.get("train_differs", False)), _med(r["infer_tokens_per_s"]),
            _times(r.get("infer_vs_dense"), r.get("infer_differs", False)), _med(r["decode_ms_per_token"], 2),
            _fmt(r["train_seconds"], 0),
        ]) + " |")
    return "\n".join(lines)


def csv_row(r: dict) -> dict:
    t, i, d = r["train_tokens_per_s"] or {}, r["infer_tokens_per_s"] or {}, r["decode_ms_per_token"] or {}
    mem = r.get("peak_train_memory_bytes")
    flat = {**r, "train_tokens_per_s": t.get("median"), "train_tokens_per_s_p25": t.get("p25"),
            "train_tokens_per_s_p75": t.get("p75"), "infer_tokens_per_s": i.get("median"),
            "infer_tokens_per_s_p25": i.get("p25"), "infer_tokens_per_s_p75": i.get("p75"),
            "decode_ms_per_token": d.get("median"), "peak_train_memory_gib": mem / 2**30 if mem else None,
            "weight_mib": r["weight_bytes"] / 2**20,
            "extra_eval_ppl": (r.get("extra_eval") or {}).get("test_ppl")}
    return {c: flat.get(c) for c in REPORT_COLUMNS}


def write_results_csv(rows: list[dict], path: Path) -> None:
    with atomic_write(path, "w") as f:
        w = csv.DictWriter(f, fieldnames=REPORT_COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow(csv_row(r))


# ---- provenance ---------------------------------------------------------------------------------
def _git(*args) -> str | None:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def provenance(device) -> dict:
    """Commit, versions, hardware and machine load of the run (what a reader needs to trust the numbers)."""
    import torch

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for mod in ("triton", "transformers", "lightning", "tokenizers"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - an absent optional package is just not listed
            pass
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    info = {"commit": (commit + (" (uncommitted changes)" if dirty else "")) if commit else "unknown",
            "versions": ", ".join(f"{k} {v}" for k, v in versions.items()),
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "host": f"{platform.node()}, {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}"}
    if getattr(device, "type", "cpu") == "cuda":
        p = torch.cuda.get_device_properties(device)
        info["gpu"] = f"{p.name}, {p.total_memory / 2**30:.0f} GiB"
    return info


def corpus_description(corpus: str) -> str:
    """The corpus manifest (sources, versions, licences, tokens per split) when the corpus module provides
    one, else the corpus name."""
    try:
        from flyweight.data.manifest import corpus_manifest
    except ImportError:
        return corpus
    try:
        m = corpus_manifest(corpus)
    except Exception as err:  # noqa: BLE001 - the report must not fail on a manifest problem
        return f"{corpus} (no manifest: {type(err).__name__})"
    try:
        from flyweight.data.manifest import format_manifest

        return "\n\n" + format_manifest(m) + "\n"
    except Exception:  # noqa: BLE001 - an older manifest module: the plain fields
        return "; ".join(f"{k}: {v}" for k, v in m.items() if not isinstance(v, (dict, list))) or corpus


# ---- plots ----------------------------------------------------------------------------------------
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
    with atomic_path(path) as tmp:  # complete or absent, like every file of the report
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def plot_all(rows: list[dict], out: Path) -> tuple[dict[str, Path], dict[str, int]]:
    """Write the PNGs; return their paths and how many data series each one shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {k: out / v for k, v in PLOTS.items()}
    names = [r["variant"] for r in rows]
    ppl = [float(r["val_ppl"]) for r in rows]
    series = {}

    for key, xkey, xlabel, title in (("ppl_vs_time", "seconds", "training time (s)", "held-out perplexity vs time"),
                                     ("ppl_vs_tokens", "tokens", "training tokens", "held-out perplexity vs tokens")):
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for r in rows:
            pts = r.get("evals") or []
            ax.plot([p[xkey] for p in pts], [p["ppl"] for p in pts], "-o", ms=3, label=r["variant"], lw=1.2)
        ax.set_yscale("log")
        series[key] = len(ax.lines)
        _save(plt, fig, ax, paths[key], xlabel, "validation perplexity (log)", title)

    thr = [float(r["train_tokens_per_s"]["median"] or 0) for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    _labelled_scatter(ax, names, thr, ppl)
    front = pareto_front(thr, ppl)
    ax.plot([thr[i] for i in front], [ppl[i] for i in front], "k--o", mfc="none", ms=13, lw=1,
            label="Pareto front", zorder=2)
    series["ppl_vs_throughput"] = len(ax.collections)
    _save(plt, fig, ax, paths["ppl_vs_throughput"], "training throughput (tokens/s, median)",
          "validation perplexity", "quality vs training speed (down-right is better)")

    fig, ax = plt.subplots(figsize=(6, 4.5))
    _labelled_scatter(ax, names, [r["params"] / 1e6 for r in rows], ppl)
    series["ppl_vs_params"] = len(ax.collections)
    _save(plt, fig, ax, paths["ppl_vs_params"], "parameters (M)", "validation perplexity",
          "quality vs size (down-left is better)")

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for r in rows:
        pts = r.get("curve") or []
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=r["variant"], lw=1.2)
    series["loss_curves"] = len(ax.lines)
    _save(plt, fig, ax, paths["loss_curves"], "training tokens", "training loss", "loss curves")
    return paths, series


# ---- the report -----------------------------------------------------------------------------------
def write_report(rows: list[dict], out_dir: str | Path, meta: dict) -> dict[str, Path]:
    """report.md, results.csv and the plots in ``out_dir``; returns their paths (and ``series``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dense = annotate(rows)
    equal_time = min(r["evals"][-1]["seconds"] for r in rows if r.get("evals"))
    write_results_csv(rows, out / "results.csv")
    plots, series = plot_all(rows, out)
    cfg = meta.get("config") or {}
    inf = (cfg.get("compare") or {}).get("inference") or {}
    first = rows[0]
    prov = provenance(meta.get("device"))
    fast = first.get("fast_path") or {}
    loads = [x for r in rows for x in (r.get("load_before"), r.get("load_after")) if x is not None]
    splits = first.get("splits") or {}
    lines = [
        "# flyweight comparison report",
        "",
        "## What this run says",
        "",
        *[f"- {sentence(r, dense, equal_time)}" for r in rows],
    ]
    if dense is not None and dense["val_ppl"] > BARELY_TRAINED_PPL:
        lines += ["", f"Caution: dense's perplexity of {dense['val_ppl']:,.0f} means a barely trained model. "
                      "At this budget the ranking shows early learning speed, not final quality; the GPU preset "
                      "(`experiment=compare-gpu`) trains each kind for 100M+ tokens."]
    lines += [
        "",
        "## Results",
        "",
        markdown_table(rows),
        "",
        f"Equal tokens: every variant trained {first['train_tokens']:,} tokens ({first['train_steps']} steps). "
        f"Equal time: perplexities read at {equal_time:.0f} s of training, the shortest variant's total.",
        "",
        "Columns:",
        "",
        *[f"- **{k}**: {v}" for k, v in COLUMN_DEFINITIONS.items()],
        "",
        f"![perplexity vs time]({PLOTS['ppl_vs_time']})",
        f"![perplexity vs tokens]({PLOTS['ppl_vs_tokens']})",
        f"![perplexity vs training throughput]({PLOTS['ppl_vs_throughput']})",
        f"![perplexity vs parameters]({PLOTS['ppl_vs_params']})",
        f"![loss curves]({PLOTS['loss_curves']})",
        "",
        "## Run",
        "",
        f"- Command: `{meta.get('command', '')}`",
        f"- Corpus: {corpus_description(first['corpus'])}; evaluated on the validation split "
        f"({first.get('val_tokens', 0):,} predicted tokens, held out by document, never trained on)"
        + (f"; train split {splits['train']['tokens']:,} tokens" if "train" in splits else ""),
        f"- Model: {cfg.get('model', {}).get('size')} GPT-2"
        + "".join(f", {k} {cfg['model'][k]}" for k in ("n_layer", "n_embd", "n_head", "dropout")
                  if cfg.get("model", {}).get(k) is not None)
        + f", tokenizer {cfg.get('data', {}).get('tokenizer')}, {cfg.get('data', {}).get('max_length')}-token windows",
        f"- Training: {cfg.get('data', {}).get('global_batch_size')} sequences per step (micro-batch "
        f"{first.get('micro_batch_size')} x accumulation {first.get('accumulation')}), AdamW lr "
        f"{cfg.get('optim', {}).get('lr')}, {cfg.get('optim', {}).get('schedule')} schedule; fast path: "
        + ", ".join(f"{k} {v}" for k, v in fast.items()),
        f"- Training speed from: {first.get('train_timing', 'training log')}",
        f"- Inference timing: prefill batch {inf.get('batch')} x {inf.get('seq_len') or cfg.get('data', {}).get('max_length')} "
        f"tokens, decode {inf.get('decode_tokens')} tokens after {inf.get('prompt_len')}, {inf.get('dtype')}, "
        f"{inf.get('repeats')} repeats",
        f"- Device: {first['device']}" + (f" ({prov['gpu']})" if "gpu" in prov else "") + f"; host: {prov['host']}",
        f"- Load average (1 min) before/after each variant: {', '.join(str(x) for x in loads) or '-'}",
        f"- Commit: {prov['commit']}; {prov['versions']}; {prov['date']}; seed {cfg.get('seed')}",
        "",
    ]
    extra = [r for r in rows if r.get("extra_eval")]
    if extra:
        lines[lines.index("## Run") - 1:lines.index("## Run") - 1] = [
            "", f"Also evaluated on {extra[0]['extra_eval']['corpus']} test: "
                + ", ".join(f"{r['variant']} {r['extra_eval']['test_ppl']:,.2f}" for r in extra) + ".", ""]
    atomic_write_text(out / "report.md", "\n".join(lines))
    return {"report": out / "report.md", "csv": out / "results.csv", **plots, "series": series}
