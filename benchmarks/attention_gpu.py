"""Causal attention on one GPU: flyweight's Triton flash attention against SDPA's backends and FlexAttention.

Run on the GPU machine (the project need not be installed):

    PYTHONUNBUFFERED=1 PYTHONPATH=src python3 benchmarks/attention_gpu.py --out OUTDIR [--medium]

1. Numerics, per shape: out, dq, dk, dv of the Triton kernel (bf16) against SDPA's math backend in
   float32 on the same inputs (max abs error), next to the error of SDPA's own bf16 flash kernel;
   PASS when the kernel's error is at most 2x SDPA-bf16's (+1e-3). A failure is printed and the
   script goes on.
2. Timing, per shape: forward and forward+backward (median of CUDA-event timed iterations after
   warm-up, inputs with requires_grad as in training) for this kernel, SDPA forced to each backend
   (cuDNN, flash, efficient) and compiled FlexAttention with a causal block mask. TFLOP/s count the
   real causal work: forward 2*B*H*T^2*D (half of 4*B*H*T^2*D), backward 2.5x that.
   Each backend runs in its own try/except. The autotuner's choices and a per-kernel profile of the
   Triton path are printed.
3. torch.compile(fullgraph=True) of a GPT-2-style attention call, forward and backward, once through
   each registration (``triton_op`` traced by Inductor, ``custom_op`` opaque), against eager.

Inputs use GPT-2's layout: q, k, v are (B, H, T, D) views (``transpose(1, 2)``) of one (B, T, 3, H, D)
projection (``--contiguous``: separate contiguous (B, H, T, D) tensors instead).
Writes OUTDIR/attention_timing.csv, attention_numerics.csv and attention_configs.json.
"""

import argparse
import csv
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from flyweight.kernels import flash_attention as FA  # imported after the sys.path insert

T0 = time.time()


def log(msg):
    print(f"[{time.time() - T0:6.1f}s] {msg}", flush=True)


def make_inputs(B, H, T, D, contiguous, seed=0):
    """The leaf tensor(s) and a function giving q, k, v views of them."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    if contiguous:
        leaves = [torch.randn(B, H, T, D, device="cuda", generator=g).bfloat16().requires_grad_() for _ in range(3)]
        return leaves, lambda: tuple(leaves)
    qkv = torch.randn(B, T, 3, H, D, device="cuda", generator=g).bfloat16().requires_grad_()
    return [qkv], lambda: tuple(qkv[:, :, i].transpose(1, 2) for i in range(3))


# ------------------------------------------------------------------------------------------
# Backends: each maps (q, k, v) -> out, causal, default scale
# ------------------------------------------------------------------------------------------
def sdpa_with(backend):
    from torch.nn.attention import sdpa_kernel

    def run(q, k, v):
        with sdpa_kernel([backend]):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return run


def flex_backend(T):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    block_mask = create_block_mask(lambda b, h, q_idx, kv_idx: q_idx >= kv_idx, None, None, T, T, device="cuda")
    compiled = torch.compile(flex_attention, dynamic=False)
    return lambda q, k, v: compiled(q, k, v, block_mask=block_mask)


def backends(T):
    from torch.nn.attention import SDPBackend

    out = [("triton-flash (flyweight)", lambda: lambda q, k, v: FA.flash_attention(q, k, v, causal=True))]
    for name, b in (("sdpa-cudnn", SDPBackend.CUDNN_ATTENTION), ("sdpa-flash", SDPBackend.FLASH_ATTENTION),
                    ("sdpa-efficient", SDPBackend.EFFICIENT_ATTENTION)):
        out.append((name, lambda b=b: sdpa_with(b)))
    out.append(("flex-attention (compiled)", lambda: flex_backend(T)))
    return out


# ------------------------------------------------------------------------------------------
# Numerics
# ------------------------------------------------------------------------------------------
def outputs_and_grads(fn, get_qkv, leaves, do):
    for x in leaves:
        x.grad = None
    q, k, v = get_qkv()
    out = fn(q, k, v)
    out.backward(do)
    if len(leaves) == 1:  # fused (B, T, 3, H, D): gradients of q, k, v as (B, H, T, D) views
        g = leaves[0].grad
        grads = [g[:, :, i].transpose(1, 2) for i in range(3)]
    else:
        grads = [x.grad for x in leaves]
    res = [out.detach()] + [x.detach().clone() for x in grads]
    for x in leaves:
        x.grad = None
    return res


def reference(leaves, contiguous, do):
    """Output and gradients from SDPA's math backend in float32 on the same (bf16-valued) inputs."""
    from torch.nn.attention import SDPBackend

    ref_leaves = [x.detach().float().requires_grad_() for x in leaves]

    def get_qkv():
        if contiguous:
            return tuple(ref_leaves)
        return tuple(ref_leaves[0][:, :, i].transpose(1, 2) for i in range(3))

    return outputs_and_grads(sdpa_with(SDPBackend.MATH), get_qkv, ref_leaves, do.float())


