"""Scatterbrain ("sblocal") attention in Triton: the local window and the low-rank part in one pass.

The function is ``SBLocalAttention``'s (see flyweight.attention.sblocal). With s_ij the scaled scores,
fq/fk the shifted cosh features (``feature_attention``), g_i = cq_i + ck - log m the log-scale of the
low-rank estimate p_ij = exp(g_i) fq_i . fk_j, and M_i = max(g_i, max_{j in L(i)} s_ij):

    z_i = sum_L exp(s - M) + max(exp(g - M) (fq_i . ksum) - sum_L exp(g - M) fq_i . fk_j, 1e-24 e^-M)
    o_i = [sum_L (exp(s - M) - exp(g - M) fq_i . fk_j) v_j + exp(g - M) fq_i . KV] / z_i

One program per query block: it computes fq (kept on chip), the global low-rank terms fq . KV and
fq . ksum (KV, ksum from ``key_feature_sums``, one pass over the keys), then streams the key tiles of
its window span: exact scores, the key features of the tile (recomputed on chip: never a T x m
matrix in HBM) and the in-window low-rank estimates, under an online maximum M that starts at g_i.
Every exponent is <= 0 (log-space stabilisation), so fp16/bf16 inputs stay finite.
The backward kernels are in ``sblocal_backward`` (they re-use the saved M_i, z_i and floor flags).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from flyweight.kernels._tiles import TiledKernel, tile
from flyweight.kernels.feature_attention import (
    empty_output, feature_prologue, forward_inputs, key_feature_sums, key_features, lowrank_query_terms,
)
from flyweight.kernels.local_attention import (
    _load_tile, _program_tile, _store_tile, _window_keep, _window_span, dot_f32, pad_mask_arg, padded_dim,
)

LOG_FLOOR = tl.constexpr(math.log(1e-24))  # globals read inside @triton.jit must be constexpr (Triton 3.6 compiler)


@triton.jit
def _online_offset_step(m_i, s):
    """The running offset M after the scores s (rows): (M_new, exp(M - M_new), exp(s - M_new))."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    return m_new, tl.math.exp(m_i - m_new), tl.math.exp(s - m_new[:, None])


@triton.jit
def _window_output(acc, exact_sum, lr_num, lowrank_scale, outside, m_i, STATS_ROWS, row_ok, T):
    """The output rows (acc + the low-rank numerator) / z with z = the exact window mass + the low-rank
    mass outside the window (floored at 1e-24, in units of e^M); stores the per-row offset M, z and
    whether the floor is inactive at STATS_ROWS (rows 0, T, 2T): what the backward re-uses."""
    floor = tl.math.exp(tl.minimum(LOG_FLOOR - m_i, 80.0))
    z = exact_sum + tl.maximum(outside, floor)
    out = (acc + lr_num * lowrank_scale[:, None]) / z[:, None]
    tl.store(STATS_ROWS, m_i, mask=row_ok)
    tl.store(STATS_ROWS + T, z, mask=row_ok)
    tl.store(STATS_ROWS + 2 * T, (outside > floor).to(tl.float32), mask=row_ok)
    return out


