"""SS1 Triton kernels on a GPU: numerics against float64, then the timing grid against dense F.linear.

Run on the GPU machine (the project need not be installed; hydra is not needed):

    PYTHONUNBUFFERED=1 PYTHONPATH=src python3 benchmarks/gpu_ss1_check.py --out OUTDIR [--budget 420]

1. Numerics (fp16, bf16; GPT-2 and Llama shapes; R in {2, 4, 8}; odd M; both forward modes and the
   tuned path): output, dX, dWc, db against a float64 PyTorch reference; the kernel's relative error
   must be <= 2x the plain PyTorch path's error in the same precision (+1e-6). Outputs are poisoned
   (the allocator's free memory filled with NaN) before each kernel run; fresh random inputs each time.
   Any failure exits non-zero before timing.
2. Timing: the issue's grid (7 shapes x M x R x dtype, fwd and fwd+bwd), triton.testing.do_bench
   median, inputs rotated so that the working set exceeds L2. Writes ss1_timing.csv and a summary.
"""

import argparse
import contextlib
import csv
import math
import os
import sys
import time

import torch
import torch.nn.functional as F
import triton
from triton.testing import do_bench

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from flyweight.kernels import ss1_triton as T  # noqa: E402
from flyweight.linear import SS1Linear  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from ss1_kernels import summarize  # noqa: E402

SHAPES = [  # (name, K, N, pad), the targets' shapes first in case the time budget cuts the grid
    ("llama-up", 4096, 14336, False),
    ("llama-down", 14336, 4096, False),
    ("llama-qo", 4096, 4096, False),
    ("gpt2-fc", 768, 3072, False),
    ("gpt2-proj", 3072, 768, False),
    ("gpt2-qkv", 768, 2304, False),
    ("gpt2-attn-out", 768, 768, False),
    ("gpt2xl-fc", 1600, 6400, True),
]
GRID_SHAPES = list(SHAPES)
MS = [16, 2048, 8192, 256, 1, 16384]
RS = [2, 4, 8]
L2_BYTES = 60 * 2**20


def poison():
    """Fill the caching allocator's free blocks with NaN so unwritten outputs show up."""
    free = torch.cuda.mem_get_info()[0]
    n = int(min(free * 0.5, 8 * 2**30)) // 4
    blob = torch.full((n,), float("nan"), device="cuda")
    del blob


def rel(a, b):
    a, b = a.double(), b.double()
    if not torch.isfinite(a).all():
        return float("inf")
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def grads(layer, x, g):
    x = x.detach().clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    y = layer(x)
    y.backward(g)
    return {"y": y.detach(), "dx": x.grad, "dw": layer.weight.grad, "db": layer.bias.grad}


