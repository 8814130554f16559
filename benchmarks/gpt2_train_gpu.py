"""GPT-2 training throughput and MFU of every linear kind, measured through the project's one trainer.

A thin command over ``flyweight.train.lm.train_lm``: each configuration is one plain-dict config of the
"lm" task, trained by the Lightning ``LMModule`` exactly as ``compare``, ``wt103/*`` and ``tiny-lm`` train
(torch.compile of model + loss, bf16, fused LM loss, Triton attention, fused AdamW on CUDA by default:
``train/fastpath.py``), on ``data.corpus=random`` (one repeated global batch of random ids: no data
loading in the figure). No Hydra or OmegaConf needed; torch, transformers and lightning are.

  # the tuned-trainer rows of BENCHMARKS.md (one H200)
  PYTHONPATH=src python3 benchmarks/gpt2_train_gpu.py --out $OUT --kinds dense,ss1,monarch,lowrank \\
      --pad-vocab 64 --dropout 0.0 --steps 15 --warmup-steps 3 --batch-sizes 128 --fused-loss --attention triton
  # the trainer's own pick: micro-batch from its memory probe, accumulation up to 128 sequences a step
  PYTHONPATH=src python3 benchmarks/gpt2_train_gpu.py --out $OUT --batch-sizes auto --batch-max 128
  # where a step's GPU time goes (torch.profiler over the timed steps)
  PYTHONPATH=src python3 benchmarks/gpt2_train_gpu.py --out $OUT --part profile --batch-sizes 128 --steps 3
  # CPU smoke test (seconds)
  .venv/bin/python benchmarks/gpt2_train_gpu.py --out /tmp/bench --size tiny --seq-len 32 --batch-sizes 2 --steps 3

Tokens/s are the trainer's own: ``LMModule`` writes every optimizer step's duration to its run's
``steps.csv`` (``train_seconds``; each step reads its loss back with ``.item()``, a CUDA sync, so an
interval is a whole step); the row's tokens/s = tokens of the ``--steps`` steps after ``--warmup-steps``
(compilation included there) / their seconds. MFU = 3 x the model's forward FLOPs/token x tokens/s / peak
(``trainer.peak_tflops``, by GPU name otherwise: 989 TFLOP/s on the H100/H200), with the FLOPs of the
real 50257-token vocabulary only, so padded (``--pad-vocab 64``: 50304 rows) and unpadded rows compare.

Parts. throughput: the grid --kinds x --pad-vocab x --dropout x --batch-sizes, one row of
``throughput.csv`` per configuration as it finishes (an out-of-memory run is a row with error OOM; a
compiled run that fails otherwise is recorded and measured again eagerly); ``vs_dense``: tokens/s over
dense's at the same padding, dropout and micro-batch. profile: the first configuration of each kind
under torch.profiler, GPU kernel time per class -> ``profile.csv``. Each run's own folder (steps.csv,
logs) is under ``runs/``. What used to be ``--part quality`` (every kind trained on the same windows
of the default corpus, val perplexity) is ``python run.py experiment=compare`` (``compare-gpu`` on the
GPU); ``--part search`` is ``--batch-sizes auto`` (the trainer's memory probe).
"""

from __future__ import annotations

import argparse
import csv
import gc
import json
import platform
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from flyweight.train.fastpath import resolve_compile
from flyweight.train.lm import train_lm
from flyweight.train.metrics import mfu

KINDS = {"dense": {}, "ss1": {"compression": 4}, "monarch": {"nblocks": 4}, "lowrank": {"compression": 8}}
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
PRECISIONS = {"auto": "auto", "bf16": "bf16-mixed", "fp32": "32-true"}
REMOVED_PARTS = {"quality": "use `python run.py experiment=compare` (experiment=compare-gpu on the GPU)",
                 "search": "use --batch-sizes auto (the trainer's memory probe picks the micro-batch)",
                 "all": "use --part throughput, and experiment=compare for quality"}
