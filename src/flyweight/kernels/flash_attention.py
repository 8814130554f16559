"""Causal (or full) flash attention in Triton: forward and backward, FlashAttention-2 scheme.

Public API: ``flash_attention(q, k, v, *, causal=True, scale=None) -> out`` with q, k, v shaped
(B, H, T, D) (the layout of HF GPT-2 and ``F.scaled_dot_product_attention``), D in {16, 32, 64,
128}, float16/bfloat16 on CUDA (float32 too under ``TRITON_INTERPRET=1``), any T >= 1. It is
differentiable w.r.t. q, k and v.

Kernels (``flash_attention_kernels.py``; exp2 throughout: scores are prescaled by ``scale * log2(e)``, so
``exp`` becomes ``exp2``):

* forward, one program per (query block, batch*head): the online softmax over key blocks; it writes
  O and the per-row log-sum-exp (fp32, base 2) that the backward re-uses instead of re-normalising.
* backward preprocessing: ``delta = rowsum(dO * O)`` (fp32), the per-row term of dS = P (dP - delta).
* dK/dV, one program per key block: K and V stay in registers while the query blocks at and after the
  diagonal stream past (P^T and dS^T are recomputed from the saved log-sum-exp).
* dQ, one program per query block, over the key blocks up to the diagonal. A separate kernel instead
  of fp32 atomics from the dK/dV kernel: deterministic and without scratch memory, at the price of
  recomputing two GEMMs (7 GEMMs in all instead of 5).

Causal masking: blocks entirely above the diagonal are never visited; each loop is split into the
unmasked blocks and the diagonal blocks (the only ones that build a mask). Rows/keys past T (T not a
multiple of the block) are handled by masked loads in the last block only.

Layouts: any strides with a contiguous last dimension are read in place (a (B, T, H, D) tensor
viewed as (B, H, T, D) with ``transpose(1, 2)``, or slices of a fused qkv projection, cost no copy);
a last dimension with stride != 1 is copied once. O and the gradients follow their input's memory
order (``empty_like``), so O of a transposed (B, T, H, D) input is (B, T, H, D) in memory and the
``transpose(1, 2).contiguous()`` that GPT-2 does next is free.

Registration with torch.compile: two ops built from the same Python bodies.
``flyweight::flash_attn_fwd``/``_bwd`` are ``torch.library.triton_op``s whose kernels are launched
through ``torch.library.wrap_triton``: Inductor sees the Triton kernels themselves (no graph break, no
opaque call). ``flyweight::flash_attn_fwd_opaque``/``_bwd_opaque`` are ordinary
``torch.library.custom_op``s with fake implementations (opaque to the compiler, still no graph break).
torch.compile uses the custom_ops by default: under ``TRITON_INTERPRET=1`` the kernels are interpreter
objects that ``wrap_triton`` can call eagerly but not trace, and on the H200 (torch 2.11, Triton 3.6)
Inductor failed to compile the forward kernel through the triton_op route while the custom_op route
compiled and matched eager exactly. ``FLYWEIGHT_FLASH_OP=triton_op|custom_op`` picks either one explicitly. Both have
their autograd registered. Eager calls skip the op dispatch and its per-call overhead: they use an
``autograd.Function`` that launches the same kernels.

CPU fallback: on a CPU tensor without ``TRITON_INTERPRET=1`` there is no Triton backend, so
``flash_attention`` simply returns ``F.scaled_dot_product_attention(q, k, v, is_causal=causal,
scale=scale)`` (same semantics, PyTorch's own math). Nothing else falls back silently.

Configs: on CUDA every kernel is autotuned (``triton.autotune``, keyed by T, D, causal and dtype) over a
small hand-picked set of Hopper-friendly tiles (below), so a fresh machine compiles about 20 variants
once; ``FLYWEIGHT_FLASH_AUTOTUNE=0`` uses the first config of each set without tuning. Under the
interpreter the tiles are small and fixed (``INTERPRET_BLOCKS``), chosen so that the diagonal spans
several blocks in every kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
from torch.library import wrap_triton

from flyweight.kernels._triton_env import INTERPRET
from flyweight.kernels.flash_attention_kernels import (
    _attn_bwd_dkdv_kernel,
    _attn_bwd_dq_kernel,
    _attn_fwd_kernel,
    _bwd_preprocess_kernel,
)
from flyweight.utils.env import env_choice, env_flag

AUTOTUNE = env_flag("FLYWEIGHT_FLASH_AUTOTUNE")
OP_KINDS = ("triton_op", "custom_op")
HEAD_DIMS = (16, 32, 64, 128)
LOG2E = 1.4426950408889634
# T % EVEN_MULTIPLE == 0 means every tile size divides T (tiles are powers of two, <= 128 on CUDA and
# <= 32 under the interpreter), so the kernels can drop the bounds masks of their last block.
EVEN_MULTIPLE = 32 if INTERPRET else 128

# Interpreter tiles (tests): dK/dV has BLOCK_N > BLOCK_M and dQ/forward BLOCK_M > BLOCK_N, so the
# diagonal stage runs over several blocks in each kernel.
INTERPRET_BLOCKS = {"fwd": (32, 16), "dkdv": (16, 32), "dq": (32, 16)}


# ==========================================================================================
# Tile configs and autotuning
# ==========================================================================================
def _configs(tiles):
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s) for bm, bn, w, s in tiles]


# (BLOCK_M, BLOCK_N, num_warps, num_stages). The first entry is the untuned default. Forward and dQ
# need BLOCK_M % BLOCK_N == 0 (query tile covers whole key tiles on the diagonal), dK/dV the opposite.
# Chosen for D = 64 on Hopper (FlashAttention-2-style Triton kernels peak at 128-row query tiles with
# 64-key tiles forward; the backward keeps a 128-row key tile resident and streams 32-64 query rows).
FWD_TILES = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 8, 4),
             (128, 32, 4, 4), (64, 64, 4, 3), (64, 32, 4, 4)]
DKDV_TILES = [(32, 128, 8, 3), (32, 128, 4, 3), (64, 128, 8, 3), (32, 128, 8, 4),
              (32, 64, 4, 3), (64, 64, 4, 3)]
DQ_TILES = [(128, 32, 4, 3), (128, 32, 8, 3), (128, 64, 8, 3), (128, 64, 4, 2),
            (64, 32, 4, 3), (64, 64, 4, 3)]
_TUNE_KEY = ["T", "HEAD_DIM", "CAUSAL"]  # the autotuner adds the tensors' dtypes to the key itself
PREPROCESS_BLOCK_M = 128

if not INTERPRET:
    _fwd_tuned = triton.autotune(_configs(FWD_TILES), key=_TUNE_KEY)(_attn_fwd_kernel)
    _dkdv_tuned = triton.autotune(_configs(DKDV_TILES), key=_TUNE_KEY)(_attn_bwd_dkdv_kernel)
    _dq_tuned = triton.autotune(_configs(DQ_TILES), key=_TUNE_KEY)(_attn_bwd_dq_kernel)
else:
    _fwd_tuned = _dkdv_tuned = _dq_tuned = None

TUNED_KERNELS = {"fwd": _fwd_tuned, "dkdv": _dkdv_tuned, "dq": _dq_tuned}


def chosen_configs() -> dict:
    """The autotuner's choice per kernel and tuning key so far (for benchmark reports)."""
    out = {}
    for name, kern in TUNED_KERNELS.items():
        if kern is None:
            continue
        out[name] = {str(key): str(cfg) for key, cfg in getattr(kern, "cache", {}).items()}
    return out


