"""Triton kernels for the SS1 operator: forward, input gradient and weight gradient, all at K/R depth.

How the operator maps onto GEMMs (see ``ss1_layout.py`` for the phase identity):

* The rotation of output block ``pn`` depends on ``pn`` only through its phase ``(R3 + R2*pn) mod D``
  (``D = block_k // vec``). Ordering the weight rows by phase (``rows``: permuted position -> output
  feature) turns the layer into at most D dense GEMMs of depth K/R, one per phase, each with its own
  sketched input ``Xs[p] = sum_c rotate(X chunk c)`` of shape (M, K/R). A kernel tile of output rows
  lies inside one phase's range, so it may span many 64-wide hash blocks; its columns are written
  back to their original positions through ``rows`` (runs of ``block_n`` contiguous features).
* The single-sketch identity: the sketch of phase p is the phase-0 sketch S0 with every BK-wide
  slice rotated by VEC*p, so y = S0 @ Wr^T + b with Wr = Wc, each row's slices rotated by its
  block's shift. ``gemm`` mode runs exactly that: a Triton sketch kernel (X -> S0, M x K/R) and one
  library GEMM against the cached rotated weight; no phases and no output scatter.
* Forward, the other modes (all chosen per shape by the tuner):
  ``sketch``: one memory-bound kernel writes ``Xs`` (P, M, K/R), then a grouped GEMM reads it;
  ``tma``: the same with TMA loads (Xs and a phase-ordered weight copy) and persistent programs;
  ``fused``: the GEMM rotates-and-sums the R input chunks while loading its A tiles (no ``Xs`` in
  memory; re-reads X per output tile, which is cheap when M is small); ``resident``: the sketch of
  a row block stays in registers (K/R <= 512) while the program sweeps a group of output tiles.
  Small M may also split K/R across programs (fp32 partials, summed with the bias by a second kernel).
* Input gradient: ``G[p] = dY[:, rows_p] @ Wc[rows_p]`` (P, M, K/R) then the "unsketch" (the transpose
  of the sketch): ``dX[:, (k*R+c)*BK + s] = sum_p G[p][:, k*BK + (s - h(p,k,c)) mod BK]``; in
  ``gemm`` mode G = dY @ Wr (one library GEMM) and the phase-0 unsketch, a pure gather.
* Weight gradient: ``dWc[rows_p] = dY[:, rows_p]^T @ Xs[p]`` (depth M); in ``gemm`` mode
  dWr = dY^T @ S0 and dWc = its rows rotated back.
* Bias gradient: ``dY.sum(0)`` in fp32.

Kernel tiles (BM, BN, BJ, ...) are free; the hash blocks (block_k, block_n, vec) are the model's.
Everything accumulates in fp32; fp32 inputs use tf32 unless ``torch.backends.cuda.matmul.allow_tf32``
is off (then exact IEEE dots). The ops are registered as ``torch.library.custom_op`` with fake
implementations and autograd, so ``torch.compile`` treats them as opaque calls without graph breaks.
Under ``TRITON_INTERPRET=1`` the same kernels run on CPU tensors (the CI tests do that).

Configs: ``_choose`` picks per (GPU, Triton version, op, M rounded up to a power of two, shape, R,
16-bit/fp32): a ``config_override`` (tests), the cached result of an earlier tuning (memory, then
``~/.cache/flyweight/ss1_autotune.json``), a fresh tuning (logged with a warning; candidates timed
from CUDA-graph replays), or, with ``FLYWEIGHT_SS1_AUTOTUNE=0``, the fixed default config.
Measurements and the reasoning behind the candidates: ``benchmarks/NOTES-ss1.md``.
"""

import contextlib
import functools
import json
import logging
import os
import time
import weakref
from typing import List, Optional

import torch
import triton
import triton.language as tl

from flyweight.kernels._triton_env import INTERPRET
from flyweight.kernels.ss1_layout import SS1Layout

log = logging.getLogger(__name__)



# ==========================================================================================
# Kernels
# ==========================================================================================
@triton.jit
def _rotation(phase, k, c, r0m, r1m, VEC: tl.constexpr, D: tl.constexpr):
    """h(pn, k, c) for every output block pn of this phase (the identity of ss1_layout.py)."""
    return VEC * ((phase + r1m * (k + 1) + r0m * (c + 1)) % D)


@triton.jit
def _chunk_source_cols(j, c, phase, r0m, r1m, R: tl.constexpr, BK: tl.constexpr, VEC: tl.constexpr,
                       D: tl.constexpr):
    """Input columns that chunk ``c`` contributes to sketch columns ``j`` (runs of VEC contiguous)."""
    k = j // BK
    src = (k * R + c) * BK + (j % BK + _rotation(phase, k, c, r0m, r1m, VEC, D)) % BK
    return tl.max_contiguous(tl.multiple_of(src, VEC), VEC)


@triton.jit
def _sketch_tile(x_rows, offs_j, mask, phase, r0m, r1m, stride_xk, R: tl.constexpr, BK: tl.constexpr,
                 VEC: tl.constexpr, D: tl.constexpr):
    """fp32 sum over the R chunks of the rotated input columns: one (rows, j) tile of the sketch."""
    src = _chunk_source_cols(offs_j, 0, phase, r0m, r1m, R, BK, VEC, D)
    acc = tl.load(x_rows + src[None, :] * stride_xk, mask=mask, other=0.0).to(tl.float32)
    for c in tl.static_range(1, R):
        src = _chunk_source_cols(offs_j, c, phase, r0m, r1m, R, BK, VEC, D)
        acc += tl.load(x_rows + src[None, :] * stride_xk, mask=mask, other=0.0).to(tl.float32)
    return acc


