"""Timing and memory measurement: the one place benchmark numbers come from.

GPU: ``triton.testing.do_bench`` (CUDA events, median). CPU: ``torch.utils.benchmark`` (median of
blocked runs). Peak memory: the CUDA allocator's peak on GPU; on CPU, the peak of live tensor bytes
seen by a dispatch mode (tensors only; the allocator's own overhead is not counted).
"""

from __future__ import annotations

import re
import weakref
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from flyweight.utils.device import device_name, synchronize
from flyweight.utils.optional import HAS_TRITON


def env_tag(device: torch.device, dtype: str | None = None) -> str:
    """File-name-safe environment name: device, torch version (and dtype)."""
    name = re.sub(r"[^A-Za-z0-9]+", "-", device_name(device)).strip("-")[:40]
    tag = f"{name}_torch{torch.__version__.split('+')[0]}"
    return f"{tag}_{dtype}" if dtype else tag


def time_us(fn: Callable[[], object], device: torch.device, *, budget_s: float = 0.2) -> float:
    """Median latency of ``fn()`` in microseconds, after warm-up."""
    if device.type == "cuda" and HAS_TRITON:
        import triton.testing

        ms = triton.testing.do_bench(fn, warmup=max(10, int(budget_s * 250)), rep=max(20, int(budget_s * 1000)),
                                     return_mode="median")
        return float(ms) * 1e3
    import torch.utils.benchmark as tbench

    fn()  # warm-up (first-call allocations, lazy init)
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=budget_s).median * 1e6


class _LiveTensorBytes(TorchDispatchMode):
    """Tracks live bytes of tensors created inside the mode and their peak."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.device.type == "cpu":
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self._seen:
                    nbytes = storage.nbytes()
                    self._seen.add(key)
                    self.live += nbytes
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(t, self._release, key, nbytes)
        return out


def peak_memory_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated while ``fn()`` runs, beyond what was allocated before it."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - before)
    tracker = _LiveTensorBytes()
    with tracker:
        fn()
    return int(tracker.peak)
