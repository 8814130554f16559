"""Test-session setup shared by every test module.

Without CUDA, the Triton kernels run in Triton's interpreter on CPU tensors. The interpreter is
chosen when ``triton.jit`` decorates a kernel, i.e. when a kernel module (e.g.
``flyweight.kernels.ss1.kernels``) is first imported, so the variable must be set here, before any
test module imports it.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