def numerics(log, quick=False) -> bool:
    ok = True
    cases = [("gpt2-fc", 768, 3072, 4, 97), ("gpt2-proj", 3072, 768, 2, 255), ("gpt2xl-fc", 1600, 6400, 4, 33),
             ("llama-up", 4096, 14336, 4, 1000), ("llama-down", 14336, 4096, 8, 17), ("llama-qo", 4096, 4096, 2, 1)]
    if quick:  # a decode-sized and a large case per weight shape family, every forward mode
        cases = [("llama-down", 14336, 4096, 4, 16), ("gpt2-qkv", 768, 2304, 4, 2000),
                 ("gpt2-fc", 768, 3072, 8, 97), ("llama-qo", 4096, 4096, 2, 1000)]
    # None: whatever the tuner/default picks; "op": the same through the registered custom ops;
    # "tma" also runs the backward with TMA-loaded weight / sketch tiles.
    modes = [None, "op", "gemm", "sketch", "fused", "resident", "tma"]
    for dtype in (torch.bfloat16,) if quick else (torch.bfloat16, torch.float16):
        for name, k, n, r, m in cases:
            torch.manual_seed(hash((name, r, m, str(dtype))) % 2**31)
            ref = SS1Linear(k, n, compression=r, pad=k % (r * 32) != 0, device="cuda", dtype=torch.float64)
            ref.backend = "torch"
            low = SS1Linear(k, n, compression=r, pad=ref.pad, device="cuda", dtype=dtype)
            low.load_state_dict({kk: v.to(dtype) for kk, v in ref.state_dict().items()})
            # the reference uses the same (rounded) parameters as the low-precision layers
            ref.load_state_dict({kk: v.double() for kk, v in low.state_dict().items()})
            low.backend = "torch"
            fast = SS1Linear(k, n, compression=r, pad=ref.pad, device="cuda", dtype=dtype)
            fast.load_state_dict(low.state_dict())
            fast.backend = "triton"
            x = torch.randn(m, k, device="cuda", dtype=dtype)
            g = torch.randn(m, n, device="cuda", dtype=dtype)
            exact = grads(ref, x.double(), g.double())
            plain = grads(low, x, g)
            for mode in modes:
                T.EAGER_FAST_PATH = mode != "op"
                if mode == "resident" and triton.next_power_of_2(fast.layout.compressed_in) > 512:
                    continue  # the resident kernel is only a candidate where K/R fits in registers
                if mode in (None, "op"):
                    ctx = contextlib.nullcontext()
                elif mode == "gemm":
                    ctx = T.config_override(fwd=dict(mode="gemm"), dgrad=dict(mode="gemm"), wgrad=dict(mode="gemm"))
                elif mode == "resident":
                    ctx = T.config_override(fwd=dict(mode="resident", BM=64, BN=64, TILES=2, num_warps=4, num_stages=2))
                elif mode == "tma":
                    ctx = T.config_override(
                        fwd=dict(mode="tma", BM=128, BN=128, BKT=64, GROUP_M=8, num_warps=8, num_stages=3,
                                 PERSISTENT=1, FLATTEN=1),
                        dgrad=dict(BM=128, BJ=128, BR=64, GROUP_M=8, num_warps=8, num_stages=4, TMA=1),
                        wgrad=dict(BN=64, BJ=128, BR=64, GROUP_M=8, num_warps=4, num_stages=4, TMA=1))
                else:
                    cfg = dict(T._fwd_candidates(m)[1 if m > 64 else 0])  # a pointer-load phase config
                    # fused 128x256 at R=8, and 4 stages of 64x128 at M=33, exceed the 227 KB of SMEM
                    cfg.update(mode=mode, BN=min(cfg["BN"], 128), num_stages=min(cfg["num_stages"], 2))
                    ctx = T.config_override(fwd=cfg)
                try:
                    with ctx:
                        poison()
                        got = grads(fast, x, g)
                    torch.cuda.synchronize()
                except Exception as err:  # noqa: BLE001 - report it as a failure and go on
                    ok = False
                    log(f"numerics {name} R={r} M={m} mode={mode}: FAILED to run: {str(err)[:300]}")
                    T.EAGER_FAST_PATH = True
                    continue
                T.EAGER_FAST_PATH = True
                parts = []
                for key in ("y", "dx", "dw", "db"):
                    e_fast, e_plain = rel(got[key], exact[key]), rel(plain[key], exact[key])
                    passed = e_fast <= 2 * e_plain + 1e-6
                    ok &= passed
                    parts.append(f"{key} {e_fast:.2e}/{e_plain:.2e}{'' if passed else ' FAIL'}")
                log(f"numerics {str(dtype)[6:]:8s} {name:10s} R={r} M={m:5d} mode={mode or 'auto':6s} "
                    f"(kernel/plain rel err) " + "  ".join(parts))
    return ok


def rotating(make, nbytes_one):
    count = max(1, min(8, math.ceil(3 * L2_BYTES / max(1, nbytes_one))))
    items = [make() for _ in range(count)]
    state = {"i": 0}

    def nxt():
        state["i"] = (state["i"] + 1) % count
        return items[state["i"]]

    return nxt, items


def bench(fn):
    return do_bench(fn, warmup=5, rep=25, return_mode="median") * 1e3


def bench_graph(step, count):
    """Median us of one step, replayed from a CUDA graph holding ``count`` steps (no CPU overhead)."""
    return T.cuda_graph_time_ms(step, reps=count, side_warmups=2, rep_ms=25) * 1e3


def make_steps(fwd, x_next, params, dy):
    """fwd-only (no autograd) and fwd+bwd (torch.autograd.grad: no .grad accumulation) closures."""

    def fwd_only():
        with torch.no_grad():
            fwd(x_next())

    def fwd_bwd():
        x = x_next()
        torch.autograd.grad(fwd(x), [x, *params], dy)

    return {"fwd": fwd_only, "fwd+bwd": fwd_bwd}


