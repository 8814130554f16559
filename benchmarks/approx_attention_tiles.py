"""Every autotune tile of every approximate-attention kernel, checked for correctness on one GPU.

The autotuner may pick any tile of a kernel's list for a shape, so each one must compute the right
thing, not only the default (``tiles[0]``, which ``approx_attention_gpu.py --parts numerics`` checks).
For each attention kind (local, performer, sblocal; causal and not) the script records which kernels
its forward+backward launches, then, for every such kernel and every tile in its list, runs the
kind's forward+backward with that kernel forced to that tile (all others at their default), without
autotuning, and compares it with ``approx_attention_gpu.numerics_case``'s rule (kernel error <= 2x
the PyTorch path's in the same dtype + 1e-4 max|ref|, against float64). Two shapes: a small one
(T = 37, E = 16, m = 16, w = 8, a padding mask) and a GPT-2-head one (T = 4096, E = 64, m = 256,
w = 256; T a multiple of 16, so Triton specialises the loads as aligned).

A tile that faults (illegal memory access) kills the CUDA context: the work runs in a child process
that appends one JSON line per case to ``tiles.jsonl``; the parent restarts it after the faulting
case, which is recorded as ``crash``. Cases already in ``tiles.jsonl`` are not rerun (resumable).

    PYTHONUNBUFFERED=1 PYTHONPATH=src python3 benchmarks/approx_attention_tiles.py --out OUTDIR
        [--dtypes bfloat16,float16] [--budget-s 240]

-> OUTDIR/tiles.jsonl (one line per case) and OUTDIR/tiles.csv (the same as a table).
CPU check of every tile's logic (interpreter, where masks and tails are exact): TRITON_INTERPRET=1 ... --device cpu --small-only
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(__file__))
import approx_attention_gpu as aa  # noqa: E402  (numerics_case, variant; inserts src/ on sys.path)

from flyweight.kernels import _tiles  # noqa: E402

SHAPES = {
    "small": (dict(T=37, B=2, H=2, scale=1.0, pad=True), 8, 16, 16),  # case, w, m, E
    "gpt2": (dict(T=4096, B=1, H=2, scale=1.0, pad=False), 256, 256, 64),  # T % 16 == 0: aligned loads
}
KINDS = [(k, c) for c in (False, True) for k in ("local", "performer", "sblocal")]


def kernels_used(kind, causal, shape, dtype, dev):
    """Names of the TiledKernels one forward+backward of this kind launches."""
    seen = []
    original = _tiles.TiledKernel.__call__

    def spy(self, grid, *args, **meta):
        if self.name not in seen:
            seen.append(self.name)
        return original(self, grid, *args, **meta)

    _tiles.TiledKernel.__call__ = spy
    try:
        case, w, m, E = SHAPES[shape]
        aa.numerics_case(kind, causal, dtype, case, w, m, E, dev, smoke=False)
    except Exception as e:  # noqa: BLE001  (a default tile that does not fit: the kernels seen so far)
        print(f"{shape} {kind} causal={causal}: default tiles failed ({type(e).__name__}: {str(e)[:120]}); "
              f"kernels seen before it: {seen}", flush=True)
    finally:
        _tiles.TiledKernel.__call__ = original
    return seen


def plan(dtypes, shapes, dev, out):
    """Every (shape, dtype, kind, causal, kernel, tile index) case, in a fixed order (cached in OUT)."""
    path = os.path.join(out, "plan.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    cases = []
    for shape in shapes:
        for dname in dtypes:
            dtype = getattr(torch, dname)
            for kind, causal in KINDS:
                for name in kernels_used(kind, causal, shape, dtype, dev):
                    for i in range(len(_tiles.REGISTRY[name].tiles)):
                        cases.append(dict(shape=shape, dtype=dname, kind=kind, causal=causal,
                                          kernel=name, tile_index=i))
    with open(path, "w") as f:
        json.dump(cases, f)
    return cases


def case_id(c):
    return f"{c['shape']}|{c['dtype']}|{c['kind']}|{c['causal']}|{c['kernel']}|{c['tile_index']}"


def run_case(c, dev):
    tk = _tiles.REGISTRY[c["kernel"]]
    default = list(tk.tiles)
    forced = default[c["tile_index"]]
    tk.tiles = [forced] + [t for j, t in enumerate(default) if j != c["tile_index"]]
    interpret_tile = tk.interpret_tile
    if _tiles.INTERPRET:  # the interpreter launches interpret_tile: force that too (a logic check of the tile)
        tk.interpret_tile = forced
    try:
        case, w, m, E = SHAPES[c["shape"]]
        row = aa.numerics_case(c["kind"], c["causal"], getattr(torch, c["dtype"]), case, w, m, E, dev,
                               smoke=False)
        aa.sync(dev)
    finally:
        tk.tiles, tk.interpret_tile = default, interpret_tile
    keep = {k: v for k, v in row.items() if k.endswith("_err") or k == "status"}
    return dict(c, tile=json.dumps(forced, sort_keys=True), **keep)


def child(args, dev):
    # fill _tiles.REGISTRY: a restarted child reads the plan before a forward has imported any kernel module
    import flyweight.kernels.causal_feature_attention as cfa
    import flyweight.kernels.causal_lowrank_backward as clb
    import flyweight.kernels.performer_backward  # noqa: F401
    import flyweight.kernels.sblocal_backward  # noqa: F401

    if _tiles.INTERPRET:  # CUDA's key chunk (512) holds every tile; the interpreter's (32) does not
        cfa.CHUNK = clb.CHUNK = 128
    _tiles.set_autotune(False)
    done = load_done(args.out)
    path = os.path.join(args.out, "tiles.jsonl")
    cases = plan(args.dtypes.split(","), args.shapes.split(","), dev, args.out)
    end = time.time() + args.budget_s
    for c in cases:
        cid = case_id(c)
        if cid in done:
            continue
        if time.time() > end:
            print(f"budget spent: {cid} and later not run", flush=True)
            return 0
        with open(os.path.join(args.out, "current.txt"), "w") as f:
            f.write(cid)
        try:
            row = run_case(c, dev)
        except Exception as e:  # noqa: BLE001
            if "CUDA" in str(e) or type(e).__name__ == "AcceleratorError":
                print(f"{cid}: CUDA fault {str(e)[:120]}", flush=True)
                os._exit(3)  # the context is gone; the parent records this case and restarts us
            row = dict(c, status=f"error {type(e).__name__}: {str(e)[:160]}")
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{cid}: {row['status']}", flush=True)
    return 0


def load_done(out):
    path = os.path.join(out, "tiles.jsonl")
    if not os.path.exists(path):
        return set()
    with open(path) as f:
        return {case_id(json.loads(line)) for line in f if line.strip()}


def parent(args):
    os.makedirs(args.out, exist_ok=True)
    end = time.time() + args.budget_s
    for _ in range(50):  # at most 50 faulting tiles
        left = end - time.time()
        if left <= 5:
            break
        cmd = [sys.executable, __file__, "--child", "--out", args.out, "--dtypes", args.dtypes,
               "--shapes", args.shapes, "--budget-s", str(left), "--device", args.device]
        rc = subprocess.call(cmd)
        if rc == 0:
            break
        cur = os.path.join(args.out, "current.txt")
        if not os.path.exists(cur):
            print(f"child failed (rc {rc}) before its first case; see the log above", flush=True)
            break
        with open(cur) as f:
            cid = f.read().strip()
        shape, dtype, kind, causal, kernel, idx = cid.split("|")
        row = dict(shape=shape, dtype=dtype, kind=kind, causal=causal == "True", kernel=kernel,
                   tile_index=int(idx), status=f"crash (child rc {rc})")
        with open(os.path.join(args.out, "tiles.jsonl"), "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{cid}: crash (rc {rc}); restarting after it", flush=True)
    write_table(args.out)


def write_table(out):
    path = os.path.join(out, "tiles.jsonl")
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    cols = ["shape", "dtype", "kind", "causal", "kernel", "tile_index", "tile", "status",
            "kernel_out_err", "torch_out_err", "kernel_dq_err", "torch_dq_err", "kernel_dk_err",
            "torch_dk_err", "kernel_dv_err", "torch_dv_err"]
    with open(os.path.join(out, "tiles.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    bad = [r for r in rows if r["status"] != "PASS"]
    print(f"{len(rows)} cases, {len(rows) - len(bad)} PASS; not passing:")
    for r in bad:
        print(f"  {case_id(r)}: {r['status']}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--dtypes", default="bfloat16")
    p.add_argument("--shapes", default="small,gpt2")
    p.add_argument("--small-only", action="store_true", help="only the small shape (CPU dry run)")
    p.add_argument("--budget-s", type=float, default=240.0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.small_only:
        args.shapes = "small"
    if args.device == "cpu":
        args.dtypes = "float32"
    if args.child:
        sys.exit(child(args, torch.device(args.device)))
    parent(args)


if __name__ == "__main__":
    main()