def numerics(shape, contiguous):
    from torch.nn.attention import SDPBackend

    B, H, T, D = shape
    leaves, get_qkv = make_inputs(B, H, T, D, contiguous, seed=1)
    do = torch.randn(B, H, T, D, device="cuda", generator=torch.Generator(device="cuda").manual_seed(2)).bfloat16()

    want = reference(leaves, contiguous, do)
    torch.cuda.empty_cache()
    got = outputs_and_grads(lambda q, k, v: FA.flash_attention(q, k, v, causal=True), get_qkv, leaves, do)
    try:
        base = outputs_and_grads(sdpa_with(SDPBackend.FLASH_ATTENTION), get_qkv, leaves, do)
    except Exception as err:  # noqa: BLE001
        log(f"numerics: SDPA flash failed ({type(err).__name__}: {str(err)[:200]}); comparing to cuDNN")
        base = outputs_and_grads(sdpa_with(SDPBackend.CUDNN_ATTENTION), get_qkv, leaves, do)
    rows, ok = [], True
    for name, g, b, w in zip(("out", "dq", "dk", "dv"), got, base, want):
        err = (g.float() - w).abs().max().item() if torch.isfinite(g).all() else float("inf")
        err_base = (b.float() - w).abs().max().item()
        passed = err <= 2 * err_base + 1e-3
        ok &= passed
        rows.append(dict(B=B, H=H, T=T, D=D, tensor=name, max_abs_err=err, sdpa_bf16_max_abs_err=err_base,
                         ref_max_abs=w.abs().max().item(), passed=passed))
        log(f"  {name}: max|err| {err:.3e} (SDPA bf16 {err_base:.3e}, |ref| max {w.abs().max().item():.2f}) "
            f"{'PASS' if passed else 'FAIL'}")
    log(f"NUMERICS {'PASS' if ok else '*** FAIL ***'} for B={B} H={H} T={T} D={D}")
    del got, base, want
    torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------
