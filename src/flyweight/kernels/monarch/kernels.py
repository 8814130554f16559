"""The Monarch Triton kernels, one block per program (``@triton.jit`` only; ``op.py`` checks, allocates and
launches). The variants that interleave the b blocks in registers, and the fused forward, are
``joined_kernels.py``.

Notation of ``layout.py``: X (M, K), W1 (b, r, p_in), W2 (b, p_out, r), the intermediate as planes
H (b, M, r) with H[l, m, j] = h[m, j*b + l], Y (M, N) with Y[m, s*b + l]. ``tab`` is the (3, b, r)
slot table (W1 row, plane, column of slot u of block k). Every kernel is a tiled GEMM with fp32
accumulation whose index maps carry the Monarch permutations, so no permuted copy of any tensor is
ever written:

* ``first``:   H[plane, m, col] = X[m, k*p_in + i] . W1[k, row, i]       (per block k)
* ``second``:  Y[m, s*b + l]    = H[l, m, j] . W2[l, s, j] (+ bias)       (per block l)
* ``dmid``:    dH[l, m, j]      = dY[m, s*b + l] . W2[l, s, j]
* ``dinput``:  dX[m, k*p_in+i]  = dH[plane, m, col] . W1[k, row, i]
* ``dw1``:     dW1[k, row, i]   = sum over a slice of m of dH[plane, m, col] X[m, k*p_in + i]
* ``dw2``:     dW2[l, s, j]     = sum over a slice of m of dY[m, s*b + l] H[l, m, j]  (+ db partial)

The weight gradients reduce over M; each program sums one slice of rows (``M_PER_SPLIT``) into an
fp32 partial, and the host adds the partials (deterministic, no atomics). Input columns at or past K
(a padded layer) and output columns at or past N read as zero, so no padded copy of X or dY exists.

Programs are numbered so that those sharing an operand tile run next to each other: the b
programs of ``second`` that write interleaved columns of one Y tile are consecutive, so the
stride-b stores of each meet in L2 before they reach memory.
"""

import triton
import triton.language as tl


@triton.jit
def _slot_offsets(plane, col, stride_hl, SLOT_VEC: tl.constexpr):
    """Offsets plane*stride_hl + col of a run of slots in H. With SLOT_VEC > 1 the host has checked that
    b divides r and r/b is a multiple of SLOT_VEC: then every aligned group of SLOT_VEC slots lies in
    one plane with consecutive columns, and telling the compiler so lets it vectorise the accesses."""
    off = plane.to(tl.int64) * stride_hl + col
    if SLOT_VEC > 1:
        off = tl.max_contiguous(tl.multiple_of(off, SLOT_VEC), SLOT_VEC)
    return off