@triton.jit
def _sblocal_fwd_kernel(
    Q, K, V, WHI, WLO, KV, KS, CK, O, PAD, STATS,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt, stride_ob, stride_oh, stride_ot, stride_pb,
    H, T, E, EV, M, LEFT, RIGHT, scale, sqrt_temp, half_temp, log_m,
    D: tl.constexpr, DV: tl.constexpr, MF: tl.constexpr, HAS_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_m, offs_m, bh64, off_b, off_h = _program_tile(H, BLOCK_M)
    offs_d, offs_dv, offs_f, feat_ok, w_hi, w_lo = feature_prologue(WHI, WLO, M, D, DV, MF)
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh
    pad_base = PAD + off_b * stride_pb
    ck = tl.load(CK + bh64)

    q = _load_tile(Q + off_b * stride_qb + off_h * stride_qh, offs_m, stride_qt, T, offs_d, E)
    # lr_num (BLOCK_M, DV) and lr_mass on the scale exp(g)
    cq, fq, lr_num, lr_mass = lowrank_query_terms(q, w_hi, w_lo, sqrt_temp, half_temp, feat_ok, KV, KS, bh64,
                                                  offs_f, offs_dv, MF, DV)
    g = cq + ck - log_m  # log-scale of this row's low-rank estimates

    m_i = g  # the running offset M_i: max(g_i, the scores seen so far)
    acc = tl.zeros([BLOCK_M, DV], dtype=tl.float32)
    exact_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    lowrank_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    lo, hi = _window_span(start_m, BLOCK_M, BLOCK_N, LEFT, RIGHT, T)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(k_base, offs_n, stride_kt, T, offs_d, E)
        keep = _window_keep(offs_m, offs_n, T, LEFT, RIGHT, pad_base, HAS_PAD)
        s = tl.where(keep, tl.dot(q, tl.trans(k)) * scale, float("-inf"))
        m_new, alpha, exact = _online_offset_step(m_i, s)  # exact: 0 outside the window
        fk = key_features(k, w_hi, w_lo, sqrt_temp, half_temp, feat_ok, ck)
        p = dot_f32(fq, tl.trans(fk))  # the in-window estimates (BLOCK_M, BLOCK_N)
        p = tl.where(keep, p * tl.math.exp(g - m_new)[:, None], 0.0)
        v = _load_tile(v_base, offs_n, stride_vt, T, offs_dv, EV).to(tl.float32)
        acc = dot_f32(exact - p, v, acc * alpha[:, None])
        exact_sum = exact_sum * alpha + tl.sum(exact, 1)
        lowrank_sum = lowrank_sum * alpha + tl.sum(p, 1)
        m_i = m_new
    lowrank_scale = tl.math.exp(g - m_i)
    outside = lr_mass * lowrank_scale - lowrank_sum  # low-rank mass outside the window
    out = _window_output(acc, exact_sum, lr_num, lowrank_scale, outside, m_i, STATS + bh64 * 3 * T + offs_m,
                         offs_m < T, T)
    _store_tile(O + off_b * stride_ob + off_h * stride_oh, offs_m, stride_ot, T, offs_dv, EV, out)


# fq (BLOCK_M x m) and one tile's fk (BLOCK_N x m) live on chip: small tiles for large m; 128-row query
# tiles halve the per-query cost of recomputing the window's key features, if the registers allow it
_FWD = TiledKernel("sblocal_fwd", _sblocal_fwd_kernel,
                   [tile(64, 64, 8, 2), tile(32, 32, 4, 2), tile(128, 32, 8, 2)],
                   tile(16, 16, 4, 1),
                   ["T", "D", "DV", "MF", "HAS_PAD"])


def sblocal_forward(q, k, v, proj, temp, left, right, key_padding_mask=None, return_state=False,
                    out_dtype=None):
    """SBLocalAttention's forward through the kernels (no autograd: ``sblocal_backward`` wraps it).
    out_dtype: the output's dtype (default v's; the autograd wrappers ask for fp32, see ``saved_output_dtype``).
    return_state: also (w_hi, w_lo, m, ck, KV, ksum, stats), what the backward kernels re-use."""
    q, k, v, (w_hi, w_lo, m) = forward_inputs("sblocal attention", q, k, v, proj, True, key_padding_mask)
    B, H, T, E = q.shape
    EV = v.shape[-1]
    ck, kv, ksum = key_feature_sums(k, v, w_hi, w_lo, m, temp, key_padding_mask)
    o = empty_output(q, v, out_dtype)
    stats = torch.empty(B * H, 3, T, device=q.device, dtype=torch.float32)
    pad_t, pad_stride, has_pad = pad_mask_arg(key_padding_mask, q)
    _FWD(lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H),
        q, k, v, w_hi, w_lo, kv, ksum, ck, o, pad_t, stats, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        *o.stride()[:3], pad_stride, H, T, E, EV, m, int(left), int(right), float(temp),
        math.sqrt(temp), 0.5 * temp, math.log(m),
        D=w_hi.shape[1], DV=padded_dim(EV), MF=w_hi.shape[0], HAS_PAD=has_pad)
    return (o, (w_hi, w_lo, m, ck, kv, ksum, stats)) if return_state else o
