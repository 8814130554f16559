"""The Monarch kernels that interleave the b blocks in registers, and the fused inference forward
(``@triton.jit`` only; the notation, the strided kernels and the tile helpers shared with them are
``kernels.py``'s).

* ``second_joined`` (b in {2, 4, 8}): the output tile of ``second`` written as contiguous rows, the b
  block products joined in registers (``tl.join``).
* ``dmid_joined`` / ``dw2_joined`` (b in {2, 4}): dY read in contiguous tiles and split into its b blocks
  in registers (``tl.split``).
* ``fused``: the inference forward in one kernel, H kept on chip (b dividing r).
"""

import triton
import triton.language as tl

from flyweight.kernels.monarch.kernels import (
    _first_product,
    _plane_product,
    _split_rows,
    _store_output,
    _tile_ids,
    _tile_range,
)


@triton.jit
def _joined_planes(h_ptr, w2_ptr, la, lb, offs_m, m_mask, offs_s, s_mask, R,
                   stride_hl, stride_hm, stride_w2l, stride_w2s,
                   BM: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr):
    """The products of blocks la and lb (``_plane_product``) joined on a new last axis: (BM, BS, 2)."""
    return tl.join(_plane_product(h_ptr, w2_ptr, la, offs_m, m_mask, offs_s, s_mask, R,
                                  stride_hl, stride_hm, stride_w2l, stride_w2s, BM, BS, BK),
                   _plane_product(h_ptr, w2_ptr, lb, offs_m, m_mask, offs_s, s_mask, R,
                                  stride_hl, stride_hm, stride_w2l, stride_w2s, BM, BS, BK))


