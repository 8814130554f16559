"""Causal (or full) flash attention in Triton: forward and backward, FlashAttention-2 scheme.

Public API: ``flash_attention(q, k, v, *, causal=True, scale=None) -> out`` with q, k, v shaped
(B, H, T, D) (the layout of HF GPT-2 and ``F.scaled_dot_product_attention``), D in {16, 32, 64,
128}, float16/bfloat16 on CUDA (float32 too under ``TRITON_INTERPRET=1``), any T >= 1. It is
differentiable w.r.t. q, k and v.

Kernels (exp2 throughout: scores are prescaled by ``scale * log2(e)``, so ``exp`` becomes ``exp2``):

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
import os

import torch
import torch.nn.functional as F
import triton
import triton.language as tl
from torch.library import wrap_triton

from flyweight.kernels._triton_env import INTERPRET

AUTOTUNE = os.environ.get("FLYWEIGHT_FLASH_AUTOTUNE", "1") != "0"
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
# Forward
# ==========================================================================================
@triton.jit
def _load_rows(base, offs_t, stride_t, T, HEAD_DIM: tl.constexpr, MASKED: tl.constexpr):
    """Rows ``offs_t`` of one head's (T, HEAD_DIM) tensor; MASKED: rows past T read as zeros."""
    ptrs = base + offs_t[:, None] * stride_t + tl.arange(0, HEAD_DIM)[None, :]
    if MASKED:
        x = tl.load(ptrs, mask=(offs_t < T)[:, None], other=0.0)
    else:
        x = tl.load(ptrs)
    return x


@triton.jit
def _load_vec(base, offs_t, T, MASKED: tl.constexpr):
    """Per-row values (log-sum-exp, delta) at ``offs_t``; MASKED: rows past T read as zeros."""
    if MASKED:
        x = tl.load(base + offs_t, mask=offs_t < T, other=0.0)
    else:
        x = tl.load(base + offs_t)
    return x


@triton.jit
def _visible(offs_m, offs_n, T, CAUSAL: tl.constexpr):
    """(BLOCK_M, BLOCK_N) mask of the keys a query may see: keys < T and, causal, keys <= the query."""
    keep = (offs_n < T)[None, :]
    if CAUSAL:
        keep = keep & (offs_m[:, None] >= offs_n[None, :])
    return keep