def time_all(steps, count, passes):
    out = {}
    for p in passes:
        out[p] = (bench(steps[p]), bench_graph(steps[p], count))
    return out


def _cfg_str(op, key):
    cfg = T._CHOSEN.get(f"{T._device_tag(0)}|{op}|{key}", {})
    return " ".join(f"{k}={v}" for k, v in sorted(cfg.items()) if k not in ("GROUP_M", "us"))


def time_case(name, k, n, pad, m, r, dtype, passes, dense_cache, log, block_n=64):
    rows = []
    layer = SS1Linear(k, n, compression=r, pad=pad, block_n=block_n, device="cuda", dtype=dtype)
    kp = layer.layout.padded_in
    meta = T.meta_of(layer.layout)
    lay = layer.layout
    w = layer.weight.detach().clone().requires_grad_()
    b = layer.bias.detach().clone().requires_grad_()

    def make_x():
        t = torch.randn(m, kp, device="cuda", dtype=dtype)
        t[:, k:] = 0  # the layer zero-pads widths that are not a multiple of R * block_k
        return t.requires_grad_()

    x_next, xs = rotating(make_x, m * kp * 2)
    dy = torch.randn(m, n, device="cuda", dtype=dtype)
    dkey = (k, n, m, dtype)
    if dkey not in dense_cache:
        wd = (torch.randn(n, k, device="cuda", dtype=dtype) / math.sqrt(k)).requires_grad_()
        bd = torch.randn(n, device="cuda", dtype=dtype).requires_grad_()
        xd_next, xds = rotating(lambda: torch.randn(m, k, device="cuda", dtype=dtype).requires_grad_(), m * k * 2)
        steps = make_steps(lambda x: F.linear(x, wd, bd), xd_next, [wd, bd], dy)
        dense_cache.clear()  # keep one entry: memory
        dense_cache[dkey] = time_all(steps, len(xds), passes)
        del xds
    dense = dense_cache[dkey]
    # correctness of the tuned path on this exact case, against the plain PyTorch path (cheap guard)
    with torch.no_grad():
        y_fast = T.ss1_linear_triton(xs[0], w, b, lay)
        layer.backend = "torch"
        y_torch = layer(xs[0][:, :k])
        guard = rel(y_fast, y_torch)
    if not guard < 1e-2:  # both paths are ~3e-3 from exact in bf16; a wrong kernel is O(1) off
        raise RuntimeError(f"tuned forward disagrees with the PyTorch path: {name} M={m} R={r} rel {guard:.3e}")
    steps = make_steps(lambda x: T.ss1_linear_triton(x, w, b, lay), x_next, [w, b], dy)
    for p in passes:  # tune outside the timed region and outside graph capture
        steps[p]()
    results = time_all(steps, len(xs), passes)
    flops_dense = 2 * m * n * k
    flops_ss1 = 2 * m * n * kp // r
    plan = T.plan_for(meta, kp, torch.device("cuda"))
    key = T._key(plan, m, dtype)
    cfg_s = _cfg_str("fwd", key + "|b1")
    sketch_s = _cfg_str("sketch", key)
    # the weight gradient's key says what the forward kept: Xs ("|xs"), X ("|x"); S0 needs no tuning
    wgrad_s = _cfg_str("wgrad", key + "|xs") or _cfg_str("wgrad", key + "|x") or "mode=gemm (kept S0)"
    bwd_s = f"dgrad[{_cfg_str('dgrad', key)}] wgrad[{wgrad_s}]"
    for p in results:
        mult = 1 if p == "fwd" else 3
        (s_e, s_g), (d_e, d_g) = results[p], dense[p]
        rows.append(dict(
            shape=name, K=k, N=n, M=m, R=r, block_n=block_n, dtype=str(dtype)[6:], pass_=p,
            ss1_us=round(s_e, 2), dense_us=round(d_e, 2), speedup=round(d_e / s_e, 3),
            ss1_graph_us=round(s_g, 2), dense_graph_us=round(d_g, 2), speedup_graph=round(d_g / s_g, 3),
            ss1_tflops=round(mult * flops_ss1 / s_g / 1e6, 1),
            dense_equiv_tflops=round(mult * flops_dense / s_g / 1e6, 1),
            dense_tflops=round(mult * flops_dense / d_g / 1e6, 1),
            ss1_param_mb=round((w.numel() + b.numel()) * 2 / 2**20, 2),
            dense_param_mb=round((n * k + n) * 2 / 2**20, 2),
            fwd_config=cfg_s, sketch_config=sketch_s if "mode=sketch" in cfg_s or "mode=tma" in cfg_s else "",
            bwd_config=bwd_s if p != "fwd" else "",
        ))
        log(f"{name:13s} bn={block_n} M={m:5d} R={r} {str(dtype)[6:]:8s} {p:7s} eager ss1 {s_e:8.1f} dense {d_e:8.1f} "
            f"x{d_e / s_e:5.2f} | graph ss1 {s_g:8.1f} dense {d_g:8.1f} x{d_g / s_g:5.2f}  {cfg_s}")
    del xs
    return rows


