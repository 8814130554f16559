"""Monarch on one GPU: the Triton kernels against dense nn.Linear and fly's formulation, in one process.

    PYTHONUNBUFFERED=1 PYTHONPATH=src python3 benchmarks/monarch_gpu.py --out OUT [--smoke] [--budget-s 330]
        [--parts numerics,compile,host,layers,sweep,train] [--autotune 0|1]

Parts (each in its own try/except; rows go to OUT/<part>.csv as they finish, the log to OUT/run.log):
  numerics  the layer (y, dX, dW1, dW2, db) in fp16 and bf16 against float64, next to the plain PyTorch
            path (the layer's bmm code) in the same precision: PASS when error <= 2x plain + 1e-4 (relative
            to max |ref|); memory poisoned with NaN first; odd M, padded widths, b not dividing r; also
            checks that fly's formulation below computes the same function.
  compile   torch.compile(fullgraph=True) of a Monarch MLP (custom ops + Inductor) against eager, fwd+bwd.
  host      host time per call (GPU kept busy by a sleep kernel): nn.Linear vs Monarch, fwd and fwd+bwd.
  layers    per shape and M: forward and forward+backward, CUDA-graph replay (launch cost removed) and
            eager, for dense, "monarch" (the kernels), "monarch-strided" (the kernels with the stride-b
            Y / dY accesses instead of the joined tiles), "monarch-fused" (forward only: both products in
            one kernel, where b divides r), "monarch-torch" (flyweight's bmm path) and "fly"
            (two bmm + permutation, as HazyResearch/fly's BlockdiagButterflyMultiply); peak memory of
            one fwd+bwd. GPT-2 small widths at M 2048/8192/16384/65536, Llama-3-8B widths at 2048/16384.
  sweep     nblocks 2/4/8/16 at the GPT-2 widths, M = 16384: graph fwd and fwd+bwd, kernels vs dense.
  train     HF GPT2LMHeadModel (GPT-2 small, random init), dense vs flyweight.convert(MonarchConfig(nblocks=4))
            on mlp+attn, torch.compile, bf16 autocast, fused AdamW, micro-batch 32 x 1024: tokens/s.
The autotuner's picks go to OUT/tuning.json. Without CUDA everything runs at toy size on CPU (the kernels
in the Triton interpreter, compile with aot_eager): a dry run that catches mistakes before GPU time.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before flyweight's kernels are imported


def _early_autotune_flag() -> None:
    """--autotune / --smoke decide FLYWEIGHT_MONARCH_AUTOTUNE, which tuning.py reads at import."""
    argv = sys.argv[1:]
    value = None
    if "--autotune" in argv:
        value = argv[argv.index("--autotune") + 1]
    elif "--smoke" in argv:
        value = "0"  # smoke: the default tile only (the point is catching errors, not compiling 30 configs)
    if value is not None:
        os.environ["FLYWEIGHT_MONARCH_AUTOTUNE"] = value


_early_autotune_flag()

import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
from gpu_harness import (  # noqa: E402
    DEV, Run, adamw_step, chosen_parts, graph_us, hf_gpt2, host_us, part_parser, peak_mib, poison, rel_err, run_parts,
    sync, time_steps, time_us, write_env,
)

import flyweight  # noqa: E402
from flyweight.kernels import _launch  # noqa: E402
from flyweight.kernels.monarch import monarch_sizes, tuning  # noqa: E402
from flyweight.kernels.monarch import op as monarch_op  # noqa: E402
from flyweight.linear import MonarchLinear  # noqa: E402

COMPILE_BACKEND = "inductor" if CUDA else "aot_eager"
L2_BYTES = 60 * 2**20
PARTS = ("numerics", "compile", "host", "layers", "sweep", "train")
GPT2_SHAPES = {"gpt2-fc": (768, 3072), "gpt2-proj": (3072, 768), "gpt2-qkv": (768, 2304),
               "gpt2-attn-out": (768, 768)}
LLAMA_SHAPES = {"llama-up": (4096, 14336), "llama-down": (14336, 4096), "llama-qo": (4096, 4096)}
GPT2_MS = (2048, 8192, 16384, 65536)
LLAMA_MS = (2048, 16384)
TOY_SHAPES = {"toy-a": (64, 96), "toy-pad": (50, 70)}
TOY_MS = (33,)
VARIANTS = ("dense", "monarch", "monarch-strided", "monarch-fused", "monarch-torch", "fly")




# ---- timing -------------------------------------------------------------------------------










# ---- fly's formulation, written here from its description --------------------------------------
class FlyMonarch(torch.nn.Module):
    """Monarch the way HazyResearch/fly's MonarchLinear computes it (BlockdiagButterflyMultiply): pad,
    bmm with the first block-diagonal factor, a materialised permutation (reshape, transpose,
    .contiguous()), bmm with the second, a permute back, cut, add bias. Same parameters and function as
    flyweight's MonarchLinear (``from_flyweight`` shares them)."""

    def __init__(self, layer: MonarchLinear):
        super().__init__()
        self.in_features, self.out_features = layer.in_features, layer.out_features
        self.w1 = torch.nn.Parameter(layer.w1.detach().clone())  # (b, r, p_in)
        self.w2 = torch.nn.Parameter(layer.w2.detach().clone())  # (b, p_out, r)
        self.bias = None if layer.bias is None else torch.nn.Parameter(layer.bias.detach().clone())

    def forward(self, x):
        lead = x.shape[:-1]
        x = x.reshape(-1, self.in_features)
        nb, r, p_in = self.w1.shape
        p_out = self.w2.shape[1]
        m = x.shape[0]
        if nb * p_in != self.in_features:
            x = F.pad(x, (0, nb * p_in - self.in_features))
        out1 = torch.bmm(x.view(m, nb, p_in).transpose(0, 1), self.w1.transpose(1, 2))  # (b, M, r)
        # the stride permutation, materialised: (b, M, r) planes of the middle vector read as [j, l]
        out1 = out1.transpose(0, 1).reshape(m, r, nb).transpose(1, 2).contiguous().transpose(0, 1)
        out2 = torch.bmm(out1, self.w2.transpose(1, 2))  # (b, M, p_out)
        y = out2.permute(1, 2, 0).reshape(m, p_out * nb)[:, : self.out_features]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)


