"""Whether flyweight's Triton kernels run under Triton's CPU interpreter.

``TRITON_INTERPRET=1`` (set before importing flyweight, read once here for every kernel module) makes
the kernels take CPU tensors: that is how the test suite checks their logic without a GPU.
"""

import os

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