def _launch_plan(name, tiles, T, bh):
    """(tuned?, grid, tile kwargs) for one kernel: autotuned on CUDA, else its default tile (autotune
    off) or the interpreter's tile. Programs run over query blocks (BLOCK_M), or key blocks (BLOCK_N)
    for dK/dV. The callers launch through ``wrap_triton(kernel)`` with the kernel named in their own
    body: that is how torch.library finds the kernels of a triton_op (their source keys its caches)."""
    row_tile = "BLOCK_N" if name == "dkdv" else "BLOCK_M"
    if not INTERPRET and AUTOTUNE:
        return True, lambda cfg: (triton.cdiv(T, cfg[row_tile]), bh), {}
    bm, bn, warps, stages = (*INTERPRET_BLOCKS[name], 4, 1) if INTERPRET else tiles[0]
    rows = bn if row_tile == "BLOCK_N" else bm
    return False, (triton.cdiv(T, rows), bh), dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)


# ==========================================================================================
# Host side: checks, kernel launches
# ==========================================================================================
def _strides3(x):
    return x.stride(0), x.stride(1), x.stride(2)


def _last_dim_contiguous(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def _check(q, k, v, causal, scale) -> float:
    """Validate the inputs; return the softmax scale as a float."""
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"flash_attention: {name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"flash_attention: {name} must be 4-D (B, H, T, D), got shape {tuple(x.shape)}")
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"flash_attention: q, k, v must have the same shape (B, H, T, D); got q "
                         f"{tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}")
    if min(q.shape) < 1:
        raise ValueError(f"flash_attention: every dimension of q (B, H, T, D) must be >= 1, got {tuple(q.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"flash_attention: q, k, v must share a dtype; got q {q.dtype}, k {k.dtype}, v {v.dtype}")
    if k.device != q.device or v.device != q.device:
        raise ValueError(f"flash_attention: q, k, v must be on one device; got q {q.device}, k {k.device}, "
                         f"v {v.device}")
    if not isinstance(causal, bool):
        raise TypeError(f"flash_attention: causal must be a bool, got {causal!r}")
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"flash_attention: scale must be a float or None, got {scale!r}")
    if not math.isfinite(scale):
        raise ValueError(f"flash_attention: scale must be finite, got {scale!r}")
    return float(scale)


