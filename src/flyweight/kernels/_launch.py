"""Re-launching a compiled Triton kernel without Triton's per-call argument binding.

``kernel[grid](*args)`` costs tens of microseconds of host time on every call (on the H200 host an SS1
sketch launch took 34.5 us through it and 20.6 us re-launched directly, BENCHMARKS.md): Triton binds the arguments,
works out each one's specialization (dtype, 16-byte alignment, divisibility by 16, == 1), hashes them
into a cache key, builds launch metadata and calls the launch hooks. A layer that launches the same
kernel with arguments of the same specialization pays all of that again for nothing.

``CachedLaunch`` does the first launch of each specialization through Triton as usual and keeps the
``CompiledKernel`` it returns; later launches with the same specialization call the compiled kernel's
launcher directly (what ``CompiledKernel.__getitem__`` does, and what Inductor's generated code does).
The caller passes ``spec``, a hashable summary of everything Triton would specialize on beyond the
tensors' dtypes and alignment; ``int_spec`` gives the class of an integer argument the way Triton
sees it.

Falls back to the ordinary launch (nothing cached) under the interpreter, on Triton versions whose
launcher signature this was not checked against, and while a launch hook is installed (a profiler
such as proton), so hooks still see every launch.
"""

from __future__ import annotations

import inspect

import torch

from flyweight.kernels._triton_env import INTERPRET

try:
    import triton

    _VERSION = tuple(int(p) for p in triton.__version__.split(".")[:2])
    from triton import knobs as _knobs
except (ImportError, ValueError):  # no Triton, an unparsable version, or one before triton.knobs (3.4)
    _knobs = None
    _VERSION = (0, 0)

# the launcher call ``run(g0, g1, g2, stream, function, packed_metadata, launch_metadata, enter_hook,
# exit_hook, *all_arguments)`` was read from Triton 3.4-3.6 (jit.py, compiler.py); 3.6 is on the H200
SUPPORTED = (3, 4) <= _VERSION < (3, 7)


def int_spec(v: int) -> int:
    """Triton's specialization class of an integer argument: == 1, divisible by 16, needs 64 bits."""
    return (v == 1) | ((v % 16 == 0) << 1) | ((not -2**31 <= v < 2**31) << 2)


def _relaunch(compiled, grid, device_index: int, args) -> None:
    """One launch of ``compiled`` (a ``CompiledKernel``) on the current stream of ``device_index``: what
    ``CompiledKernel.__getitem__`` does, without launch metadata or hooks (callers check there are none)."""
    g1 = grid[1] if len(grid) > 1 else 1
    g2 = grid[2] if len(grid) > 2 else 1
    compiled.run(grid[0], g1, g2, torch._C._cuda_getCurrentRawStream(device_index), compiled.function,
                 compiled.packed_metadata, None, None, None, *args)


def _hooks_installed() -> bool:
    rt = _knobs.runtime
    for hook in (rt.launch_enter_hook, rt.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):  # an empty HookChain calls nothing
            return True
    return False


class CachedLaunch:
    """``launch(spec, grid, *args, **options)``: ``kernel[grid](*args, **options)`` (options: num_warps,
    num_stages) with the binding skipped after the first call of each ``spec`` on the current CUDA device.

    ``args`` are ALL the kernel's parameters, constexprs included, positionally in signature order
    (the compiled launcher takes them that way and ignores the constexprs). ``spec`` must change
    whenever Triton would compile a different kernel: constexpr values, the tensors' dtypes,
    ``int_spec`` of every specialized integer, whether every pointer is 16-byte aligned, the options.
    """

    def __init__(self, kernel):
        self.kernel = kernel
        self.compiled: dict = {}
        self.enabled = SUPPORTED and not INTERPRET

    def __call__(self, spec, grid, *args, **options):
        if not self.enabled:
            self.kernel[grid](*args, **options)
            return
        key = (spec, torch._C._cuda_getDevice())  # Triton, too, launches on the current device
        compiled = self.compiled.get(key)
        if compiled is not None and not _hooks_installed():
            _relaunch(compiled, grid, key[1], args)
            return
        compiled = self.kernel[grid](*args, **options)
        if compiled is not None and hasattr(compiled, "packed_metadata"):
            self.compiled[key] = compiled


def _arg_key(a):
    """What of one argument an autotuned kernel's compiled program depends on: a tensor's dtype and
    16-byte alignment, any other value itself (the autotuning key reads exact integers)."""
    if isinstance(a, torch.Tensor):
        return a.dtype, a.data_ptr() % 16 == 0
    return a


class TunedLaunch:
    """``launch(grid_fn, *args, **constexprs)``: ``autotuned[grid_fn](*args, **constexprs)`` for a
    ``triton.autotune`` kernel, re-launched directly once its config is chosen.

    The first call of each argument key goes through the autotuner (timing the candidates if its key
    is new, or reading its cache); the config it picked and the ``CompiledKernel`` it launched are
    kept, and later calls with the same key compute the grid from that config and launch directly.
    The key is exact (every integer's value, every tensor's dtype and alignment, the constexprs), so
    it changes whenever the autotuner's key or Triton's specialization would; at most ``max_entries``
    keys are kept (a new one beyond that clears them).
    """

    max_entries = 1024
    enabled = SUPPORTED and not INTERPRET  # one switch for every autotuned kernel (benchmarks turn it off)

    def __init__(self, tuned):
        self.tuned = tuned
        fn = tuned.fn
        while not hasattr(fn, "signature"):  # through heuristics wrappers to the JITFunction
            fn = fn.fn
        self.params = list(fn.signature.parameters.values())
        self.entries: dict = {}

    def __call__(self, grid_fn, *args, **constexprs):
        if not self.enabled:
            self.tuned[grid_fn](*args, **constexprs)
            return
        key = (tuple(map(_arg_key, args)), tuple(constexprs.items()), torch._C._cuda_getDevice())
        entry = self.entries.get(key)
        if entry is not None and not _hooks_installed():
            compiled, meta, tail = entry
            _relaunch(compiled, grid_fn(meta), key[2], (*args, *tail))
            return
        compiled = self.tuned[grid_fn](*args, **constexprs)
        config = getattr(self.tuned, "best_config", None)
        if compiled is None or config is None or not hasattr(compiled, "packed_metadata"):
            return
        values = {**constexprs, **config.kwargs}
        tail = tuple(values[p.name] if p.name in values else p.default for p in self.params[len(args):])
        if any(v is inspect.Parameter.empty for v in tail):  # a parameter this launch did not name: no cache
            return
        if len(self.entries) >= self.max_entries:
            self.entries.clear()
        self.entries[key] = (compiled, dict(config.kwargs), tail)