def make(variant: str, k: int, n: int, nblocks: int = 4, dtype=torch.bfloat16, bias: bool = True):
    if variant == "dense":
        return torch.nn.Linear(k, n, bias=bias, device=DEV, dtype=dtype)
    layer = MonarchLinear(k, n, bias=bias, nblocks=nblocks, device=DEV, dtype=dtype)
    if variant == "monarch-torch":
        layer.backend = "torch"
    elif not CUDA:
        layer.backend = "triton"  # the CPU dry run exercises the kernels (interpreter)
    if variant == "fly":
        return FlyMonarch(layer)
    return layer


def copies_for(layer, m: int, k: int, n: int) -> int:
    """Layer copies to cycle through so weights + activations exceed L2 (no call finds its data cached)."""
    nbytes = sum(p.numel() * p.element_size() for p in layer.parameters()) + m * (k + n) * 2
    return max(1, min(8, math.ceil(2 * L2_BYTES / max(1, nbytes)))) if CUDA else 1


@contextlib.contextmanager
def y_kernels(kind: str):
    """Run the kernels that touch Y / dY (second, dmid, dw2) as "joined" (contiguous tiles, all b blocks
    in one program) or "strided" (one block per program, stride-b accesses)."""
    old = tuning.SECOND, tuning.BACKWARD
    tuning.SECOND = tuning.BACKWARD = kind
    try:
        yield
    finally:
        tuning.SECOND, tuning.BACKWARD = old


@contextlib.contextmanager
def fused_forward():
    """Forwards without grad through the single fused kernel (where b divides r)."""
    old, tuning.FUSED = tuning.FUSED, "inference"
    try:
        yield
    finally:
        tuning.FUSED = old


def fused_applies(k: int, n: int, nblocks: int) -> bool:
    return monarch_op.fused_applies(monarch_sizes(k, n, nblocks))