@triton.jit(do_not_specialize=["P", "r0m", "r1m"])
def _ss1_sketch_kernel(
    x_ptr, xs_ptr, phases_ptr,
    M, KC, P,
    stride_xm, stride_xk, stride_sp, stride_sm,
    r0m, r1m,
    R: tl.constexpr, BK: tl.constexpr, VEC: tl.constexpr, D: tl.constexpr,
    BM: tl.constexpr, BJ: tl.constexpr,
):
    """Xs[p, m, j] = sum_c X[m, src(j, c, phase_p)] for every used phase p (X read once per program)."""
    pid_m = tl.program_id(0)
    pid_j = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_j = pid_j * BJ + tl.arange(0, BJ)
    mask = (offs_m < M)[:, None] & (offs_j < KC)[None, :]
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm
    for p in range(P):
        acc = _sketch_tile(x_rows, offs_j, mask, tl.load(phases_ptr + p), r0m, r1m, stride_xk, R, BK, VEC, D)
        out = xs_ptr + p * stride_sp + offs_m[:, None].to(tl.int64) * stride_sm + offs_j[None, :]
        tl.store(out, acc.to(xs_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _store_tile(acc, offs_m, m_mask, rows, n_mask, b_ptr, y_ptr, stride_ym, stride_yn,
                HAS_BIAS: tl.constexpr, EVEN_N: tl.constexpr):
    """Epilogue: + bias, cast, store the (BM, BN) tile to its original output columns ``rows``."""
    if HAS_BIAS:
        acc += tl.load(b_ptr + rows, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out = y_ptr + offs_m[:, None].to(tl.int64) * stride_ym + rows[None, :] * stride_yn
    if EVEN_N:
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None])
    else:
        tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def _tile_rows(rows_ptr, row0, row1, BN: tl.constexpr, EVEN_N: tl.constexpr, ROW_HINT: tl.constexpr):
    """Original output features of permuted rows row0 .. row0+BN (masked at row1), and the mask."""
    offs_i = row0 + tl.arange(0, BN)
    n_mask = offs_i < row1
    if EVEN_N:
        rows = tl.load(rows_ptr + offs_i)
    else:
        rows = tl.load(rows_ptr + offs_i, mask=n_mask, other=0)
    return tl.max_contiguous(tl.multiple_of(rows, ROW_HINT), ROW_HINT), n_mask


@triton.jit
def _grouped_pid(pid, num_pid_m, num_pid_n, GROUP_M: tl.constexpr):
    """Row-grouped program order so that consecutive programs share A tiles in L2."""
    num_in_group = GROUP_M * num_pid_n
    group_id = pid // num_in_group
    first_m = group_id * GROUP_M
    group_size = tl.minimum(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % num_in_group) % group_size
    pid_n = (pid % num_in_group) // group_size
    return pid_m, pid_n


@triton.jit(do_not_specialize=["num_tiles", "r0m", "r1m"])
def _ss1_fwd_kernel(
    a_ptr, w_ptr, b_ptr, y_ptr, part_ptr, rows_ptr, tiles_ptr,
    M, N, KC, num_tiles, k_per_split,
    stride_am, stride_ak, stride_ap, stride_wn, stride_wk, stride_ym, stride_yn,
    r0m, r1m,
    FUSED: tl.constexpr, R: tl.constexpr, BK: tl.constexpr, VEC: tl.constexpr, D: tl.constexpr,
    HAS_BIAS: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr, ROW_HINT: tl.constexpr,
    IEEE: tl.constexpr, SPLIT_K: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BKT: tl.constexpr, GROUP_M: tl.constexpr,
):
    """Y[:, rows[i]] = A_p @ Wc[rows[i]]^T + b for a tile of permuted rows i of one phase p.

    FUSED: A_p is sketched on the fly from X (a_ptr = X); otherwise a_ptr = Xs (P, M, K/R).
    tiles_ptr holds (slot p, phase, first row, end of the phase's rows) per output tile.
    SPLIT_K > 1 (small M: more programs streaming the weight): program axis 1 takes k_per_split
    columns of K/R and writes an fp32 partial to part_ptr (SPLIT_K, M, N); a second kernel sums.
    """
    pid_m, pid_t = _grouped_pid(tl.program_id(0), tl.cdiv(M, BM), num_tiles, GROUP_M)
    slot = tl.load(tiles_ptr + 4 * pid_t)
    phase = tl.load(tiles_ptr + 4 * pid_t + 1)
    row0 = tl.load(tiles_ptr + 4 * pid_t + 2)
    row1 = tl.load(tiles_ptr + 4 * pid_t + 3)

    offs_m = pid_m * BM + tl.arange(0, BM)
    m_mask = offs_m < M
    rows, n_mask = _tile_rows(rows_ptr, row0, row1, BN, EVEN_N, ROW_HINT)

    a_rows = offs_m[:, None].to(tl.int64) * stride_am
    if not FUSED:
        a_rows += slot.to(tl.int64) * stride_ap
    w_cols = w_ptr + rows[None, :].to(tl.int64) * stride_wn  # (1, BN): the weight read as Wc^T
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    if SPLIT_K == 1:
        k_lo = 0
        k_hi = KC
    else:
        k_lo = tl.program_id(1) * k_per_split
        k_hi = tl.minimum(KC, k_lo + k_per_split)
    for k0 in range(k_lo, k_hi, BKT):
        offs_k = k0 + tl.arange(0, BKT)
        if EVEN_K:
            a_mask = m_mask[:, None]
            w = tl.load(w_cols + offs_k[:, None] * stride_wk, mask=n_mask[None, :], other=0.0)
        else:
            a_mask = m_mask[:, None] & (offs_k < KC)[None, :]
            w = tl.load(w_cols + offs_k[:, None] * stride_wk,
                        mask=n_mask[None, :] & (offs_k < KC)[:, None], other=0.0)
        if FUSED:
            a = _sketch_tile(a_ptr + a_rows, offs_k, a_mask, phase, r0m, r1m, stride_ak, R, BK, VEC, D).to(w.dtype)
        else:
            a = tl.load(a_ptr + a_rows + offs_k[None, :] * stride_ak, mask=a_mask, other=0.0)
        if IEEE:
            acc = tl.dot(a, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w, acc)
    if SPLIT_K > 1:
        part = part_ptr + (tl.program_id(1) * M + offs_m[:, None]).to(tl.int64) * N + rows[None, :]
        tl.store(part, acc, mask=m_mask[:, None] & n_mask[None, :])
    else:
        _store_tile(acc, offs_m, m_mask, rows, n_mask, b_ptr, y_ptr, stride_ym, stride_yn, HAS_BIAS, EVEN_N)


@triton.jit(do_not_specialize=["num_groups", "r0m", "r1m"])
def _ss1_fwd_resident_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr, rows_ptr, groups_ptr,
    M, KC, num_groups,
    stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
    r0m, r1m,
    R: tl.constexpr, BK: tl.constexpr, VEC: tl.constexpr, D: tl.constexpr,
    HAS_BIAS: tl.constexpr, EVEN_N: tl.constexpr, EVEN_K: tl.constexpr, ROW_HINT: tl.constexpr,
    IEEE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, KCP: tl.constexpr,
):
    """Short K/R: sketch BM input rows once (the whole depth KCP >= K/R stays in registers), then
    sweep a group of output tiles of that phase with it. X is read once per (row block, group), the
    sketch never goes to memory, and the weight tiles (small, L2-resident) stream through.

    groups_ptr holds (slot, phase, first row, end row) per group of consecutive tiles of one phase.
    Groups vary fastest across programs, so programs that read the same X rows run together.
    """
    pid = tl.program_id(0)
    pid_m = pid // num_groups
    pid_g = pid % num_groups
    phase = tl.load(groups_ptr + 4 * pid_g + 1)
    row0 = tl.load(groups_ptr + 4 * pid_g + 2)
    row1 = tl.load(groups_ptr + 4 * pid_g + 3)
    offs_m = pid_m * BM + tl.arange(0, BM)
    m_mask = offs_m < M
    offs_j = tl.arange(0, KCP)
    if EVEN_K:
        a_mask = m_mask[:, None]
    else:
        a_mask = m_mask[:, None] & (offs_j < KC)[None, :]
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm
    a = _sketch_tile(x_rows, offs_j, a_mask, phase, r0m, r1m, stride_xk, R, BK, VEC, D).to(w_ptr.dtype.element_ty)
    for i0 in range(row0, row1, BN):
        rows, n_mask = _tile_rows(rows_ptr, i0, row1, BN, EVEN_N, ROW_HINT)
        w_ptrs = w_ptr + rows[None, :].to(tl.int64) * stride_wn + offs_j[:, None] * stride_wk  # Wc^T tile
        if EVEN_K:
            w = tl.load(w_ptrs, mask=n_mask[None, :], other=0.0)
        else:
            w = tl.load(w_ptrs, mask=n_mask[None, :] & (offs_j < KC)[:, None], other=0.0)
        if IEEE:
            acc = tl.dot(a, w, input_precision="ieee")
        else:
            acc = tl.dot(a, w)
        _store_tile(acc, offs_m, m_mask, rows, n_mask, b_ptr, y_ptr, stride_ym, stride_yn, HAS_BIAS, EVEN_N)


@triton.jit(do_not_specialize=["num_tiles", "num_progs"])
def _ss1_fwd_tma_kernel(
    a_desc, w_desc, b_ptr, y_ptr, rows_ptr, tiles_ptr,
    M, KC, num_tiles, num_progs,
    stride_ym, stride_yn,
    HAS_BIAS: tl.constexpr, EVEN_N: tl.constexpr, ROW_HINT: tl.constexpr, IEEE: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BKT: tl.constexpr, GROUP_M: tl.constexpr, FLATTEN: tl.constexpr,
):
    """Sketch mode with tensor-memory-accelerator loads: A tiles from Xs viewed as (P*M, K/R), B tiles
    from the phase-ordered weight copy Wp = Wc[rows] (N, K/R), so both are plain rectangular boxes.

    Persistent when num_progs < the number of tiles (each program strides over tiles; FLATTEN lets the
    compiler pipeline across tile boundaries). A tile's A rows past M belong to the next phase's sketch
    (or are zero-filled past the end): they only feed output rows >= M, which are never stored.
    """
    num_pid_m = tl.cdiv(M, BM)
    total = num_pid_m * num_tiles
    k_steps = tl.cdiv(KC, BKT)
    for t in tl.range(tl.program_id(0), total, num_progs, flatten=FLATTEN):
        pid_m, pid_t = _grouped_pid(t, num_pid_m, num_tiles, GROUP_M)
        slot = tl.load(tiles_ptr + 4 * pid_t)
        row0 = tl.load(tiles_ptr + 4 * pid_t + 2)
        row1 = tl.load(tiles_ptr + 4 * pid_t + 3)
        a_row = slot * M + pid_m * BM
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for kk in range(k_steps):
            a = a_desc.load([a_row, kk * BKT])
            w = w_desc.load([row0, kk * BKT])
            if IEEE:
                acc = tl.dot(a, w.T, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, w.T, acc)
        offs_m = pid_m * BM + tl.arange(0, BM)
        rows, n_mask = _tile_rows(rows_ptr, row0, row1, BN, EVEN_N, ROW_HINT)
        _store_tile(acc, offs_m, offs_m < M, rows, n_mask, b_ptr, y_ptr, stride_ym, stride_yn, HAS_BIAS, EVEN_N)


