"""Local / Performer / Scatterbrain attention on one GPU: Triton kernels vs their PyTorch paths vs SDPA.

Run on the GPU machine (the project need not be installed; needs torch, triton, numpy only):

    PYTHONUNBUFFERED=1 PYTHONPATH=src python3 benchmarks/approx_attention_gpu.py --out OUTDIR [--smoke]
        [--budget-s 300] [--parts numerics,timing,t2t,causal] [--lengths 1024,4096,16384,65536]

Parts (each in its own try/except; a failure is logged with its traceback and the next part runs):

* numerics (default tiles, no autotuning): fp16 and bf16 inputs, the kernel path (impl="triton") and
  the PyTorch path (impl="torch") in that dtype, both against the PyTorch path in float64 on the same (rounded) inputs and features: max
  abs error of the output (and of dq, dk, dv). PASS when kernel error <= 2 x PyTorch error + 1e-4 x
  max|ref|. Odd T, a padding mask, large logits. -> numerics.csv
* timing: B = 1, H = 12, E = 64, T in {1024, 4096, 16384, 65536}, w = 256, m = 256, bf16, non-causal:
  forward and forward+backward (median time per call, ``gpu_harness.time_us``; column ``bwd``: Triton
  kernels, or autograd through the PyTorch path) and the peak memory of one call above what was allocated before it, for SDPA (exact full attention, flash/cuDNN) and each
  variant's kernel and PyTorch paths side by side (``--impls``: only some of them). -> timing.csv
* causal: the same for causal SDPA and the causal variants.
* t2t: T2T-ViT-t-14 (random weights) at 224 x 224, batch 64, under bf16 autocast as the evaluation runs
  it: images/s and peak memory with full / local / performer / sblocal token attentions at the 1/32
  budgets (model/t2tattn_cfg), kernel path and PyTorch path, and the logits' max difference between the
  two paths. -> t2t.csv
Also: run.log, env.json (device and versions), autotune.json (the tiles the autotuner chose per kernel
and key). Rows are appended to OUT/<part>.csv as they finish (``gpu_harness.Run``).

--budget-s: no new measurement starts once the budget is spent (rows not run are logged as skipped).
The PyTorch-path rows at T = 65536 forward+backward are skipped (tens of GB, seconds per call).
CPU dry run (tiny sizes; without CUDA the kernels run in the Triton interpreter): ... --smoke.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before flyweight's kernels and gpu_harness are imported
if "--smoke" in sys.argv:  # one tile per kernel, read when the kernels are built: a smoke run does not tune
    os.environ.setdefault("FLYWEIGHT_APPROX_AUTOTUNE", "0")

from gpu_harness import DEV, Run, chosen_parts, part_parser, peak_mib, run_parts, time_us, write_env  # noqa: E402

from flyweight.attention import make_attention  # noqa: E402  (after the sys.path insert)

PARTS = ("numerics", "timing", "t2t", "causal")
NUMERICS_COLUMNS = ["kind", "causal", "dtype", "T", "B", "H", "scale", "pad", "w", "m", "E",
                    *(f"{p}_{q}" for p in ("kernel", "torch") for q in ("out_err", "dq_err", "dk_err", "dv_err",
                                                                         "finite")),
                    "status"]
TIMING_COLUMNS = ["part", "kind", "impl", "causal", "B", "H", "T", "E", "w", "m", "dtype", "bwd", "fwd_ms",
                  "fwd_peak_mib", "fwd_bwd_ms", "fwd_bwd_peak_mib", "speedup_vs_sdpa_fwd", "speedup_vs_sdpa_fwd_bwd",
                  "mem_vs_sdpa_fwd", "status"]
T2T_COLUMNS = ["part", "model", "attention", "impl", "batch", "img", "dtype", "tokens", "kernel_used", "ms_per_batch",
               "images_per_s", "peak_mib", "logits_max_diff_vs_auto", "status"]


def variant(kind, impl, causal, w, m, seed=0):
    if kind == "sdpa":
        return None
    kw = dict(impl=impl, causal=causal)
    if kind == "local":
        kw["window_size"] = w
    elif kind == "performer":
        kw.update(nb_features=m, seed=seed)
    else:
        kw.update(window_size=w, nb_features=m, seed=seed)
    return make_attention(kind, **kw)


def call(attn, causal):
    if attn is None:
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return lambda q, k, v: attn(q, k, v)


def qkv(B, H, T, E, dtype, dev, scale=1.0, seed=0, requires_grad=False):
    g = torch.Generator(device=dev).manual_seed(seed)
    return [(scale * torch.randn(B, H, T, E, device=dev, generator=g)).to(dtype).requires_grad_(requires_grad)
            for _ in range(3)]


# ------------------------------------------------------------------------------------------------
# numerics
# ------------------------------------------------------------------------------------------------
def max_err(a, b):
    return (a.double() - b).abs().max().item()


def numerics(run: Run, args, dev):
    Ts = [37] if args.smoke else [1031, 4096]
    w, m = (8, 16) if args.smoke else (256, 256)
    E = 16 if args.smoke else 64
    # smoke: one padded case in bf16 (each new dtype / padding flag compiles every kernel again)
    cases = [] if args.smoke else [dict(name=f"t{T}", T=T, B=1, H=4, scale=1.0, pad=False) for T in Ts]
    cases.append(dict(name="pad", T=Ts[0], B=2, H=2, scale=1.0, pad=True))
    if not args.smoke:
        cases.append(dict(name="logits3", T=Ts[0], B=1, H=2, scale=3.0, pad=False))  # large logits
    if args.cases:
        wanted = args.cases.split(",")
        unknown = sorted(set(wanted) - {c["name"] for c in cases})
        if unknown:
            raise SystemExit(f"--cases: unknown {unknown}; valid: {','.join(c['name'] for c in cases)}")
        cases = [c for c in cases if c["name"] in wanted]
    cases = [{k: v for k, v in c.items() if k != "name"} for c in cases]
    dtypes = [torch.float32] if dev.type == "cpu" else [torch.float16, torch.bfloat16]
    if args.smoke and dev.type != "cpu":
        dtypes = [torch.bfloat16]
    for case in cases:
        for causal in (False, True):
            for kind in args.kinds.split(","):
                for dtype in dtypes:
                    if run.left() <= 0:
                        run.log(f"numerics: budget spent, skipping {kind} {case}")
                        return
                    try:
                        row = numerics_case(kind, causal, dtype, case, w, m, E, dev, args.smoke)
                    except Exception as e:  # noqa: BLE001
                        row = dict(kind=kind, causal=causal, dtype=str(dtype), **case,
                                   status=f"error {type(e).__name__}: {str(e)[:160]}")
                        run.log(traceback.format_exc())
                    run.row("numerics", row)
                    run.log(f"numerics {row}")


def numerics_case(kind, causal, dtype, case, w, m, E, dev, smoke):
    B, H, T = case["B"], case["H"], case["T"]
    dname = str(dtype).replace("torch.", "")
    kernel = variant(kind, "triton", causal, w, m, seed=1)
    if isinstance(kernel, torch.nn.Module) and hasattr(kernel, "redraw_features"):
        kernel.redraw_features(1, head_dim=E)
    kernel = kernel.to(dev)
    torch_path = variant(kind, "torch", causal, w, m, seed=1).to(dev)
    torch_path.load_state_dict(kernel.state_dict())
    x = qkv(B, H, T, E, dtype, dev, scale=case["scale"], seed=T)
    kpm = None
    if case["pad"]:
        g = torch.Generator(device=dev).manual_seed(3)
        kpm = torch.rand(B, T, device=dev, generator=g) < 0.15
        kpm[-1, : T // 2] = True
    x64 = [t.detach().double().requires_grad_() for t in x]
    ref = torch_path(*x64, key_padding_mask=kpm)
    g = torch.Generator(device=dev).manual_seed(7)
    go = torch.randn(ref.shape, device=dev, generator=g, dtype=torch.float64)
    ref_grads = torch.autograd.grad(ref, x64, go)
    scale_ref = max(1.0, ref.abs().max().item())
    row = dict(kind=kind, causal=causal, dtype=dname, **case, w=w, m=m, E=E)
    status = "PASS"
    for name, mod in (("kernel", kernel), ("torch", torch_path)):
        xi = [t.detach().clone().requires_grad_() for t in x]
        out = mod(*xi, key_padding_mask=kpm)
        grads = torch.autograd.grad(out, xi, go.to(dtype))
        row[f"{name}_out_err"] = max_err(out, ref)
        for gname, g_, r in zip(("dq", "dk", "dv"), grads, ref_grads):
            row[f"{name}_{gname}_err"] = max_err(g_, r)
        row[f"{name}_finite"] = bool(torch.isfinite(out).all())
    for key in ("out", "dq", "dk", "dv"):
        bound = 2 * row[f"torch_{key}_err"] + 1e-4 * scale_ref
        if not row[f"kernel_{key}_err"] <= bound:
            status = f"FAIL {key}"
            break
    row["status"] = status
    return row


# ------------------------------------------------------------------------------------------------
# timing
# ------------------------------------------------------------------------------------------------
def time_ms(fn, rep_ms: int = 200) -> float:
    """Median ms of fn() (``gpu_harness.time_us``: CUDA events after warm-up; a few wall-clock calls on CPU)."""
    return time_us(fn, rep_ms=rep_ms) / 1e3


def timing(run: Run, args, dev, causal):
    Ts = [200] if args.smoke else [int(t) for t in args.lengths.split(",")]
    w, m = (16, 16) if args.smoke else (256, 256)
    B, H, E = (1, 2, 16) if args.smoke else (1, 12, 64)
    dtype = torch.float32 if dev.type == "cpu" else torch.bfloat16
    impls = args.impls.split(",")
    plan = [("sdpa", "-")] + [(kind, impl) for kind in ("local", "performer", "sblocal") for impl in ("triton", "torch")
                              if impl in impls]
    for T in Ts:
        base = {}
        for kind, impl in plan:
            if run.left() <= 0:
                run.log(f"timing: budget spent, skipping T={T} {kind}/{impl}")
                continue
            row = dict(part="causal" if causal else "timing", kind=kind, impl=impl, causal=causal, B=B, H=H,
                       T=T, E=E, w=w if kind in ("local", "sblocal") else "",
                       m=m if kind in ("performer", "sblocal") else "",
                       dtype=str(dtype).replace("torch.", ""), bwd=backward_kind(kind, impl))
            try:
                attn = variant(kind, impl, causal, w, m)
                if attn is not None:
                    attn = attn.to(dev)
                fn = call(attn, causal)
                x = qkv(B, H, T, E, dtype, dev)
                with torch.no_grad():
                    row["fwd_ms"] = time_ms(lambda: fn(*x))
                    row["fwd_peak_mib"] = peak_mib(lambda: fn(*x))
                # forward + backward: skipped for PyTorch paths at the largest T (memory/time)
                if not (impl == "torch" and T >= 65536) and run.left() > 0:
                    xg = [t.detach().requires_grad_() for t in x]
                    go = torch.randn_like(x[2])

                    def fwd_bwd():
                        out = fn(*xg)
                        torch.autograd.grad(out, xg, go)

                    row["fwd_bwd_ms"] = time_ms(fwd_bwd)
                    row["fwd_bwd_peak_mib"] = peak_mib(fwd_bwd)
                    del xg, go
                row["status"] = "ok"
                if kind == "sdpa":
                    base = dict(fwd=row["fwd_ms"], fwd_bwd=row.get("fwd_bwd_ms"), mem=row["fwd_peak_mib"])
                elif base:
                    row["speedup_vs_sdpa_fwd"] = base["fwd"] / row["fwd_ms"]
                    if base.get("fwd_bwd") and row.get("fwd_bwd_ms"):
                        row["speedup_vs_sdpa_fwd_bwd"] = base["fwd_bwd"] / row["fwd_bwd_ms"]
                    if base["mem"] and base["mem"] == base["mem"]:
                        row["mem_vs_sdpa_fwd"] = row["fwd_peak_mib"] / base["mem"]
                del x
            except torch.cuda.OutOfMemoryError:
                row["status"] = "OOM"
            except Exception as e:  # noqa: BLE001
                row["status"] = f"error {type(e).__name__}: {str(e)[:160]}"
                run.log(traceback.format_exc())
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            run.row("timing", row)
            run.log(f"{row['part']} {fmt(row)}")


def backward_kind(kind, impl):
    """How the backward of a row is computed: Triton kernels, or autograd through a PyTorch path."""
    if kind == "sdpa":
        return "sdpa"
    if impl == "torch":
        return "torch autograd"
    return "triton kernel"


def fmt(row):
    keys = ("kind", "impl", "T", "fwd_ms", "fwd_peak_mib", "fwd_bwd_ms", "fwd_bwd_peak_mib",
            "speedup_vs_sdpa_fwd", "mem_vs_sdpa_fwd", "status")
    return " ".join(f"{k}={row[k]:.4g}" if isinstance(row.get(k), float) else f"{k}={row.get(k, '')}"
                    for k in keys)


# ------------------------------------------------------------------------------------------------
# T2T-ViT-t-14 inference
# ------------------------------------------------------------------------------------------------
T2T_SPECS = {  # model/t2tattn_cfg: the 1/32-memory budgets for 3136 / 784 tokens
    "full": ({"name": "full"}, {"name": "full"}),
    "local": ({"name": "local", "window_size": 98}, {"name": "local", "window_size": 24}),
    "performer": ({"name": "performer", "nb_features": 49, "seed": 0},
                  {"name": "performer", "nb_features": 12, "seed": 0}),
    "sblocal": ({"name": "sblocal", "window_size": 49, "nb_features": 24, "seed": 0},
                {"name": "sblocal", "window_size": 12, "nb_features": 6, "seed": 0}),
}


def t2t(run: Run, args, dev):
    from flyweight.models.t2t_vit import build_t2t_vit

    batch, img = (2, 64) if args.smoke else (64, 224)
    model = build_t2t_vit("t2t_vit_t_14", img_size=img).to(dev).eval()
    g = torch.Generator(device=dev).manual_seed(0)
    images = torch.randn(batch, 3, img, img, device=dev, generator=g)
    dtype = torch.bfloat16
    autocast = torch.autocast(dev.type, dtype=dtype)
    for name, (s1, s2) in T2T_SPECS.items():
        logits = {}
        for impl in (("auto",) if name == "full" or args.smoke else ("auto", "torch")):
            if run.left() <= 0:
                run.log(f"t2t: budget spent, skipping {name}/{impl}")
                continue
            row = dict(part="t2t", model="t2t_vit_t_14", attention=name, impl=impl, batch=batch, img=img,
                       dtype="bfloat16 autocast", tokens=f"{(img // 4) ** 2}/{(img // 8) ** 2}")
            try:
                spec1, spec2 = dict(s1), dict(s2)
                if name != "full":
                    spec1["impl"] = spec2["impl"] = impl
                model.set_t2t_attention(spec1, spec2)
                row["kernel_used"] = str(impl == "auto" and name != "full" and dev.type == "cuda")

                def fwd():
                    with torch.inference_mode(), autocast:
                        return model(images)

                logits[impl] = fwd().float()
                ms = time_ms(fwd, rep_ms=1000)
                row["ms_per_batch"] = ms
                row["images_per_s"] = batch / ms * 1e3
                row["peak_mib"] = peak_mib(fwd)
                if "auto" in logits and "torch" in logits:
                    row["logits_max_diff_vs_auto"] = (logits["auto"] - logits["torch"]).abs().max().item()
                row["status"] = "ok"
            except torch.cuda.OutOfMemoryError:
                row["status"] = "OOM"
            except Exception as e:  # noqa: BLE001
                row["status"] = f"error {type(e).__name__}: {str(e)[:160]}"
                run.log(traceback.format_exc())
            run.row("t2t", row)
            run.log(f"t2t {row}")
            if dev.type == "cuda":
                torch.cuda.empty_cache()


def numerics_default_tiles(run: Run, args, dev):
    """The numerics part with every kernel at its default tile (no compile of every tile twice)."""
    from flyweight.kernels._tiles import set_autotune

    set_autotune(False)
    try:
        numerics(run, args, dev)
    finally:
        set_autotune(True)


def main():
    p = part_parser(__doc__, PARTS, budget_s=300.0)
    p.add_argument("--lengths", default="1024,4096,16384,65536", help="T of the timing and causal parts")
    p.add_argument("--device", default=DEV.type)
    p.add_argument("--kinds", default="local,performer,sblocal", help="numerics: the kinds checked")
    p.add_argument("--impls", default="triton,torch",
                   help="timing and causal: the paths timed beside SDPA (the kernels, the PyTorch paths)")
    p.add_argument("--cases", default="", help="numerics: a subset of the cases t1031,t4096,pad,logits3 "
                                               "(default: all)")
    args = p.parse_args()
    parts = chosen_parts(p, args, PARTS)
    if not set(args.impls.split(",")) <= {"triton", "torch"}:
        p.error(f"--impls takes triton and/or torch, got {args.impls!r}")
    run = Run(args.out, args.budget_s, args.smoke,
              columns={"numerics": NUMERICS_COLUMNS, "timing": TIMING_COLUMNS, "t2t": T2T_COLUMNS})
    dev = torch.device(args.device)
    import triton

    run.log(f"torch {torch.__version__}, triton {triton.__version__}, device "
            f"{torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}, parts {args.parts}, "
            f"smoke {args.smoke}, budget {args.budget_s} s")
    write_env(args.out, args)

    def part(fn):
        def go():
            try:
                fn()
            finally:
                if dev.type == "cuda":
                    torch.cuda.empty_cache()
        return go, 1  # each part starts while any budget is left; its own loops stop when it is spent

    plan = {"numerics": part(lambda: numerics_default_tiles(run, args, dev)),
            "timing": part(lambda: timing(run, args, dev, causal=False)),
            "causal": part(lambda: timing(run, args, dev, causal=True)),
            "t2t": part(lambda: t2t(run, args, dev))}
    run_parts(run, PARTS, parts, plan)
    try:
        from flyweight.kernels._tiles import chosen_configs

        with open(os.path.join(args.out, "autotune.json"), "w") as f:
            json.dump(chosen_configs(), f, indent=1)
        run.log(f"autotuner choices: {json.dumps(chosen_configs())}")
    except Exception:  # noqa: BLE001
        run.log(traceback.format_exc())
    run.log("summary:\n  " + "\n  ".join(run.summary or ["(nothing to summarise)"]))
    run.log(f"done in {time.time() - run.t0:.0f} s")


if __name__ == "__main__":
    main()
