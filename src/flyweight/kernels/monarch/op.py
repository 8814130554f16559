"""The Monarch operator on the Triton kernels: y = Monarch(x) + b with its own autograd rule.

``monarch_linear`` is the only entry point the layer calls. Forward is two launches (``first``
writes the intermediate planes H, ``second`` reads them and writes Y with the bias added); H
(b x M x r, the size of a width-r activation) is saved for the backward, X is not copied. Backward
is four launches: dH (``dmid``), dX (``dinput``), and dW1 / dW2 (+ db) as fp32 split partials summed
on the host. Inputs and weights must share one dtype (the layer casts); accumulation is fp32.

Host cost: the eager path is one ``autograd.Function`` whose forward does two allocations and two
launches; all sizes come from the layer's ``MonarchSizes`` (a tuple of ints computed once) and its
slot table (a buffer on the layer), so nothing is rebuilt per call. Each launch after the first of
its argument key skips the autotuner and Triton's binding (``kernels/_launch.TunedLaunch``).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from flyweight.kernels._triton_env import INTERPRET
from flyweight.kernels.monarch.layout import MonarchSizes
from flyweight.utils.optional import HAS_TRITON

if HAS_TRITON:  # without Triton route() never picks these launches (see backend.py)
    import triton

    from flyweight.kernels._launch import TunedLaunch
    from flyweight.kernels.monarch import tuning
    from flyweight.kernels.monarch.tuning import MAX_DW_TILE, launcher, m_bucket


def _unit_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def _contiguous(t: torch.Tensor) -> torch.Tensor:
    """Weights, H and the outputs are contiguous: their strides follow from the sizes in ``MonarchSizes``
    (fewer ``stride()`` calls per launch: host time)."""
    return t if t.is_contiguous() else t.contiguous()


@functools.lru_cache(maxsize=None)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _target_programs(device: torch.device) -> int:
    """About two waves of programs: enough for the split weight-gradient reductions to fill the GPU."""
    if device.type != "cuda":
        return 8
    return 2 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())


_direct: dict = {}  # kernel name -> TunedLaunch: eager re-launches skip the autotuner's and Triton's binding


def _launch(name: str, grid_fn, *args, **constexprs) -> None:
    kernel, tile = launcher(name)
    if tile is not None:
        kernel[grid_fn](*args, **constexprs, **tile)
        return
    launch = _direct.get(name)
    if launch is None or launch.tuned is not kernel:
        launch = _direct[name] = TunedLaunch(kernel)
    launch(grid_fn, *args, **constexprs)


def _splits(m: int, tiles: int, device: torch.device) -> tuple[int, int]:
    """(number of row slices, rows per slice) for a weight gradient with ``tiles`` output tiles."""
    want = max(1, -(-_target_programs(device) // max(tiles, 1)))
    step = 16 if INTERPRET else MAX_DW_TILE
    per = max(step, -(-m // want))
    per = -(-per // step) * step  # a multiple of every BK, so slices never split a row tile
    return -(-m // per), per


def slot_vec(sizes: MonarchSizes) -> int:
    """8 when every aligned group of 8 slots is one contiguous run in H (b divides r, r/b % 8 == 0)."""
    b, r = sizes.nblocks, sizes.mid
    return 8 if r % b == 0 and (r // b) % 8 == 0 else 1


def forward_impl(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, bias: torch.Tensor | None,
                 table: torch.Tensor, sizes: MonarchSizes) -> tuple[torch.Tensor, torch.Tensor]:
    """(y (M, N), H (b, M, r)) for x (M, K)."""
    x, w1, w2 = _unit_stride(x), _contiguous(w1), _contiguous(w2)
    m = x.shape[0]
    b, r, p_in, p_out, n_out = sizes.nblocks, sizes.mid, sizes.p_in, sizes.p_out, sizes.out_features
    h = torch.empty((b, m, r), device=x.device, dtype=x.dtype)
    y = torch.empty((m, n_out), device=x.device, dtype=x.dtype)
    if m == 0:
        return y, h
    mb = m_bucket(m)
    _launch("first", lambda c: (triton.cdiv(m, c["BM"]) * b * triton.cdiv(r, c["BN"]),),
            x, w1, table, h, m, sizes.in_features, p_in, r, b,
            x.stride(0), r * p_in, p_in, m * r, r, mb, SLOT_VEC=slot_vec(sizes))
    bias_arg = bias if bias is not None else y
    if tuning.SECOND == "joined" and b in tuning.JOINED_BLOCKS:
        _launch("second_joined", lambda c: (triton.cdiv(m, c["BM"]) * triton.cdiv(p_out, c["BN"] // b),),
                h, w2, bias_arg, y, m, n_out, p_out, r, m * r, r, p_out * r, r, n_out, mb, NB=b,
                HAS_BIAS=bias is not None)
    else:
        _launch("second", lambda c: (triton.cdiv(m, c["BM"]) * b * triton.cdiv(p_out, c["BN"]),),
                h, w2, bias_arg, y, m, n_out, p_out, r, b, m * r, r, p_out * r, r, n_out, mb,
                HAS_BIAS=bias is not None)
    return y, h


def fused_applies(sizes: MonarchSizes) -> bool:
    """The fused kernel is written for b | r (each block's share of a plane is r/b middle columns)."""
    return sizes.mid % sizes.nblocks == 0


def fused_forward(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, bias: torch.Tensor | None,
                  sizes: MonarchSizes) -> torch.Tensor:
    """y (M, N) by the single fused kernel (no intermediate in memory, so nothing for a backward)."""
    if not fused_applies(sizes):
        raise ValueError(f"the fused Monarch kernel needs nblocks to divide the middle width; got "
                         f"nblocks={sizes.nblocks}, r={sizes.mid} (use the two-kernel forward_impl)")
    x, w1, w2 = _unit_stride(x), _unit_stride(w1), _unit_stride(w2)
    m, b = x.shape[0], sizes.nblocks
    rb = sizes.mid // b
    y = torch.empty((m, sizes.out_features), device=x.device, dtype=x.dtype)
    if m == 0:
        return y
    rbp = 16
    while rbp < rb:
        rbp *= 2
    _launch("fused", lambda c: (triton.cdiv(m, c["BM"]) * b * triton.cdiv(sizes.p_out, c["BN"]),),
            x, w1, w2, bias if bias is not None else y, y, m, sizes.in_features, sizes.out_features,
            sizes.p_in, sizes.p_out, sizes.mid, rb, x.stride(0), w1.stride(0), w1.stride(1), w2.stride(0), w2.stride(1),
            y.stride(0), m_bucket(m), NB=b, RBP=rbp, HAS_BIAS=bias is not None)
    return y


def backward_impl(dy: torch.Tensor, x: torch.Tensor, h: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                  table: torch.Tensor, sizes: MonarchSizes, has_bias: bool, need_dx: bool = True,
                  need_dw: bool = True):
    """(dX, dW1, dW2, db); entries not asked for are None (db is None without a bias)."""
    dy, x, w1, w2 = _unit_stride(dy), _unit_stride(x), _unit_stride(w1), _unit_stride(w2)
    m = x.shape[0]
    b, r, p_in, p_out = sizes.nblocks, sizes.mid, sizes.p_in, sizes.p_out
    k_in, n_out = sizes.in_features, sizes.out_features
    dx = dw1 = dw2 = db = None
    if m == 0:
        dx = torch.zeros_like(x) if need_dx else None
        if need_dw:
            dw1, dw2 = torch.zeros_like(w1), torch.zeros_like(w2)
            db = torch.zeros(n_out, device=x.device, dtype=w2.dtype) if has_bias else None
        return dx, dw1, dw2, db
    mb = m_bucket(m)
    dh = torch.empty((b, m, r), device=x.device, dtype=x.dtype)
    joined = tuning.BACKWARD == "joined" and b in tuning.BWD_JOINED_BLOCKS
    if joined:
        _launch("dmid_joined", lambda c: (triton.cdiv(m, c["BM"]) * triton.cdiv(r, c["BN"]),),
                dy, w2, dh, m, n_out, p_out, r, dy.stride(0), w2.stride(0), w2.stride(1), dh.stride(0),
                dh.stride(1), mb, NB=b)
    else:
        _launch("dmid", lambda c: (triton.cdiv(m, c["BM"]) * b * triton.cdiv(r, c["BN"]),),
                dy, w2, dh, m, n_out, p_out, r, b, dy.stride(0), w2.stride(0), w2.stride(1), dh.stride(0),
                dh.stride(1), mb)
    if need_dx:
        dx = torch.empty((m, k_in), device=x.device, dtype=x.dtype)
        _launch("dinput", lambda c: (triton.cdiv(m, c["BM"]) * b * triton.cdiv(p_in, c["BN"]),),
                dh, w1, table, dx, m, k_in, p_in, r, b, dh.stride(0), dh.stride(1), w1.stride(0),
                w1.stride(1), dx.stride(0), mb, SLOT_VEC=slot_vec(sizes))
    if need_dw:
        tile = MAX_DW_TILE
        splits, per = _splits(m, b * triton.cdiv(r, tile) * triton.cdiv(p_in, tile), x.device)
        part1 = torch.empty((splits, b, r, p_in), device=x.device, dtype=torch.float32)
        _launch("dw1", lambda c: (b * triton.cdiv(r, c["BM"]) * triton.cdiv(p_in, c["BN"]), splits),
                dh, x, table, part1, m, k_in, p_in, r, b, per, dh.stride(0), dh.stride(1), x.stride(0),
                part1.stride(0), mb, SLOT_VEC=slot_vec(sizes))
        splits2, per2 = _splits(m, b * triton.cdiv(p_out, tile) * triton.cdiv(r, tile), x.device)
        part2 = torch.empty((splits2, b, p_out, r), device=x.device, dtype=torch.float32)
        pbias = torch.empty((splits2, n_out), device=x.device, dtype=torch.float32) if has_bias else part2
        if joined:
            _launch("dw2_joined",
                    lambda c: (triton.cdiv(b * p_out, c["BM"]) * triton.cdiv(r, c["BN"]), splits2),
                    dy, h, part2, pbias, m, n_out, p_out, r, per2, dy.stride(0), h.stride(0), h.stride(1),
                    part2.stride(0), pbias.stride(0), mb, NB=b, HAS_BIAS=has_bias)
        else:
            _launch("dw2", lambda c: (b * triton.cdiv(p_out, c["BM"]) * triton.cdiv(r, c["BN"]), splits2),
                    dy, h, part2, pbias, m, n_out, p_out, r, b, per2, dy.stride(0), h.stride(0), h.stride(1),
                    part2.stride(0), pbias.stride(0), mb, HAS_BIAS=has_bias)
        dw1 = (part1[0] if splits == 1 else part1.sum(0)).to(w1.dtype)
        dw2 = (part2[0] if splits2 == 1 else part2.sum(0)).to(w2.dtype)
        if has_bias:
            db = (pbias[0] if splits2 == 1 else pbias.sum(0)).to(dy.dtype)
    return dx, dw1, dw2, db


# ---- torch.compile: opaque custom ops with autograd --------------------------------------------
# (Optional[...] rather than "X | None" in the schema: the form every torch version infers)
@torch.library.custom_op("flyweight::monarch_fwd", mutates_args=())
def monarch_fwd(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, bias: Optional[torch.Tensor],
                table: torch.Tensor, sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return forward_impl(x, w1, w2, bias, table, MonarchSizes(*sizes))


@monarch_fwd.register_fake
def _(x, w1, w2, bias, table, sizes):
    mt = MonarchSizes(*sizes)
    return (x.new_empty((x.shape[0], mt.out_features)), x.new_empty((mt.nblocks, x.shape[0], mt.mid)))


@torch.library.custom_op("flyweight::monarch_bwd", mutates_args=())
def monarch_bwd(dy: torch.Tensor, x: torch.Tensor, h: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor,
                table: torch.Tensor, sizes: list[int], has_bias: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    dx, dw1, dw2, db = backward_impl(dy, x, h, w1, w2, table, MonarchSizes(*sizes), has_bias)
    return dx, dw1, dw2, db if db is not None else dy.new_empty((0,))


@monarch_bwd.register_fake
def _(dy, x, h, w1, w2, table, sizes, has_bias):
    n = MonarchSizes(*sizes).out_features if has_bias else 0
    return torch.empty_like(x), torch.empty_like(w1), torch.empty_like(w2), dy.new_empty((n,))


def _setup_context(ctx, inputs, output):
    x, w1, w2, bias, table, sizes = inputs
    ctx.save_for_backward(x, output[1], w1, w2, table)
    ctx.sizes, ctx.has_bias = sizes, bias is not None
    ctx.set_materialize_grads(False)


def _backward(ctx, dy, _dh):
    if dy is None:
        return None, None, None, None, None, None
    x, h, w1, w2, table = ctx.saved_tensors
    dx, dw1, dw2, db = monarch_bwd(dy, x, h, w1, w2, table, ctx.sizes, ctx.has_bias)
    return dx, dw1, dw2, db if ctx.has_bias else None, None, None


monarch_fwd.register_autograd(_backward, setup_context=_setup_context)


# ---- eager: the same launches without the torch.library dispatch --------------------------------
class _MonarchFn(torch.autograd.Function):
    """``forward(ctx, ...)`` rather than ``setup_context``: binding through ``inspect.signature`` on
    every call would cost tens of microseconds of host time."""

    @staticmethod
    def forward(ctx, x, w1, w2, bias, table, sizes):
        y, h = forward_impl(x, w1, w2, bias, table, sizes)
        ctx.save_for_backward(x, h, w1, w2, table)
        ctx.sizes, ctx.has_bias = sizes, bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        x, h, w1, w2, table = ctx.saved_tensors
        need = ctx.needs_input_grad
        dx, dw1, dw2, db = backward_impl(dy, x, h, w1, w2, table, ctx.sizes, ctx.has_bias,
                                         need_dx=need[0], need_dw=need[1] or need[2] or need[3])
        return dx, dw1, dw2, db, None, None


def monarch_linear(x2d: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, bias: torch.Tensor | None,
                   table: torch.Tensor, sizes: MonarchSizes,
                   dtype: torch.dtype | None = None) -> torch.Tensor:
    """y = Monarch(x2d) + bias on the Triton kernels, computed in ``dtype`` (default x's dtype).

    x2d (M, K); w1 (b, r, p_in); w2 (b, p_out, r); table the layer's (3, b, r) int32 slot table on x's
    device; parameters in another dtype are cast (autograd carries the gradient back through the cast).
    """
    dtype = x2d.dtype if dtype is None else dtype
    x2d, w1, w2 = (t if t.dtype == dtype else t.to(dtype) for t in (x2d, w1, w2))
    if bias is not None and bias.dtype != dtype:
        bias = bias.to(dtype)
    if torch.compiler.is_compiling():
        return monarch_fwd(x2d, w1, w2, bias, table, list(sizes))[0]
    if torch.is_grad_enabled() and (x2d.requires_grad or w1.requires_grad or w2.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _MonarchFn.apply(x2d, w1, w2, bias, table, sizes)
    if tuning.FUSED == "inference" and fused_applies(sizes):
        return fused_forward(x2d, w1, w2, bias, sizes)
    return forward_impl(x2d, w1, w2, bias, table, sizes)[0]  # no autograd record to pay for
