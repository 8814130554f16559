"""SS1 on one GPU, measured the ways users run it; every figure a ratio against dense in this process.

    PYTHONUNBUFFERED=1 PYTHONPATH=src python3 benchmarks/ss1_gpu.py --out OUT [--smoke] [--budget-s 420]
        [--parts numerics,layers,host,fused,tuning,routes,train,prefill,decode,table] [--install-table]

Parts (each in its own try/except; rows are appended to OUT/*.csv as they finish, the log to OUT/run.log):
  numerics  the op (y, dX, dW, db) in fp16 and bf16 against float64, next to the plain PyTorch route in
            the same precision: PASS when error <= 2x plain + 1e-4 (relative to max |ref|); outputs
            poisoned with NaN first; odd M, a padded width; eager Triton and both compiled routes.
  layers    per shape (GPT-2 small, Llama-3-8B widths), R = 4: CUDA-graph forward (host cost removed,
            layer copies rotated so the working set exceeds L2), eager forward and forward+backward.
  host      host time per call (GPU kept busy by a sleep kernel, so the clock sees only the CPU):
            nn.Linear against SS1 (Triton sketch re-launched without the binder, the same through Triton's
            binder, PyTorch sketch), eager and compiled, fwd and fwd+bwd.
  fused     the fused sketch+GEMM kernel (no grad) against the two-launch path and dense: CUDA-graph and eager
            forward per shape and M, every fused tile candidate (decides ``tuning.FUSED``).
  tuning    each sketch tile candidate against the pick of ``tuning.config_for``.
  routes    compiled layer fwd+bwd with the sketch traced as PyTorch ops ("inductor") vs a triton_op.
  train     HF GPT2LMHeadModel (GPT-2 small, random init) + flyweight.convert(SS1Config(compression=4)), torch.compile,
            fused AdamW, bf16 autocast, HF loss: tokens/s at micro-batch 16 and 32 x 1024.
  prefill   the same model in bf16, compiled, no_grad, 16 x 1024: tokens/s and host time per forward.
  decode    batch 1 and 8, 128-token prompt + 128 new tokens, GPT-2 small and a Llama-3-8B-width model (dense, SS1,
            SS1 with the fused sketch+GEMM kernel), two
            loops: greedy_generate (HF generate, static KV cache, compiled with CUDA graphs) and
            flyweight's StaticDecoder (the same cache, one compiled step replayed with no per-token sync).
  table     compiled layer fwd / fwd+bwd per shape and M, GPU time under CUDA-graph replay (inside a
            compiled model a layer's host cost is paid once per graph): with the eager rows of ``layers`` it forms
            OUT/speed_<gpu>.csv, the table ``convert(..., auto=True)`` reads (``--install-table``
            copies it to where flyweight looks for this GPU's table).
Without CUDA everything runs at toy size on CPU (the Triton kernel in the interpreter, compile
with the aot_eager backend): a dry run that catches mistakes before GPU time is spent.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import platform
import shutil
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before flyweight's kernels are imported

import triton  # noqa: E402
from gpu_harness import (  # noqa: E402
    BLOCK_TARGETS, CUDA, DEV, Run, adamw_step, chosen_parts, graph_us, hf_gpt2, host_us, part_parser, poison, rel_err,
    run_parts, sync, time_steps, time_us, write_env,
)

import flyweight  # noqa: E402
from flyweight.convert.autoselect import user_table_path  # noqa: E402
from flyweight.bench.layers import LAYER_COLUMNS  # noqa: E402
from flyweight.convert.autoselect import settings_label  # noqa: E402
from flyweight.decode import StaticDecoder, greedy_generate  # noqa: E402
from flyweight.kernels.ss1 import set_compiled_route  # noqa: E402
from flyweight.kernels import _launch  # noqa: E402
from flyweight.kernels.ss1 import op as ss1_op  # noqa: E402
from flyweight.kernels.ss1 import tuning as ss1_tuning  # noqa: E402
from flyweight.kernels.ss1.tuning import CANDIDATES, config_for, tiles_for, tiles_with  # noqa: E402
from flyweight.linear import SS1Linear  # noqa: E402
from flyweight.utils.env import env_choice  # noqa: E402

COMPILE_BACKEND = "inductor" if CUDA else "aot_eager"
L2_BYTES = 60 * 2**20
PARTS = ("numerics", "layers", "host", "fused", "tuning", "routes", "train", "prefill", "decode", "table")
GPT2_SHAPES = {"gpt2-qkv": (768, 2304), "gpt2-attn-out": (768, 768), "gpt2-fc": (768, 3072), "gpt2-proj": (3072, 768)}
LLAMA_SHAPES = {"llama-qo": (4096, 4096), "llama-up": (4096, 14336), "llama-down": (14336, 4096)}
TOY_SHAPES = {"toy-a": (128, 96), "toy-pad": (200, 64)}
MODEL_COLUMNS = ["part", "model", "kind", "batch", "seq", "new_tokens", "loop", "tokens_per_s", "ms_per_step", "host_us",
                 "first_calls_s"]




# ---- timing -------------------------------------------------------------------------------










# ---- layers ---------------------------------------------------------------------------------
def make(kind: str, k: int, n: int, r: int = 4, dtype=torch.bfloat16):
    """"dense" (nn.Linear), "ss1" (default backend) or "ss1-torch" (the sketch as PyTorch ops in eager too)."""
    if kind == "dense":
        return torch.nn.Linear(k, n, device=DEV, dtype=dtype)
    layer = SS1Linear(k, n, compression=r, pad=k % (r * 32) != 0, device=DEV, dtype=dtype)
    if kind == "ss1-torch":
        layer.backend = "torch"
    return layer


def copies_for(layer, m: int, k: int) -> int:
    """Layer copies to cycle through so weights + inputs exceed L2 (no call finds its data cached)."""
    nbytes = sum(p.numel() * p.element_size() for p in layer.parameters()) + m * k * 2
    return max(1, min(16, math.ceil(2 * L2_BYTES / max(1, nbytes)))) if CUDA else 1


def fwd_fns(kind, k, n, m, r=4, grad=False):
    base = make(kind, k, n, r)
    layers = [base] + [copy.deepcopy(base) for _ in range(copies_for(base, m, k) - 1)]
    xs = [torch.randn(m, k, device=DEV, dtype=torch.bfloat16, requires_grad=grad) for _ in layers]
    if not grad:
        return [lambda l=l, x=x: l(x) for l, x in zip(layers, xs)]
    gs = [torch.randn(m, n, device=DEV, dtype=torch.bfloat16) for _ in layers]
    return [lambda l=l, x=x, g=g: l(x).backward(g) for l, x, g in zip(layers, xs, gs)]




def numerics(run: Run) -> None:
    shapes = TOY_SHAPES if run.smoke or not CUDA else {**GPT2_SHAPES, "gpt2xl-fc": (1600, 6400), "llama-kv": (4096, 1024)}
    ms = (1, 17, 97) if run.smoke or not CUDA else (1, 17, 97, 1000)
    rs = (4,) if run.smoke else (2, 4, 8)
    worst = 0.0
    for name, (k, n) in shapes.items():
        for r in rs:
            base = SS1Linear(k, n, compression=r, pad=k % (r * 32) != 0, device=DEV)
            ref_layer = copy.deepcopy(base).double()
            ref_layer.backend = "torch"
            for dtype in (torch.float16, torch.bfloat16):
                for m in ms:
                    x = torch.randn(m, k, device=DEV)
                    g = torch.randn(m, n, device=DEV)
                    ref = grads(ref_layer, x.double(), g.double())
                    routes = {"plain": ("torch", None), "triton": ("triton", None)}
                    if m == 97 and r == 4 and name in ("gpt2-qkv", "gpt2xl-fc", "toy-pad"):  # each is a compile
                        routes["inductor"] = ("auto", "inductor")
                        if CUDA:
                            routes["triton_op"] = ("auto", "triton_op")
                    errs = {}
                    for route, (backend, compiled) in routes.items():
                        layer = copy.deepcopy(base).to(dtype)
                        layer.backend = backend
                        fn = layer
                        if compiled:
                            set_compiled_route(compiled)
                            torch._dynamo.reset()
                            fn = torch.compile(layer, backend=COMPILE_BACKEND, fullgraph=True)
                        poison()
                        got = grads(layer, x.to(dtype), g.to(dtype), fn)
                        errs[route] = {o: rel_err(got[o], ref[o]) for o in ref}
                    set_compiled_route("inductor")
                    for route, e in errs.items():
                        ok = all(e[o] <= 2 * errs["plain"][o] + 1e-4 and math.isfinite(e[o]) for o in e)
                        ratio = max(e[o] / max(errs["plain"][o], 1e-12) for o in e)
                        worst = max(worst, ratio if route != "plain" else 0.0)
                        run.row("numerics", {"shape": name, "K": k, "N": n, "R": r, "M": m, "dtype": str(dtype)[6:],
                                             "route": route, **{f"err_{o}": f"{e[o]:.3e}" for o in e},
                                             "max_ratio_vs_plain": f"{ratio:.2f}", "pass": ok})
                        if not ok:
                            run.log(f"NUMERICS FAIL {name} R={r} M={m} {dtype} {route}: {e} plain {errs['plain']}")
    run.log(f"numerics: worst kernel/plain error ratio {worst:.2f} (criterion <= 2)")
    run.summary.append(f"numerics: worst kernel/plain error ratio {worst:.2f}")


def grads(layer, x, g, fn=None) -> dict:
    layer.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    y = (layer if fn is None else fn)(x)
    y.backward(g)
    out = {"y": y.detach(), "dx": x.grad, "dw": layer.weight.grad}
    if layer.bias is not None:
        out["db"] = layer.bias.grad
    return out


def table_row(kind, k, n, m, pass_, compiled, us, dense_us, layer) -> dict:
    settings = {} if kind == "dense" else {"compression": 4}
    flops = 2 * k * n if kind == "dense" else layer.flops_per_token()
    params = sum(p.numel() for p in layer.parameters())
    return {"device": torch.cuda.get_device_name() if CUDA else platform.machine(), "torch": torch.__version__,
            "kind": kind if kind == "dense" else "ss1", "settings": settings_label(settings), "in_features": k,
            "out_features": n, "tokens": m, "dtype": "bfloat16", "pass": pass_, "compile": compiled,
            "latency_us": round(us, 2), "dense_latency_us": round(dense_us, 2), "speedup": round(dense_us / us, 3),
            "tflops": flops * m * (3 if pass_ == "fwd+bwd" else 1) / us / 1e6, "params": params,
            "param_mb": params * 2 / 2**20, "flops_per_token": flops, "peak_mem_mb": ""}


def layers(run: Run, shapes: dict) -> None:
    ms = (16, 2048) if run.smoke else (16, 2048, 16384)
    for name, (k, n) in shapes.items():
        for m in sorted(set(ms + ((8192,) if name.startswith("gpt2") else ()))):  # 8192: the eager target
            res = {kind: graph_us(fwd_fns(kind, k, n, m)) for kind in ("dense", "ss1")}
            run.row("layers", {"shape": name, "K": k, "N": n, "M": m, "R": 4, "what": "graph fwd",
                               "dense_us": round(res["dense"], 2), "ss1_us": round(res["ss1"], 2),
                               "speedup": round(res["dense"] / res["ss1"], 3), "ss1_torch_sketch_us": ""})
            for pass_ in ("fwd", "fwd+bwd"):
                us = {}
                for kind in ("dense", "ss1", "ss1-torch"):
                    fns = fwd_fns(kind, k, n, m, grad=pass_ == "fwd+bwd")
                    with torch.set_grad_enabled(pass_ == "fwd+bwd"):
                        us[kind] = time_us(lambda: [f() for f in fns]) / len(fns)
                lay = make("ss1", k, n)
                run.row("speed_table", table_row("ss1", k, n, m, pass_, False, us["ss1"], us["dense"], lay))
                run.row("layers", {"shape": name, "K": k, "N": n, "M": m, "R": 4, "what": f"eager {pass_}",
                                   "dense_us": round(us["dense"], 2), "ss1_us": round(us["ss1"], 2),
                                   "speedup": round(us["dense"] / us["ss1"], 3),
                                   "ss1_torch_sketch_us": round(us["ss1-torch"], 2)})
            run.log(f"{name} M={m}: graph fwd {res['dense'] / res['ss1']:.2f}x, eager fwd+bwd "
                    f"{us['dense'] / us['ss1']:.2f}x")


def host(run: Run) -> None:
    """Eager rows first, with no compilation yet in the process (Inductor's compile workers share the
    host's CPU for a while after each compile); then every compiled variant is compiled, and only then
    timed. Within each mode the variants are interleaved over 5 rounds and each row is the median."""
    k, n, m = (768, 768, 16) if CUDA else (128, 96, 4)
    x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
    xg = x.clone().requires_grad_()
    variants = {"nn.Linear": make("dense", k, n), "ss1 triton sketch": make("ss1", k, n),
                "ss1 triton sketch, binder launch": make("ss1", k, n), "ss1 torch sketch": make("ss1", k, n)}
    variants["ss1 torch sketch"].backend = "torch"

    def with_launch(label, fn):
        # "binder launch": every eager launch through Triton's argument binding (kernels/_launch.py off)
        direct = label != "ss1 triton sketch, binder launch" and _launch.SUPPORTED
        return lambda: (setattr(ss1_op._launch_sketch, "enabled", direct), fn())

    for mode in ("eager", "compiled"):
        fns = {label: (torch.compile(copy.deepcopy(layer), backend=COMPILE_BACKEND) if mode == "compiled" else layer)
               for label, layer in variants.items()}
        calls = {}
        for label, fn in fns.items():
            calls[label] = (with_launch(label, lambda fn=fn: fn(x)),
                            with_launch(label, lambda fn=fn: fn(xg).sum().backward()))
            with torch.no_grad():
                calls[label][0]()  # compiles (compiled mode) before any timing
            calls[label][1]()
        sync()
        if mode == "compiled":
            time.sleep(5.0)  # let the compile workers go idle
        rounds = {label: ([], []) for label in calls}
        for _ in range(5):
            for label, (fwd, bwd) in calls.items():
                with torch.no_grad():
                    rounds[label][0].append(host_us(fwd, rounds=1))
                rounds[label][1].append(host_us(bwd, n=50, rounds=1))  # < 1024 queued launches
        med = {label: (statistics.median(f), statistics.median(b)) for label, (f, b) in rounds.items()}
        base = med["nn.Linear"]
        for label, (fwd, bwd) in med.items():
            run.row("host", {"layer": label, "mode": mode, "fwd_us": round(fwd, 1), "fwd_bwd_us": round(bwd, 1),
                             "fwd_vs_linear": round(fwd / base[0], 2), "fwd_bwd_vs_linear": round(bwd / base[1], 2)})
            run.log(f"host {label:18s} {mode:8s} fwd {fwd:6.1f} us ({fwd / base[0]:.2f}x nn.Linear), "
                    f"fwd+bwd {bwd:6.1f} us ({bwd / base[1]:.2f}x)")
    ss1_op._launch_sketch.enabled = _launch.SUPPORTED


def fused(run: Run, shapes: dict) -> None:
    """The fused sketch+GEMM kernel against the two-launch path (sketch kernel + F.linear) and dense, no
    grad: CUDA-graph forward (GPU time) and eager forward (host cost included), every tile candidate
    under graph timing; the max difference from the two-launch output (same rounding of S0, so only
    the GEMM's summation order differs)."""
    from flyweight.kernels.ss1.op import fused_linear_triton
    from flyweight.kernels.ss1.tuning import FUSED_CANDIDATES

    ms = (16, 2048) if run.smoke or not CUDA else (16, 2048, 8192)
    for name, (k, n) in shapes.items():
        for m in ms:
            dense = make("dense", k, n)
            layer = make("ss1", k, n)
            w, b, a = layer.weight.detach(), layer.bias.detach(), layer.sketch_args
            x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
            with torch.no_grad():
                two = lambda: torch.nn.functional.linear(ss1_op.sketch_triton(x, a, x.dtype), w, b)  # noqa: E731
                one = lambda cfg=None: fused_linear_triton(x, w, b, a, tiles=cfg)  # noqa: E731
                diff = (one().float() - two().float()).abs().max().item()
                us = {"dense": graph_us([lambda: dense(x)]), "two-launch": graph_us([two]),
                      "fused": graph_us([one])}
                for cfg in FUSED_CANDIDATES:
                    us["fused BM={} BN={} BJ={} w{} s{}".format(*cfg)] = graph_us([lambda cfg=cfg: one(cfg)])
                eager = {"dense": time_us(lambda: dense(x)), "two-launch": time_us(two), "fused": time_us(one)}
            for variant, t in us.items():
                run.row("fused", {"shape": name, "K": k, "N": n, "M": m, "timing": "graph fwd", "variant": variant,
                                  "us": round(t, 2), "speedup_vs_dense": round(us["dense"] / t, 3),
                                  "max_diff_vs_two_launch": diff})
            for variant, t in eager.items():
                run.row("fused", {"shape": name, "K": k, "N": n, "M": m, "timing": "eager fwd", "variant": variant,
                                  "us": round(t, 2), "speedup_vs_dense": round(eager["dense"] / t, 3),
                                  "max_diff_vs_two_launch": diff})
            best = min((v for v in us if v.startswith("fused")), key=us.get)
            run.log(f"fused {name} M={m}: graph {us['dense'] / us['fused']:.2f}x dense (two-launch "
                    f"{us['dense'] / us['two-launch']:.2f}x, best tile {us['dense'] / us[best]:.2f}x), eager "
                    f"{eager['dense'] / eager['fused']:.2f}x (two-launch {eager['dense'] / eager['two-launch']:.2f}x), "
                    f"diff {diff:.2e}")


def tuning(run: Run) -> None:
    shapes = TOY_SHAPES if run.smoke or not CUDA else {"gpt2-fc": (768, 3072), "gpt2-proj": (3072, 768),
                                                        "llama-down": (14336, 4096)}
    for name, (k, n) in shapes.items():
        layer = make("ss1", k, n)
        for m in (16, 8192 if CUDA else 64):
            x = torch.randn(m, k, device=DEV, dtype=torch.bfloat16)
            us = {}
            for cfg in CANDIDATES:
                ss1_op.tiles_for = lambda m, kc, cfg=cfg: tiles_with(cfg, m, kc)
                us[cfg] = graph_us([lambda: ss1_op.sketch_triton(x, layer.sketch_args, torch.bfloat16)])
            ss1_op.tiles_for = tiles_for
            pick, best = config_for(m), min(us, key=us.get)
            for cfg, t in us.items():
                run.row("tuning", {"shape": name, "M": m, "config": "BM={} BJ={} warps={}".format(*cfg),
                                   "us": round(t, 2), "picked": cfg == pick, "best": cfg == best})
            run.log(f"sketch {name} M={m}: pick {us[pick]:.1f} us, best {us[best]:.1f} us ({best})")


def compiled_layer_us(kind, k, n, ms, pass_, route="inductor", graph=False) -> tuple[dict, object]:
    """{M: median us} of one compiled layer (several M: marked dynamic, one compile serves them all).

    ``graph``: the compiled calls replayed as one CUDA graph (inputs rotated past L2), i.e. the GPU
    time the layer adds inside a compiled model, where its host cost is paid once per graph, not
    per layer; otherwise the wall time of a lone compiled call, host cost included.
    """
    set_compiled_route(route)
    torch._dynamo.reset()
    layer = make(kind, k, n)
    fn = torch.compile(layer, backend=COMPILE_BACKEND)
    out = {}
    grad = pass_ == "fwd+bwd"
    with torch.set_grad_enabled(grad):
        for m in ms:
            copies = copies_for(layer, m, k) if graph else 1
            xs = [torch.randn(m, k, device=DEV, dtype=torch.bfloat16, requires_grad=grad) for _ in range(copies)]
            if len(ms) > 1:
                for x in xs:
                    torch._dynamo.mark_dynamic(x, 0)
            g = torch.randn(m, n, device=DEV, dtype=torch.bfloat16)
            calls = [(lambda x=x: fn(x).backward(g)) if grad else (lambda x=x: fn(x)) for x in xs]
            if graph:
                for call in calls:  # compile (and autotune) outside the capture
                    call()
                sync()
                out[m] = graph_us(calls)
            else:
                out[m] = time_us(calls[0])
    set_compiled_route("inductor")
    return out, layer


def routes(run: Run) -> None:
    if not CUDA:
        run.log("routes: the triton_op route compiles only with CUDA (the interpreter's kernel takes real "
                "tensors); dry run of the inductor route only")
    shapes = {"toy-pad": TOY_SHAPES["toy-pad"]} if run.smoke or not CUDA else {
        k: GPT2_SHAPES[k] for k in ("gpt2-fc", "gpt2-attn-out")}  # the largest and the smallest K/R GEMM
    m = 2048 if run.smoke or not CUDA else 8192
    for name, (k, n) in shapes.items():
        dense = compiled_layer_us("dense", k, n, (m,), "fwd+bwd")[0][m]
        res = {r: compiled_layer_us("ss1", k, n, (m,), "fwd+bwd", r)[0][m]
               for r in (("inductor", "triton_op") if CUDA else ("inductor",))}
        for r, us in res.items():
            run.row("routes", {"shape": name, "M": m, "route": r, "ss1_us": round(us, 2), "dense_us": round(dense, 2),
                               "speedup": round(dense / us, 3)})
        run.log(f"routes {name} M={m} compiled fwd+bwd: " + ", ".join(f"{r} {dense / us:.2f}x" for r, us in res.items()))


def table(run: Run, shapes: dict) -> None:
    """Compiled rows of the auto-selection table: GPU time under CUDA-graph replay (see compiled_layer_us)."""
    ms = (16, 2048) if run.smoke else (16, 2048, 16384)
    if run.smoke:
        shapes = {"toy-pad": TOY_SHAPES["toy-pad"]}
    for name, (k, n) in shapes.items():
        for pass_ in ("fwd", "fwd+bwd"):
            if run.left() < 10:
                run.log("table: budget spent; the rows so far are kept")
                return
            dense, _ = compiled_layer_us("dense", k, n, ms, pass_, graph=True)
            ss1, layer = compiled_layer_us("ss1", k, n, ms, pass_, graph=True)
            for m in ms:
                run.row("speed_table", table_row("ss1", k, n, m, pass_, True, ss1[m], dense[m], layer))
            run.log(f"table {name} {pass_} compiled (graph replay): "
                    + ", ".join(f"M={m} {dense[m] / ss1[m]:.2f}x" for m in ms))


# ---- whole models -----------------------------------------------------------------------------
def gpt2(kind: str, toy: bool):
    return hf_gpt2(dict(n_layer=2, n_embd=128, n_head=4, n_positions=256) if toy else None,
                   flyweight.SS1Config(compression=4) if kind == "ss1" else None)


def llama(kind: str, toy: bool):
    """Llama-3-8B layer widths (hidden 4096, MLP 14336, 32 heads, 8 KV heads), 4 layers, a 32k vocabulary
    (the dense lm head is in both models; Llama-3's 128k one would be a third of the bytes)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    dims = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
                num_hidden_layers=2) if toy else dict(hidden_size=4096, intermediate_size=14336,
                                                      num_attention_heads=32, num_key_value_heads=8,
                                                      num_hidden_layers=4)
    torch.manual_seed(0)
    with torch.device(DEV):
        config = LlamaConfig(vocab_size=32000, max_position_embeddings=512, **dims)
        model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa").to(torch.bfloat16)
    if kind == "ss1":
        flyweight.convert(model, flyweight.SS1Config(compression=4), target_modules=BLOCK_TARGETS)
    return model


def train(run: Run) -> None:
    toy = run.smoke or not CUDA
    for kind in ("dense", "ss1"):
        train_one(run, kind, toy)
        torch._dynamo.reset()


def train_one(run: Run, kind: str, toy: bool) -> None:
    seq, batches, steps = (128, (2, 4), 2) if toy else (1024, (16, 32), 8)
    model = gpt2(kind, toy).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=CUDA)
    compiled = torch.compile(model, backend=COMPILE_BACKEND)
    for bs in batches:
        ids = torch.randint(0, model.config.vocab_size, (bs, seq), device=DEV)
        torch._dynamo.mark_dynamic(ids, 0)  # one compile for both micro-batches
        first_s, step_s, _ = time_steps(adamw_step(compiled, opt, ids), steps)
        tok_s = bs * seq / step_s
        run.row("models", {"part": "train", "model": "gpt2-small" if not toy else "gpt2-toy", "kind": kind,
                           "batch": bs, "seq": seq, "tokens_per_s": round(tok_s), "first_calls_s": round(first_s, 1)})
        run.log(f"train {kind} {bs}x{seq}: {tok_s:,.0f} tok/s (first step {first_s:.0f} s)")


def prefill(run: Run) -> None:
    toy = run.smoke or not CUDA
    for kind in ("dense", "ss1"):
        prefill_one(run, kind, toy)
        torch._dynamo.reset()


def prefill_one(run: Run, kind: str, toy: bool) -> None:
    bs, seq = (2, 128) if toy else (16, 1024)
    model = gpt2(kind, toy).eval().to(torch.bfloat16)
    compiled = torch.compile(model, backend=COMPILE_BACKEND)
    ids = torch.randint(0, model.config.vocab_size, (bs, seq), device=DEV)

    def call():
        return compiled(input_ids=ids, use_cache=False).logits

    with torch.no_grad():
        call()
        us = time_us(call)
        h = host_us(call, n=20)
    run.row("models", {"part": "prefill", "model": "gpt2-small" if not toy else "gpt2-toy", "kind": kind,
                       "batch": bs, "seq": seq, "tokens_per_s": round(bs * seq / us * 1e6), "host_us": round(h)})
    run.log(f"prefill {kind} {bs}x{seq}: {bs * seq / us * 1e6:,.0f} tok/s, host {h:.0f} us per forward")


def decode(run: Run) -> None:
    """Two loops per model: transformers' generate (the user's path) and flyweight's StaticDecoder."""
    toy = run.smoke or not CUDA
    prompt, new = (16, 16) if toy else (128, 128)
    for family, build in (("gpt2-small", gpt2), ("llama-8b-width-4l", llama)):
        family = family if not toy else family.split("-")[0] + "-toy"
        for kind in ("dense", "ss1", "ss1-fused"):  # ss1-fused: FLYWEIGHT_SS1_FUSED=inference for this kind
            ss1_tuning.FUSED = "inference" if kind == "ss1-fused" else "never"
            model = build(kind.split("-")[0], toy).eval().to(torch.bfloat16)
            for bs in (1, 8):
                ids = torch.randint(0, model.config.vocab_size, (bs, prompt), device=DEV)
                decoder = StaticDecoder(model, batch_size=bs, max_length=prompt + new)
                loops = {"hf-generate": lambda: greedy_generate(model, ids, new),
                         "flyweight-static": lambda: decoder.generate(ids, new)}
                for loop, call in loops.items():
                    t = time.time()
                    for _ in range(2):  # the compile, then the CUDA-graph recording
                        call()
                    sync()
                    warm_s = time.time() - t
                    times = []
                    for _ in range(3):
                        t = time.perf_counter()
                        out = call()
                        sync()
                        times.append(time.perf_counter() - t)
                    assert out.shape == (bs, prompt + new)
                    sec = sorted(times)[1]
                    run.row("models", {"part": "decode", "model": family, "kind": kind, "batch": bs, "seq": prompt,
                                       "new_tokens": new, "loop": loop, "tokens_per_s": round(bs * new / sec, 2),
                                       "ms_per_step": round(sec / new * 1e3, 3), "first_calls_s": round(warm_s, 1)})
                    run.log(f"decode {family} {kind} batch {bs} {loop}: {sec / new * 1e3:.3f} ms/step "
                            f"(warm-up {warm_s:.0f} s)")
                del decoder
            del model
            torch._dynamo.reset()
    ss1_tuning.FUSED = env_choice("FLYWEIGHT_SS1_FUSED")


def read_rows(run: Run, name: str) -> list[dict]:
    path = os.path.join(run.out, f"{name}.csv")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


def ratios(run: Run) -> None:
    """Each target of the summary as SS1 / dense, from the CSVs written so far."""
    layer_rows = read_rows(run, "layers")
    for what, m, label in (("graph fwd", "2048", "CUDA-graph fwd M=2048"), ("eager fwd+bwd", "8192", "eager fwd+bwd M=8192")):
        picked = [r for r in layer_rows if r["what"] == what and r["M"] == m and r["shape"].startswith("gpt2")]
        if picked:
            run.summary.append(f"{label}, GPT-2 small widths: " + ", ".join(f"{r['shape']} {float(r['speedup']):.2f}x"
                                                                          for r in picked))
    for r in read_rows(run, "host"):
        if r["layer"] != "nn.Linear":
            run.summary.append(f"host time {r['layer']} {r['mode']}: fwd {r['fwd_vs_linear']}x, "
                               f"fwd+bwd {r['fwd_bwd_vs_linear']}x nn.Linear")
    keyed = {}
    for r in read_rows(run, "models"):
        keyed.setdefault((r["part"], r["model"], r["batch"], r.get("loop") or ""), {})[r["kind"]] = float(r["tokens_per_s"])
    for (part, model, bs, loop), v in keyed.items():
        if "dense" in v and "ss1" in v:
            run.summary.append(f"{part} {model} batch {bs}{' ' + loop if loop else ''}: SS1 {v['ss1'] / v['dense']:.2f}x dense")


def main() -> None:
    p = part_parser(__doc__, PARTS, budget_s=420.0)
    p.add_argument("--install-table", action="store_true", help="copy the speed table to this GPU's lookup path")
    args = p.parse_args()
    parts = chosen_parts(p, args, PARTS)
    run = Run(args.out, args.budget_s, args.smoke, columns={"models": MODEL_COLUMNS})
    env = write_env(args.out, args, compile_backend=COMPILE_BACKEND)
    run.log(f"{env['gpu']}, torch {env['torch']}, triton {env['triton']}, transformers {env['transformers']}")
    torch.backends.cuda.matmul.allow_tf32 = True
    toy = args.smoke or not CUDA
    shapes = TOY_SHAPES if toy else {**GPT2_SHAPES, **LLAMA_SHAPES}
    plan = {"numerics": (lambda: numerics(run), 20), "layers": (lambda: layers(run, shapes), 20),
            "host": (lambda: host(run), 15), "fused": (lambda: fused(run, shapes), 30),
            "tuning": (lambda: tuning(run), 10), "routes": (lambda: routes(run), 30),
            "train": (lambda: train(run), 120 if not toy else 20), "prefill": (lambda: prefill(run), 50 if not toy else 10),
            "decode": (lambda: decode(run), 200 if not toy else 25), "table": (lambda: table(run, shapes), 30)}
    run_parts(run, PARTS, parts, plan)
    ratios(run)
    rows = read_rows(run, "speed_table")
    if rows:
        named = os.path.join(args.out, user_table_path().name)
        with open(named, "w", newline="") as f_out:
            w = csv.DictWriter(f_out, fieldnames=LAYER_COLUMNS)
            w.writeheader()
            w.writerows({c: r.get(c) for c in LAYER_COLUMNS} for r in rows)
        run.log(f"speed table ({len(rows)} rows): {named}")
        if args.install_table:
            user_table_path().parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(named, user_table_path())
            run.log(f"installed as {user_table_path()}")
    run.log("summary:\n  " + "\n  ".join(run.summary or ["(no model-level rows)"]))
    run.log(f"total {time.time() - run.t0:.0f} s")


if __name__ == "__main__":
    main()