@triton.jit
def _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m, lo, hi, T, qk_scale,
               HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
    """Online softmax over the key blocks in [lo, hi). MASKED: bounds-checked loads and a score mask
    (keys >= T; with CAUSAL also keys after the query), for the diagonal / last partial block only."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(k_base, offs_n, stride_kt, T, HEAD_DIM, MASKED)
        qk = tl.dot(q, tl.trans(k))
        if MASKED:
            qk = tl.where(_visible(offs_m, offs_n, T, CAUSAL), qk * qk_scale, float("-inf"))
        else:
            qk = qk * qk_scale
        m_new = tl.maximum(m_i, tl.max(qk, 1))
        qk = qk - m_new[:, None]
        # Every row meets at least one visible key in its first block, so m_new is finite here.
        p = tl.math.exp2(qk)
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]
        v = _load_rows(v_base, offs_n, stride_vt, T, HEAD_DIM, MASKED)
        acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _query_block_index(CAUSAL: tl.constexpr):
    """This program's query block. Causal: the last blocks have the most keys, so they run first
    (it shortens the tail of the launch)."""
    pid = tl.program_id(0)
    if CAUSAL:
        pid = tl.num_programs(0) - 1 - pid
    return pid


@triton.jit
def _batch_head(H):
    """(batch * head index, batch, head) of this program: axis 1 of the launch grid."""
    bh = tl.program_id(1)
    return bh, (bh // H).to(tl.int64), (bh % H).to(tl.int64)


@triton.jit
def _attn_fwd_kernel(
    Q, K, V, O, LSE,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt, stride_ob, stride_oh, stride_ot,
    H, T, qk_scale,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, EVEN_T: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """O = softmax(scale Q K^T [+ causal mask]) V for one block of BLOCK_M query rows of one head;
    LSE = per-row log2-sum-exp2 of the log2(e)-scaled scores. Causal needs BLOCK_M % BLOCK_N == 0."""
    pid_m = _query_block_index(CAUSAL)
    bh, off_b, off_h = _batch_head(H)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh
    o_base = O + off_b * stride_ob + off_h * stride_oh

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=row_ok[:, None], other=0.0)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)
    if CAUSAL:
        # keys [0, start_m): all visible to every row of the block (and all < T)
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m,
                                   0, start_m, T, qk_scale, HEAD_DIM, BLOCK_N, False, CAUSAL)
        # the diagonal: keys [start_m, start_m + BLOCK_M), masked
        acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m,
                                   start_m, tl.minimum(start_m + BLOCK_M, T), T, qk_scale,
                                   HEAD_DIM, BLOCK_N, True, CAUSAL)
    else:
        if EVEN_T:
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m,
                                       0, T, T, qk_scale, HEAD_DIM, BLOCK_N, False, CAUSAL)
        else:
            t_full = (T // BLOCK_N) * BLOCK_N
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m,
                                       0, t_full, T, qk_scale, HEAD_DIM, BLOCK_N, False, CAUSAL)
            acc, l_i, m_i = _fwd_inner(acc, l_i, m_i, q, k_base, v_base, stride_kt, stride_vt, offs_m,
                                       t_full, T, T, qk_scale, HEAD_DIM, BLOCK_N, True, CAUSAL)
    acc = acc / l_i[:, None]
    tl.store(o_base + offs_m[:, None] * stride_ot + offs_d[None, :], acc.to(O.dtype.element_ty),
             mask=row_ok[:, None])
    tl.store(LSE + bh.to(tl.int64) * T + offs_m, m_i + tl.math.log2(l_i), mask=row_ok)


# ==========================================================================================
# Backward
# ==========================================================================================
@triton.jit
def _bwd_preprocess_kernel(
    O, DO, DELTA,
    stride_ob, stride_oh, stride_ot, stride_dob, stride_doh, stride_dot,
    H, T,
    HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """DELTA[bh, t] = sum_d dO * O in fp32 (the row term of dS = P * (dP - delta))."""
    bh, off_b, off_h = _batch_head(H)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    o = tl.load(O + off_b * stride_ob + off_h * stride_oh + offs_m[:, None] * stride_ot + offs_d[None, :],
                mask=row_ok[:, None], other=0.0).to(tl.float32)
    do = tl.load(DO + off_b * stride_dob + off_h * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0).to(tl.float32)
    tl.store(DELTA + bh.to(tl.int64) * T + offs_m, tl.sum(o * do, 1), mask=row_ok)


@triton.jit
def _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot, offs_n,
                lo, hi, T, qk_scale,
                HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
    """Accumulate dK (unscaled) and dV of one key block over the query blocks in [lo, hi).

    MASKED: bounds-checked loads (rows past T read as zeros: q = dO = 0 and lse = delta = 0 make their
    contribution exactly zero) and, with CAUSAL, the mask query >= key.
    """
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q = _load_rows(q_base, offs_m, stride_qt, T, HEAD_DIM, MASKED)
        lse = _load_vec(lse_base, offs_m, T, MASKED)
        s_t = tl.dot(k, tl.trans(q)) * qk_scale - lse[None, :]  # (BLOCK_N, BLOCK_M), log2 units
        if MASKED and CAUSAL:
            s_t = tl.where(offs_m[None, :] >= offs_n[:, None], s_t, float("-inf"))
        p_t = tl.math.exp2(s_t)
        do = _load_rows(do_base, offs_m, stride_dot, T, HEAD_DIM, MASKED)
        delta = _load_vec(delta_base, offs_m, T, MASKED)
        dv = tl.dot(p_t.to(do.dtype), do, dv)
        dp_t = tl.dot(v, tl.trans(do))
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk)
    return dk, dv


@triton.jit
def _attn_bwd_dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
    stride_dkb, stride_dkh, stride_dkt, stride_dvb, stride_dvh, stride_dvt,
    H, T, qk_scale, scale,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, EVEN_T: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dK, dV for one block of BLOCK_N keys of one head. Causal needs BLOCK_N % BLOCK_M == 0."""
    start_n = tl.program_id(0) * BLOCK_N  # causal: low key blocks are the heavy ones, and run first
    bh, off_b, off_h = _batch_head(H)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    do_base = DO + off_b * stride_dob + off_h * stride_doh
    lse_base = LSE + bh.to(tl.int64) * T
    delta_base = DELTA + bh.to(tl.int64) * T

    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, HEAD_DIM)
    key_ok = offs_n < T
    k = tl.load(K + off_b * stride_kb + off_h * stride_kh + offs_n[:, None] * stride_kt + offs_d[None, :],
                mask=key_ok[:, None], other=0.0)
    v = tl.load(V + off_b * stride_vb + off_h * stride_vh + offs_n[:, None] * stride_vt + offs_d[None, :],
                mask=key_ok[:, None], other=0.0)
    dk = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, HEAD_DIM], dtype=tl.float32)

    if CAUSAL:
        # the diagonal: queries [start_n, start_n + BLOCK_N), masked
        dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot,
                             offs_n, start_n, tl.minimum(start_n + BLOCK_N, T), T, qk_scale,
                             HEAD_DIM, BLOCK_M, True, CAUSAL)
        lo = start_n + BLOCK_N  # every later query sees the whole key block
    else:
        lo = 0
    if EVEN_T:
        dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot,
                             offs_n, lo, T, T, qk_scale, HEAD_DIM, BLOCK_M, False, CAUSAL)
    else:
        # full query blocks unmasked, then the last (partial) one with bounds checks only
        t_full = tl.maximum(lo, (T // BLOCK_M) * BLOCK_M)
        dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot,
                             offs_n, lo, t_full, T, qk_scale, HEAD_DIM, BLOCK_M, False, CAUSAL)
        dk, dv = _dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, stride_qt, stride_dot,
                             offs_n, t_full, T, T, qk_scale, HEAD_DIM, BLOCK_M, True, False)
    dk = dk * scale  # dS is the gradient of the scaled scores: dK = scale * dS^T Q
    tl.store(DK + off_b * stride_dkb + off_h * stride_dkh + offs_n[:, None] * stride_dkt + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=key_ok[:, None])
    tl.store(DV + off_b * stride_dvb + off_h * stride_dvh + offs_n[:, None] * stride_dvt + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=key_ok[:, None])


