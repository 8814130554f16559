"""The one place that decides how the SS1 sketch runs for a given input.

Routes (what computes S0; the GEMM after it is always ``F.linear``):

* ``"torch"``: PyTorch ops, ``x[:, idx].view(M, G, R, BK).sum(2)``. On CPU, for float64, and under
  ``torch.compile`` (by default), where Inductor fuses the gather-and-sum with the ops around it
  (layer norm, GELU, the residual add) instead of writing and re-reading X.
* ``"triton"``: the Triton sketch kernel, launched directly (eager CUDA calls: one pass over X).
* ``"triton_op"``: the same kernel as a ``torch.library.triton_op``, which Inductor sees but cannot
  fuse; used under ``torch.compile`` when ``compiled_route`` is ``"triton_op"``.

The layer's ``backend`` attribute ("auto", "torch", "triton") narrows the choice; the compiled route
is a process-wide switch (``set_compiled_route``, or ``FLYWEIGHT_SS1_COMPILED=inductor|triton_op``
before importing flyweight), measured by ``benchmarks/ss1_gpu.py --parts routes``.
"""

from __future__ import annotations

import torch

from flyweight.kernels._triton_env import require_kernel_device
from flyweight.utils.env import SWITCHES, env_choice
from flyweight.utils.optional import HAS_TRITON

BACKENDS = ("auto", "torch", "triton")
COMPILED_ROUTES = SWITCHES["FLYWEIGHT_SS1_COMPILED"].choices
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _checked_route(value: str) -> str:
    if value not in COMPILED_ROUTES:
        raise ValueError(f"SS1 compiled route must be one of {', '.join(COMPILED_ROUTES)}; got {value!r} "
                         "(FLYWEIGHT_SS1_COMPILED or set_compiled_route)")
    return value


_compiled_route = env_choice("FLYWEIGHT_SS1_COMPILED")


def set_compiled_route(route: str) -> None:
    """Choose how the sketch is compiled from now on ("inductor" or "triton_op"); call
    ``torch._dynamo.reset()`` afterwards so graphs traced with the old route are dropped."""
    global _compiled_route
    _compiled_route = _checked_route(route)


def compiled_route() -> str:
    return _compiled_route


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"SS1 backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    return backend


def sketch_route(x: torch.Tensor, backend: str = "auto") -> str:
    """"torch", "triton" or "triton_op" for this input (see the module docstring)."""
    if backend == "torch":
        return "torch"
    if backend == "auto":
        if not HAS_TRITON or x.device.type != "cuda" or x.dtype not in TRITON_DTYPES:
            return "torch"
        if torch.compiler.is_compiling():
            return "torch" if _compiled_route == "inductor" else "triton_op"
        return "triton"
    if backend != "triton":
        check_backend(backend)
    require_kernel_device(x, "SS1 backend='triton'")
    if x.dtype not in TRITON_DTYPES:
        raise ValueError(f"SS1 backend='triton' supports float16, bfloat16, float32; got {x.dtype}")
    return "triton_op" if torch.compiler.is_compiling() else "triton"