MEASURED = ("tokens_per_s", "mfu", "step_ms", "warmup_s", "compile_s", "max_mem_gib", "loss", "steps",
            "params", "fwd_flops_per_token", "vocab_rows", "micro_batch", "accumulation", "attention",
            "fused_adamw", "precision")


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
    import lightning

    env = {"torch": torch.__version__, "lightning": lightning.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
        env["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    try:
        import transformers

        env["transformers"] = transformers.__version__
    except ImportError:
        pass
    return env


def is_oom(err: BaseException) -> bool:
    # compiled code can surface an allocation failure wrapped in another error type
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def lm_config(args, kind: str, micro_batch: int | str, pad: int, dropout: float, compile) -> dict:
    """The "lm" task's config of one configuration: what ``python run.py`` would resolve, as a dict."""
    model = {"size": args.size, "kind": kind, "settings": KINDS[kind], "n_positions": args.seq_len,
             "pad_vocab_to": pad or None, "dropout": dropout, "attention": args.attention}
    if args.size == "tiny":
        model["n_layer"] = 2
    auto = micro_batch == "auto"
    return {
        "seed": args.seed, "device": args.device, "model": model,
        # one global batch of random ids, repeated: the old benchmark's "one repeated random batch"
        "data": {"corpus": "random", "tokenizer": f"ids:{args.vocab}", "max_length": args.seq_len,
                 "global_batch_size": args.batch_max if auto else micro_batch, "micro_batch_size": micro_batch,
                 "split_seed": args.seed, "progress": False},
        "optim": {"lr": args.lr, "weight_decay": 0.1, "schedule": "cosine", "warmup_steps": args.warmup_steps,
                  "min_lr_ratio": 0.1, "fused": args.fused},
        "trainer": {"accelerator": {"auto": "auto", "cpu": "cpu"}.get(args.device, "gpu"), "devices": 1,
                    "precision": PRECISIONS[args.dtype], "max_steps": args.warmup_steps + args.steps,
                    "compile": compile, "compile_mode": None if args.compile_mode == "default" else args.compile_mode,
                    "loss_chunk": args.loss_chunk or None, "fused_loss": args.fused_loss,
                    "max_micro_batch": args.batch_max, "peak_tflops": args.peak_tflops, "label": kind,
                    "val_every_n_steps": 0, "ckpt_every_n_steps": 0, "eval_val": False, "eval_test": False,
                    "save_model": False, "resume": "never", "progress_bar": False,
                    "log_every_n_steps": 10},  # as compare-gpu; steps.csv still gets every step
    }


class TrainerFacts(Callback):
    """What a row reports of the trainer's own objects: the module class, the model's vocabulary rows,
    whether its AdamW is fused, and the MFU peak the module uses."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.module = type(pl_module).__name__
        self.vocab_rows = pl_module.model.config.vocab_size
        self.fused_adamw = bool(trainer.optimizers[0].defaults.get("fused"))
        self.peak = pl_module.peak


def step_log(run_dir: Path) -> list[dict]:
    with open(run_dir / "steps.csv") as f:
        return [{k: float(v) if v not in ("", None) else None for k, v in r.items()} for r in csv.DictReader(f)]


def timed_speed(steps: list[dict], warmup: int, timed: int, tokens_per_step: int) -> tuple[float, float]:
    """(tokens/s, seconds) of steps warmup+1 .. warmup+timed, from the trainer's per-step train_seconds."""
    if len(steps) != warmup + timed:
        raise RuntimeError(f"the trainer logged {len(steps)} steps, expected {warmup + timed}")
    seconds = steps[-1]["train_seconds"] - steps[warmup - 1]["train_seconds"]
    return timed * tokens_per_step / seconds, seconds


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    torch._dynamo.reset()


def run_name(kind: str, micro_batch, pad: int, dropout: float, eager_retry: bool) -> str:
    return f"{kind}-mb{micro_batch}-pad{pad}-drop{dropout}" + ("-eager" if eager_retry else "")


def measure(args, kind: str, micro_batch, pad: int, dropout: float, compile, stage: str,
            callbacks: tuple = ()) -> dict:
    """One configuration trained by ``train_lm`` for --warmup-steps + --steps steps; its row."""
    row = {"stage": stage, "kind": kind, "size": args.size, "seq_len": args.seq_len, "micro_batch": micro_batch,
           "pad_vocab_to": pad, "dropout": dropout, "compile": compile, "compile_mode": args.compile_mode,
           "loss_chunk": args.loss_chunk, "fused_loss": args.fused_loss, "dtype": args.dtype,
           **{k: "" for k in MEASURED if k != "micro_batch"}, "module": "", "run_dir": "", "error": ""}
    run_dir = args.out / "runs" / run_name(kind, micro_batch, pad, dropout, compile != args.compile)
    facts = TrainerFacts()
    try:
        res = train_lm(lm_config(args, kind, micro_batch, pad, dropout, compile), run_dir,
                       callbacks=(facts, *callbacks))
        tokens_per_step = res["micro_batch_size"] * res["accumulation"] * args.seq_len
        steps = step_log(run_dir)
        tps, seconds = timed_speed(steps, args.warmup_steps, args.steps, tokens_per_step)
        util = mfu(res["flops_per_token_fwd"], tps, facts.peak)
        mem = res["peak_train_memory_bytes"]
        row.update({
            "compile": res["compile"], "fused_loss": res["fused_loss"], "micro_batch": res["micro_batch_size"],
            "accumulation": res["accumulation"], "attention": res["attention"], "precision": res["precision"],
            "fused_adamw": facts.fused_adamw, "vocab_rows": facts.vocab_rows, "params": res["params"],
            "fwd_flops_per_token": res["flops_per_token_fwd"], "tokens_per_s": round(tps),
            "mfu": round(util, 4) if util is not None else "", "step_ms": round(seconds / args.steps * 1e3, 2),
            "warmup_s": round(steps[args.warmup_steps - 1]["train_seconds"] + res["compile_seconds"], 1),
            "compile_s": round(res["compile_seconds"], 1), "max_mem_gib": round(mem / 2**30, 1) if mem else "",
            "loss": round(steps[-1]["loss"], 3), "steps": res["steps"], "module": facts.module,
            "run_dir": str(run_dir.relative_to(args.out))})
    except Exception as err:  # noqa: BLE001 - record it and go on to the next configuration
        row["error"] = "OOM" if is_oom(err) else f"{type(err).__name__}: {str(err)[:200]}"
    finally:
        free()
    return row


class Recorder:
    """Measures a configuration, prints and appends its row, with its tokens/s relative to dense's
    (``vs_dense``): dense at the same padding, dropout and micro-batch, else dense's fastest micro-batch
    at that padding and dropout."""

    def __init__(self, args):
        self.args = args
        self.rows: list[dict] = []

    def dense_reference(self, row: dict) -> dict | None:
        same = [r for r in self.rows if r["kind"] == "dense" and r["tokens_per_s"] != ""
                and (r["pad_vocab_to"], r["dropout"]) == (row["pad_vocab_to"], row["dropout"])]
        exact = [r for r in same if r["micro_batch"] == row["micro_batch"]]
        return max(exact or same, key=lambda r: r["tokens_per_s"], default=None)

    def __call__(self, kind: str, micro_batch, pad: int, dropout: float, stage: str, callbacks=()) -> dict:
        args = self.args
        row = measure(args, kind, micro_batch, pad, dropout, args.compile, stage, callbacks)
        if args.compile and row["error"] not in ("", "OOM"):
            log(f"[{stage}] {kind} micro-batch {micro_batch}: the run failed ({row['error']}); measuring eager")
            self._record(row)
            row = measure(args, kind, micro_batch, pad, dropout, False, stage, callbacks)
        return self._record(row)

    def _record(self, row: dict) -> dict:
        ref = self.dense_reference(row) if row["kind"] != "dense" else None
        row["vs_dense"] = round(row["tokens_per_s"] / ref["tokens_per_s"], 3) \
            if ref is not None and row["tokens_per_s"] != "" else ""
        shown = {k: row[k] for k in ("kind", "micro_batch", "accumulation", "pad_vocab_to", "dropout",
                                     "tokens_per_s", "mfu", "max_mem_gib", "warmup_s", "vs_dense", "error")}
        log(f"[{row['stage']}] {shown}")
        append_row(self.args.out / "throughput.csv", row)
        self.rows.append(row)
        return row


def throughput(args) -> list[dict]:
    """The grid: every kind x padding x dropout x micro-batch of the command line."""
    rec = Recorder(args)
    for kind in args.kinds:
        for pad in args.pad_vocab:
            for dropout in args.dropout:
                for micro_batch in args.batch_sizes:
                    rec(kind, micro_batch, pad, dropout, "grid")
    return rec.rows


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


class KernelProfile(Callback):
    """torch.profiler over the training steps after the first ``skip`` (compilation, warm-up) to the end."""

    def __init__(self, skip: int):
        self.skip, self.prof, self.steps, self.kernels = skip, None, 0, []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.prof is None and trainer.global_step == self.skip:
            from torch.profiler import ProfilerActivity, profile

            if torch.cuda.is_available():
                torch.cuda.synchronize()
            cuda = [ProfilerActivity.CUDA] if pl_module.device.type == "cuda" else []
            self.prof = profile(activities=[ProfilerActivity.CPU, *cuda])
            self.prof.__enter__()

    def on_train_end(self, trainer, pl_module) -> None:
        if self.prof is None:
            return
        from torch.autograd import DeviceType

        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.prof.__exit__(None, None, None)
        self.steps = trainer.global_step - self.skip
        # kernels only: an operator event (aten::mm) also carries its kernels' time as "self device time",
        # so counting every event would count each kernel twice
        self.kernels = [(getattr(e, "self_device_time_total", 0.0) or 0.0, e.key)
                        for e in self.prof.key_averages() if e.device_type == DeviceType.CUDA]
        self.prof = None


def profile(args) -> list[dict]:
    """GPU time per kernel class over the timed steps of each kind (first --batch-sizes/--pad-vocab/--dropout)."""
    rows = []
    micro_batch, pad, dropout = args.batch_sizes[0], args.pad_vocab[0], args.dropout[0]
    for kind in args.kinds:
        prof = KernelProfile(args.warmup_steps)
        run = measure(args, kind, micro_batch, pad, dropout, args.compile, "profile", (prof,))
        if run["error"]:
            log(f"[profile] {kind}: {run['error']}")
            continue
        by_class: dict[str, float] = {}
        for us, key in prof.kernels:
            if us > 0:
                by_class[kernel_class(key)] = by_class.get(kernel_class(key), 0.0) + us / prof.steps / 1e3
        gpu_ms = sum(by_class.values())
        log(f"[profile] {kind}: micro-batch {run['micro_batch']}, step {run['step_ms']} ms wall, {gpu_ms:.1f} ms "
            f"of kernels, {run['tokens_per_s']:,} tokens/s, MFU {run['mfu']} (profiler on)")
        for label, ms in sorted(by_class.items(), key=lambda kv: -kv[1]):
            row = {"kind": kind, "micro_batch": run["micro_batch"], "pad_vocab_to": pad, "dropout": dropout,
                   "class": label, "ms_per_step": round(ms, 2), "share_of_kernel_time": round(ms / gpu_ms, 4),
                   "step_ms_wall": run["step_ms"]}
            log(f"[profile]   {label:48s} {ms:8.2f} ms  {ms / gpu_ms:6.1%}")
            append_row(args.out / "profile.csv", row)
            rows.append(row)
        for us, key in sorted(prof.kernels, reverse=True)[:20]:
            if us > 0:
                log(f"[profile]     {us / prof.steps / 1e3:8.2f} ms  {key[:110]}")
    return rows


# ---- command line ----------------------------------------------------------------------------------
def _ints(text: str, flag: str, allow_auto: bool = False) -> list:
    values = []
    for v in (v.strip() for v in text.split(",")):
        if allow_auto and v == "auto":
            values.append("auto")
        elif v.isdigit() and (int(v) > 0 or not allow_auto):
            values.append(int(v))
        elif v:
            raise SystemExit(f"{flag}: expected comma-separated {'positive' if allow_auto else 'non-negative'} "
                             f"integers{' or auto' if allow_auto else ''}, got {text!r}")
    if not values:
        raise SystemExit(f"{flag}: no value in {text!r}")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="output folder (CSV, JSON, runs/)")
    p.add_argument("--part", default="throughput", help="throughput | profile")
    p.add_argument("--kinds", default="dense,ss1,monarch,lowrank")
    p.add_argument("--size", default="small", help="GPT-2 size (tiny: 2 layers, for a CPU smoke test)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--vocab", type=int, default=50257, help="real vocabulary (ids of the random data)")
    p.add_argument("--pad-vocab", default="0", help="vocabulary paddings, comma-separated (0: none; 64: "
                   "50257 -> 50304 rows)")
    p.add_argument("--dropout", default="0.1", help="dropouts, comma-separated (0.0: the MFU convention; "
                   "0.1: the recipe)")
    p.add_argument("--batch-sizes", default="auto", help="micro-batches, comma-separated; each a whole optimizer "
                   "step (no accumulation); auto: the trainer's memory probe, accumulation up to --batch-max")
    p.add_argument("--batch-max", type=int, default=128, help="auto: sequences per optimizer step, and the "
                   "largest micro-batch the probe may pick")
    p.add_argument("--steps", type=int, default=20, help="timed optimizer steps per configuration")
    p.add_argument("--warmup-steps", type=int, default=5, help="untimed steps first (they include compilation)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile of model + loss (default: the trainer's auto, on CUDA only)")
    p.add_argument("--compile-mode", choices=COMPILE_MODES, default="default", help="torch.compile(mode=...)")
    p.add_argument("--attention", choices=("auto", "sdpa", "triton"), default="auto",
                   help="model.attention (auto: flyweight's Triton flash attention on CUDA, SDPA on CPU)")
    p.add_argument("--sdpa-backend", choices=("auto", "triton"), help="the old name of --attention: triton "
                   "-> --attention triton, auto -> --attention sdpa (PyTorch's own choice)")
    p.add_argument("--loss-chunk", type=int, default=0, help="trainer.loss_chunk: rows of logits at a time "
                   "(0: full logits)")
    p.add_argument("--fused-loss", action=argparse.BooleanOptionalAction, default=None,
                   help="trainer.fused_loss: head GEMM + cross-entropy as one op (default: auto, on GPUs)")
    p.add_argument("--fused", action=argparse.BooleanOptionalAction, default=None,
                   help="optim.fused: fused AdamW (default: on CUDA)")
    p.add_argument("--dtype", choices=tuple(PRECISIONS), default="auto",
                   help="auto: bf16-mixed on GPUs, fp32 on CPU (the trainer's precision=auto)")
    p.add_argument("--peak-tflops", type=float, help="MFU denominator (default: by GPU name, H200 989)")
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--seed", type=int, default=1111)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    args = p.parse_args(argv)
    if args.part in REMOVED_PARTS:
        p.error(f"--part {args.part} is gone from this benchmark: {REMOVED_PARTS[args.part]}")
    if args.part not in ("throughput", "profile"):
        p.error(f"--part: throughput or profile, got {args.part!r}")
    args.kinds = [k for k in args.kinds.split(",") if k]
    unknown = [k for k in args.kinds if k not in KINDS]
    if unknown or not args.kinds:
        p.error(f"unknown kinds {unknown}; valid: {', '.join(KINDS)}")
    args.batch_sizes = _ints(args.batch_sizes, "--batch-sizes", allow_auto=True)
    args.pad_vocab = _ints(args.pad_vocab, "--pad-vocab")
    try:
        args.dropout = [float(v) for v in args.dropout.split(",") if v.strip()]
    except ValueError:
        p.error(f"--dropout: expected comma-separated numbers, got {args.dropout!r}")
    if not args.dropout or not all(0.0 <= d < 1.0 for d in args.dropout):
        p.error("--dropout: values in [0, 1)")
    if args.steps < 1 or args.warmup_steps < 1:
        p.error("--steps and --warmup-steps must be >= 1 (the first step, with compilation, is never timed)")
    if args.sdpa_backend:
        args.attention = "triton" if args.sdpa_backend == "triton" else "sdpa"
    args.fused_loss = "auto" if args.fused_loss is None else args.fused_loss
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    args.compile = resolve_compile("auto" if args.compile is None else args.compile, "gpu" if cuda else "cpu")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"environment": environment(), "args": {k: str(v) for k, v in vars(args).items()}}
    log(f"[env] {results['environment']}")
    t0 = time.perf_counter()
    results[args.part] = throughput(args) if args.part == "throughput" else profile(args)
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    (args.out / "results.json").write_text(json.dumps(results, indent=1, default=str))
    log(f"[done] {results['wall_s']} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
