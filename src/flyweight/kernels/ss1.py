"""Dispatch for the SS1 operator: one entry point, the backend chosen by device.

``ss1_linear`` is the only function ``SS1Linear`` calls. ``backend="auto"`` runs the Triton kernels
(``ss1_triton.py``) on CUDA tensors of fp16/bf16/fp32 and the exact PyTorch path everywhere else;
``"torch"`` forces the PyTorch path; ``"triton"`` forces the kernels (on CPU only under
``TRITON_INTERPRET=1``, which is how the CI tests run them).
"""

from __future__ import annotations

import torch

from flyweight.kernels._triton_env import INTERPRET
from flyweight.kernels.ss1_layout import SS1Layout
from flyweight.kernels.ss1_torch import SS1Tables, ss1_linear_torch

BACKENDS = ("auto", "torch", "triton")
TRITON_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"SS1 backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    return backend


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def use_triton(x2d: torch.Tensor, backend: str = "auto") -> bool:
    """Whether ``ss1_linear`` would run the Triton kernels for this input."""
    check_backend(backend)
    if backend == "torch":
        return False
    if backend == "triton":
        if not triton_available():
            raise RuntimeError("SS1 backend='triton' needs the triton package (pip install triton)")
        if x2d.device.type != "cuda" and not INTERPRET:
            raise RuntimeError(
                f"SS1 backend='triton' needs a CUDA tensor (got device {x2d.device}); on CPU set "
                "TRITON_INTERPRET=1 before importing flyweight, or use backend='auto' or 'torch'"
            )
        if x2d.dtype not in TRITON_DTYPES:
            raise ValueError(f"SS1 backend='triton' supports float16, bfloat16, float32; got {x2d.dtype}")
        return True
    return x2d.device.type == "cuda" and x2d.dtype in TRITON_DTYPES and triton_available()


def ss1_linear(
    x2d: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    layout: SS1Layout,
    tables: SS1Tables | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """SS1 forward for x of shape (M, padded_in); differentiable with respect to all tensors.

    ``tables`` (the PyTorch path's index tensors on x's device) are built on demand when omitted.
    """
    if use_triton(x2d, backend):
        from flyweight.kernels.ss1_triton import ss1_linear_triton  # imported lazily: triton is heavy

        return ss1_linear_triton(x2d, weight, bias, layout)
    if tables is None:
        tables = SS1Tables(layout, x2d.device)
    return ss1_linear_torch(x2d, weight, bias, layout, tables)
