"""What every GPU benchmark script here shares: the output folder and budget, the timers, the GPT-2 under
test and the part-based command line.

    from gpu_harness import CUDA, DEV, Run, graph_us, host_us, hf_gpt2, part_parser, peak_mib, run_parts, sync, time_us

Import it after setting ``TRITON_INTERPRET`` (it imports triton). Without CUDA the timers fall back to
short wall-clock loops, so a script's CPU dry run exercises the same code.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import statistics
import time
import traceback

import torch
import triton

CUDA = torch.cuda.is_available()
DEV = torch.device("cuda" if CUDA else "cpu")


class Run:
    """Output folder, wall-clock budget, CSV rows appended as they come, one log.

    ``columns``: fixed columns for some CSVs (by name); any other CSV takes its first row's keys.
    """

    def __init__(self, out: str, budget_s: float, smoke: bool, columns: dict[str, list[str]] | None = None):
        self.out, self.budget_s, self.smoke, self.t0 = out, budget_s, smoke, time.time()
        self.columns = columns or {}
        os.makedirs(out, exist_ok=True)
        self.logf = open(os.path.join(out, "run.log"), "a")
        self.summary: list[str] = []

    def log(self, msg: str) -> None:
        line = f"[{time.time() - self.t0:6.1f}s] {msg}"
        print(line, flush=True)
        self.logf.write(line + "\n")
        self.logf.flush()

    def left(self) -> float:
        return self.budget_s - (time.time() - self.t0)

    def row(self, name: str, row: dict) -> None:
        """Append to OUT/name.csv; the first row of a file fixes its columns (or ``columns[name]``)."""
        path = os.path.join(self.out, f"{name}.csv")
        new = not os.path.exists(path)
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.columns.get(name, list(row)), restval="")
            if new:
                w.writeheader()
            w.writerow(row)

    @contextlib.contextmanager
    def part(self, name: str, need_s: float):
        """``with run.part(name, seconds) as go: if go: ...``: skipped when the budget is short, and a
        failure is logged with its traceback instead of ending the run."""
        if self.left() < need_s:
            self.log(f"== {name}: skipped, {self.left():.0f} s of budget left (needs about {need_s:.0f} s)")
            self.summary.append(f"{name}: skipped (budget)")
            yield False
            return
        self.log(f"== {name}")
        t = time.time()
        try:
            yield True
        except Exception:
            self.log(f"{name} FAILED:\n{traceback.format_exc()}")
            self.summary.append(f"{name}: FAILED (traceback in run.log)")
        self.log(f"== {name} done in {time.time() - t:.0f} s")


def sync() -> None:
    if CUDA:
        torch.cuda.synchronize()


def time_us(fn, rep_ms: int = 50, cpu_reps: int = 3) -> float:
    """Median time of fn() (CUDA events via do_bench on GPU; ``cpu_reps`` timed calls on CPU)."""
    if CUDA:
        return triton.testing.do_bench(fn, warmup=10, rep=rep_ms, return_mode="median") * 1e3
    fn()
    ts = []
    for _ in range(cpu_reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return sorted(ts)[len(ts) // 2] * 1e6


def graph_us(fns: list, warmup_passes: int = 2, rep_ms: int = 50) -> float:
    """GPU time per call with launch overhead excluded: the calls captured in one CUDA graph, replayed.

    ``warmup_passes`` run first on a side stream, outside the capture (first calls compile and tune)."""
    if not CUDA:
        return time_us(lambda: [f() for f in fns]) / len(fns)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup_passes):
            for f in fns:
                f()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for f in fns:
            f()
    us = triton.testing.do_bench(graph.replay, warmup=5, rep=rep_ms, return_mode="median") * 1e3 / len(fns)
    del graph
    return us


def host_us(fn, n: int = 200, rounds: int = 5) -> float:
    """CPU time to issue one fn() while the GPU is kept busy (the clock cannot wait on the GPU): the
    median over ``rounds`` loops of ``n`` calls (one loop swings by 1.5x with the host's load)."""
    for _ in range(10):
        fn()
    sync()
    per_call = []
    for _ in range(rounds):
        if CUDA:
            torch.cuda._sleep(int(3e8))  # ~0.2 s of GPU spin: the loop's kernels queue behind it
        t = time.perf_counter()
        for _ in range(n):
            fn()
        per_call.append((time.perf_counter() - t) / n * 1e6)
        sync()
    return statistics.median(per_call)


def peak_mib(fn) -> float:
    """Peak memory of one fn() call above what was allocated before it (MiB); nan without CUDA."""
    if not CUDA:
        return float("nan")
    sync()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    sync()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def poison() -> None:
    """Fill the allocator's free blocks with NaN, so an output element a kernel never writes shows."""
    if CUDA:
        free = torch.cuda.mem_get_info()[0]
        torch.empty(min(free // 4, 4 * 2**30) // 2, dtype=torch.float16, device=DEV).fill_(float("nan"))


def rel_err(a, ref) -> float:
    """max |a - ref| / max |ref|, in float64."""
    return ((a.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


# ---- whole models --------------------------------------------------------------------------------
BLOCK_TARGETS = ["mlp", "attn_qkv", "attn_out"]


def hf_gpt2(toy_dims: dict | None, config=None):
    """Hugging Face GPT-2 small (or the toy of ``toy_dims``), random init from seed 0, SDPA attention,
    on DEV; with a flyweight typed ``config``, its block linears converted to that kind."""
    from transformers import GPT2Config, GPT2LMHeadModel

    import flyweight

    cfg = GPT2Config(**toy_dims) if toy_dims else GPT2Config()
    torch.manual_seed(0)
    model = GPT2LMHeadModel._from_config(cfg, attn_implementation="sdpa").to(DEV)
    if config is not None:
        flyweight.convert(model, config, target_modules=BLOCK_TARGETS)
    return model


def adamw_step(compiled, opt, ids):
    """One training step of a causal LM under bf16 autocast; returns the loss."""

    def step():
        with torch.autocast(DEV.type, dtype=torch.bfloat16):
            loss = compiled(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def time_steps(step, steps: int, after_warmup=None):
    """(seconds of the first call, which compiles; seconds per step over ``steps`` timed calls after one
    more warm call; the last call's result). ``after_warmup()`` runs just before the timed calls."""
    t = time.time()
    step()
    sync()
    first_s = time.time() - t
    step()
    sync()
    if after_warmup is not None:
        after_warmup()
    t = time.perf_counter()
    for _ in range(steps):
        out = step()
    sync()
    return first_s, (time.perf_counter() - t) / steps, out


# ---- a script's command line and its parts ---------------------------------------------------------
def part_parser(doc: str, parts: tuple[str, ...], budget_s: float) -> argparse.ArgumentParser:
    """--out, --smoke, --budget-s and --parts, the options every part-based script takes."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--smoke", action="store_true", help="every part at its smallest size (< 90 s)")
    p.add_argument("--budget-s", type=float, default=budget_s)
    p.add_argument("--parts", default=",".join(parts))
    return p


def chosen_parts(p: argparse.ArgumentParser, args, parts: tuple[str, ...]) -> list[str]:
    chosen = [s.strip() for s in args.parts.split(",") if s.strip()]
    unknown = set(chosen) - set(parts)
    if unknown:
        p.error(f"unknown parts {sorted(unknown)}; valid: {','.join(parts)}")
    return chosen


def write_env(out: str, args, **extra) -> dict:
    """env.json in ``out``: the device, the versions of torch / triton / transformers / Python, the
    arguments, and ``extra``; returned as a dict."""
    import platform

    import transformers

    env = {"gpu": torch.cuda.get_device_name() if CUDA else f"cpu ({platform.processor() or platform.machine()})",
           "torch": torch.__version__, "triton": triton.__version__, "transformers": transformers.__version__,
           "python": platform.python_version(), "args": vars(args), **extra}
    with open(os.path.join(out, "env.json"), "w") as f:
        json.dump(env, f, indent=1)
    return env


def run_parts(run: Run, parts: tuple[str, ...], chosen: list[str], plan: dict) -> None:
    """Each chosen part in the order of ``parts``; ``plan[name] = (fn, seconds it needs)``."""
    for name in parts:
        if name in chosen:
            fn, need = plan[name]
            with run.part(name, need) as go:
                if go:
                    fn()