def call_fns(variant, k, n, m, nblocks=4, grad=False):
    if variant == "monarch-fused":  # inference only: the fused kernel keeps no intermediate for a backward
        fns = call_fns("monarch", k, n, m, nblocks, grad)

        def fused(f):
            with fused_forward():
                return f()
        return [lambda f=f: fused(f) for f in fns]
    if variant == "monarch-strided":  # the kernels with the one-block-per-program second product
        fns = call_fns("monarch", k, n, m, nblocks, grad)

        def strided(f):
            with y_kernels("strided"):
                return f()
        return [lambda f=f: strided(f) for f in fns]
    base = make(variant, k, n, nblocks)
    layers = [base] + [copy.deepcopy(base) for _ in range(copies_for(base, m, k, n) - 1)]
    xs = [torch.randn(m, k, device=DEV, dtype=torch.bfloat16, requires_grad=grad) for _ in layers]
    if not grad:
        def fwd(l, x):
            with torch.no_grad():
                return l(x)
        return [lambda l=l, x=x: fwd(l, x) for l, x in zip(layers, xs)]
    gs = [torch.randn(m, n, device=DEV, dtype=torch.bfloat16) for _ in layers]
    return [lambda l=l, x=x, g=g: l(x).backward(g) for l, x, g in zip(layers, xs, gs)]


def layer_peak_mib(variant, k, n, m, nblocks=4) -> float:
    if not CUDA:
        return float("nan")
    layer = make(variant, k, n, nblocks)
    x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(m, n, device=DEV, dtype=torch.bfloat16)
    layer(x).backward(g)  # gradients allocated: the peak below is the step's own working memory
    return peak_mib(lambda: layer(x).backward(g))


# ---- numerics ---------------------------------------------------------------------------------


def grads(layer, x, g) -> dict:
    layer.zero_grad(set_to_none=True)
    xa = x.detach().clone().requires_grad_()
    y = layer(xa)
    y.backward(g)
    out = {"y": y.detach(), "dx": xa.grad, "dw1": layer.w1.grad, "dw2": layer.w2.grad}
    if layer.bias is not None:
        out["db"] = layer.bias.grad
    return out


def numerics(run: Run) -> None:
    toy = run.smoke or not CUDA
    cases = [("toy-a", 64, 96, 4, 33), ("toy-pad", 50, 70, 4, 17)] if toy else [
        ("gpt2-fc", 768, 3072, 4, 4097), ("gpt2-proj", 3072, 768, 4, 2048), ("gpt2-qkv", 768, 2304, 4, 1031),
        ("gpt2-attn-out", 768, 768, 4, 2048), ("llama-qo", 4096, 4096, 4, 1024),
        ("padded", 1000, 3000, 4, 777),
        ("b=8", 768, 3072, 8, 2048), ("b=16", 768, 3072, 16, 2048), ("b=3", 770, 2300, 3, 513)]
    tuned = tuning.AUTOTUNE
    if not toy:
        cases.append(("gpt2-fc tuned", 768, 3072, 4, 8192))  # the autotuned tiles, at a benchmark size
    try:
        for case in cases:
            tuning.AUTOTUNE = tuned and case[0].endswith("tuned")  # odd sizes: default tiles, no re-tuning
            numerics_case(run, *case)
    finally:
        tuning.AUTOTUNE = tuned