def breakdown(log):
    """Per-kernel GPU time of one large case, and where the CPU time of a small call goes."""
    k, n, m, r = 4096, 14336, 8192, 4
    layer = SS1Linear(k, n, compression=r, device="cuda", dtype=torch.bfloat16)
    meta = T.meta_of(layer.layout)
    plan = T.plan_for(meta, k, torch.device("cuda"))
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
    w, b = layer.weight.detach(), layer.bias.detach()
    T._forward_impl(x, w, b, meta)
    T._backward_impl(dy, x, w, meta, [1, 1, 1])
    xs = T._sketch(x, plan)
    s0 = T._sketch(x, plan, single=True)
    wr = T._rotate_rows(w, plan, 1)
    g0 = torch.empty(1, m, k // r, device="cuda", dtype=x.dtype)
    tma = dict(mode="tma", BM=128, BN=256, BKT=64, GROUP_M=8, num_warps=8, num_stages=4, PERSISTENT=1, FLATTEN=1)
    pointer = dict(mode="sketch", BM=128, BN=256, BKT=64, GROUP_M=8, num_warps=8, num_stages=3)
    parts = {  # every part of every mode, each timed alone (eager do_bench: these are large launches)
        "sketch, 4 phases (Xs)": lambda: T._sketch(x, plan),
        "sketch S0 (gemm mode)": lambda: T._sketch(x, plan, single=True),
        "rotate weight Wc -> Wr": lambda: T._rotate_rows(w, plan, 1),
        "gemm mode: F.linear(S0, Wr, b)": lambda: F.linear(s0, wr, b),
        "tma GEMM, Xs given": lambda: T._forward_with(tma, x, w, b, plan, xs=xs),
        "pointer GEMM, Xs given": lambda: T._forward_with(pointer, x, w, b, plan, xs=xs),
        "fused mode (sketch in the GEMM)": lambda: T._forward_with(dict(pointer, mode="fused"), x, w, b, plan),
        "dX gemm mode (mm + unsketch0)": lambda: T._dgrad_with({"mode": "gemm"}, dy, w, plan),
        "unsketch0 alone": lambda: T._unsketch(g0, plan, plan.phase0),
        "dWc gemm mode (mm + rotate back)": lambda: T._wgrad_gemm(dy, s0, plan),
        "bias grad (dy.sum)": lambda: dy.sum(0, dtype=torch.float32),
        "dense F.linear fwd": lambda: F.linear(x, torch.empty(n, k, device="cuda", dtype=x.dtype).normal_(), b),
    }
    gemm_flops = 2 * m * n * k // r
    for name, fn in parts.items():
        us = bench(fn)
        log(f"breakdown llama-up M={m} R={r}: {name:22s} {us:8.1f} us  ({gemm_flops / us / 1e6:6.0f} TFLOP/s "
            f"if it were the K/R GEMM)")
    import cProfile
    import io
    import pstats

    small = SS1Linear(4096, 4096, compression=4, device="cuda", dtype=torch.bfloat16)
    xq = torch.randn(16, 4096, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    for _ in range(3):
        small(xq).sum().backward()
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(200):
        small(xq).sum().backward()
    prof.disable()
    torch.cuda.synchronize()
    log(f"cpu profile: SS1Linear fwd+bwd at M=16 (llama-qo): {(time.perf_counter() - t0) / 200 * 1e6:.0f} us/step")
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(14)
    log(buf.getvalue()[-3500:])


def write_and_summarize(rows, out_dir, log):
    """ss1_timing.csv (column "pass") and the headline targets (ss1_kernels.summarize)."""
    plain = [{("pass" if k == "pass_" else k): v for k, v in r.items()} for r in rows]
    with open(os.path.join(out_dir, "ss1_timing.csv"), "w", newline="") as f:
        wr = csv.DictWriter(f, fieldnames=list(plain[0]))
        wr.writeheader()
        wr.writerows(plain)
    summarize(plain, log)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--budget", type=float, default=420.0, help="seconds for the timing grid; the rest is skipped")
    ap.add_argument("--skip-numerics", action="store_true")
    ap.add_argument("--breakdown", action="store_true")
    ap.add_argument("--quick-numerics", action="store_true")
    ap.add_argument("--dtypes", default="bfloat16,float16")
    ap.add_argument("--ms", default=",".join(map(str, MS)))
    ap.add_argument("--rs", default=",".join(map(str, RS)))
    ap.add_argument("--passes", default="fwd,fwd+bwd")
    ap.add_argument("--fp16-passes", default="fwd")
    ap.add_argument("--fp16-ms", default="16,2048,8192")
    ap.add_argument("--shapes", default="", help="comma list of shape names (default: all)")
    ap.add_argument("--block-n-sweep", default="", help="e.g. 32,128,256: R=4 bf16 fwd of llama-up and "
                    "gpt2-fc at M in {2048, 8192} with these hash block widths, after the grid")
    ap.add_argument("--log-tuning", action="store_true", help="log every tuning candidate's time")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.log_tuning:
        import logging

        logging.basicConfig(format="%(message)s")
        logging.getLogger("flyweight.kernels.ss1_triton").setLevel(logging.INFO)
    logf = open(os.path.join(args.out, "ss1_gpu_log.txt"), "a")

    def log(msg):
        print(msg, flush=True)
        logf.write(msg + "\n")
        logf.flush()

    t0 = time.time()
    log(f"GPU {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}  "
        f"autotune cache {T.cache_path()}")
    if args.breakdown:
        breakdown(log)
    if not args.skip_numerics:
        ok = numerics(log, quick=args.quick_numerics)
        log(f"numerics {'PASSED' if ok else 'FAILED'} in {time.time() - t0:.0f} s")
        if not ok:
            sys.exit(1)
    rows = []
    dense_cache = {}
    tgrid = time.time()
    skipped = 0
    for dname in args.dtypes.split(","):
        dtype = getattr(torch, dname)
        passes = args.passes.split(",") if dtype == torch.bfloat16 else args.fp16_passes.split(",")
        # M outermost: a budget cut drops whole M values (the last listed), not whole shapes
        for m in map(int, (args.ms if dtype == torch.bfloat16 else args.fp16_ms).split(",")):
            for name, k, n, pad in [sh for sh in GRID_SHAPES if not args.shapes or sh[0] in args.shapes.split(",")]:
                for r in map(int, args.rs.split(",")):
                    if time.time() - tgrid > args.budget:
                        skipped += 1
                        continue
                    try:
                        rows += time_case(name, k, n, pad, m, r, dtype, passes, dense_cache, log)
                    except torch.cuda.OutOfMemoryError as err:
                        log(f"OOM {name} M={m} R={r}: {err}")
                        torch.cuda.empty_cache()
    for bn in [int(b) for b in args.block_n_sweep.split(",") if b]:
        for name, k, n, pad in [sh for sh in SHAPES if sh[0] in ("llama-up", "gpt2-fc")]:
            for m in (2048, 8192):
                if time.time() - tgrid > args.budget + 60:
                    skipped += 1
                    continue
                rows += time_case(name, k, n, pad, m, 4, torch.bfloat16, ["fwd"], dense_cache, log, block_n=bn)
    log(f"timing: {len(rows)} rows in {time.time() - tgrid:.0f} s; {skipped} cases skipped (budget)")
    if rows:
        write_and_summarize(rows, args.out, log)
    log(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