def _check_kernel_inputs(q) -> None:
    """What the Triton kernels support (the SDPA fallback takes anything SDPA takes)."""
    if q.device.type not in ("cuda", "cpu"):
        raise ValueError(f"flash_attention: device must be cuda (or cpu), got {q.device}")
    if q.shape[-1] not in HEAD_DIMS:
        raise ValueError(f"flash_attention: head dim D = q.shape[-1] must be one of {HEAD_DIMS}, got {q.shape[-1]}")
    allowed = (torch.float16, torch.bfloat16) + ((torch.float32,) if INTERPRET else ())
    if q.dtype not in allowed:
        extra = "" if INTERPRET else " (float32 only under TRITON_INTERPRET=1)"
        raise ValueError(f"flash_attention: dtype of q/k/v must be one of "
                         f"{', '.join(str(d).replace('torch.', '') for d in allowed)}{extra}; got {q.dtype}")


def uses_kernels(q: torch.Tensor) -> bool:
    """True when ``flash_attention`` runs the Triton kernels for ``q`` (CUDA, or CPU under the
    interpreter); False means the documented CPU fallback to ``F.scaled_dot_product_attention``."""
    return q.device.type == "cuda" or INTERPRET


def _fwd_impl(q, k, v, causal: bool, scale: float):
    q, k, v = _last_dim_contiguous(q), _last_dim_contiguous(k), _last_dim_contiguous(v)
    B, H, T, D = q.shape
    o = torch.empty_like(q)  # q's memory order: a (B, T, H, D) layout stays one
    lse = torch.empty((B, H, T), device=q.device, dtype=torch.float32)
    args = (q, k, v, o, lse, *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(o), H, T, scale * LOG2E)
    meta = dict(HEAD_DIM=D, CAUSAL=causal, EVEN_T=T % EVEN_MULTIPLE == 0)
    tuned, grid, tile = _launch_plan("fwd", FWD_TILES, T, B * H)
    kernel = _fwd_tuned if tuned else _attn_fwd_kernel
    wrap_triton(kernel)[grid](*args, **meta, **tile)
    return o, lse


def _bwd_impl(do, q, k, v, o, lse, causal: bool, scale: float):
    q, k, v, o, do = (_last_dim_contiguous(x) for x in (q, k, v, o, do))
    B, H, T, D = q.shape
    delta = torch.empty((B, H, T), device=q.device, dtype=torch.float32)
    block = 16 if INTERPRET else PREPROCESS_BLOCK_M
    wrap_triton(_bwd_preprocess_kernel)[(triton.cdiv(T, block), B * H)](
        o, do, delta, *_strides3(o), *_strides3(do), H, T, HEAD_DIM=D, BLOCK_M=block)

    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    meta = dict(HEAD_DIM=D, CAUSAL=causal, EVEN_T=T % EVEN_MULTIPLE == 0)
    common = (*_strides3(q), *_strides3(k), *_strides3(v), *_strides3(do))
    tuned, grid, tile = _launch_plan("dkdv", DKDV_TILES, T, B * H)
    dkdv_kernel = _dkdv_tuned if tuned else _attn_bwd_dkdv_kernel
    wrap_triton(dkdv_kernel)[grid](q, k, v, do, lse, delta, dk, dv, *common, *_strides3(dk), *_strides3(dv),
                                   H, T, scale * LOG2E, scale, **meta, **tile)
    tuned, grid, tile = _launch_plan("dq", DQ_TILES, T, B * H)
    dq_kernel = _dq_tuned if tuned else _attn_bwd_dq_kernel
    wrap_triton(dq_kernel)[grid](q, k, v, do, lse, delta, dq, *common, *_strides3(dq),
                                 H, T, scale * LOG2E, scale, **meta, **tile)
    return dq, dk, dv