@triton.jit
def _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_vt, offs_m, lo, hi, T, qk_scale,
              HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr):
    """Accumulate dQ (unscaled) of one query block over the key blocks in [lo, hi). MASKED: keys past
    T read as zeros and get P = 0; with CAUSAL also keys after the query."""
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_rows(k_base, offs_n, stride_kt, T, HEAD_DIM, MASKED)
        v = _load_rows(v_base, offs_n, stride_vt, T, HEAD_DIM, MASKED)
        s = tl.dot(q, tl.trans(k)) * qk_scale - lse[:, None]
        if MASKED:
            s = tl.where(_visible(offs_m, offs_n, T, CAUSAL), s, float("-inf"))
        p = tl.math.exp2(s)
        dp = tl.dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq = tl.dot(ds.to(k.dtype), k, dq)
    return dq


@triton.jit
def _attn_bwd_dq_kernel(
    Q, K, V, DO, LSE, DELTA, DQ,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt, stride_dob, stride_doh, stride_dot,
    stride_dqb, stride_dqh, stride_dqt,
    H, T, qk_scale, scale,
    HEAD_DIM: tl.constexpr, CAUSAL: tl.constexpr, EVEN_T: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dQ for one block of BLOCK_M query rows of one head. Causal needs BLOCK_M % BLOCK_N == 0."""
    pid_m = _query_block_index(CAUSAL)
    bh, off_b, off_h = _batch_head(H)
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh

    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    row_ok = offs_m < T
    q = tl.load(Q + off_b * stride_qb + off_h * stride_qh + offs_m[:, None] * stride_qt + offs_d[None, :],
                mask=row_ok[:, None], other=0.0)
    do = tl.load(DO + off_b * stride_dob + off_h * stride_doh + offs_m[:, None] * stride_dot + offs_d[None, :],
                 mask=row_ok[:, None], other=0.0)
    lse = tl.load(LSE + bh.to(tl.int64) * T + offs_m, mask=row_ok, other=0.0)
    delta = tl.load(DELTA + bh.to(tl.int64) * T + offs_m, mask=row_ok, other=0.0)
    dq = tl.zeros([BLOCK_M, HEAD_DIM], dtype=tl.float32)

    if CAUSAL:
        dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_vt, offs_m,
                       0, start_m, T, qk_scale, HEAD_DIM, BLOCK_N, False, CAUSAL)
        dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_vt, offs_m,
                       start_m, tl.minimum(start_m + BLOCK_M, T), T, qk_scale, HEAD_DIM, BLOCK_N, True, CAUSAL)
    else:
        if EVEN_T:
            dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_vt, offs_m,
                           0, T, T, qk_scale, HEAD_DIM, BLOCK_N, False, CAUSAL)
        else:
            t_full = (T // BLOCK_N) * BLOCK_N
            dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_vt, offs_m,
                           0, t_full, T, qk_scale, HEAD_DIM, BLOCK_N, False, CAUSAL)
            dq = _dq_inner(dq, q, do, lse, delta, k_base, v_base, stride_kt, stride_vt, offs_m,
                           t_full, T, T, qk_scale, HEAD_DIM, BLOCK_N, True, CAUSAL)
    dq = dq * scale
    tl.store(DQ + off_b * stride_dqb + off_h * stride_dqh + offs_m[:, None] * stride_dqt + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=row_ok[:, None])


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
OP_KIND = os.environ.get("FLYWEIGHT_FLASH_OP", "custom_op")
if OP_KIND not in OP_KINDS:
    raise ValueError(f"FLYWEIGHT_FLASH_OP must be one of {OP_KINDS}, got {OP_KIND!r}")


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
