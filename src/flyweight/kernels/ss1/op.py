"""The SS1 operator: y = sketch0(X) @ Wr^T + b, with one autograd rule for every route.

``ss1_linear`` is the only entry point the layer calls. The sketch S0 (M x K/R) is computed by the
route ``backend.sketch_route`` picks; the GEMM is ``F.linear`` against the stored weight Wr, so its
backward (dS0 = dY @ Wr, dWr = dY^T @ S0, db = dY.sum(0)) is PyTorch's own and saves S0, 1/R of X.
The sketch's backward is a gather, not a scatter: each input column feeds exactly one column of S0,
so ``dX = dS0[:, unsketch_index]``.

Accumulation is fp32 (float64 for float64 inputs). Under autocast the sketch is written directly in
the autocast dtype (the cast F.linear would make, fused into the sketch). float16/bfloat16 on CPU
run the whole op in float32 and round the output once, as a dense layer's CPU matmul does, so large
activations cannot overflow the sketch's float16 sums.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch.library import triton_op, wrap_triton

from flyweight.kernels.ss1.backend import TRITON_DTYPES, sketch_route
from flyweight.kernels.ss1.layout import SketchArgs
from flyweight.kernels.ss1.tuning import tiles_for
from flyweight.utils.optional import HAS_TRITON

if HAS_TRITON:  # without Triton (macOS, Windows) only the "torch" route exists (see backend.py)
    from flyweight.kernels._launch import CachedLaunch, int_spec
    from flyweight.kernels.ss1 import tuning
    from flyweight.kernels.ss1.kernels import ss1_fused_kernel, ss1_sketch_kernel

    _launch_sketch = CachedLaunch(ss1_sketch_kernel)  # eager calls skip Triton's argument binding
    _launch_fused = CachedLaunch(ss1_fused_kernel)

_CPU_UPCAST = (torch.float16, torch.bfloat16)


def sketch_triton(x: torch.Tensor, args: SketchArgs, out_dtype: torch.dtype,
                  wrap: bool = False) -> torch.Tensor:
    """S0 (M, K/R) of x (M, in_features) by the Triton kernel; ``wrap``: launched through
    ``wrap_triton`` (inside the ``triton_op``)."""
    if x.dim() != 2 or x.shape[1] != args.in_features:
        raise ValueError(f"ss1 sketch: x must be (M, {args.in_features}), got {tuple(x.shape)}")
    m = x.shape[0]
    kc = args.num_supergroups * args.block_k
    s = torch.empty((m, kc), device=x.device, dtype=out_dtype)
    if m == 0:
        return s
    cfg, grid = tiles_for(m, kc)
    sxm, sxk = x.stride()
    # the kernel's arguments in its signature's order, constexprs included: the direct launcher takes
    # them so, and wrap_triton binds positional arguments to the same names as keywords
    kernel_args = (x, s, m, args.in_features, kc, sxm, sxk, kc, args.r0m, args.r1m,
                   args.compression, args.block_k, args.vec, args.num_rotations, cfg.BM, cfg.BJ)
    if wrap:
        wrap_triton(ss1_sketch_kernel)[grid](*kernel_args, num_warps=cfg.num_warps)
        return s
    # everything the kernel specializes on: the layer (constexprs, widths), the tiles, the dtypes, and
    # the class of each per-call integer and of x's alignment (s is fresh, so aligned)
    spec = (args, cfg, x.dtype, out_dtype, int_spec(m), int_spec(sxm), int_spec(sxk), x.data_ptr() % 16 == 0)
    _launch_sketch(spec, grid, *kernel_args, num_warps=cfg.num_warps)
    return s


def fused_applies(device_type: str, dtype: torch.dtype, backend: str, needs_grad: bool) -> bool:
    """Whether ``ss1_linear`` runs the fused kernel: switched on (``tuning.FUSED == "inference"``), a
    CUDA call without grad in a kernel dtype, and a backend that allows Triton. Under torch.compile it
    runs as the ``triton_op`` ``flyweight::ss1_fused`` (a compiled decode step gets one launch per linear)."""
    return (HAS_TRITON and tuning.FUSED == "inference" and device_type == "cuda" and backend != "torch"
            and dtype in TRITON_DTYPES and not needs_grad)


def fused_linear_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        args: SketchArgs, tiles=None, wrap: bool = False) -> torch.Tensor:
    """y = sketch0(x) @ Wr^T + b in one launch (``kernels.ss1_fused_kernel``), no autograd; x (M, in),
    weight (N, K/R) and bias in one dtype. ``tiles``: a ``tuning.FusedConfig`` instead of the pick
    (clamped to the problem, as the pick is);
    ``wrap``: launched through ``wrap_triton`` (inside the ``triton_op``)."""
    if x.dim() != 2 or x.shape[1] != args.in_features:
        raise ValueError(f"ss1 fused: x must be (M, {args.in_features}), got {tuple(x.shape)}")
    kc = args.num_supergroups * args.block_k
    if weight.shape[1] != kc or weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise ValueError(f"ss1 fused: weight must be (N, {kc}) and bias (N,) in x's dtype {x.dtype}; got "
                         f"{tuple(weight.shape)} {weight.dtype}, bias {None if bias is None else bias.dtype}")
    m, n = x.shape[0], weight.shape[0]
    weight = weight if weight.stride(1) == 1 else weight.contiguous()
    y = torch.empty((m, n), device=x.device, dtype=x.dtype)
    if m == 0:
        return y
    cfg, grid = tuning.fused_tiles_for(m, n) if tiles is None else tuning.fused_tiles_with(tiles, m, n)
    sxm, sxk = x.stride()
    b = y if bias is None else bias
    kernel_args = (x, weight, b, y, m, args.in_features, kc, n, sxm, sxk, weight.stride(0), n, args.r0m, args.r1m,
                   args.compression, args.block_k, args.vec, args.num_rotations, bias is not None,
                   cfg.BM, cfg.BN, cfg.BJ)  # signature order, as in sketch_triton
    options = {"num_warps": cfg.num_warps, "num_stages": cfg.num_stages}
    if wrap:
        wrap_triton(ss1_fused_kernel)[grid](*kernel_args, **options)
        return y
    spec = (args, cfg, x.dtype, n, int_spec(m), int_spec(sxm), int_spec(sxk), int_spec(weight.stride(0)),
            x.data_ptr() % 16 == 0, weight.data_ptr() % 16 == 0, b.data_ptr() % 16 == 0, bias is None)
    _launch_fused(spec, grid, *kernel_args, **options)
    return y


def _ss1_fused_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], args: list[int]) -> torch.Tensor:
    """The fused kernel as an operator torch.compile can see (no autograd: no-grad calls only)."""
    return fused_linear_triton(x, weight, bias, SketchArgs(*args), wrap=True)


ss1_fused_op = triton_op("flyweight::ss1_fused", mutates_args=())(_ss1_fused_op) if HAS_TRITON else None


def _ss1_sketch_op(x: torch.Tensor, args: list[int], out_dtype: torch.dtype) -> torch.Tensor:
    """The Triton sketch as an operator torch.compile can see (the ``triton_op`` route)."""
    return sketch_triton(x, SketchArgs(*args), out_dtype, wrap=True)


ss1_sketch_op = triton_op("flyweight::ss1_sketch", mutates_args=())(_ss1_sketch_op) if HAS_TRITON else None


def sketch_torch(x: torch.Tensor, sketch_index: torch.Tensor, args: SketchArgs,
                 out_dtype: torch.dtype) -> torch.Tensor:
    """S0 by PyTorch ops: gather the rotated chunks, sum the R of each supergroup."""
    m = x.shape[0]
    if args.padded_in != args.in_features:
        x = F.pad(x, (0, args.padded_in - args.in_features))
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    chunks = x.index_select(1, sketch_index).view(m, args.num_supergroups, args.compression, args.block_k)
    return chunks.sum(2, dtype=acc).to(out_dtype).view(m, args.num_supergroups * args.block_k)


def _sketch_forward(x, sketch_index, args: SketchArgs, route: str, out_dtype: torch.dtype) -> torch.Tensor:
    if route == "triton":
        return sketch_triton(x, args, out_dtype)
    if route == "triton_op":
        return ss1_sketch_op(x, list(args), out_dtype)
    return sketch_torch(x, sketch_index, args, out_dtype)


class _Sketch(torch.autograd.Function):
    """S0 = sketch0(x); backward dX = dS0[:, unsketch_index] (every route shares this rule).

    ``forward(ctx, ...)`` rather than a separate ``setup_context``: with one, ``apply`` binds the
    arguments through ``inspect.signature`` on every call, tens of microseconds of host time.
    """

    @staticmethod
    def forward(ctx, x, sketch_index, unsketch_index, args, route, out_dtype):
        ctx.save_for_backward(unsketch_index)
        ctx.x_dtype = x.dtype
        return _sketch_forward(x, sketch_index, args, route, out_dtype)

    @staticmethod
    def backward(ctx, ds):
        (unsketch_index,) = ctx.saved_tensors
        return ds.index_select(1, unsketch_index).to(ctx.x_dtype), None, None, None, None, None


def sketch(x: torch.Tensor, sketch_index: torch.Tensor, unsketch_index: torch.Tensor, args: SketchArgs,
           backend: str = "auto", out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """The phase-0 sketch S0 (M, K/R) of x (M, in_features), differentiable in x."""
    route = sketch_route(x, backend)
    dtype = x.dtype if out_dtype is None else out_dtype
    if x.requires_grad and torch.is_grad_enabled():
        return _Sketch.apply(x, sketch_index, unsketch_index, args, route, dtype)
    return _sketch_forward(x, sketch_index, args, route, dtype)  # no autograd record to pay for


def ss1_linear(x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, sketch_index: torch.Tensor,
               unsketch_index: torch.Tensor, args: SketchArgs, backend: str = "auto") -> torch.Tensor:
    """y = x W^T + b for the SS1 weight in the stored layout Wr (N, K/R); x (M, in_features).

    ``sketch_index`` (padded_in,) and ``unsketch_index`` (in_features,) are the layout's index
    tables on x's device (``SS1Layout.sketch_index`` / ``unsketch_index``).
    """
    device_type = x2d.device.type
    if torch.is_autocast_enabled(device_type):
        s0 = sketch(x2d, sketch_index, unsketch_index, args, backend, torch.get_autocast_dtype(device_type))
        return F.linear(s0, weight, bias)  # autocast casts the parameters, as for a dense layer
    dtype = x2d.dtype
    if device_type == "cpu" and dtype in _CPU_UPCAST:
        y = ss1_linear(x2d.float(), weight.float(), None if bias is None else bias.float(), sketch_index,
                       unsketch_index, args, backend)
        return y.to(dtype)
    if weight.dtype != dtype:  # parameters follow the input's dtype, like every flyweight layer
        weight = weight.to(dtype)
    if bias is not None and bias.dtype != dtype:
        bias = bias.to(dtype)
    needs_grad = torch.is_grad_enabled() and (x2d.requires_grad or weight.requires_grad
                                              or (bias is not None and bias.requires_grad))
    if fused_applies(device_type, dtype, backend, needs_grad):
        if torch.compiler.is_compiling():
            return ss1_fused_op(x2d, weight, bias, list(args))
        return fused_linear_triton(x2d, weight, bias, args)
    return F.linear(sketch(x2d, sketch_index, unsketch_index, args, backend), weight, bias)
