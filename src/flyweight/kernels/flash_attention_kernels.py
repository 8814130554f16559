"""The Triton kernels of ``flash_attention`` (``@triton.jit`` only; ``flash_attention.py`` tunes and launches).

The scheme (FlashAttention-2, exp2 with scores prescaled by ``scale * log2(e)``, the causal split into
unmasked and diagonal blocks, masked loads only in the last block) is described in
``flash_attention.py``.
"""

import triton
import triton.language as tl


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