def numerics_case(run: Run, name: str, k: int, n: int, nb: int, m: int) -> None:
    torch.manual_seed(0)
    ref_layer = MonarchLinear(k, n, nblocks=nb, device=DEV, dtype=torch.float64)
    ref_layer.backend = "torch"
    x64 = torch.randn(m, k, device=DEV, dtype=torch.float64)
    g64 = torch.randn(m, n, device=DEV, dtype=torch.float64)
    want = grads(ref_layer, x64, g64)
    fly = FlyMonarch(ref_layer)
    fly_err = rel_err(fly(x64), want["y"])
    for dtype in (torch.float16, torch.bfloat16):
        if not CUDA and dtype == torch.bfloat16:
            continue  # Triton's interpreter multiplies bfloat16 tiles as integers (tl.dot): GPU only
        results = {}
        for backend in ("triton", "torch"):
            layer = copy.deepcopy(ref_layer).to(dtype)
            layer.backend = backend
            poison()
            got = grads(layer, x64.to(dtype), g64.to(dtype))
            results[backend] = {key: rel_err(v, want[key]) for key, v in got.items()}
        for key in want:
            kern, plain = results["triton"][key], results["torch"][key]
            ok = kern <= 2 * plain + 1e-4
            run.row("numerics", {"case": name, "K": k, "N": n, "nblocks": nb, "M": m,
                                 "dtype": str(dtype).replace("torch.", ""), "tensor": key,
                                 "kernel_err": f"{kern:.3e}", "plain_err": f"{plain:.3e}",
                                 "fly_vs_f64_y": f"{fly_err:.1e}", "pass": ok})
            if not ok:
                run.summary.append(f"numerics FAIL {name} {dtype} {key}: {kern:.2e} vs plain {plain:.2e}")
        worst = max(results["triton"][k_] / (2 * results["torch"][k_] + 1e-4) for k_ in want)
        run.log(f"numerics {name} {dtype}: worst kernel/(2 plain + 1e-4) = {worst:.2f}; "
                f"fly y err {fly_err:.1e}")


# ---- compile -------------------------------------------------------------------------------
def compile_check(run: Run) -> None:
    toy = run.smoke or not CUDA
    k, n, m = (64, 96, 33) if toy else (768, 3072, 8192)
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(MonarchLinear(k, n, device=DEV, dtype=torch.bfloat16), torch.nn.GELU(),
                              MonarchLinear(n, k, device=DEV, dtype=torch.bfloat16))
    if not CUDA:
        for mod in mlp:
            if isinstance(mod, MonarchLinear):
                mod.backend = "triton"
    inner = copy.deepcopy(mlp)
    comp = torch.compile(inner, fullgraph=True, backend=COMPILE_BACKEND)
    x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
    g = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
    outs = []
    for model, first in ((mlp, mlp[0]), (comp, inner[0])):
        xa = x.clone().requires_grad_()
        y = model(xa)
        y.backward(g)
        outs.append((y.detach(), xa.grad, first.w1.grad))
    errs = [rel_err(a, b.double()) for a, b in zip(outs[1], outs[0])]
    ok = max(errs) < 2e-2
    eager_us = time_us(lambda: mlp(x.clone().requires_grad_()).backward(g))
    comp_us = time_us(lambda: comp(x.clone().requires_grad_()).backward(g))
    run.row("compile", {"K": k, "N": n, "M": m, "max_rel_diff": f"{max(errs):.2e}", "pass": ok,
                        "eager_fwdbwd_us": round(eager_us, 1), "compiled_fwdbwd_us": round(comp_us, 1)})
    run.log(f"compile fullgraph MLP {k}->{n}->{k} M={m}: max rel diff vs eager {max(errs):.1e} "
            f"({'PASS' if ok else 'FAIL'}); fwd+bwd eager {eager_us:.0f} us, compiled {comp_us:.0f} us")
    if not ok:
        run.summary.append(f"compile FAIL: compiled vs eager {max(errs):.2e}")


# ---- host time -------------------------------------------------------------------------------
def host(run: Run) -> None:
    k, n, m = (64, 96, 8) if (run.smoke or not CUDA) else (768, 3072, 256)
    # "monarch, autotuner launch": every launch through triton.autotune and Triton's binding
    # (kernels/_launch.TunedLaunch off), as before the direct re-launch
    for variant in ("dense", "monarch", "monarch, autotuner launch", "fly"):
        _launch.TunedLaunch.enabled = _launch.SUPPORTED and variant != "monarch, autotuner launch"
        for pass_ in ("fwd", "fwdbwd"):
            fn = call_fns(variant.split(",")[0], k, n, m, grad=pass_ == "fwdbwd")[0]
            us = host_us(fn, n=200 if CUDA else 5)
            run.row("host", {"variant": variant, "pass": pass_, "K": k, "N": n, "M": m,
                             "host_us": round(us, 1)})
            run.log(f"host {variant} {pass_}: {us:.1f} us per call")
    _launch.TunedLaunch.enabled = _launch.SUPPORTED


