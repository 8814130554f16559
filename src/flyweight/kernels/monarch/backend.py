"""The one place that decides how a Monarch layer runs for a given input.

* ``"torch"``: the layer's own two ``torch.bmm`` and permutations (``MonarchLinear._matmul``): CPU,
  float32/float64, and anything the kernels do not cover. This is the exact reference path.
* ``"triton"``: the Triton kernels of ``flyweight.kernels.monarch`` (float16/bfloat16 on CUDA, or the
  input's autocast dtype; every dtype on CPU under ``TRITON_INTERPRET=1`` when asked explicitly).
  Eager calls launch them through an ``autograd.Function``; under ``torch.compile`` the same launches
  sit behind the ``torch.library.custom_op``s ``flyweight::monarch_fwd`` / ``monarch_bwd`` (opaque to
  Inductor, no graph break, fullgraph works).

The layer's ``backend`` attribute ("auto", "torch", "triton") narrows the choice.
"""

from __future__ import annotations

import torch

from flyweight.kernels._triton_env import require_kernel_device
from flyweight.utils.optional import HAS_TRITON

BACKENDS = ("auto", "torch", "triton")
KERNEL_DTYPES = (torch.float16, torch.bfloat16)


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"Monarch backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    return backend


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the product runs in: the autocast dtype when autocast is on, else x's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def route(x: torch.Tensor, backend: str = "auto") -> str:
    """"torch" or "triton" for this input (see the module docstring)."""
    if backend == "torch":
        return "torch"
    if backend == "auto":
        return "triton" if HAS_TRITON and x.device.type == "cuda" and compute_dtype(x) in KERNEL_DTYPES else "torch"
    check_backend(backend)
    require_kernel_device(x, "Monarch backend='triton'")
    if x.device.type == "cuda" and compute_dtype(x) not in KERNEL_DTYPES:
        raise ValueError(f"Monarch backend='triton' on CUDA supports float16 and bfloat16; got "
                         f"{compute_dtype(x)} (use backend='auto' to fall back to PyTorch)")
    return "triton"