# ==========================================================================================
# Registration: torch.library ops (torch.compile) and the eager autograd.Function
# ==========================================================================================
def _setup_context(ctx, inputs, output):
    q, k, v, causal, scale = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse)
    ctx.causal, ctx.scale = causal, scale
    ctx.set_materialize_grads(False)  # nobody differentiates through lse: skip its zero gradient


def _make_ops(register, suffix):
    """Forward and backward ops named flyweight::flash_attn_{fwd,bwd}{suffix}, autograd attached."""

    @register(f"flyweight::flash_attn_fwd{suffix}", mutates_args=())
    def fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float
            ) -> tuple[torch.Tensor, torch.Tensor]:
        return _fwd_impl(q, k, v, causal, scale)

    @register(f"flyweight::flash_attn_bwd{suffix}", mutates_args=())
    def bwd(do: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor,
            lse: torch.Tensor, causal: bool, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return _bwd_impl(do, q, k, v, o, lse, causal, scale)

    def backward(ctx, do, _dlse):
        if do is None:
            return None, None, None, None, None
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = bwd(do, q, k, v, o, lse, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None

    fwd.register_autograd(backward, setup_context=_setup_context)
    return fwd, bwd


def _fake_fwd(q, k, v, causal, scale):
    q = _last_dim_contiguous(q)
    return torch.empty_like(q), q.new_empty(q.shape[:3], dtype=torch.float32)


def _fake_bwd(do, q, k, v, o, lse, causal, scale):
    return tuple(torch.empty_like(_last_dim_contiguous(x)) for x in (q, k, v))


flash_attn_fwd, flash_attn_bwd = _make_ops(torch.library.triton_op, "")
flash_attn_fwd_opaque, flash_attn_bwd_opaque = _make_ops(torch.library.custom_op, "_opaque")
flash_attn_fwd_opaque.register_fake(_fake_fwd)
flash_attn_bwd_opaque.register_fake(_fake_bwd)
_OPS = {"triton_op": flash_attn_fwd, "custom_op": flash_attn_fwd_opaque}

# custom_op by default: on the H200 (torch 2.11, Triton 3.6) Inductor failed to compile the forward
# kernel through the triton_op route (an accumulator type assertion in tl.dot) while the same kernel
# launched by the opaque custom_op compiled and matched eager exactly (benchmarks/attention_gpu.py)
OP_KIND = env_choice("FLYWEIGHT_FLASH_OP")


class _FlashAttentionFn(torch.autograd.Function):
    """Eager path: the same kernels without the torch.library dispatch."""

    @staticmethod
    def forward(ctx, q, k, v, causal, scale):
        o, lse = _fwd_impl(q, k, v, causal, scale)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal, ctx.scale = causal, scale
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _bwd_impl(do, q, k, v, o, lse, ctx.causal, ctx.scale)
        return dq, dk, dv, None, None


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                    scale: float | None = None) -> torch.Tensor:
    """softmax(scale * q k^T [+ causal mask]) v for q, k, v of shape (B, H, T, D); scale defaults to
    1/sqrt(D). Differentiable w.r.t. q, k, v. CPU tensors without TRITON_INTERPRET=1 go to
    ``F.scaled_dot_product_attention`` (the documented fallback); see the module docstring."""
    scale = _check(q, k, v, causal, scale)
    if not uses_kernels(q):
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale)
    _check_kernel_inputs(q)
    if torch.compiler.is_compiling():
        out, _ = _OPS[OP_KIND](q, k, v, causal, scale)
        return out
    return _FlashAttentionFn.apply(q, k, v, causal, scale)