@triton.jit
def monarch_second_joined_kernel(
    h_ptr, w2_ptr, bias_ptr, y_ptr,
    M, N, P_OUT, R,
    stride_hl, stride_hm, stride_w2l, stride_w2s, stride_ym,
    M_BUCKET,
    NB: tl.constexpr, HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    """``second`` for b in {2, 4, 8} with the output tile written contiguously.

    One program computes BN // b outputs s of every block l (b products on chip) and interleaves
    them in registers with ``tl.join`` so that column s*b + l lands where Y stores it: BN contiguous
    columns per row instead of one element every b columns. Join order: the outermost join splits
    by the lowest bit of l, so the reshape's flat index is s*b + l.
    """
    BS: tl.constexpr = BN // NB
    pid = tl.program_id(0)
    n_s = tl.cdiv(P_OUT, BS)
    s_tile = pid % n_s
    m_tile = pid // n_s
    offs_m, m_mask = _tile_range(m_tile, BM, M)
    offs_s, s_mask = _tile_range(s_tile, BS, P_OUT)
    # the b block products of this tile (same operands but for the block index l)
    if NB == 2:
        out = _joined_planes(h_ptr, w2_ptr, 0, 1, offs_m, m_mask, offs_s, s_mask, R,
                             stride_hl, stride_hm, stride_w2l, stride_w2s, BM, BS, BK)
    elif NB == 4:
        even = _joined_planes(h_ptr, w2_ptr, 0, 2, offs_m, m_mask, offs_s, s_mask, R,
                              stride_hl, stride_hm, stride_w2l, stride_w2s, BM, BS, BK)
        odd = _joined_planes(h_ptr, w2_ptr, 1, 3, offs_m, m_mask, offs_s, s_mask, R,
                             stride_hl, stride_hm, stride_w2l, stride_w2s, BM, BS, BK)
        out = tl.join(even, odd)
    else:
        e0 = _joined_planes(h_ptr, w2_ptr, 0, 4, offs_m, m_mask, offs_s, s_mask, R,
                            stride_hl, stride_hm, stride_w2l, stride_w2s, BM, BS, BK)
        e1 = _joined_planes(h_ptr, w2_ptr, 2, 6, offs_m, m_mask, offs_s, s_mask, R,
                            stride_hl, stride_hm, stride_w2l, stride_w2s, BM, BS, BK)
        o0 = _joined_planes(h_ptr, w2_ptr, 1, 5, offs_m, m_mask, offs_s, s_mask, R,
                            stride_hl, stride_hm, stride_w2l, stride_w2s, BM, BS, BK)
        o1 = _joined_planes(h_ptr, w2_ptr, 3, 7, offs_m, m_mask, offs_s, s_mask, R,
                            stride_hl, stride_hm, stride_w2l, stride_w2s, BM, BS, BK)
        out = tl.join(tl.join(e0, e1), tl.join(o0, o1))
    out = tl.reshape(out, (BM, BN))
    offs_n, n_mask = _tile_range(s_tile, BN, N)  # offs_n = s*b + l over the tile's outputs
    _store_output(out, y_ptr, bias_ptr, offs_m, m_mask, offs_n, n_mask, stride_ym, HAS_BIAS)


@triton.jit
def _split_blocks(t, ROWS: tl.constexpr, BS: tl.constexpr, NB: tl.constexpr):
    """t (ROWS, BS*NB) with column s*NB + l -> its NB column sets (ROWS, BS), l = 0..NB-1 (NB in {2, 4});
    the inverse of the joins in ``monarch_second_joined_kernel``. For NB = 2 the last two are zeros."""
    if NB == 2:
        a0, a1 = tl.split(tl.reshape(t, (ROWS, BS, 2)))
        a2 = tl.zeros_like(a0)
        a3 = tl.zeros_like(a0)
    else:
        even, odd = tl.split(tl.reshape(t, (ROWS, BS, 2, 2)))  # split the lowest bit of l
        a0, a2 = tl.split(even)
        a1, a3 = tl.split(odd)
    return a0, a1, a2, a3


@triton.jit
def monarch_dmid_joined_kernel(
    dy_ptr, w2_ptr, dh_ptr,
    M, N, P_OUT, R,
    stride_dym, stride_w2l, stride_w2s, stride_hl, stride_hm,
    M_BUCKET,
    NB: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    """``dmid`` for b in {2, 4}: dY read in contiguous (BM, BK) tiles and split into its b blocks in
    registers (every block's columns are one in b), all b planes of dH accumulated by one program."""
    BS: tl.constexpr = BK // NB
    pid = tl.program_id(0)
    n_j = tl.cdiv(R, BN)
    j_tile = pid % n_j
    m_tile = pid // n_j
    offs_m, m_mask = _tile_range(m_tile, BM, M)
    offs_j, j_mask = _tile_range(j_tile, BN, R)
    dy_rows = dy_ptr + offs_m[:, None].to(tl.int64) * stride_dym
    acc0 = tl.zeros((BM, BN), dtype=tl.float32)
    acc1 = tl.zeros((BM, BN), dtype=tl.float32)
    acc2 = tl.zeros((BM, BN), dtype=tl.float32)
    acc3 = tl.zeros((BM, BN), dtype=tl.float32)
    for c0 in range(0, P_OUT * NB, BK):
        offs_c = c0 + tl.arange(0, BK)  # output columns s*b + l
        t = tl.load(dy_rows + offs_c[None, :], mask=m_mask[:, None] & (offs_c < N)[None, :], other=0.0)
        a0, a1, a2, a3 = _split_blocks(t, BM, BS, NB)
        offs_s = c0 // NB + tl.arange(0, BS)
        w_mask = (offs_s < P_OUT)[:, None] & j_mask[None, :]
        w_base = w2_ptr + offs_s[:, None] * stride_w2s + offs_j[None, :]
        acc0 = tl.dot(a0, tl.load(w_base, mask=w_mask, other=0.0), acc0)
        acc1 = tl.dot(a1, tl.load(w_base + stride_w2l, mask=w_mask, other=0.0), acc1)
        if NB == 4:
            acc2 = tl.dot(a2, tl.load(w_base + 2 * stride_w2l, mask=w_mask, other=0.0), acc2)
            acc3 = tl.dot(a3, tl.load(w_base + 3 * stride_w2l, mask=w_mask, other=0.0), acc3)
    out = dh_ptr + offs_m[:, None].to(tl.int64) * stride_hm + offs_j[None, :]
    mask = m_mask[:, None] & j_mask[None, :]
    ty = dh_ptr.dtype.element_ty
    tl.store(out, acc0.to(ty), mask=mask)
    tl.store(out + stride_hl, acc1.to(ty), mask=mask)
    if NB == 4:
        tl.store(out + 2 * stride_hl, acc2.to(ty), mask=mask)
        tl.store(out + 3 * stride_hl, acc3.to(ty), mask=mask)


@triton.jit
def monarch_dw2_joined_kernel(
    dy_ptr, h_ptr, part_ptr, dbias_ptr,
    M, N, P_OUT, R, M_PER_SPLIT,
    stride_dym, stride_hl, stride_hm, stride_ps, stride_bs,
    M_BUCKET,
    NB: tl.constexpr, HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    """``dw2`` for b in {2, 4}: a program owns BM contiguous output columns (BM // b outputs s of every
    block) and BN middle columns j; dY is read in contiguous (BK, BM) tiles and split into its blocks."""
    BS: tl.constexpr = BM // NB
    pid = tl.program_id(0)
    split = tl.program_id(1)
    n_j = tl.cdiv(R, BN)
    j_tile = pid % n_j
    c_tile = pid // n_j
    offs_c, c_mask = _tile_range(c_tile, BM, N)  # output columns s*b + l
    offs_s = c_tile * BS + tl.arange(0, BS)
    offs_j, j_mask = _tile_range(j_tile, BN, R)
    m_start, m_end = _split_rows(split, M_PER_SPLIT, M)
    # accumulated transposed, dW2[l]^T (BN x BS) = H[l]^T dY_l: the dot's M side is then BN (>= 64),
    # which Hopper's warp-group MMA needs; BS (= BM / b) may be 32
    acc0 = tl.zeros((BN, BS), dtype=tl.float32)
    acc1 = tl.zeros((BN, BS), dtype=tl.float32)
    acc2 = tl.zeros((BN, BS), dtype=tl.float32)
    acc3 = tl.zeros((BN, BS), dtype=tl.float32)
    db = tl.zeros((BM,), dtype=tl.float32)
    for m0 in range(m_start, m_end, BK):
        offs_m = m0 + tl.arange(0, BK)
        m_mask = offs_m < m_end
        t = tl.load(dy_ptr + offs_m[:, None].to(tl.int64) * stride_dym + offs_c[None, :],
                    mask=m_mask[:, None] & c_mask[None, :], other=0.0)
        if HAS_BIAS:
            db += tl.sum(t.to(tl.float32), axis=0)
        a0, a1, a2, a3 = _split_blocks(t, BK, BS, NB)
        h_base = h_ptr + offs_m[:, None].to(tl.int64) * stride_hm + offs_j[None, :]
        h_mask = m_mask[:, None] & j_mask[None, :]
        acc0 = tl.dot(tl.trans(tl.load(h_base, mask=h_mask, other=0.0)), a0, acc0)
        acc1 = tl.dot(tl.trans(tl.load(h_base + stride_hl, mask=h_mask, other=0.0)), a1, acc1)
        if NB == 4:
            acc2 = tl.dot(tl.trans(tl.load(h_base + 2 * stride_hl, mask=h_mask, other=0.0)), a2, acc2)
            acc3 = tl.dot(tl.trans(tl.load(h_base + 3 * stride_hl, mask=h_mask, other=0.0)), a3, acc3)
    out = part_ptr + split.to(tl.int64) * stride_ps + offs_s[None, :] * R + offs_j[:, None]
    mask = j_mask[:, None] & (offs_s < P_OUT)[None, :]
    plane = P_OUT * R  # dW2 is (b, p_out, r)
    tl.store(out, acc0, mask=mask)
    tl.store(out + plane, acc1, mask=mask)
    if NB == 4:
        tl.store(out + 2 * plane, acc2, mask=mask)
        tl.store(out + 3 * plane, acc3, mask=mask)
    if HAS_BIAS:
        if j_tile == 0:
            tl.store(dbias_ptr + split.to(tl.int64) * stride_bs + offs_c, db, mask=c_mask)


@triton.jit
def monarch_fused_kernel(
    x_ptr, w1_ptr, w2_ptr, bias_ptr, y_ptr,
    M, K, N, P_IN, P_OUT, R, RB,
    stride_xm, stride_w1k, stride_w1t, stride_w2l, stride_w2s, stride_ym,
    M_BUCKET,
    NB: tl.constexpr, RBP: tl.constexpr, HAS_BIAS: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    """Both products in one program, the intermediate never leaves the chip (forward without grad).

    Needs b | r, RB = r / b. Block l of the second product reads middle columns j = k*RB + q, which
    the first product's block k computes from its W1 rows t = l + b*q (q < RB). So

        Y[m, s*b + l] = sum_k (X_k W1[k, l + b*q]^T)[m, q] . W2[l, s, k*RB + q]

    a chain of two small GEMMs per k, like attention's P.V: P (BM x RBP, RB padded to a power of
    two) is rounded to the input dtype (as H is in the two-kernel path) and fed straight into the
    second dot. A program owns (row tile, l, BN outputs s); the first product is recomputed once per
    output tile, cdiv(p_out, BN) times in all.
    """
    pid = tl.program_id(0)
    l, s_tile, m_tile = _tile_ids(pid, NB, tl.cdiv(P_OUT, BN))
    offs_m, m_mask = _tile_range(m_tile, BM, M)
    offs_s, s_mask = _tile_range(s_tile, BN, P_OUT)
    offs_q = tl.arange(0, RBP)
    q_mask = offs_q < RB
    rows = l + NB * offs_q  # W1 rows of block k that feed block l
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, NB):
        w_cols = w1_ptr + k * stride_w1k + rows[None, :] * stride_w1t
        p = _first_product(x_rows, w_cols, k, m_mask, q_mask, P_IN, K, BM, RBP, BK)
        w2 = tl.load(w2_ptr + l * stride_w2l + offs_s[None, :] * stride_w2s + (k * RB + offs_q)[:, None],
                     mask=q_mask[:, None] & s_mask[None, :], other=0.0)
        acc = tl.dot(p.to(w2_ptr.dtype.element_ty), w2, acc)
    n = offs_s * NB + l
    _store_output(acc, y_ptr, bias_ptr, offs_m, m_mask, n, s_mask & (n < N), stride_ym, HAS_BIAS)
