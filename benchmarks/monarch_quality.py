"""Monarch's quality side of the nblocks frontier: a tiny GPT-2 trained on CPU at nblocks 2/4/8/16 vs dense.

    PYTHONPATH=src .venv/bin/python benchmarks/monarch_quality.py [--steps 200] [--out benchmarks/results]

The model: GPT-2 blocks (2 layers, width 256, 4 heads, context 64) whose MLP and attention linears are
``MonarchLinear(nblocks=b)`` (or dense), trained from scratch with AdamW on the project's offline corpus
(``benchmarks/data/wiki_offline``: GPT-2 tokens of the wiki_offline splits, as its ``meta.json`` says,
written once by the former ``gpt2_train_gpu.py --export-data``, in git before 45c2829). To keep it a
CPU-minutes job the vocabulary is the training split's 4095 most frequent tokens plus one "other"
token (the same map for every variant), so the embedding and head are small and the block linears
dominate the compute, as they do at scale.
Every variant sees the same batches in the same order; the result is the validation loss after the
same number of steps, next to the block-linear parameters and FLOPs per token. The speed side of the
frontier is ``benchmarks/monarch_gpu.py --parts sweep`` (H200).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from transformers.pytorch_utils import Conv1D  # noqa: E402

from flyweight.linear.base import StructuredLinear  # noqa: E402
from flyweight.models.gpt2 import build_gpt2  # noqa: E402

DATA = Path(__file__).parent / "data" / "wiki_offline"
VOCAB = 4096
WIDTH, LAYERS, HEADS, CONTEXT, BATCH = 256, 2, 4, 64, 8


def load_tokens() -> tuple[torch.Tensor, torch.Tensor]:
    """Train and val token streams re-mapped to the train split's VOCAB - 1 most frequent ids (+ other)."""
    train = np.fromfile(DATA / "train.bin", dtype=np.uint16).astype(np.int64)
    val = np.fromfile(DATA / "val.bin", dtype=np.uint16).astype(np.int64)
    counts = np.bincount(train, minlength=65536)
    keep = np.argsort(-counts, kind="stable")[: VOCAB - 1]
    table = np.full(65536, VOCAB - 1, dtype=np.int64)
    table[keep] = np.arange(VOCAB - 1)
    return torch.from_numpy(table[train]), torch.from_numpy(table[val])


def batches(tokens: torch.Tensor, steps: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        start = torch.randint(0, tokens.numel() - CONTEXT - 1, (BATCH,), generator=gen)
        yield torch.stack([tokens[s: s + CONTEXT] for s in start.tolist()])


def block_linear_stats(model) -> tuple[int, int]:
    """(parameters, forward FLOPs per token) of the block linears (the layers the sweep changes)."""
    params = flops = 0
    for mod in model.modules():
        if isinstance(mod, StructuredLinear):
            params += sum(p.numel() for p in mod.parameters())
            flops += mod.flops_per_token()
        elif isinstance(mod, Conv1D):  # the dense model keeps HF GPT-2's own layers and their init
            params += sum(p.numel() for p in mod.parameters())
            flops += 2 * mod.weight.numel()
    return params, flops


@torch.no_grad()
def val_loss(model, val: torch.Tensor, n_batches: int = 40) -> float:
    model.eval()
    losses = [model(input_ids=ids, labels=ids).loss.item() for ids in batches(val, n_batches, seed=999)]
    model.train()
    return float(np.mean(losses))


def train_variant(kind: str, nblocks: int | None, train_tok, val_tok, steps: int, lr: float) -> dict:
    settings = {"nblocks": nblocks} if kind == "monarch" else None
    model = build_gpt2("small", kind=kind, settings=settings, n_layer=LAYERS, n_embd=WIDTH, n_head=HEADS,
                       n_positions=CONTEXT, vocab_size=VOCAB, dropout=0.0, seed=0)
    params, flops = block_linear_stats(model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    t = time.time()
    for ids in batches(train_tok, steps, seed=0):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
    return {"kind": kind, "nblocks": nblocks or "", "block_linear_params": params,
            "block_linear_flops_per_token": flops,
            "steps": steps, "tokens": steps * BATCH * CONTEXT, "final_train_loss": round(loss.item(), 4),
            "val_loss": round(val_loss(model, val_tok), 4), "cpu_s": round(time.time() - t, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--nblocks", default="2,4,8,16")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = p.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    train_tok, val_tok = load_tokens()
    rows = [train_variant("dense", None, train_tok, val_tok, args.steps, args.lr)]
    print(rows[-1], flush=True)
    for b in (int(v) for v in args.nblocks.split(",") if v):
        rows.append(train_variant("monarch", b, train_tok, val_tok, args.steps, args.lr))
        print(rows[-1], flush=True)
    dense = rows[0]
    for r in rows:
        r["params_vs_dense"] = round(r["block_linear_params"] / dense["block_linear_params"], 3)
        r["flops_vs_dense"] = round(r["block_linear_flops_per_token"] / dense["block_linear_flops_per_token"],
                                    3)
        r["val_loss_minus_dense"] = round(r["val_loss"] - dense["val_loss"], 4)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"monarch_quality_cpu_{args.steps}steps.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    cols = ["kind", "nblocks", "params_vs_dense", "flops_vs_dense", "val_loss", "val_loss_minus_dense"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    cmd = f"PYTHONPATH=src .venv/bin/python benchmarks/monarch_quality.py --steps {args.steps} --lr {args.lr}"
    text = (f"# Monarch nblocks sweep: quality (CPU, tiny GPT-2)\n\nCommand: `{cmd}`  \n"
            f"torch {torch.__version__}, float32, {LAYERS} layers x width {WIDTH}, context {CONTEXT}, "
            f"batch {BATCH}, {args.steps} steps ({args.steps * BATCH * CONTEXT:,} tokens), "
            f"vocabulary {VOCAB} "
            f"(train split's most frequent tokens), one seed. Block linears = MLP + attention projections."
            "\n\n" + "\n".join(lines) + "\n")
    (out / f"monarch_quality_cpu_{args.steps}steps.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
