"""The Monarch operator as one small package (the layout of ``flyweight.kernels.ss1``).

``layout``  sizes of a layer and the slot table that carries the stride permutation
``kernels`` the Triton kernels (``@triton.jit`` only): two forward products, four backward ones
``tuning``  tile candidates and the persistent autotuning
``backend`` the one place that chooses PyTorch or Triton for an input
``op``      ``monarch_linear``: launches, one autograd rule, the custom ops torch.compile sees
"""

from flyweight.kernels.monarch.backend import BACKENDS, check_backend, compute_dtype, route
from flyweight.kernels.monarch.layout import MonarchSizes, monarch_sizes, slot_table
from flyweight.kernels.monarch.op import monarch_linear

__all__ = ["BACKENDS", "MonarchSizes", "check_backend", "compute_dtype", "monarch_linear", "monarch_sizes",
           "route", "slot_table"]
