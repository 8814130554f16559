"""The SS1 operator as one small package.

``layout``  the structure of a layer: hash, rotations, index tables, the stored weight layout
``kernels`` the Triton sketch kernel (``@triton.jit`` only)
``tuning``  its tile configurations
``backend`` the one place that chooses how the sketch runs (PyTorch ops, Triton, triton_op)
``op``      ``ss1_linear``: the sketch (one autograd rule for every route) and F.linear
"""

from flyweight.kernels.ss1.backend import BACKENDS, COMPILED_ROUTES, check_backend, set_compiled_route, sketch_route
from flyweight.kernels.ss1.layout import HASH_PRIME, SketchArgs, SS1Layout, draw_hash_coeffs, valid_widths_near
from flyweight.kernels.ss1.op import sketch, ss1_linear

__all__ = [
    "BACKENDS",
    "COMPILED_ROUTES",
    "HASH_PRIME",
    "SS1Layout",
    "SketchArgs",
    "check_backend",
    "draw_hash_coeffs",
    "set_compiled_route",
    "sketch",
    "sketch_route",
    "ss1_linear",
    "valid_widths_near",
]