# ---- layer speed -----------------------------------------------------------------------------
def measure_shape(run: Run, part: str, name: str, k: int, n: int, m: int, nblocks: int, variants) -> None:
    for pass_ in ("fwd", "fwdbwd"):
        res: dict[tuple[str, str], float] = {}
        for variant in variants:
            if variant == "monarch-fused" and (pass_ != "fwd" or not fused_applies(k, n, nblocks)):
                continue
            fns = call_fns(variant, k, n, m, nblocks, grad=pass_ == "fwdbwd")
            res[(variant, "graph")] = graph_us(fns)
            eager = part == "layers" and variant not in ("monarch-strided", "monarch-fused")  # graph only
            res[(variant, "eager")] = time_us(fns[0]) if eager else float("nan")
            del fns
        for (variant, timing), us in res.items():
            if math.isnan(us):
                continue
            dense = res[("dense", timing)]
            fly = res.get(("fly", timing), float("nan"))
            run.row(part, {"shape": name, "K": k, "N": n, "M": m, "nblocks": nblocks, "pass": pass_,
                           "timing": timing, "variant": variant, "us": round(us, 1),
                           "speedup_vs_dense": round(dense / us, 3), "speedup_vs_fly": round(fly / us, 3),
                           "peak_mib": round(layer_peak_mib(variant, k, n, m, nblocks), 1)
                           if (pass_ == "fwdbwd" and timing == "eager") else ""})
        if ("monarch-strided", "graph") in res:
            run.log(f"  Y/dY kernels joined vs strided: {res[('monarch-strided', 'graph')]:.0f} us strided, "
                    f"{res[('monarch', 'graph')]:.0f} us joined")
        if ("monarch-fused", "graph") in res:
            run.log(f"  fused single kernel: {res[('monarch-fused', 'graph')]:.0f} us "
                    f"({res[('dense', 'graph')] / res[('monarch-fused', 'graph')]:.2f}x dense)")
        mono, dense = res[("monarch", "graph")], res[("dense", "graph")]
        line = (f"{part} {name} {k}x{n} M={m} b={nblocks} {pass_} graph: dense {dense:.0f} us, "
                f"monarch {mono:.0f} us ({dense / mono:.2f}x dense)")
        if ("fly", "graph") in res:
            line += f", fly {res[('fly', 'graph')]:.0f} us ({res[('fly', 'graph')] / mono:.2f}x fly)"
        run.log(line)
        if part == "layers" or nblocks == 4:
            run.summary.append(line)
    if CUDA:
        torch.cuda.empty_cache()


def layers(run: Run) -> None:
    toy = run.smoke or not CUDA
    if toy:
        plan = [(name, k, n, m) for name, (k, n) in TOY_SHAPES.items() for m in TOY_MS]
    else:  # the targets' sizes first (GPT-2 fc/proj at M >= 8192, Llama), so a spent budget cuts the rest
        gpt2 = [(name, k, n, m) for name, (k, n) in GPT2_SHAPES.items() for m in GPT2_MS]
        llama = [(name, k, n, m) for name, (k, n) in LLAMA_SHAPES.items() for m in LLAMA_MS]
        first = [c for c in gpt2 if c[0] in ("gpt2-fc", "gpt2-proj") and c[3] in (8192, 16384)]
        plan = first + llama + [c for c in gpt2 if c not in first]
    for name, k, n, m in plan:
        if run.left() < 10:
            run.log(f"layers: budget spent, stopping before {name} M={m}")
            return
        measure_shape(run, "layers", name, k, n, m, 4, VARIANTS)


def sweep(run: Run) -> None:
    toy = run.smoke or not CUDA
    shapes, m = (TOY_SHAPES, TOY_MS[0]) if toy else (GPT2_SHAPES, 16384)
    for nb in (2, 4, 8, 16) if CUDA else (2, 8):  # the CPU dry run: two, the interpreter is slow
        for name, (k, n) in shapes.items():
            if nb > min(k, n):
                continue
            if run.left() < 10:
                run.log("sweep: budget spent")
                return
            measure_shape(run, "sweep", name, k, n, m, nb, ("dense", "monarch", "monarch-fused"))