@triton.jit
def _tile_ids(pid, n_inner, n_mid):
    """(inner, middle, outer) tile coordinates of program ``pid``, the inner one numbered fastest."""
    return pid % n_inner, (pid // n_inner) % n_mid, pid // (n_inner * n_mid)


@triton.jit
def _tile_range(tile, BLOCK: tl.constexpr, limit):
    """Offsets of tile ``tile`` of BLOCK along one axis, and which of them are < limit."""
    offs = tile * BLOCK + tl.arange(0, BLOCK)
    return offs, offs < limit


@triton.jit
def _load_slots(tab_ptr, k, offs_u, u_mask, R, NB):
    """(W1 row, plane, column) of the slots offs_u of block k, from the (3, b, r) slot table."""
    slot = k * R + offs_u
    row = tl.load(tab_ptr + slot, mask=u_mask, other=0)
    plane = tl.load(tab_ptr + NB * R + slot, mask=u_mask, other=0)
    col = tl.load(tab_ptr + 2 * NB * R + slot, mask=u_mask, other=0)
    return row, plane, col


@triton.jit
def _split_rows(split, M_PER_SPLIT, M):
    """[m_start, m_end): the rows that weight-gradient slice ``split`` sums over."""
    m_start = split * M_PER_SPLIT
    return m_start, tl.minimum(m_start + M_PER_SPLIT, M)


@triton.jit
def _first_product(x_rows, w_cols, k, m_mask, c_mask, P_IN, K,
                   BM: tl.constexpr, BC: tl.constexpr, BK: tl.constexpr):
    """(BM, BC) fp32 tile of block k of the first product: X[m, k*p_in + i] . W1[k, row, i] over i,
    with x_rows / w_cols the tile's row / W1-row pointers and c_mask its valid columns."""
    acc = tl.zeros((BM, BC), dtype=tl.float32)
    for i0 in range(0, P_IN, BK):
        offs_i = i0 + tl.arange(0, BK)
        cin = k * P_IN + offs_i
        i_mask = (offs_i < P_IN) & (cin < K)
        a = tl.load(x_rows + cin[None, :], mask=m_mask[:, None] & i_mask[None, :], other=0.0)
        w = tl.load(w_cols + offs_i[:, None], mask=i_mask[:, None] & c_mask[None, :], other=0.0)
        acc = tl.dot(a, w, acc)
    return acc


@triton.jit
def _plane_product(h_ptr, w2_ptr, l, offs_m, m_mask, offs_s, s_mask, R,
                   stride_hl, stride_hm, stride_w2l, stride_w2s,
                   BM: tl.constexpr, BS: tl.constexpr, BK: tl.constexpr):
    """(BM, BS) fp32 tile of block l of the second product: H[l, m, :] . W2[l, s, :]."""
    a_rows = h_ptr + l * stride_hl + offs_m[:, None].to(tl.int64) * stride_hm
    w_cols = w2_ptr + l * stride_w2l + offs_s[None, :] * stride_w2s
    acc = tl.zeros((BM, BS), dtype=tl.float32)
    for j0 in range(0, R, BK):
        offs_j = j0 + tl.arange(0, BK)
        j_mask = offs_j < R
        a = tl.load(a_rows + offs_j[None, :], mask=m_mask[:, None] & j_mask[None, :], other=0.0)
        w = tl.load(w_cols + offs_j[:, None], mask=j_mask[:, None] & s_mask[None, :], other=0.0)
        acc = tl.dot(a, w, acc)
    return acc


@triton.jit
def _store_output(acc, y_ptr, bias_ptr, offs_m, m_mask, n, n_mask, stride_ym, HAS_BIAS: tl.constexpr):
    """Y[offs_m, n] = acc (+ bias[n]), in Y's dtype."""
    if HAS_BIAS:
        acc = acc + tl.load(bias_ptr + n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out = y_ptr + offs_m[:, None].to(tl.int64) * stride_ym + n[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@triton.jit
def monarch_first_kernel(
    x_ptr, w1_ptr, tab_ptr, h_ptr,
    M, K, P_IN, R, NB,
    stride_xm, stride_w1k, stride_w1t, stride_hl, stride_hm,
    M_BUCKET,
    SLOT_VEC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    pid = tl.program_id(0)
    u_tile, k, m_tile = _tile_ids(pid, tl.cdiv(R, BN), NB)
    offs_m, m_mask = _tile_range(m_tile, BM, M)
    offs_u, u_mask = _tile_range(u_tile, BN, R)
    row, plane, col = _load_slots(tab_ptr, k, offs_u, u_mask, R, NB)
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm
    w_cols = w1_ptr + k * stride_w1k + row[None, :] * stride_w1t
    acc = _first_product(x_rows, w_cols, k, m_mask, u_mask, P_IN, K, BM, BN, BK)
    h_off = _slot_offsets(plane, col, stride_hl, SLOT_VEC)
    out = h_ptr + offs_m[:, None].to(tl.int64) * stride_hm + h_off[None, :]
    tl.store(out, acc.to(h_ptr.dtype.element_ty), mask=m_mask[:, None] & u_mask[None, :])


@triton.jit
def monarch_second_kernel(
    h_ptr, w2_ptr, bias_ptr, y_ptr,
    M, N, P_OUT, R, NB,
    stride_hl, stride_hm, stride_w2l, stride_w2s, stride_ym,
    M_BUCKET,
    HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    pid = tl.program_id(0)
    l, s_tile, m_tile = _tile_ids(pid, NB, tl.cdiv(P_OUT, BN))
    offs_m, m_mask = _tile_range(m_tile, BM, M)
    offs_s, s_mask = _tile_range(s_tile, BN, P_OUT)
    n = offs_s * NB + l
    n_mask = s_mask & (n < N)
    acc = _plane_product(h_ptr, w2_ptr, l, offs_m, m_mask, offs_s, s_mask, R,
                         stride_hl, stride_hm, stride_w2l, stride_w2s, BM, BN, BK)
    _store_output(acc, y_ptr, bias_ptr, offs_m, m_mask, n, n_mask, stride_ym, HAS_BIAS)


@triton.jit
def monarch_dmid_kernel(
    dy_ptr, w2_ptr, dh_ptr,
    M, N, P_OUT, R, NB,
    stride_dym, stride_w2l, stride_w2s, stride_hl, stride_hm,
    M_BUCKET,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    pid = tl.program_id(0)
    l, j_tile, m_tile = _tile_ids(pid, NB, tl.cdiv(R, BN))
    offs_m, m_mask = _tile_range(m_tile, BM, M)
    offs_j, j_mask = _tile_range(j_tile, BN, R)
    a_rows = dy_ptr + offs_m[:, None].to(tl.int64) * stride_dym
    w_base = w2_ptr + l * stride_w2l + offs_j[None, :]
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for s0 in range(0, P_OUT, BK):
        offs_s = s0 + tl.arange(0, BK)
        n = offs_s * NB + l
        n_mask = (offs_s < P_OUT) & (n < N)
        a = tl.load(a_rows + n[None, :], mask=m_mask[:, None] & n_mask[None, :], other=0.0)
        w = tl.load(w_base + offs_s[:, None] * stride_w2s, mask=n_mask[:, None] & j_mask[None, :], other=0.0)
        acc = tl.dot(a, w, acc)
    out = dh_ptr + l * stride_hl + offs_m[:, None].to(tl.int64) * stride_hm + offs_j[None, :]
    tl.store(out, acc.to(dh_ptr.dtype.element_ty), mask=m_mask[:, None] & j_mask[None, :])


@triton.jit
def monarch_dinput_kernel(
    dh_ptr, w1_ptr, tab_ptr, dx_ptr,
    M, K, P_IN, R, NB,
    stride_hl, stride_hm, stride_w1k, stride_w1t, stride_dxm,
    M_BUCKET,
    SLOT_VEC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    pid = tl.program_id(0)
    i_tile, k, m_tile = _tile_ids(pid, tl.cdiv(P_IN, BN), NB)
    offs_m, m_mask = _tile_range(m_tile, BM, M)
    offs_i = i_tile * BN + tl.arange(0, BN)
    cin = k * P_IN + offs_i
    i_mask = (offs_i < P_IN) & (cin < K)
    h_rows = dh_ptr + offs_m[:, None].to(tl.int64) * stride_hm
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for u0 in range(0, R, BK):
        offs_u = u0 + tl.arange(0, BK)
        u_mask = offs_u < R
        row, plane, col = _load_slots(tab_ptr, k, offs_u, u_mask, R, NB)
        a = tl.load(h_rows + _slot_offsets(plane, col, stride_hl, SLOT_VEC)[None, :],
                    mask=m_mask[:, None] & u_mask[None, :], other=0.0)
        w = tl.load(w1_ptr + k * stride_w1k + row[:, None] * stride_w1t + offs_i[None, :],
                    mask=u_mask[:, None] & i_mask[None, :], other=0.0)
        acc = tl.dot(a, w, acc)
    out = dx_ptr + offs_m[:, None].to(tl.int64) * stride_dxm + cin[None, :]
    tl.store(out, acc.to(dx_ptr.dtype.element_ty), mask=m_mask[:, None] & i_mask[None, :])


@triton.jit
def monarch_dw1_kernel(
    dh_ptr, x_ptr, tab_ptr, part_ptr,
    M, K, P_IN, R, NB, M_PER_SPLIT,
    stride_hl, stride_hm, stride_xm, stride_ps,
    M_BUCKET,
    SLOT_VEC: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    """One fp32 partial of dW1 (BM slots x BN inputs of block k) over the rows of slice ``split``."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    i_tile, u_tile, k = _tile_ids(pid, tl.cdiv(P_IN, BN), tl.cdiv(R, BM))
    offs_u, u_mask = _tile_range(u_tile, BM, R)
    offs_i = i_tile * BN + tl.arange(0, BN)
    cin = k * P_IN + offs_i
    i_mask = (offs_i < P_IN) & (cin < K)
    row, plane, col = _load_slots(tab_ptr, k, offs_u, u_mask, R, NB)
    h_cols = dh_ptr + _slot_offsets(plane, col, stride_hl, SLOT_VEC)[:, None]
    m_start, m_end = _split_rows(split, M_PER_SPLIT, M)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for m0 in range(m_start, m_end, BK):
        offs_m = m0 + tl.arange(0, BK)
        m_mask = offs_m < m_end
        a = tl.load(h_cols + offs_m[None, :].to(tl.int64) * stride_hm, mask=u_mask[:, None] & m_mask[None, :],
                    other=0.0)
        xb = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + cin[None, :],
                     mask=m_mask[:, None] & i_mask[None, :], other=0.0)
        acc = tl.dot(a, xb, acc)
    out = part_ptr + split.to(tl.int64) * stride_ps + (k * R + row[:, None]) * P_IN + offs_i[None, :]
    tl.store(out, acc, mask=u_mask[:, None] & (offs_i < P_IN)[None, :])


@triton.jit
def monarch_dw2_kernel(
    dy_ptr, h_ptr, part_ptr, dbias_ptr,
    M, N, P_OUT, R, NB, M_PER_SPLIT,
    stride_dym, stride_hl, stride_hm, stride_ps, stride_bs,
    M_BUCKET,
    HAS_BIAS: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):
    """One fp32 partial of dW2 (BM outputs s x BN middle columns j of block l), and of db when asked."""
    pid = tl.program_id(0)
    split = tl.program_id(1)
    j_tile, s_tile, l = _tile_ids(pid, tl.cdiv(R, BN), tl.cdiv(P_OUT, BM))
    offs_s, s_mask = _tile_range(s_tile, BM, P_OUT)
    offs_j, j_mask = _tile_range(j_tile, BN, R)
    n = offs_s * NB + l
    n_mask = s_mask & (n < N)
    m_start, m_end = _split_rows(split, M_PER_SPLIT, M)
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    db = tl.zeros((BM,), dtype=tl.float32)
    for m0 in range(m_start, m_end, BK):
        offs_m = m0 + tl.arange(0, BK)
        m_mask = offs_m < m_end
        a = tl.load(dy_ptr + offs_m[None, :].to(tl.int64) * stride_dym + n[:, None],
                    mask=n_mask[:, None] & m_mask[None, :], other=0.0)
        hb = tl.load(h_ptr + l * stride_hl + offs_m[:, None].to(tl.int64) * stride_hm + offs_j[None, :],
                     mask=m_mask[:, None] & j_mask[None, :], other=0.0)
        acc = tl.dot(a, hb, acc)
        if HAS_BIAS:
            db += tl.sum(a.to(tl.float32), axis=1)
    out = part_ptr + split.to(tl.int64) * stride_ps + (l * P_OUT + offs_s[:, None]) * R + offs_j[None, :]
    tl.store(out, acc, mask=s_mask[:, None] & j_mask[None, :])
    if HAS_BIAS:
        if j_tile == 0:  # one program per (l, s-tile) writes the bias partial
            tl.store(dbias_ptr + split.to(tl.int64) * stride_bs + n, db, mask=n_mask)