def cuda_time(fn, warmup, iters):
    """Median milliseconds of fn() over iters CUDA-event timed calls after warmup calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def time_backend(attn, leaves, get_qkv, do, warmup, iters):
    def fwd():
        q, k, v = get_qkv()
        return attn(q, k, v)

    def fwd_bwd():
        for x in leaves:
            x.grad = None
        fwd().backward(do)

    fwd_bwd()  # compile / autotune outside the timed region
    torch.cuda.synchronize()
    return cuda_time(fwd, warmup, iters), cuda_time(fwd_bwd, warmup, iters)


def profile_triton(leaves, get_qkv, do):
    """CUDA time per kernel of a few forward+backward calls of the Triton path."""
    from torch.profiler import ProfilerActivity, profile

    def step():
        for x in leaves:
            x.grad = None
        q, k, v = get_qkv()
        FA.flash_attention(q, k, v, causal=True).backward(do)

    step()
    torch.cuda.synchronize()
    n = 5
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(n):
            step()
        torch.cuda.synchronize()
    rows = []
    for ev in prof.key_averages():
        total = getattr(ev, "device_time_total", None) or getattr(ev, "cuda_time_total", 0)
        if total > 0:
            rows.append((total / n / 1e3, ev.key))
    for ms, key in sorted(rows, reverse=True)[:8]:
        log(f"  {ms:8.3f} ms/step  {key[:90]}")


def compile_check():
    """torch.compile(fullgraph=True) through each registration, forward and backward, against eager."""
    B, T, H, D = 4, 1024, 12, 64
    qkv0 = torch.randn(B, T, 3, H, D, device="cuda", generator=torch.Generator(device="cuda").manual_seed(3))
    qkv0 = qkv0.bfloat16()

    def attn(x):
        q, k, v = (x[:, :, i].transpose(1, 2) for i in range(3))
        return FA.flash_attention(q, k, v, causal=True).transpose(1, 2).reshape(B, T, H * D)

    def run(fn):
        x = qkv0.clone().requires_grad_()
        y = fn(x)
        y.float().square().sum().backward()
        return y.detach(), x.grad

    ye, ge = run(attn)
    default = FA.OP_KIND
    results = {}
    for kind in FA.OP_KINDS:
        t = time.time()
        try:
            FA.OP_KIND = kind
            torch._dynamo.reset()
            y, g = run(torch.compile(attn, fullgraph=True))
            err = max((y.float() - ye.float()).abs().max().item(), (g.float() - ge.float()).abs().max().item())
            results[kind] = f"OK (max diff vs eager {err:.2e}, {time.time() - t:.0f} s)"
        except Exception as e:  # noqa: BLE001
            results[kind] = f"FAIL {type(e).__name__}: {str(e)[:400]}"
        finally:
            FA.OP_KIND = default
        log(f"compile check [{kind}]: {results[kind]}")
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=None, help="directory for the CSV/JSON results")
    ap.add_argument("--medium", action="store_true", help="also B=16, H=16, T=1024, D=64 (GPT-2 medium-ish)")
    ap.add_argument("--contiguous", action="store_true", help="contiguous (B, H, T, D) q, k, v instead of GPT-2 views")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--skip-flex", action="store_true", help="skip compiled FlexAttention (saves its compile time)")
    ap.add_argument("--skip-compile-check", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("attention_gpu.py needs a CUDA GPU")
    if args.out:
        os.makedirs(args.out, exist_ok=True)
    gpu = torch.cuda.get_device_name()
    log(f"{gpu}, torch {torch.__version__}, triton {triton.__version__}, autotune={FA.AUTOTUNE}, "
        f"op={FA.OP_KIND}, layout={'contiguous' if args.contiguous else 'gpt2 (B,T,3,H,D) views'}")
    shapes = [(64, 12, 1024, 64)] + ([(16, 16, 1024, 64)] if args.medium else [])

    numerics_rows, timing_rows = [], []
    for shape in shapes:
        log(f"numerics B,H,T,D={shape}")
        try:
            numerics_rows += numerics(shape, args.contiguous)
        except Exception as e:  # noqa: BLE001
            log(f"NUMERICS ERROR {type(e).__name__}: {str(e)[:500]}")
        torch.cuda.empty_cache()

    for shape in shapes:
        B, H, T, D = shape
        fwd_flops = 2 * B * H * T * T * D  # causal: half of 4*B*H*T^2*D
        leaves, get_qkv = make_inputs(B, H, T, D, args.contiguous)
        do = torch.randn(B, H, T, D, device="cuda", dtype=torch.bfloat16)
        log(f"timing B,H,T,D={shape} bf16 causal")
        for name, make in backends(T):
            if args.skip_flex and name.startswith("flex"):
                continue
            row = dict(backend=name, B=B, H=H, T=T, D=D, dtype="bfloat16", causal=True, gpu=gpu,
                       torch=torch.__version__, triton=triton.__version__, layout="contiguous" if args.contiguous else "gpt2")
            t = time.time()
            try:
                f_ms, fb_ms = time_backend(make(), leaves, get_qkv, do, args.warmup, args.iters)
                b_ms = fb_ms - f_ms
                row.update(fwd_ms=f_ms, bwd_ms=b_ms, fwd_bwd_ms=fb_ms, fwd_tflops=fwd_flops / f_ms / 1e9,
                           bwd_tflops=2.5 * fwd_flops / b_ms / 1e9, fwd_bwd_tflops=3.5 * fwd_flops / fb_ms / 1e9,
                           status="ok")
                log(f"  {name:26s} fwd {f_ms:7.3f} ms {row['fwd_tflops']:6.1f} TF/s | bwd {b_ms:7.3f} ms "
                    f"{row['bwd_tflops']:6.1f} TF/s | fwd+bwd {fb_ms:7.3f} ms {row['fwd_bwd_tflops']:6.1f} TF/s "
                    f"({time.time() - t:.0f} s incl. compile/tune)")
            except Exception as e:  # noqa: BLE001
                row.update(status=f"error: {type(e).__name__}: {str(e)[:300]}")
                log(f"  {name:26s} FAILED {row['status']}")
            for x in leaves:
                x.grad = None
            timing_rows.append(row)
            torch.cuda.empty_cache()
        if FA.AUTOTUNE:
            log("autotuner choices so far: " + json.dumps(FA.chosen_configs(), indent=1))
        log("Triton path, CUDA time per kernel:")
        try:
            profile_triton(leaves, get_qkv, do)
        except Exception as e:  # noqa: BLE001
            log(f"  profile failed: {type(e).__name__}: {str(e)[:200]}")
        del leaves, do
        torch.cuda.empty_cache()

    # summary table
    print(f"\n{'backend':26s} {'B':>3s} {'H':>3s} {'fwd ms':>8s} {'TF/s':>6s} {'bwd ms':>8s} {'TF/s':>6s} "
          f"{'f+b ms':>8s} {'TF/s':>6s}")
    for r in timing_rows:
        if r["status"] == "ok":
            print(f"{r['backend']:26s} {r['B']:3d} {r['H']:3d} {r['fwd_ms']:8.3f} {r['fwd_tflops']:6.1f} "
                  f"{r['bwd_ms']:8.3f} {r['bwd_tflops']:6.1f} {r['fwd_bwd_ms']:8.3f} {r['fwd_bwd_tflops']:6.1f}")
        else:
            print(f"{r['backend']:26s} {r['B']:3d} {r['H']:3d} {r['status']}")
    if args.out:
        fields = ["backend", "B", "H", "T", "D", "dtype", "causal", "layout", "fwd_ms", "bwd_ms", "fwd_bwd_ms",
                  "fwd_tflops", "bwd_tflops", "fwd_bwd_tflops", "status", "gpu", "torch", "triton"]
        with open(os.path.join(args.out, "attention_timing.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(timing_rows)
        if numerics_rows:
            with open(os.path.join(args.out, "attention_numerics.csv"), "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=list(numerics_rows[0]))
                w.writeheader()
                w.writerows(numerics_rows)
        with open(os.path.join(args.out, "attention_configs.json"), "w") as f:
            json.dump(dict(chosen=FA.chosen_configs(), fwd_tiles=FA.FWD_TILES, dkdv_tiles=FA.DKDV_TILES,
                           dq_tiles=FA.DQ_TILES), f, indent=1)
        log(f"wrote {args.out}/attention_timing.csv, attention_numerics.csv, attention_configs.json")

    if not args.skip_compile_check:
        results = compile_check()
        if args.out:
            with open(os.path.join(args.out, "attention_compile_check.json"), "w") as f:
                json.dump(results, f, indent=1)
    log("done")


if __name__ == "__main__":
    main()