# ---- GPT-2 small training through Hugging Face --------------------------------------------------
def gpt2(kind: str, toy: bool):
    model = hf_gpt2(dict(n_layer=1, n_embd=64, n_head=2, n_positions=64) if toy else None,
                    flyweight.MonarchConfig(nblocks=4) if kind == "monarch" else None)
    if kind == "monarch":
        if not CUDA:
            for mod in model.modules():
                if isinstance(mod, MonarchLinear):
                    mod.backend = "triton"
    return model


def train(run: Run) -> None:
    toy = run.smoke or not CUDA
    rates = {}
    for kind in ("monarch",) if run.smoke else ("dense", "monarch"):  # smoke: the Monarch model compiles
        rates[kind] = train_one(run, kind, toy)
        torch._dynamo.reset()
    if rates.get("dense") and rates.get("monarch"):
        line = f"train GPT-2 monarch b=4 / dense tokens/s: {rates['monarch'] / rates['dense']:.2f}x"
        run.log(line)
        run.summary.append(line)


def train_one(run: Run, kind: str, toy: bool) -> float:
    seq, bs, steps = (16, 1, 1) if toy else (1024, 32, 8)
    model = gpt2(kind, toy).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=CUDA)
    compiled = torch.compile(model, backend=COMPILE_BACKEND)
    ids = torch.randint(0, model.config.vocab_size, (bs, seq), device=DEV)
    first_s, step_s, loss = time_steps(adamw_step(compiled, opt, ids), steps,
                                       after_warmup=torch.cuda.reset_peak_memory_stats if CUDA else None)
    tok_s = bs * seq / step_s
    peak = torch.cuda.max_memory_allocated() / 2**30 if CUDA else float("nan")
    run.row("train", {"model": "gpt2-small" if not toy else "gpt2-toy", "kind": kind, "batch": bs, "seq": seq,
                      "tokens_per_s": round(tok_s), "ms_per_step": round(bs * seq / tok_s * 1e3, 1),
                      "first_step_s": round(first_s, 1), "peak_gib": round(peak, 2),
                      "loss": round(loss.item(), 3)})
    run.log(f"train {kind} {bs}x{seq}: {tok_s:,.0f} tok/s (first step {first_s:.0f} s, peak {peak:.1f} GiB)")
    del model, opt, compiled
    if CUDA:
        torch.cuda.empty_cache()
    return tok_s


def main() -> None:
    p = part_parser(__doc__, PARTS, budget_s=330.0)
    p.add_argument("--autotune", choices=("0", "1"), default=None,
                   help="autotune the kernels (default: on, off with --smoke); read before import")
    args = p.parse_args()
    parts = chosen_parts(p, args, PARTS)
    run = Run(args.out, args.budget_s, args.smoke)
    env = write_env(args.out, args, autotune=tuning.AUTOTUNE, compile_backend=COMPILE_BACKEND)
    run.log(f"{env['gpu']}, torch {env['torch']}, triton {env['triton']}, autotune {tuning.AUTOTUNE}")
    torch.backends.cuda.matmul.allow_tf32 = True
    toy = args.smoke or not CUDA
    plan = {"numerics": (lambda: numerics(run), 15), "compile": (lambda: compile_check(run), 20),
            "host": (lambda: host(run), 5), "layers": (lambda: layers(run), 20),
            "sweep": (lambda: sweep(run), 20),
            "train": (lambda: train(run), 20 if toy else 100)}
    run_parts(run, PARTS, parts, plan)
    with open(os.path.join(args.out, "tuning.json"), "w") as f:
        json.dump(tuning.chosen_configs(), f, indent=1)
    run.log("summary:\n  " + "\n  ".join(run.summary or ["(nothing to summarise)"]))
    run.log(f"total {time.time() - run.t0:.0f} s")


if __name__ == "__main__":
    main()