@triton.jit
def _ss1_dgrad_kernel(
    dy_ptr, w_ptr, wp_desc, g_ptr, rows_ptr, regions_ptr,
    M, KC,
    stride_dym, stride_dyn, stride_wn, stride_wk, stride_gp, stride_gm,
    ROW_HINT: tl.constexpr, EVEN_R: tl.constexpr, EVEN_J: tl.constexpr, IEEE: tl.constexpr,
    TMA_B: tl.constexpr, BM: tl.constexpr, BJ: tl.constexpr, BR: tl.constexpr, GROUP_M: tl.constexpr,
):
    """G[p] = dY[:, rows_p] @ Wc[rows_p]: (M, K/R) per phase p, reduced over the phase's rows.

    EVEN_R: every phase's row count is a multiple of BR; EVEN_J: K/R is a multiple of BJ. Then the
    loads carry no mask along their contiguous axis and stay 16-byte vectorised. TMA_B: the weight
    tiles come from the phase-ordered copy through a TMA descriptor (rows past the phase's end are
    the next phase's, but they meet the zero-masked dY columns).
    """
    p = tl.program_id(1)
    pid_m, pid_j = _grouped_pid(tl.program_id(0), tl.cdiv(M, BM), tl.cdiv(KC, BJ), GROUP_M)
    row0 = tl.load(regions_ptr + 2 * p)
    row1 = tl.load(regions_ptr + 2 * p + 1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_j = pid_j * BJ + tl.arange(0, BJ)
    m_mask = offs_m < M
    j_mask = offs_j < KC
    dy_rows = dy_ptr + offs_m[:, None].to(tl.int64) * stride_dym
    acc = tl.zeros((BM, BJ), dtype=tl.float32)
    for i0 in range(row0, row1, BR):
        offs_i = i0 + tl.arange(0, BR)
        i_mask = offs_i < row1
        if EVEN_R:
            rows = tl.load(rows_ptr + offs_i)
            rows = tl.max_contiguous(tl.multiple_of(rows, ROW_HINT), ROW_HINT)
            a = tl.load(dy_rows + rows[None, :] * stride_dyn, mask=m_mask[:, None], other=0.0)
        else:
            rows = tl.load(rows_ptr + offs_i, mask=i_mask, other=0)
            rows = tl.max_contiguous(tl.multiple_of(rows, ROW_HINT), ROW_HINT)
            a = tl.load(dy_rows + rows[None, :] * stride_dyn, mask=m_mask[:, None] & i_mask[None, :], other=0.0)
        if TMA_B:
            b = wp_desc.load([i0, pid_j * BJ])
        else:
            b_ptrs = w_ptr + rows[:, None].to(tl.int64) * stride_wn + offs_j[None, :] * stride_wk
            if EVEN_R and EVEN_J:
                b = tl.load(b_ptrs)
            elif EVEN_R:
                b = tl.load(b_ptrs, mask=j_mask[None, :], other=0.0)
            else:
                b = tl.load(b_ptrs, mask=i_mask[:, None] & j_mask[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    out = g_ptr + p * stride_gp + offs_m[:, None].to(tl.int64) * stride_gm + offs_j[None, :]
    tl.store(out, acc.to(g_ptr.dtype.element_ty), mask=m_mask[:, None] & j_mask[None, :])


@triton.jit(do_not_specialize=["P", "r0m", "r1m"])
def _ss1_unsketch_kernel(
    g_ptr, dx_ptr, phases_ptr,
    M, K, P,
    stride_gp, stride_gm, stride_dxm,
    r0m, r1m,
    R: tl.constexpr, BK: tl.constexpr, VEC: tl.constexpr, D: tl.constexpr,
    BM: tl.constexpr, BX: tl.constexpr,
):
    """dX[m, (k*R+c)*BK + s] = sum_p G[p, m, k*BK + (s - h(p, k, c)) mod BK] (the sketch's transpose)."""
    pid_m = tl.program_id(0)
    pid_x = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_x = pid_x * BX + tl.arange(0, BX)
    mask = (offs_m < M)[:, None] & (offs_x < K)[None, :]
    blk = offs_x // BK
    s = offs_x % BK
    k = blk // R
    c = blk % R
    g_rows = g_ptr + offs_m[:, None].to(tl.int64) * stride_gm
    acc = tl.zeros((BM, BX), dtype=tl.float32)
    for p in range(P):
        h = _rotation(tl.load(phases_ptr + p), k, c, r0m, r1m, VEC, D)
        src = k * BK + (s - h + BK) % BK
        src = tl.max_contiguous(tl.multiple_of(src, VEC), VEC)
        acc += tl.load(g_rows + p * stride_gp + src[None, :], mask=mask, other=0.0).to(tl.float32)
    out = dx_ptr + offs_m[:, None].to(tl.int64) * stride_dxm + offs_x[None, :]
    tl.store(out, acc.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _ss1_splitk_reduce_kernel(part_ptr, b_ptr, y_ptr, M, N, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr,
                              BLOCK: tl.constexpr):
    """y (M, N contiguous) = sum over splits of the fp32 partials + bias, in y's dtype."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    total = M * N
    mask = offs < total
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(part_ptr + s * total + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs % N, mask=mask, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, acc.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit(do_not_specialize=["num_tiles"])
def _ss1_wgrad_kernel(
    dy_ptr, xs_ptr, xs_desc, dw_ptr, rows_ptr, tiles_ptr,
    M, KC, num_tiles,
    stride_dym, stride_dyn, stride_sp, stride_sm, stride_dwn,
    ROW_HINT: tl.constexpr, EVEN_N: tl.constexpr, IEEE: tl.constexpr, TMA_B: tl.constexpr,
    BN: tl.constexpr, BJ: tl.constexpr, BR: tl.constexpr, GROUP_M: tl.constexpr,
):
    """dWc[rows[i]] = dY[:, rows[i]]^T @ Xs[p] for a tile of permuted rows i of phase p (depth M).

    TMA_B: the Xs tiles through a descriptor of Xs as (P*M, K/R); rows past M are the next phase's
    sketch but meet zero-masked dY rows.
    """
    pid_t, pid_j = _grouped_pid(tl.program_id(0), num_tiles, tl.cdiv(KC, BJ), GROUP_M)
    slot = tl.load(tiles_ptr + 4 * pid_t)
    row0 = tl.load(tiles_ptr + 4 * pid_t + 2)
    row1 = tl.load(tiles_ptr + 4 * pid_t + 3)
    rows, n_mask = _tile_rows(rows_ptr, row0, row1, BN, EVEN_N, ROW_HINT)
    offs_j = pid_j * BJ + tl.arange(0, BJ)
    j_mask = offs_j < KC
    xs_base = xs_ptr + slot.to(tl.int64) * stride_sp
    acc = tl.zeros((BN, BJ), dtype=tl.float32)
    for m0 in range(0, M, BR):
        offs_r = m0 + tl.arange(0, BR)
        r_mask = offs_r < M
        a_ptrs = dy_ptr + offs_r[None, :].to(tl.int64) * stride_dym + rows[:, None] * stride_dyn
        if EVEN_N:
            a = tl.load(a_ptrs, mask=r_mask[None, :], other=0.0)
        else:
            a = tl.load(a_ptrs, mask=n_mask[:, None] & r_mask[None, :], other=0.0)
        if TMA_B:
            b = xs_desc.load([slot * M + m0, pid_j * BJ])
        else:
            b = tl.load(xs_base + offs_r[:, None].to(tl.int64) * stride_sm + offs_j[None, :],
                        mask=r_mask[:, None] & j_mask[None, :], other=0.0)
        if IEEE:
            acc = tl.dot(a, b, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, b, acc)
    out = dw_ptr + rows[:, None].to(tl.int64) * stride_dwn + offs_j[None, :]
    if EVEN_N:
        tl.store(out, acc.to(dw_ptr.dtype.element_ty), mask=j_mask[None, :])
    else:
        tl.store(out, acc.to(dw_ptr.dtype.element_ty), mask=n_mask[:, None] & j_mask[None, :])


@triton.jit
def _ss1_rotate_rows_kernel(
    src_ptr, dst_ptr, shift_ptr, N, KC, stride_s, stride_d,
    SIGN: tl.constexpr, BK: tl.constexpr, BR: tl.constexpr, BJ: tl.constexpr,
):
    """dst[n, k*BK + u] = src[n, k*BK + (u - SIGN*shift[n]) mod BK]: each row's BK-wide slices rotated
    by that row's shift (SIGN = 1: Wc -> the rotated weight Wr; SIGN = -1: its inverse, dWr -> dWc)."""
    offs_n = tl.program_id(0) * BR + tl.arange(0, BR)
    offs_j = tl.program_id(1) * BJ + tl.arange(0, BJ)
    n_mask = offs_n < N
    mask = n_mask[:, None] & (offs_j < KC)[None, :]
    sh = tl.load(shift_ptr + offs_n, mask=n_mask, other=0)
    src_col = (offs_j // BK * BK)[None, :] + ((offs_j % BK)[None, :] - SIGN * sh[:, None] + BK) % BK
    rows = offs_n[:, None].to(tl.int64)
    v = tl.load(src_ptr + rows * stride_s + src_col, mask=mask, other=0.0)
    tl.store(dst_ptr + rows * stride_d + offs_j[None, :], v, mask=mask)


# ==========================================================================================
# Plans: the index tables of one layout on one device (built once, cached)
# ==========================================================================================
def meta_of(layout: SS1Layout) -> List[int]:
    """The integers that define the operator (passed to the custom ops, which take no objects)."""
    return [layout.out_features, layout.compression, layout.block_k, layout.block_n, layout.vec,
            *layout.hash_coeffs]


@functools.lru_cache(maxsize=256)
def _layout_of(meta: tuple, padded_in: int) -> SS1Layout:
    n, r, bk, bn, vec, c0, c1, c2, c3 = meta
    return SS1Layout(padded_in, n, r, bk, bn, vec, (c0, c1, c2, c3), padded_in)


class _Plan:
    """Phase order of the weight rows, phase ranges and the per-tile tables for a layout."""

    def __init__(self, layout: SS1Layout, device: torch.device):
        self.layout = layout
        self.device = device
        d = layout.num_rotations
        r0, r1, _, _ = layout.hash_coeffs
        self.r0m, self.r1m, self.d = r0 % d, r1 % d, d
        self.phase_list = list(layout.used_phases)
        cols = [layout.output_columns(p) for p in self.phase_list]
        self.counts = [int(c.numel()) for c in cols]
        starts = [0]
        for c in self.counts:
            starts.append(starts[-1] + c)
        self.starts = starts
        self.rows = torch.cat(cols).to(device=device, dtype=torch.int32)
        self.phases = torch.tensor(self.phase_list, dtype=torch.int32, device=device)
        self.regions = torch.tensor([[starts[i], starts[i + 1]] for i in range(len(cols))],
                                    dtype=torch.int32, device=device).reshape(-1)
        self.full_blocks = layout.out_features % layout.block_n == 0
        self.rows_long = self.rows.long()
        # The single-sketch identity: the sketch of phase p is the phase-0 sketch with every BK-wide
        # slice rotated by VEC*p, so y = S0 @ Wr^T where S0 is the phase-0 sketch (M, K/R) and Wr is
        # Wc with row n's slices rotated by its phase's shift VEC*phase(n // block_n).
        self.phase0 = torch.zeros(1, dtype=torch.int32, device=device)
        self.row_shift = (layout.vec * layout.block_phases[torch.arange(layout.out_features) // layout.block_n]).to(
            device=device, dtype=torch.int32)
        self._tiles: dict[tuple[int, int], tuple[torch.Tensor, int]] = {}
        self.weight_cache: dict = {}  # data_ptr -> (weakref, version, phase-ordered copy)

    @property
    def num_phases(self) -> int:
        return len(self.phase_list)

    def tiles(self, bn: int, per: int = 1) -> tuple[torch.Tensor, int]:
        """(count * 4) int32 table of (slot, phase, first row, end row) for groups of ``per`` row tiles
        of width bn inside one phase (end row: the group's end, at most the phase's end)."""
        if (bn, per) not in self._tiles:
            entries = []
            for slot, phase in enumerate(self.phase_list):
                end = self.starts[slot + 1]
                for r0 in range(self.starts[slot], end, bn * per):
                    entries.append([slot, phase, r0, min(end, r0 + bn * per)])
            table = torch.tensor(entries, dtype=torch.int32, device=self.device).reshape(-1)
            self._tiles[(bn, per)] = (table, len(entries))
        return self._tiles[(bn, per)]

    def even(self, bn: int) -> bool:
        """True when every phase's row count is a multiple of the tile width (no masks on N)."""
        return all(c % bn == 0 for c in self.counts)

    def row_hint(self, bn: int) -> int:
        """Rows of a tile come in aligned runs of this many contiguous features (1: no claim)."""
        return min(bn, self.layout.block_n) if self.full_blocks else 1


_PLANS: dict = {}


def plan_for(meta: List[int], padded_in: int, device: torch.device) -> _Plan:
    key = (tuple(meta), padded_in, str(device))
    plan = _PLANS.get(key)
    if plan is None:
        plan = _PLANS[key] = _Plan(_layout_of(tuple(meta), padded_in), device)
    return plan


# ==========================================================================================
# Configurations, defaults and the persistent autotuner
# ==========================================================================================
def _pow2_at_least(v: int, lo: int = 16) -> int:
    return max(lo, triton.next_power_of_2(max(1, v)))


def _clamp(cfg: dict, **limits) -> dict:
    """Shrink tile sizes that exceed the (power-of-two rounded) problem size."""
    out = dict(cfg)
    for name, size in limits.items():
        if name in out:
            out[name] = min(out[name], _pow2_at_least(size))
    return out


def _has_tma() -> bool:
    """Tensor-memory-accelerator descriptors: Hopper (sm_90) and newer, compiled Triton only."""
    return not INTERPRET and torch.cuda.is_available() and torch.cuda.get_device_capability()[0] >= 9


def _fwd_candidates(m: int, plan: Optional["_Plan"] = None) -> list[dict]:
    """Forward tile configs tried by the tuner; the first is the fixed default when tuning is off.

    M <= 64 (decode): memory bound on the weight -> narrow output tiles and split K so that enough
    programs stream the weight. Larger M: big tiles for deep K/R (pointer loads, or TMA loads with
    persistent programs on Hopper), small high-occupancy tiles for short K/R, and the ``resident``
    kernel when the whole sketch depth fits in registers (K/R <= 512: GPT-2 widths, Llama at R = 8),
    which never writes the sketch to memory and reads X once per group of output tiles.
    ``plan`` (the layer's shapes) gates the kernels that need it; without it the list is generic.
    """
    kcp = _pow2_at_least(plan.layout.compressed_in) if plan is not None else None
    resident_ok = kcp is not None and kcp <= 512
    if m <= 64:
        bm = 16 if m <= 16 else (32 if m <= 32 else 64)
        cands = [
            dict(mode="fused", BM=bm, BN=64, BKT=128, GROUP_M=8, num_warps=4, num_stages=4),
            dict(mode="fused", BM=bm, BN=32, BKT=128, GROUP_M=8, num_warps=4, num_stages=4),
            dict(mode="fused", BM=bm, BN=32, BKT=128, SPLIT_K=4, GROUP_M=8, num_warps=4, num_stages=4),
            dict(mode="fused", BM=bm, BN=64, BKT=128, SPLIT_K=4, GROUP_M=8, num_warps=4, num_stages=4),
            dict(mode="fused", BM=bm, BN=64, BKT=64, SPLIT_K=16, GROUP_M=8, num_warps=4, num_stages=4),
            dict(mode="fused", BM=bm, BN=32, BKT=64, SPLIT_K=16, GROUP_M=8, num_warps=4, num_stages=4),
            dict(mode="fused", BM=bm, BN=16, BKT=256, GROUP_M=8, num_warps=4, num_stages=3),
            # the sketch made once by its own small launch: the GEMV then only streams the weight
            # (fused mode re-sketches X for every output tile, which dominates narrow tiles)
            dict(mode="sketch", BM=bm, BN=64, BKT=128, GROUP_M=8, num_warps=4, num_stages=4),
            dict(mode="sketch", BM=bm, BN=32, BKT=256, GROUP_M=8, num_warps=4, num_stages=3),
            dict(mode="sketch", BM=bm, BN=64, BKT=128, SPLIT_K=4, GROUP_M=8, num_warps=4, num_stages=4),
        ]
        if plan is not None and _has_tma() and plan.layout.compressed_in >= 256:
            cands.append(dict(mode="tma", BM=bm, BN=64, BKT=128, GROUP_M=8, num_warps=4, num_stages=4, PERSISTENT=0))
        if resident_ok:
            cands += [dict(mode="resident", BM=bm, BN=64, TILES=1, num_warps=4, num_stages=3),
                      dict(mode="resident", BM=bm, BN=32, TILES=1, num_warps=4, num_stages=3)]
        return cands + [dict(mode="gemm")]
    cands = [
        dict(mode="gemm"),
        dict(mode="sketch", BM=128, BN=256, BKT=64, GROUP_M=8, num_warps=8, num_stages=3),
        dict(mode="sketch", BM=128, BN=128, BKT=64, GROUP_M=8, num_warps=8, num_stages=4),
        # short K/R: several CTAs per SM
        dict(mode="sketch", BM=128, BN=128, BKT=64, GROUP_M=8, num_warps=4, num_stages=2),
        dict(mode="sketch", BM=128, BN=64, BKT=64, GROUP_M=8, num_warps=4, num_stages=3),
        dict(mode="sketch", BM=64, BN=64, BKT=64, GROUP_M=8, num_warps=4, num_stages=2),
        dict(mode="fused", BM=128, BN=256, BKT=64, GROUP_M=8, num_warps=8, num_stages=3),
    ]
    if m <= 512:
        cands.append(dict(mode="fused", BM=64, BN=128, BKT=64, GROUP_M=8, num_warps=4, num_stages=4))
        cands.append(dict(mode="fused", BM=64, BN=64, BKT=64, GROUP_M=8, num_warps=4, num_stages=3))
    if plan is not None and _has_tma() and plan.layout.compressed_in >= 256:
        cands += [
            dict(mode="tma", BM=128, BN=256, BKT=64, GROUP_M=8, num_warps=8, num_stages=3, PERSISTENT=0),
            dict(mode="tma", BM=128, BN=256, BKT=64, GROUP_M=8, num_warps=8, num_stages=3, PERSISTENT=1),
            dict(mode="tma", BM=128, BN=256, BKT=64, GROUP_M=8, num_warps=8, num_stages=4, PERSISTENT=1, FLATTEN=1),
            dict(mode="tma", BM=128, BN=128, BKT=64, GROUP_M=8, num_warps=8, num_stages=4, PERSISTENT=2),
        ]
    if resident_ok:
        if kcp <= 256:
            cands += [dict(mode="resident", BM=128, BN=128, TILES=4, num_warps=8, num_stages=3),
                      dict(mode="resident", BM=128, BN=64, TILES=4, num_warps=4, num_stages=3),
                      dict(mode="resident", BM=64, BN=128, TILES=2, num_warps=4, num_stages=3)]
        else:
            cands += [dict(mode="resident", BM=64, BN=128, TILES=4, num_warps=8, num_stages=2),
                      dict(mode="resident", BM=64, BN=64, TILES=4, num_warps=4, num_stages=2)]
    return cands


def _sketch_candidates(m: int, plan: Optional["_Plan"] = None) -> list[dict]:
    """The sketch is a pure memory pass (read M*K, write P*M*K/R): tile shapes and warps only."""
    return [
        dict(BM=32, BJ=128, num_warps=4, num_stages=2),
        dict(BM=64, BJ=128, num_warps=4, num_stages=2),
        dict(BM=64, BJ=128, num_warps=8, num_stages=2),
        dict(BM=32, BJ=256, num_warps=4, num_stages=2),
        dict(BM=128, BJ=128, num_warps=8, num_stages=2),
        dict(BM=16, BJ=256, num_warps=4, num_stages=2),
    ]


def _dgrad_candidates(m: int, plan: Optional["_Plan"] = None) -> list[dict]:
    """``gemm`` (library GEMM against the rotated weight + phase-0 unsketch) or the phase kernel."""
    return [
        dict(mode="gemm"),
        dict(BM=128, BJ=128, BR=64, GROUP_M=8, num_warps=8, num_stages=4),
        dict(BM=128, BJ=128, BR=64, GROUP_M=8, num_warps=4, num_stages=4),
        dict(BM=128, BJ=256, BR=64, GROUP_M=8, num_warps=8, num_stages=3),
        dict(BM=64, BJ=128, BR=64, GROUP_M=8, num_warps=4, num_stages=4),
        dict(BM=128, BJ=256, BR=64, GROUP_M=8, num_warps=8, num_stages=4),
        dict(BM=128, BJ=128, BR=128, GROUP_M=8, num_warps=8, num_stages=3),
    ] + ([
        dict(BM=128, BJ=128, BR=64, GROUP_M=8, num_warps=8, num_stages=4, TMA=1),
        dict(BM=128, BJ=256, BR=64, GROUP_M=8, num_warps=8, num_stages=3, TMA=1),
    ] if _has_tma() else [])


def _wgrad_candidates(m: int, plan: Optional["_Plan"] = None) -> list[dict]:
    """``gemm`` (dY^T @ S0 by the library GEMM, rotated back) or the phase kernel (reads Xs)."""
    return [
        dict(mode="gemm"),
        dict(BN=128, BJ=128, BR=64, GROUP_M=8, num_warps=8, num_stages=4),
        dict(BN=128, BJ=128, BR=64, GROUP_M=8, num_warps=4, num_stages=4),
        dict(BN=128, BJ=256, BR=64, GROUP_M=8, num_warps=8, num_stages=3),
        dict(BN=64, BJ=128, BR=64, GROUP_M=8, num_warps=4, num_stages=4),
        dict(BN=128, BJ=256, BR=64, GROUP_M=8, num_warps=8, num_stages=4),
        dict(BN=128, BJ=128, BR=128, GROUP_M=8, num_warps=8, num_stages=3),
    ] + ([
        dict(BN=64, BJ=128, BR=64, GROUP_M=8, num_warps=4, num_stages=4, TMA=1),
        dict(BN=128, BJ=128, BR=64, GROUP_M=8, num_warps=8, num_stages=4, TMA=1),
    ] if _has_tma() else [])


# Part of every tuning key: bump it when the candidate lists change, so that configs chosen among
# older candidates are not reused without the new ones ever being tried.
CANDIDATES_VERSION = 3
_CANDIDATES = {"fwd": _fwd_candidates, "dgrad": _dgrad_candidates, "wgrad": _wgrad_candidates,
               "sketch": _sketch_candidates}
_OVERRIDE: dict[str, dict] = {}
_AUTOTUNE: Optional[bool] = None  # None: the environment decides (FLYWEIGHT_SS1_AUTOTUNE)


@contextlib.contextmanager
def config_override(**configs: dict):
    """Force kernel configs, e.g. ``config_override(fwd=dict(mode="fused", BM=16, ...))`` (tests, benchmarks)."""
    unknown = set(configs) - set(_CANDIDATES)
    if unknown:
        raise ValueError(f"config_override: unknown ops {sorted(unknown)}; valid: {sorted(_CANDIDATES)}")
    saved = dict(_OVERRIDE)
    _OVERRIDE.update(configs)
    try:
        yield
    finally:
        _OVERRIDE.clear()
        _OVERRIDE.update(saved)


def set_autotune(enabled: Optional[bool]) -> None:
    """Turn tuning on/off for this process (None: back to the FLYWEIGHT_SS1_AUTOTUNE variable)."""
    global _AUTOTUNE
    _AUTOTUNE = enabled


def env_autotune() -> bool:
    """FLYWEIGHT_SS1_AUTOTUNE: 1/true/on (default) or 0/false/off."""
    value = os.environ.get("FLYWEIGHT_SS1_AUTOTUNE", "1").strip().lower()
    if value not in ("0", "1", "false", "true", "off", "on"):
        raise ValueError(f"FLYWEIGHT_SS1_AUTOTUNE must be 0/1 (or off/on), got {value!r}")
    return value in ("1", "true", "on")


def autotune_enabled() -> bool:
    """Tuning happens only on a real GPU (never in the interpreter), unless switched off."""
    if INTERPRET:
        return False
    return _AUTOTUNE if _AUTOTUNE is not None else env_autotune()


def cache_path() -> str:
    explicit = os.environ.get("FLYWEIGHT_SS1_AUTOTUNE_CACHE")
    if explicit:
        return explicit
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "flyweight", "ss1_autotune.json")


class _TuneCache:
    """Best config per (GPU, Triton version, op, shape, dtype) key, in memory and in a JSON file."""

    def __init__(self):
        self.mem: dict[str, dict] = {}
        self.loaded_from: Optional[str] = None

    def _load(self) -> None:
        path = cache_path()
        if self.loaded_from == path:
            return
        self.loaded_from = path
        try:
            with open(path) as f:
                data = json.load(f)
            if isinstance(data, dict):
                self.mem.update({k: v for k, v in data.items() if isinstance(v, dict)})
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as err:
            log.warning("SS1 autotune cache %s unreadable (%s); starting empty", path, err)

    def get(self, key: str) -> Optional[dict]:
        self._load()
        return self.mem.get(key)

    def put(self, key: str, cfg: dict) -> None:
        self.mem[key] = cfg
        path = cache_path()
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            merged = {}
            try:
                with open(path) as f:
                    merged = json.load(f)
            except (OSError, ValueError):
                merged = {}
            merged.update(self.mem)
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                json.dump(merged, f, indent=1, sort_keys=True)
            os.replace(tmp, path)  # atomic: concurrent processes never see half a file
        except OSError as err:
            log.warning("SS1 autotune cache %s not written (%s)", path, err)


_CACHE = _TuneCache()
_CHOSEN: dict[str, dict] = {}


@functools.lru_cache(maxsize=8)
def _device_tag(device_index: int) -> str:
    name = torch.cuda.get_device_name(device_index) if torch.cuda.is_available() else "cpu"
    return f"{name}|triton{triton.__version__}|c{CANDIDATES_VERSION}"


def _m_bucket(m: int) -> int:
    """Tuning key for M: the next power of two (so a layer tunes once per size class, not per batch)."""
    return triton.next_power_of_2(max(1, m))


def default_config(op: str, m: int, modes: Optional[tuple] = None) -> dict:
    """The fixed config used when tuning is off: the first candidate for this M (of these modes)."""
    return dict(next(c for c in _CANDIDATES[op](m) if modes is None or c.get("mode", "phase") in modes))


def cuda_graph_time_ms(fn, reps: int, side_warmups: int = 1, rep_ms: int = 20) -> float:
    """Median GPU time of one ``fn()`` in ms: ``reps`` calls captured in a CUDA graph and replayed, so
    Python launch overhead (tens of us per call) is not measured. ``side_warmups`` calls run first on
    a side stream, as capture requires."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(side_warmups):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(reps):
            fn()
    ms = triton.testing.do_bench(graph.replay, warmup=5, rep=rep_ms, return_mode="median") / reps
    del graph
    return ms


def _gpu_time_ms(fn) -> float:
    """GPU time of ``fn`` for the tuner (``cuda_graph_time_ms``); plain do_bench if capture fails."""
    fn()  # compiles the config (a failure here skips it)
    try:
        return cuda_graph_time_ms(fn, reps=8)
    except Exception as err:
        log.debug("SS1 autotune: graph timing failed (%s); timing eagerly", err)
        torch.cuda.synchronize()
        return triton.testing.do_bench(fn, warmup=5, rep=20, return_mode="median")


def _choose(op: str, x: torch.Tensor, key: str, m: int, run, plan: Optional[_Plan] = None,
            modes: Optional[tuple] = None) -> dict:
    """Config for one op call: override, cached tuning result, fresh tuning (logged), or default.

    ``modes``: only candidates of these modes (a config without "mode" is a "phase" kernel config).
    """
    if op in _OVERRIDE and (modes is None or _OVERRIDE[op].get("mode", "phase") in modes):
        return _OVERRIDE[op]
    if x.device.type != "cuda" or not autotune_enabled() or op in _OVERRIDE:
        return default_config(op, m, modes)
    full_key = f"{_device_tag(x.device.index or 0)}|{op}|{key}"
    cfg = _CHOSEN.get(full_key) or _CACHE.get(full_key)
    if cfg is not None:
        _CHOSEN[full_key] = cfg  # the hot path: one dict lookup per call after the first
        return cfg
    if torch.cuda.is_current_stream_capturing():
        # Timing is impossible inside a CUDA graph capture: run one untuned step first to tune.
        log.warning("SS1 autotune: %s %s first seen during CUDA graph capture; using the default config "
                    "(run one step before capturing to tune it)", op, key)
        return default_config(op, m, modes)
    t0 = time.perf_counter()
    results = []
    for cand in _CANDIDATES[op](m, plan):
        if modes is not None and cand.get("mode", "phase") not in modes:
            continue
        try:
            ms = _gpu_time_ms(lambda cand=cand: run(cand))
        except Exception as err:  # e.g. out of shared memory on a smaller GPU: skip that config
            log.info("SS1 autotune %s: config %s failed: %s", op, cand, str(err)[:300])
            continue
        results.append((ms, cand))
    if not results:
        raise RuntimeError(f"SS1 autotune: no config of op {op!r} ran for key {key}")
    best_ms, best = min(results, key=lambda r: r[0])
    if log.isEnabledFor(logging.INFO):
        for ms, cand in sorted(results, key=lambda r: r[0]):
            log.info("SS1 autotune %s %s: %8.1f us  %s", op, key, ms * 1e3,
                     " ".join(f"{k}={v}" for k, v in sorted(cand.items()) if k != "GROUP_M"))
    best = dict(best, us=round(best_ms * 1e3, 2))
    log.warning("SS1 autotune: tuned %s %s in %.1f s -> %s (cached in %s)", op, key,
                time.perf_counter() - t0, best, cache_path())
    _CACHE.put(full_key, best)
    _CHOSEN[full_key] = best
    return best


def _launch_kw(cfg: dict) -> dict:
    return {"num_warps": cfg["num_warps"], "num_stages": cfg["num_stages"]}


def _ieee(dtype: torch.dtype) -> bool:
    return dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32


# ==========================================================================================
# Launchers
# ==========================================================================================
def _sketch(x: torch.Tensor, plan: _Plan, cfg: Optional[dict] = None, single: bool = False) -> torch.Tensor:
    """Xs (P, M, K/R) in x's dtype, or with ``single`` the phase-0 sketch S0 (M, K/R) alone.

    The tile config is tuned like the GEMMs unless given.
    """
    lay = plan.layout
    m = x.shape[0]
    kc = lay.compressed_in
    if cfg is None:
        cfg = _choose("sketch", x, _key(plan, m, x.dtype, "|s0" if single else ""), m,
                      lambda c: _sketch(x, plan, c, single), plan)
    phases, count = (plan.phase0, 1) if single else (plan.phases, plan.num_phases)
    xs = torch.empty(count, m, kc, device=x.device, dtype=x.dtype)
    bm, bj = min(cfg["BM"], _pow2_at_least(m)), min(cfg["BJ"], _pow2_at_least(kc))
    grid = (triton.cdiv(m, bm), triton.cdiv(kc, bj))
    _ss1_sketch_kernel[grid](
        x, xs, phases, m, kc, count,
        x.stride(0), x.stride(1), xs.stride(0), xs.stride(1),
        plan.r0m, plan.r1m,
        R=lay.compression, BK=lay.block_k, VEC=lay.vec, D=plan.d, BM=bm, BJ=bj, **_launch_kw(cfg),
    )
    return xs[0] if single else xs


def _unsketch(g: torch.Tensor, plan: _Plan, phases: torch.Tensor) -> torch.Tensor:
    """dX (M, padded_in): the sketch's transpose applied to G (P, M, K/R), one slot per phase."""
    lay = plan.layout
    m = g.shape[1]
    k = lay.padded_in
    dx = torch.empty(m, k, device=g.device, dtype=g.dtype)
    bm, bx = min(32, _pow2_at_least(m)), min(128, _pow2_at_least(k))
    _ss1_unsketch_kernel[(triton.cdiv(m, bm), triton.cdiv(k, bx))](
        g, dx, phases, m, k, g.shape[0],
        g.stride(0), g.stride(1), dx.stride(0),
        plan.r0m, plan.r1m,
        R=lay.compression, BK=lay.block_k, VEC=lay.vec, D=plan.d, BM=bm, BX=bx, num_warps=4,
    )
    return dx


def _rotate_rows(src: torch.Tensor, plan: _Plan, sign: int) -> torch.Tensor:
    """Wr from Wc (sign 1) or dWc from dWr (sign -1): per-row rotation of every BK-wide slice."""
    n, kc = src.shape
    dst = torch.empty(n, kc, device=src.device, dtype=src.dtype)
    br, bj = 32, min(128, _pow2_at_least(kc))
    _ss1_rotate_rows_kernel[(triton.cdiv(n, br), triton.cdiv(kc, bj))](
        src, dst, plan.row_shift, n, kc, src.stride(0), dst.stride(0),
        SIGN=sign, BK=plan.layout.block_k, BR=br, BJ=bj, num_warps=4,
    )
    return dst


def _derived_weight(weight: torch.Tensor, plan: _Plan, kind: str, make) -> torch.Tensor:
    """A tensor derived from the weight (``make(weight, plan)``), cached per weight tensor and version.

    Inference reuses it; a training step re-derives it once after each optimizer update (about
    N*K/R*4 bytes of traffic). Never cached inside CUDA graph capture, where a replay must derive
    it from the then-current weight.
    """
    capturing = weight.is_cuda and torch.cuda.is_current_stream_capturing()
    try:
        version = weight._version
    except RuntimeError:  # inference-mode tensors have no version counter
        version = None
    key = (kind, weight.data_ptr())
    entry = plan.weight_cache.get(key)
    if entry is not None and not capturing and version is not None:
        ref, ver, derived = entry
        if ref() is weight and ver == version and derived.dtype == weight.dtype:
            return derived
    derived = make(weight, plan)
    if not capturing and version is not None:
        cache = plan.weight_cache

        def forget(ref, key=key):  # the weight is gone: free its derived copy with it
            if key in cache and cache[key][0] is ref:
                del cache[key]

        cache[key] = (weakref.ref(weight, forget), version, derived)
    return derived


def _phase_ordered_weight(weight: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """Wp = Wc[rows] (N, K/R): each phase's rows contiguous, so TMA can load them as plain boxes."""
    return _derived_weight(weight, plan, "phase_ordered", lambda w, pl: w.index_select(0, pl.rows_long))


def _rotated_weight(weight: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """Wr (N, K/R) with y = S0 @ Wr^T + b (see ``_Plan``): one dense GEMM for the whole layer."""
    return _derived_weight(weight, plan, "rotated", lambda w, pl: _rotate_rows(w, pl, 1))


def _no_autocast(device: torch.device):
    """The library GEMMs of ``gemm`` mode run in the inputs' dtype, whatever autocast says."""
    return torch.autocast(device.type, enabled=False)


def _forward_gemm(x: torch.Tensor, weight: torch.Tensor, bias, plan: _Plan, keep: Optional[list]):
    """``gemm`` mode: S0 = phase-0 sketch (M, K/R), then one library GEMM S0 @ Wr^T + b."""
    s0 = _sketch(x, plan, single=True)
    if keep is not None:
        keep.append(s0)
    with _no_autocast(x.device):
        return torch.nn.functional.linear(s0, _rotated_weight(weight, plan), bias)


def _forward_tma(cfg: dict, xs: torch.Tensor, weight: torch.Tensor, bias, plan: _Plan, y: torch.Tensor):
    """Sketch-mode GEMM with TMA descriptors (Xs as (P*M, K/R); the phase-ordered weight)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    p, m, kc = xs.shape
    wp = _phase_ordered_weight(weight, plan)
    a_desc = TensorDescriptor.from_tensor(xs.view(p * m, kc), [cfg["BM"], cfg["BKT"]])
    w_desc = TensorDescriptor.from_tensor(wp, [cfg["BN"], cfg["BKT"]])
    tiles, num_tiles = plan.tiles(cfg["BN"])
    total = triton.cdiv(m, cfg["BM"]) * num_tiles
    persistent = int(cfg.get("PERSISTENT", 0))  # programs per SM; 0: one program per tile
    progs = total if persistent == 0 else min(total, persistent * _num_sms(xs.device))
    _ss1_fwd_tma_kernel[(progs,)](
        a_desc, w_desc, bias if bias is not None else weight, y, plan.rows, tiles,
        m, kc, num_tiles, progs, y.stride(0), y.stride(1),
        HAS_BIAS=bias is not None, EVEN_N=plan.even(cfg["BN"]), ROW_HINT=plan.row_hint(cfg["BN"]),
        IEEE=_ieee(xs.dtype), BM=cfg["BM"], BN=cfg["BN"], BKT=cfg["BKT"], GROUP_M=cfg["GROUP_M"],
        FLATTEN=bool(cfg.get("FLATTEN", 0)), **_launch_kw(cfg),
    )
    return y


def _forward_resident(cfg: dict, x: torch.Tensor, weight: torch.Tensor, bias, plan: _Plan, y: torch.Tensor):
    lay = plan.layout
    m = x.shape[0]
    kc = lay.compressed_in
    kcp = _pow2_at_least(kc)
    groups, num_groups = plan.tiles(cfg["BN"], int(cfg.get("TILES", 1)))
    _ss1_fwd_resident_kernel[(triton.cdiv(m, cfg["BM"]) * num_groups,)](
        x, weight, bias if bias is not None else weight, y, plan.rows, groups,
        m, kc, num_groups,
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), y.stride(0), y.stride(1),
        plan.r0m, plan.r1m,
        R=lay.compression, BK=lay.block_k, VEC=lay.vec, D=plan.d,
        HAS_BIAS=bias is not None, EVEN_N=plan.even(cfg["BN"]), EVEN_K=kc == kcp,
        ROW_HINT=plan.row_hint(cfg["BN"]), IEEE=_ieee(x.dtype),
        BM=cfg["BM"], BN=cfg["BN"], KCP=kcp, **_launch_kw(cfg),
    )
    return y


@functools.lru_cache(maxsize=8)
def _num_sms(device: torch.device) -> int:
    if device.type != "cuda":
        return 4  # the interpreter: a few programs, so the persistent loop runs several tiles each
    return torch.cuda.get_device_properties(device).multi_processor_count


FWD_MODES = ("gemm", "sketch", "fused", "resident", "tma")


def _forward_with(cfg: dict, x, weight, bias, plan: _Plan, xs: Optional[torch.Tensor] = None,
                  keep: Optional[list] = None) -> torch.Tensor:
    """One forward (one to three launches); ``keep`` receives the sketch (Xs, or S0 in gemm mode)
    when one was made; ``xs`` (phase modes) reuses a sketch already made."""
    lay = plan.layout
    m = x.shape[0]
    kc = lay.compressed_in
    mode = cfg["mode"]
    if mode not in FWD_MODES:
        raise ValueError(f"ss1 forward config: unknown mode {mode!r}; valid: {FWD_MODES}")
    cfg = _clamp(cfg, BM=m, BN=max(plan.counts), BKT=kc)
    if mode == "gemm":
        return _forward_gemm(x, weight, bias, plan, keep)
    y = torch.empty(m, lay.out_features, device=x.device, dtype=x.dtype)
    if mode == "resident":
        return _forward_resident(cfg, x, weight, bias, plan, y)
    fused = mode == "fused"
    if fused:
        a, stride_am, stride_ak, stride_ap = x, x.stride(0), x.stride(1), 0
    else:
        a = xs if xs is not None else _sketch(x, plan)
        stride_am, stride_ak, stride_ap = a.stride(1), a.stride(2), a.stride(0)
        if keep is not None:
            keep.append(a)
        if mode == "tma":
            return _forward_tma(cfg, a, weight, bias, plan, y)
    tiles, num_tiles = plan.tiles(cfg["BN"])
    # split K/R only into whole BKT steps, and never into empty splits
    split = max(1, min(int(cfg.get("SPLIT_K", 1)), kc // cfg["BKT"]))
    k_per = triton.cdiv(triton.cdiv(kc, split), cfg["BKT"]) * cfg["BKT"]
    split = triton.cdiv(kc, k_per)
    n = lay.out_features
    part = torch.empty(split, m, n, device=x.device, dtype=torch.float32) if split > 1 else y
    grid = (triton.cdiv(m, cfg["BM"]) * num_tiles, split)
    _ss1_fwd_kernel[grid](
        a, weight, bias if bias is not None else weight, y, part, plan.rows, tiles,
        m, n, kc, num_tiles, k_per,
        stride_am, stride_ak, stride_ap, weight.stride(0), weight.stride(1), y.stride(0), y.stride(1),
        plan.r0m, plan.r1m,
        # R, D, BK, VEC matter only when fused: fixed otherwise so one binary serves every R.
        FUSED=fused, R=lay.compression if fused else 1, BK=lay.block_k if fused else 1,
        VEC=lay.vec if fused else 1, D=plan.d if fused else 1,
        HAS_BIAS=bias is not None, EVEN_N=plan.even(cfg["BN"]), EVEN_K=kc % cfg["BKT"] == 0,
        ROW_HINT=plan.row_hint(cfg["BN"]), IEEE=_ieee(x.dtype), SPLIT_K=split,
        BM=cfg["BM"], BN=cfg["BN"], BKT=cfg["BKT"], GROUP_M=cfg["GROUP_M"], **_launch_kw(cfg),
    )
    if split > 1:
        if not y.is_contiguous():
            raise ValueError("ss1 split-K forward needs a contiguous output")
        block = 1024
        _ss1_splitk_reduce_kernel[(triton.cdiv(m * n, block),)](
            part, bias if bias is not None else weight, y, m, n,
            SPLIT_K=split, HAS_BIAS=bias is not None, BLOCK=block, num_warps=4,
        )
    return y


def _dgrad_with(cfg: dict, dy, weight, plan: _Plan) -> torch.Tensor:
    """dX (M, padded_in) from dY via G (P, M, K/R) and the unsketch; ``gemm`` mode: G = dY @ Wr
    (M, K/R) by the library GEMM and the phase-0 unsketch (a pure gather)."""
    lay = plan.layout
    m = dy.shape[0]
    kc = lay.compressed_in
    if cfg.get("mode") == "gemm":
        with _no_autocast(dy.device):
            g = torch.mm(dy, _rotated_weight(weight, plan))
        return _unsketch(g.unsqueeze(0), plan, plan.phase0)
    cfg = _clamp(cfg, BM=m, BJ=kc, BR=max(plan.counts))
    g = torch.empty(plan.num_phases, m, kc, device=dy.device, dtype=dy.dtype)
    grid = (triton.cdiv(m, cfg["BM"]) * triton.cdiv(kc, cfg["BJ"]), plan.num_phases)
    tma = bool(cfg.get("TMA", 0))
    wp_desc = weight
    if tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        wp_desc = TensorDescriptor.from_tensor(_phase_ordered_weight(weight, plan), [cfg["BR"], cfg["BJ"]])
    _ss1_dgrad_kernel[grid](
        dy, weight, wp_desc, g, plan.rows, plan.regions,
        m, kc,
        dy.stride(0), dy.stride(1), weight.stride(0), weight.stride(1), g.stride(0), g.stride(1),
        ROW_HINT=plan.row_hint(cfg["BR"]), EVEN_R=plan.even(cfg["BR"]), EVEN_J=kc % cfg["BJ"] == 0,
        IEEE=_ieee(dy.dtype), TMA_B=tma,
        BM=cfg["BM"], BJ=cfg["BJ"], BR=cfg["BR"], GROUP_M=cfg["GROUP_M"], **_launch_kw(cfg),
    )
    return _unsketch(g, plan, plan.phases)


def _wgrad_gemm(dy: torch.Tensor, s0: torch.Tensor, plan: _Plan) -> torch.Tensor:
    """dWc from the phase-0 sketch S0 (M, K/R): dWr = dY^T @ S0 by the library GEMM, rotated back."""
    with _no_autocast(dy.device):
        dwr = torch.mm(dy.t(), s0)
    return _rotate_rows(dwr, plan, -1)


def _wgrad_from_x(cfg: dict, dy, x, weight, plan: _Plan) -> torch.Tensor:
    """Weight gradient when the forward kept only X: sketch it the way the config's mode reads it."""
    if cfg.get("mode") == "gemm":
        return _wgrad_gemm(dy, _sketch(x, plan, single=True), plan)
    return _wgrad_with(cfg, dy, _sketch(x, plan), weight, plan)


def _wgrad_with(cfg: dict, dy, xs, weight, plan: _Plan) -> torch.Tensor:
    """dWc from the per-phase sketches Xs (P, M, K/R) (the forward's phase modes keep them)."""
    lay = plan.layout
    m = dy.shape[0]
    kc = lay.compressed_in
    cfg = _clamp(cfg, BN=max(plan.counts), BJ=kc, BR=m)
    dw = torch.empty_like(weight, memory_format=torch.contiguous_format)
    tiles, num_tiles = plan.tiles(cfg["BN"])
    grid = (num_tiles * triton.cdiv(kc, cfg["BJ"]),)
    tma = bool(cfg.get("TMA", 0))
    xs_desc = xs
    if tma:
        from triton.tools.tensor_descriptor import TensorDescriptor

        xs_desc = TensorDescriptor.from_tensor(xs.view(-1, kc), [cfg["BR"], cfg["BJ"]])
    _ss1_wgrad_kernel[grid](
        dy, xs, xs_desc, dw, plan.rows, tiles,
        m, kc, num_tiles,
        dy.stride(0), dy.stride(1), xs.stride(0), xs.stride(1), dw.stride(0),
        ROW_HINT=plan.row_hint(cfg["BN"]), EVEN_N=plan.even(cfg["BN"]), IEEE=_ieee(dy.dtype), TMA_B=tma,
        BN=cfg["BN"], BJ=cfg["BJ"], BR=cfg["BR"], GROUP_M=cfg["GROUP_M"], **_launch_kw(cfg),
    )
    return dw


def _check_size(plan: _Plan, m: int) -> None:
    """The sketch/gradient buffers (P, M, K/R) are indexed per phase with 32-bit offsets."""
    if plan.num_phases * m * plan.layout.compressed_in >= 2**31:
        raise ValueError(
            f"ss1 triton: M={m} is too large for one call (phases*M*K/R must stay below 2**31); "
            "split the batch into smaller chunks"
        )


def _key(plan: _Plan, m: int, dtype: torch.dtype, extra: str = "") -> str:
    lay = plan.layout
    kind = "fp32" if dtype == torch.float32 else "16bit"  # fp16 and bf16 run at the same speed
    return (f"{kind}|M{_m_bucket(m)}|N{lay.out_features}|K{lay.padded_in}"
            f"|R{lay.compression}|bk{lay.block_k}bn{lay.block_n}v{lay.vec}|P{plan.num_phases}{extra}")


def _check_inputs(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], meta: List[int]):
    if x.dim() != 2:
        raise ValueError(f"ss1 triton: x must be 2-D (M, padded_in), got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"ss1 triton: dtype must be float16, bfloat16 or float32, got {x.dtype}")
    if weight.dtype != x.dtype or (bias is not None and bias.dtype != x.dtype):
        raise ValueError(f"ss1 triton: weight/bias dtype must equal the input's {x.dtype}")
    n, r = meta[0], meta[1]
    if weight.shape != (n, x.shape[1] // r) or x.shape[1] % (r * meta[2]):
        raise ValueError(f"ss1 triton: weight shape {tuple(weight.shape)} does not fit input "
                         f"{tuple(x.shape)} with out_features={n}, compression={r}, block_k={meta[2]}")


# ==========================================================================================
# Custom ops (opaque to torch.compile; fake impls give shapes; autograd registered)
# ==========================================================================================
def _forward_impl(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], meta: List[int],
                  keep: Optional[list] = None) -> torch.Tensor:
    _check_inputs(x, weight, bias, meta)
    plan = plan_for(meta, x.shape[1], x.device)
    m = x.shape[0]
    if m == 0:
        return x.new_empty(0, meta[0])
    _check_size(plan, m)
    cfg = _choose("fwd", x, _key(plan, m, x.dtype, f"|b{int(bias is not None)}"), m,
                  lambda c: _forward_with(c, x, weight, bias, plan), plan)
    return _forward_with(cfg, x, weight, bias, plan, keep=keep)


def _backward_impl(dy: torch.Tensor, x: Optional[torch.Tensor], weight: torch.Tensor, meta: List[int],
                   needs: List[int], xs: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
    """Gradients; the weight gradient reads the sketch ``xs`` if the forward kept it, else sketches ``x``."""
    padded_in = weight.shape[1] * meta[1]
    plan = plan_for(meta, padded_in, dy.device)
    m = dy.shape[0]
    _check_size(plan, m)
    dy = dy if dy.stride(-1) == 1 else dy.contiguous()
    empty = dy.new_empty(0)
    dx = dw = db = empty
    if m == 0:
        return [dy.new_zeros(0, padded_in) if needs[0] else empty,
                torch.zeros_like(weight) if needs[1] else empty,
                dy.new_zeros(meta[0]) if needs[2] else empty]
    if needs[0]:
        cfg = _choose("dgrad", dy, _key(plan, m, dy.dtype), m, lambda c: _dgrad_with(c, dy, weight, plan), plan)
        dx = _dgrad_with(cfg, dy, weight, plan)
    if needs[1]:
        if xs is not None and xs.dim() == 2:  # the forward ran in gemm mode and kept S0
            dw = _wgrad_gemm(dy, xs, plan)
        elif xs is not None:  # a phase mode kept Xs (P, M, K/R)
            cfg = _choose("wgrad", dy, _key(plan, m, dy.dtype, "|xs"), m,
                          lambda c: _wgrad_with(c, dy, xs, weight, plan), plan, modes=("phase",))
            dw = _wgrad_with(cfg, dy, xs, weight, plan)
        else:  # only X: either mode, tuned
            cfg = _choose("wgrad", dy, _key(plan, m, dy.dtype, "|x"), m,
                          lambda c: _wgrad_from_x(c, dy, x, weight, plan), plan)
            dw = _wgrad_from_x(cfg, dy, x, weight, plan)
    if needs[2]:
        db = dy.sum(0, dtype=torch.float32).to(dy.dtype)
    return [dx, dw, db]


@torch.library.custom_op("flyweight::ss1_forward", mutates_args=())
def ss1_forward(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], meta: List[int]) -> torch.Tensor:
    """y = x W^T + b for the SS1 weight; x (M, padded_in), weight (N, padded_in / R)."""
    return _forward_impl(x, weight, bias, meta)


@ss1_forward.register_fake
def _(x, weight, bias, meta):
    return x.new_empty(x.shape[0], meta[0])


@torch.library.custom_op("flyweight::ss1_backward", mutates_args=())
def ss1_backward(
    dy: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, meta: List[int], needs: List[int]
) -> List[torch.Tensor]:
    """(dX, dWc, db) for needs = [dx?, dw?, db?]; a gradient not needed comes back empty (numel 0)."""
    return _backward_impl(dy, x, weight, meta, needs)


@ss1_backward.register_fake
def _(dy, x, weight, meta, needs):
    return [x.new_empty(x.shape) if needs[0] else x.new_empty(0),
            weight.new_empty(weight.shape) if needs[1] else x.new_empty(0),
            x.new_empty(meta[0]) if needs[2] else x.new_empty(0)]


def _setup_context(ctx, inputs, output):
    x, weight, bias, meta = inputs
    ctx.save_for_backward(x, weight)
    ctx.meta = list(meta)
    ctx.has_bias = bias is not None


def _needs(ctx) -> List[int]:
    need_x, need_w, need_b = ctx.needs_input_grad[:3]
    return [int(need_x), int(need_w), int(need_b and ctx.has_bias)]


def _backward(ctx, dy):
    x, weight = ctx.saved_tensors
    needs = _needs(ctx)
    dx, dw, db = ss1_backward(dy, x, weight, ctx.meta, needs)
    return (dx if needs[0] else None, dw if needs[1] else None, db if needs[2] else None, None)


ss1_forward.register_autograd(_backward, setup_context=_setup_context)


EAGER_FAST_PATH = True  # False: eager calls go through the registered custom ops too (checks use it)


class _SS1Eager(torch.autograd.Function):
    """The same kernels without the custom-op dispatch (eager mode: about 30 us less per call).

    When the forward made a sketch (S0 in gemm mode: 1/R of X; Xs in the phase modes) no larger
    than X, the sketch is saved instead of X: the weight gradient needs only it, the input
    gradient neither.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, meta, weight_grad_wanted):
        # (grad mode is off inside forward: the caller says whether a weight gradient may follow)
        keep = [] if weight_grad_wanted else None
        y = _forward_impl(x, weight, bias, meta, keep=keep)
        ctx.meta = list(meta)
        ctx.has_bias = bias is not None
        ctx.kept_sketch = bool(keep) and keep[0].numel() <= x.numel()
        ctx.save_for_backward(keep[0] if ctx.kept_sketch else x, weight)
        return y

    @staticmethod
    def backward(ctx, dy):
        saved, weight = ctx.saved_tensors
        needs = _needs(ctx)
        x, xs = (None, saved) if ctx.kept_sketch else (saved, None)
        dx, dw, db = _backward_impl(dy, x, weight, ctx.meta, needs, xs=xs)
        return (dx if needs[0] else None, dw if needs[1] else None, db if needs[2] else None, None, None)


def ss1_linear_triton(x2d: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                      layout: SS1Layout) -> torch.Tensor:
    """The Triton SS1 forward (differentiable) for x of shape (M, padded_in).

    Under torch.compile the registered custom op is traced (opaque, with its fake impl); in eager
    mode an autograd.Function calls the same implementation directly.
    """
    meta = meta_of(layout)
    if torch.compiler.is_compiling() or not EAGER_FAST_PATH:
        return ss1_forward(x2d, weight, bias, meta)
    return _SS1Eager.apply(x2d, weight, bias, meta, torch.is_grad_enabled() and weight.requires_grad)
