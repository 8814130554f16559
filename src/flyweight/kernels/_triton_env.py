"""Whether flyweight's Triton kernels run under Triton's CPU interpreter.

``TRITON_INTERPRET=1`` (set before importing flyweight, read once here for every kernel module) makes
the kernels take CPU tensors: that is how the test suite checks their logic without a GPU.
"""

import os

from flyweight.utils.optional import require_triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def require_kernel_device(x, what: str) -> None:
    """``what`` (an explicit Triton backend) can run on ``x``: Triton is installed and ``x`` is on CUDA, or
    the interpreter is on."""
    require_triton(what)
    if x.device.type != "cuda" and not INTERPRET:
        raise RuntimeError(
            f"{what} needs a CUDA tensor (got device {x.device}); on CPU set "
            "TRITON_INTERPRET=1 before importing flyweight, or use backend='auto' or 'torch'"
        )
