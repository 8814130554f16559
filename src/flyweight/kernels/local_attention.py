"""Sliding-window ("local") softmax attention in Triton: forward and backward, flash-attention style.

Public API: ``local_attention(q, k, v, *, left, right, scale, key_padding_mask=None) -> out`` with q, k
of shape (B, H, T, E) and v of shape (B, H, T, Ev). Query i attends keys j with -left <= j - i <= right
(clipped to 0 <= j < T) that are not padding (``key_padding_mask`` bool (B, T), True = padding). This is
exactly ``LocalAttention``'s window (left = floor(w/2), right = ceil(w/2) - 1; causal: left = w - 1,
right = 0). A row with no visible key returns 0 (as the PyTorch path). Differentiable w.r.t. q, k, v.

Kernels (exp2 throughout; scores prescaled by ``scale * log2(e)``):

* forward, one program per (query block, batch*head): only the key blocks overlapping the block's
  window span [start - left, end + right] are visited, with an online softmax; nothing of size T x w
  reaches HBM. It writes O and the per-row log2-sum-exp (fp32; +inf for rows without keys, so that
  the backward's recomputed probabilities are exactly 0 there).
* dK/dV, one program per key block, over the query blocks whose windows contain it; dQ, one program
  per query block (no atomics, deterministic). dS = P (dP - delta) enters its two GEMMs in fp32
  (``dot_f32``), about as precise as the PyTorch path's fp32 softmax backward. ``delta = rowsum(dO * O)`` is a
  PyTorch reduction.

Tiles are autotuned on CUDA per (T, head dims, padding) over a few Hopper-friendly shapes (``_tiles``;
16 x 16 under ``TRITON_INTERPRET=1``); every tile carries the band mask (a window of 256 keys spans 4-6
key tiles, so the mask is a small share of the work). BLOCK_M is always the query tile, BLOCK_N the key tile.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from flyweight.kernels._tiles import TiledKernel, tile
from flyweight.kernels._triton_env import INTERPRET

LOG2E = 1.4426950408889634
EXACT_DOT = tl.constexpr(INTERPRET)  # under the interpreter fp32 products are exact (numpy)


@triton.jit
def _bf16_split(x):
    """x = hi + lo (to about 2^-16 relative) with hi = bf16(x) and lo = bf16(x - hi), computed in fp32."""
    x32 = x.to(tl.float32)
    hi = x32.to(tl.bfloat16)
    return hi, (x32 - hi.to(tl.float32)).to(tl.bfloat16)


@triton.jit
def dot_f32(a, b, acc=None):
    """``acc + a @ b`` in fp32 for fp32 or low-precision operands, to about 2^-16 relative on CUDA.

    On CUDA as bf16 tensor-core products of each operand's split x = x_hi + x_lo (x_hi = bf16(x),
    x_lo = bf16(x - x_hi)): a_hi b_hi + a_hi b_lo + a_lo b_hi, the bf16 analogue of tf32x3 at twice
    tf32's rate. An operand that is already bf16 is exact as it is and is not split (pass the
    loaded tile, not ``x.to(tl.float32)``), so bf16 inputs take two products, or one.
    Why not tf32 / tf32x3: Triton 3.6 miscompiles some fp32-operand products on Hopper, e.g.
    (16 x 16) @ (16 x 64) with the right-hand operand row-major (an illegal shared-memory read).
    Why no split of a bf16 operand: its low part is identically zero, and on Hopper with a pipelined
    loop (num_stages >= 2) Triton 3.6 then computes wrong, run-to-run different dQ / dK in the local
    backward once the grid has more than one wave (bf16, B * H * T >= 16384: errors 50-100x the
    PyTorch path's; exact with num_stages = 1 or with the unsplit operand).
    Under ``TRITON_INTERPRET=1`` an exact fp32 product.
    """
    if EXACT_DOT:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif a.dtype == tl.bfloat16:
        if b.dtype == tl.bfloat16:
            out = tl.dot(a, b, acc)
        else:
            b_hi, b_lo = _bf16_split(b)
            out = tl.dot(a, b_lo, acc)
            out = tl.dot(a, b_hi, out)
    elif b.dtype == tl.bfloat16:
        a_hi, a_lo = _bf16_split(a)
        out = tl.dot(a_lo, b, acc)
        out = tl.dot(a_hi, b, out)
    else:
        a_hi, a_lo = _bf16_split(a)
        b_hi, b_lo = _bf16_split(b)
        out = tl.dot(a_hi, b_lo, acc)
        out = tl.dot(a_lo, b_hi, out)
        out = tl.dot(a_hi, b_hi, out)
    return out


def padded_dim(n: int) -> int:
    """Head dims are padded (masked loads) to a power of two >= 16, the smallest tl.dot operand."""
    return max(16, triton.next_power_of_2(int(n)))


@triton.jit
def _program_head(H):
    """(bh as int64, batch index, head index) of this program's batch*head, grid axis 1."""
    bh = tl.program_id(1)
    return bh.to(tl.int64), (bh // H).to(tl.int64), (bh % H).to(tl.int64)


@triton.jit
def _program_tile(H, BLOCK: tl.constexpr):
    """This program's tile of BLOCK rows (grid axis 0: its first row and its row offsets) and its
    batch*head (``_program_head``)."""
    start = tl.program_id(0) * BLOCK
    bh64, off_b, off_h = _program_head(H)
    return start, start + tl.arange(0, BLOCK), bh64, off_b, off_h


@triton.jit
def _load_tile(base, offs_t, stride_t, T, offs_d, E):
    """Rows ``offs_t`` (columns ``offs_d`` < E) of one head's (T, E) tensor; rows past T read as 0."""
    return tl.load(base + offs_t[:, None] * stride_t + offs_d[None, :],
                   mask=(offs_t < T)[:, None] & (offs_d < E)[None, :], other=0.0)


@triton.jit
def _store_tile(base, offs_t, stride_t, T, offs_d, E, x):
    """x as rows ``offs_t`` (columns ``offs_d`` < E) of one head's (T, E) tensor in its dtype; rows past
    T are not written (``_load_tile``'s counterpart)."""
    tl.store(base + offs_t[:, None] * stride_t + offs_d[None, :], x.to(base.dtype.element_ty),
             mask=(offs_t < T)[:, None] & (offs_d < E)[None, :])


@triton.jit
def _window_span(start, LEN: tl.constexpr, STEP: tl.constexpr, before, after, T):
    """[lo, hi) of the rows on the other side that a tile of LEN rows from ``start`` meets when each row
    sees ``before`` rows back and ``after`` ahead: lo aligned down to a tile of STEP rows, hi clipped to T."""
    return (tl.maximum(start - before, 0) // STEP) * STEP, tl.minimum(start + LEN + after, T)


@triton.jit
def _window_keep(offs_m, offs_n, T, LEFT, RIGHT, pad_base, HAS_PAD: tl.constexpr):
    """(rows, cols) mask: key offs_n is inside query offs_m's window, < T, and not padding."""
    rel = offs_n[None, :] - offs_m[:, None]
    keep = (rel >= -LEFT) & (rel <= RIGHT) & (offs_n < T)[None, :] & (offs_m < T)[:, None]
    if HAS_PAD:
        is_pad = tl.load(pad_base + offs_n, mask=offs_n < T, other=1)
        keep = keep & (is_pad == 0)[None, :]
    return keep


@triton.jit
def _local_fwd_kernel(
    Q, K, V, O, LSE, PAD,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt, stride_ob, stride_oh, stride_ot, stride_pb,
    H, T, E, EV, LEFT, RIGHT, qk_scale,
    D: tl.constexpr, DV: tl.constexpr, HAS_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_m, offs_m, bh64, off_b, off_h = _program_tile(H, BLOCK_M)
    offs_d = tl.arange(0, D)
    offs_dv = tl.arange(0, DV)
    q = _load_tile(Q + off_b * stride_qb + off_h * stride_qh, offs_m, stride_qt, T, offs_d, E)
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh
    pad_base = PAD + off_b * stride_pb

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, DV], dtype=tl.float32)
    # key blocks overlapping [start_m - LEFT, start_m + BLOCK_M - 1 + RIGHT], block-aligned start
    lo, hi = _window_span(start_m, BLOCK_M, BLOCK_N, LEFT, RIGHT, T)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(k_base, offs_n, stride_kt, T, offs_d, E)
        qk = tl.dot(q, tl.trans(k))
        keep = _window_keep(offs_m, offs_n, T, LEFT, RIGHT, pad_base, HAS_PAD)
        qk = tl.where(keep, qk * qk_scale, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        # a row that has seen no key yet keeps m = -inf; shift by 0 there so no -inf - -inf appears
        m_shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.math.exp2(qk - m_shift[:, None])
        alpha = tl.math.exp2(m_i - m_shift)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = _load_tile(v_base, offs_n, stride_vt, T, offs_dv, EV)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None])
        m_i = m_new
    has_key = l_i > 0
    acc = acc / tl.where(has_key, l_i, 1.0)[:, None]
    _store_tile(O + off_b * stride_ob + off_h * stride_oh, offs_m, stride_ot, T, offs_dv, EV, acc)
    lse = tl.where(has_key, m_i + tl.math.log2(tl.where(has_key, l_i, 1.0)), float("inf"))
    tl.store(LSE + bh64 * T + offs_m, lse, mask=offs_m < T)


@triton.jit
def _local_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV_, PAD,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
    stride_dkb, stride_dkh, stride_dkt, stride_dvb, stride_dvh, stride_dvt, stride_pb,
    H, T, E, EV, LEFT, RIGHT, qk_scale, scale,
    D: tl.constexpr, DV: tl.constexpr, HAS_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dK, dV of one block of BLOCK_N keys: the queries i with j - RIGHT <= i <= j + LEFT stream past."""
    start_n, offs_n, bh64, off_b, off_h = _program_tile(H, BLOCK_N)
    offs_d = tl.arange(0, D)
    offs_dv = tl.arange(0, DV)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    do_base = DO + off_b * stride_dob + off_h * stride_doh
    lse_base = LSE + bh64 * T
    delta_base = DELTA + bh64 * T
    pad_base = PAD + off_b * stride_pb
    k = _load_tile(K + off_b * stride_kb + off_h * stride_kh, offs_n, stride_kt, T, offs_d, E)
    v = _load_tile(V + off_b * stride_vb + off_h * stride_vh, offs_n, stride_vt, T, offs_dv, EV)
    dk = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, DV], dtype=tl.float32)
    lo, hi = _window_span(start_n, BLOCK_N, BLOCK_M, RIGHT, LEFT, T)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load_tile(q_base, offs_m, stride_qt, T, offs_d, E)
        lse = tl.load(lse_base + offs_m, mask=offs_m < T, other=float("inf"))
        s_t = tl.dot(k, tl.trans(q)) * qk_scale - lse[None, :]  # (BLOCK_N, BLOCK_M), log2 units
        keep_t = tl.trans(_window_keep(offs_m, offs_n, T, LEFT, RIGHT, pad_base, HAS_PAD))
        p_t = tl.where(keep_t, tl.math.exp2(s_t), 0.0)
        do = _load_tile(do_base, offs_m, stride_dot, T, offs_dv, EV)
        delta = tl.load(delta_base + offs_m, mask=offs_m < T, other=0.0)
        dv = tl.dot(p_t.to(do.dtype), do, dv)
        dp_t = tl.dot(v, tl.trans(do))
        ds_t = p_t * (dp_t - delta[None, :])
        # dS stays fp32 (dot_f32): the PyTorch path's dS is fp32, rounding it to bf16 costs ~4x its error
        dk = dot_f32(ds_t, q, dk)
    _store_tile(DK + off_b * stride_dkb + off_h * stride_dkh, offs_n, stride_dkt, T, offs_d, E, dk * scale)
    _store_tile(DV_ + off_b * stride_dvb + off_h * stride_dvh, offs_n, stride_dvt, T, offs_dv, EV, dv)


@triton.jit
def _local_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ, PAD,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
    stride_dqb, stride_dqh, stride_dqt, stride_pb,
    H, T, E, EV, LEFT, RIGHT, qk_scale, scale,
    D: tl.constexpr, DV: tl.constexpr, HAS_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dQ of one block of BLOCK_M queries, over the key blocks of its window span."""
    start_m, offs_m, bh64, off_b, off_h = _program_tile(H, BLOCK_M)
    offs_d = tl.arange(0, D)
    offs_dv = tl.arange(0, DV)
    q = _load_tile(Q + off_b * stride_qb + off_h * stride_qh, offs_m, stride_qt, T, offs_d, E)
    do = _load_tile(DO + off_b * stride_dob + off_h * stride_doh, offs_m, stride_dot, T, offs_dv, EV)
    lse = tl.load(LSE + bh64 * T + offs_m, mask=offs_m < T, other=float("inf"))
    delta = tl.load(DELTA + bh64 * T + offs_m, mask=offs_m < T, other=0.0)
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh
    pad_base = PAD + off_b * stride_pb
    dq = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    lo, hi = _window_span(start_m, BLOCK_M, BLOCK_N, LEFT, RIGHT, T)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(k_base, offs_n, stride_kt, T, offs_d, E)
        v = _load_tile(v_base, offs_n, stride_vt, T, offs_dv, EV)
        s = tl.dot(q, tl.trans(k)) * qk_scale - lse[:, None]
        keep = _window_keep(offs_m, offs_n, T, LEFT, RIGHT, pad_base, HAS_PAD)
        p = tl.where(keep, tl.math.exp2(s), 0.0)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq = dot_f32(ds, k, dq)
    _store_tile(DQ + off_b * stride_dqb + off_h * stride_dqh, offs_m, stride_dqt, T, offs_d, E, dq * scale)


# ==========================================================================================
# Host side
# ==========================================================================================
def _s3(x):
    return x.stride(0), x.stride(1), x.stride(2)


def last_dim_contiguous(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def kernel_dtypes() -> tuple[torch.dtype, ...]:
    return (torch.float16, torch.bfloat16) + ((torch.float32,) if INTERPRET else ())


def check_kernel_inputs(name: str, q, k, v, key_padding_mask=None) -> None:
    """What the Triton approximate-attention kernels accept (the modules check shapes before)."""
    if q.device.type != "cuda" and not INTERPRET:
        raise ValueError(f"{name}: the Triton kernel needs CUDA tensors (or TRITON_INTERPRET=1 on CPU); "
                         f"got {q.device}. Use impl='torch' (or 'auto') for the PyTorch path")
    allowed = kernel_dtypes()
    if q.dtype not in allowed or k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"{name}: the Triton kernel takes q, k, v of one dtype in "
                         f"{[str(d).replace('torch.', '') for d in allowed]}; got {q.dtype}, {k.dtype}, "
                         f"{v.dtype}. Use impl='torch' for other dtypes")
    if max(q.shape[-1], v.shape[-1]) > 256:
        raise ValueError(f"{name}: the Triton kernel takes head dims <= 256; got {q.shape[-1]}, "
                         f"{v.shape[-1]}. Use impl='torch'")


_NO_PAD: dict = {}


def pad_mask_arg(key_padding_mask, like):
    """(uint8 (B, T) padding mask or a 1-element dummy, its batch stride, HAS_PAD)."""
    if key_padding_mask is None:  # never read (HAS_PAD=False); one per device, no launch per call
        if like.device not in _NO_PAD:
            _NO_PAD[like.device] = torch.zeros(1, dtype=torch.uint8, device=like.device)
        return _NO_PAD[like.device], 0, False
    pad = key_padding_mask.to(device=like.device, dtype=torch.uint8).contiguous()
    return pad, pad.stride(0), True


_KEY = ["T", "D", "DV", "HAS_PAD"]
_SMALL = tile(16, 16, 4, 1)
_FWD = TiledKernel("local_fwd", _local_fwd_kernel,
                   [tile(128, 64, 4, 3), tile(128, 64, 8, 3), tile(64, 64, 4, 3)], _SMALL, _KEY)
_DKDV = TiledKernel("local_dkdv", _local_bwd_dkdv_kernel,
                    [tile(64, 64, 4, 2), tile(32, 64, 4, 3)], _SMALL, _KEY)
_DQ = TiledKernel("local_dq", _local_bwd_dq_kernel,
                  [tile(64, 64, 4, 2), tile(64, 32, 4, 3)], _SMALL, _KEY)


def _grid(T, bh, rows="BLOCK_M"):
    return lambda meta: (triton.cdiv(T, meta[rows]), bh)


def _fwd(q, k, v, pad, left, right, scale):
    B, H, T, E = q.shape
    EV = v.shape[-1]
    o = torch.empty((B, H, T, EV), device=q.device, dtype=v.dtype)
    lse = torch.empty((B, H, T), device=q.device, dtype=torch.float32)
    pad_t, pad_stride, has_pad = pad
    _FWD(_grid(T, B * H), q, k, v, o, lse, pad_t, *_s3(q), *_s3(k), *_s3(v), *_s3(o),
            pad_stride, H, T, E, EV, left, right, scale * LOG2E,
            D=padded_dim(E), DV=padded_dim(EV), HAS_PAD=has_pad)
    return o, lse


def _bwd(do, q, k, v, o, lse, pad, left, right, scale):
    B, H, T, E = q.shape
    EV = v.shape[-1]
    do = last_dim_contiguous(do)
    delta = (do.float() * o.float()).sum(-1).contiguous()  # (B, H, T): the row term of dS = P (dP - delta)
    pad_t, pad_stride, has_pad = pad
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    meta = dict(D=padded_dim(E), DV=padded_dim(EV), HAS_PAD=has_pad)
    common = (*_s3(q), *_s3(k), *_s3(v), *_s3(do))
    _DKDV(_grid(T, B * H, "BLOCK_N"), q, k, v, do, lse, delta, dk, dv, pad_t, *common,
            *_s3(dk), *_s3(dv), pad_stride, H, T, E, EV, left, right, scale * LOG2E, scale, **meta)
    _DQ(_grid(T, B * H), q, k, v, do, lse, delta, dq, pad_t, *common, *_s3(dq),
            pad_stride, H, T, E, EV, left, right, scale * LOG2E, scale, **meta)
    return dq, dk, dv


class _LocalAttentionFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, key_padding_mask, left, right, scale):
        pad = pad_mask_arg(key_padding_mask, q)
        o, lse = _fwd(q, k, v, pad, left, right, scale)
        ctx.save_for_backward(q, k, v, o, lse, pad[0])
        ctx.meta = (pad[1], pad[2], left, right, scale)
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse, pad_t = ctx.saved_tensors
        pad_stride, has_pad, left, right, scale = ctx.meta
        dq, dk, dv = _bwd(do, q, k, v, o, lse, (pad_t, pad_stride, has_pad), left, right, scale)
        return dq, dk, dv, None, None, None, None


def local_attention(q, k, v, *, left: int, right: int, scale: float, key_padding_mask=None):
    """Softmax attention of query i over keys i-left .. i+right (see the module docstring)."""
    check_kernel_inputs("local attention", q, k, v, key_padding_mask)
    if left < 0 or right < 0:
        raise ValueError(f"local attention: left and right must be >= 0, got {left}, {right}")
    q, k, v = (last_dim_contiguous(x) for x in (q, k, v))
    return _LocalAttentionFn.apply(q, k, v, key_padding_mask, int(left), int(right), float(scale))

