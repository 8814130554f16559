"""Whether the optional Triton package is installed.

Triton ships for Linux (x86_64, aarch64) only. Without it (macOS, Windows, a bare CPU install) every
layer and attention kind runs its PyTorch path, and ``"auto"`` never picks a Triton kernel; asking for
one explicitly (``backend="triton"``, ``impl="triton"``, ``attention="triton"``) is an error that says
Triton is missing.
"""

from __future__ import annotations

try:
    import triton  # noqa: F401

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False

NO_TRITON = "Triton is not installed (it exists for Linux x86_64/aarch64 only); use the PyTorch path"


def require_triton(what: str) -> None:
    """Raise a RuntimeError naming ``what`` when Triton is missing."""
    if not HAS_TRITON:
        raise RuntimeError(f"{what} needs Triton. {NO_TRITON}")
