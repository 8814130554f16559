"""Backward of non-causal Scatterbrain (sblocal) in Triton, and the differentiable ``sblocal_attention``.

Forward (``scatterbrain_attention``), all terms in units of the per-row offset M_i (saved, with z_i and
whether the 1e-24 floor is inactive, "live_i"): e_ij = exp(s_ij - M_i) and p_ij = ls_i fq_i . fk_j with
ls_i = exp(g_i - M_i) for j in the window L(i);

    o_i = [sum_L (e_ij - p_ij) v_j + ls_i fq_i . KV] / z_i,
    z_i = sum_L e_ij + max(ls_i fq_i . ksum - sum_L p_ij, floor_i)

M_i, cq_i and ck only shift exponents that cancel (the floor is scaled with them), so they are held
constant: exact. With u_i = dO_i / z_i and dz_i = -(dO_i . O_i) / z_i:

    ds_ij = e_ij (u_i . v_j + dz_i)          dp_ij = -(u_i . v_j + live_i dz_i)     (j in L(i))
    dv_j  = sum_{i: j in L(i)} (e_ij - p_ij) u_i + fk_j dKV,   dKV = sum_i ls_i fq_i u_i^T
    dfq_i = ls_i [u_i KV^T + live_i dz_i ksum + sum_L dp_ij fk_j]
    dfk_j = v_j dKV^T + dksum + sum_{i: j in L(i)} ls_i dp_ij fq_i,   dksum = sum_i ls_i live_i dz_i fq_i
    dq_i  = tau sum_L ds_ij k_j + (feature chain rule of dfq),  dk_j likewise

Two kernels: a query pass (programs over splits of T) writes dq and per-split partials of dKV / dksum;
a key pass (one program per key tile, over the query tiles whose windows contain it) writes dk, dv.
Window-tile features are recomputed on chip in both (nothing T x m or T x w in HBM). All fp32-operand
products go through ``dot_f32`` (three bf16 products on CUDA).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from flyweight.kernels._tiles import TiledKernel, tile
from flyweight.kernels.feature_attention import (
    feature_prologue, key_features, load_state, query_features, saved_output_dtype, split_range, store_state,
)
from flyweight.kernels.local_attention import (
    _load_tile, _program_head, _program_tile, _s3, _store_tile, _window_keep, _window_span,
    check_kernel_inputs, dot_f32, last_dim_contiguous, pad_mask_arg, padded_dim,
)
from flyweight.kernels.performer_backward import (
    _accumulate_state_grads, _feature_grad_to_input, _key_rows, _state_key_grads, _state_query_grad,
    split_backward_buffers,
)
from flyweight.kernels.scatterbrain_attention import sblocal_forward


@triton.jit
def _query_rows(Q_BASE, DO_BASE, O_BASE, offs_m, stride_qt, stride_dot, stride_ot, w_hi, w_lo,
                offs_d, offs_dv, offs_f, T, E, EV, M, sqrt_temp, half_temp):
    """q, cq, fq, dO and O (fp32) of the query rows offs_m (rows past T: zeros)."""
    q = _load_tile(Q_BASE, offs_m, stride_qt, T, offs_d, E)
    cq, fq = query_features(q, w_hi, w_lo, sqrt_temp, half_temp, offs_f < M)
    fq = tl.where((offs_m < T)[:, None], fq, 0.0)
    do = _load_tile(DO_BASE, offs_m, stride_dot, T, offs_dv, EV).to(tl.float32)
    o = _load_tile(O_BASE, offs_m, stride_ot, T, offs_dv, EV).to(tl.float32)
    return q, cq, fq, do, o


@triton.jit
def _sblocal_row_terms(STATS, offs_m, T, cq, ck, log_m, do, o):
    """ls, M, u, dz and live of the query rows offs_m, from the forward's saved per-row stats."""
    row_ok = offs_m < T
    m_row = tl.load(STATS + offs_m, mask=row_ok, other=0.0)
    z = tl.load(STATS + T + offs_m, mask=row_ok, other=1.0)
    live = tl.load(STATS + 2 * T + offs_m, mask=row_ok, other=0.0)
    ls = tl.where(row_ok, tl.math.exp(cq + ck - log_m - m_row), 0.0)
    u = do / z[:, None]
    dz = -tl.sum(do * o, 1) / z
    return ls, m_row, u, dz, live


@triton.jit
def _row_terms(Q_BASE, DO_BASE, O_BASE, STATS, offs_m, stride_qt, stride_dot, stride_ot, w_hi, w_lo,
               offs_d, offs_dv, offs_f, T, E, EV, M, ck, sqrt_temp, half_temp, log_m):
    """q, fq, ls, u, dz, live of the query rows offs_m (rows past T: zeros, so they contribute nothing)."""
    q, cq, fq, do, o = _query_rows(Q_BASE, DO_BASE, O_BASE, offs_m, stride_qt, stride_dot, stride_ot, w_hi,
                                   w_lo, offs_d, offs_dv, offs_f, T, E, EV, M, sqrt_temp, half_temp)
    ls, m_row, u, dz, live = _sblocal_row_terms(STATS, offs_m, T, cq, ck, log_m, do, o)
    return q, fq, ls, m_row, u, dz, live


@triton.jit
def _window_weights(q, k, m_row, keep, scale):
    """The exact weights e = exp(s - M) of the (query, key) pairs of the window (0 outside ``keep``)."""
    s = tl.dot(q, tl.trans(k)) * scale
    return tl.where(keep, tl.math.exp(tl.minimum(s - m_row[:, None], 0.0)), 0.0)


@triton.jit
def _window_cotangents(u, v, dz, live, e, keep):
    """ds = e (u . v + dz) of the window's pairs (0 outside ``keep``) and u . v + live dz, the factor
    of the cotangent of their low-rank estimates."""
    uv = dot_f32(u, tl.trans(v))
    ds = tl.where(keep, e * (uv + dz[:, None]), 0.0)
    return ds, uv + (live * dz)[:, None]


@triton.jit
def _sblocal_bwd_query_kernel(
    Q, K, V, DO, O, STATS, WHI, WLO, W32, KV, KS, CK, PAD, DQ, DKVP, DKSP,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot, stride_ob, stride_oh, stride_ot, stride_pb,
    stride_dqb, stride_dqh, stride_dqt,
    H, T, E, EV, M, LEFT, RIGHT, rows_per_split, scale, sqrt_temp, temp, half_temp, log_m,
    D: tl.constexpr, DV: tl.constexpr, MF: tl.constexpr, HAS_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    split = tl.program_id(0)
    nsplit = tl.num_programs(0)
    bh64, off_b, off_h = _program_head(H)
    offs_d, offs_dv, offs_f, feat_ok, w_hi, w_lo = feature_prologue(WHI, WLO, M, D, DV, MF)
    kv, ks = load_state(KV, KS, bh64, offs_f, offs_dv, MF, DV)
    ck = tl.load(CK + bh64)
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh
    pad_base = PAD + off_b * stride_pb
    dkv = tl.zeros([MF, DV], dtype=tl.float32)
    dks = tl.zeros([MF], dtype=tl.float32)
    lo_m, hi_m = split_range(split, rows_per_split, T)
    for start_m in range(lo_m, hi_m, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q, fq, ls, m_row, u, dz, live = _row_terms(
            Q + off_b * stride_qb + off_h * stride_qh, DO + off_b * stride_dob + off_h * stride_doh,
            O + off_b * stride_ob + off_h * stride_oh, STATS + bh64 * 3 * T, offs_m, stride_qt, stride_dot,
            stride_ot, w_hi, w_lo, offs_d, offs_dv, offs_f, T, E, EV, M, ck, sqrt_temp, half_temp, log_m)
        # the global low-rank terms
        dfq = _state_query_grad(u, live * dz, kv, ks)
        dkv, dks = _accumulate_state_grads(ls[:, None] * fq, u, live * dz, dkv, dks)
        # the window
        dq_s = tl.zeros([BLOCK_M, D], dtype=tl.float32)
        lo, hi = _window_span(start_m, BLOCK_M, BLOCK_N, LEFT, RIGHT, T)
        for start_n in range(lo, hi, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            k = _load_tile(k_base, offs_n, stride_kt, T, offs_d, E)
            v = _load_tile(v_base, offs_n, stride_vt, T, offs_dv, EV).to(tl.float32)
            keep = _window_keep(offs_m, offs_n, T, LEFT, RIGHT, pad_base, HAS_PAD)
            e = _window_weights(q, k, m_row, keep, scale)
            fk = key_features(k, w_hi, w_lo, sqrt_temp, half_temp, feat_ok, ck)
            ds, w = _window_cotangents(u, v, dz, live, e, keep)
            dp = tl.where(keep, -w, 0.0)
            dq_s = dot_f32(ds, k, dq_s)
            dfq = dot_f32(dp, fk, dfq)
        dlq = fq * ls[:, None] * dfq
        dq = scale * dq_s + _feature_grad_to_input(dlq, q, W32, offs_f, offs_d, sqrt_temp, temp, D)
        _store_tile(DQ + off_b * stride_dqb + off_h * stride_dqh, offs_m, stride_dqt, T, offs_d, E, dq)
    store_state(DKVP, DKSP, bh64 * nsplit + split, dkv, dks, offs_f, offs_dv, MF, DV)


@triton.jit
def _sblocal_bwd_key_kernel(
    Q, K, V, DO, O, STATS, WHI, WLO, W32, DKV, DKS, CK, PAD, DK, DV_,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot, stride_ob, stride_oh, stride_ot, stride_pb,
    stride_dkb, stride_dkh, stride_dkt, stride_dvb, stride_dvh, stride_dvt,
    H, T, E, EV, M, LEFT, RIGHT, scale, sqrt_temp, temp, half_temp, log_m,
    D: tl.constexpr, DV: tl.constexpr, MF: tl.constexpr, HAS_PAD: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_n, offs_n, bh64, off_b, off_h = _program_tile(H, BLOCK_N)
    offs_d, offs_dv, offs_f, feat_ok, w_hi, w_lo = feature_prologue(WHI, WLO, M, D, DV, MF)
    ck = tl.load(CK + bh64)
    pad_base = PAD + off_b * stride_pb
    k, v, fk, key_ok = _key_rows(K + off_b * stride_kb + off_h * stride_kh,
                                 V + off_b * stride_vb + off_h * stride_vh, pad_base,
                                 offs_n, stride_kt, stride_vt, T, E, EV, offs_d, offs_dv,
                                 w_hi, w_lo, sqrt_temp, half_temp, feat_ok, ck, HAS_PAD)
    dkv, dks = load_state(DKV, DKS, bh64, offs_f, offs_dv, MF, DV)
    # the global low-rank terms
    dv, dfk = _state_key_grads(fk, v, dkv, dks)
    dk_s = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    # the queries whose windows contain this key tile: i in [j - RIGHT, j + LEFT]
    lo, hi = _window_span(start_n, BLOCK_N, BLOCK_M, RIGHT, LEFT, T)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q, fq, ls, m_row, u, dz, live = _row_terms(
            Q + off_b * stride_qb + off_h * stride_qh, DO + off_b * stride_dob + off_h * stride_doh,
            O + off_b * stride_ob + off_h * stride_oh, STATS + bh64 * 3 * T, offs_m, stride_qt, stride_dot,
            stride_ot, w_hi, w_lo, offs_d, offs_dv, offs_f, T, E, EV, M, ck, sqrt_temp, half_temp, log_m)
        keep = _window_keep(offs_m, offs_n, T, LEFT, RIGHT, pad_base, HAS_PAD)  # (BLOCK_M, BLOCK_N)
        e = _window_weights(q, k, m_row, keep, scale)
        p = tl.where(keep, ls[:, None] * dot_f32(fq, tl.trans(fk)), 0.0)
        ds, w = _window_cotangents(u, v, dz, live, e, keep)
        dp = tl.where(keep, -w, 0.0)
        dv = dot_f32(tl.trans(e - p), u, dv)
        dk_s = dot_f32(tl.trans(ds), q, dk_s)
        dfk = dot_f32(tl.trans(dp * ls[:, None]), fq, dfk)
    dk = scale * dk_s + _feature_grad_to_input(fk * dfk, k, W32, offs_f, offs_d, sqrt_temp, temp, D)
    _store_tile(DK + off_b * stride_dkb + off_h * stride_dkh, offs_n, stride_dkt, T, offs_d, E, dk)
    _store_tile(DV_ + off_b * stride_dvb + off_h * stride_dvh, offs_n, stride_dvt, T, offs_dv, EV, dv)


_KEY_ARGS = ["T", "D", "DV", "MF", "HAS_PAD"]
_QUERY = TiledKernel("sblocal_bwd_query", _sblocal_bwd_query_kernel,
                     [tile(32, 32, 8, 1), tile(64, 32, 8, 1), tile(16, 32, 4, 1)],
                     tile(16, 16, 4, 1), _KEY_ARGS)
_KEY = TiledKernel("sblocal_bwd_key", _sblocal_bwd_key_kernel,
                   [tile(32, 32, 8, 1), tile(32, 64, 8, 1), tile(16, 32, 4, 1)],
                   tile(16, 16, 4, 1), _KEY_ARGS)


def sblocal_backward(do, q, k, v, o, state, temp, left, right, key_padding_mask):
    w_hi, w_lo, m, ck, kv, ksum, stats = state
    B, H, T, E = q.shape
    EV = v.shape[-1]
    MF, DP = w_hi.shape
    DVP = padded_dim(EV)
    do, w32, (nsplit, rows_per_split), (dq, dk, dv), (dkvp, dksp) = split_backward_buffers(
        do, q, k, v, w_hi, w_lo)
    pad_t, pad_stride, has_pad = pad_mask_arg(key_padding_mask, q)
    common = (*_s3(q), *_s3(k), *_s3(v), *_s3(do), *_s3(o), pad_stride)
    consts = (math.sqrt(temp), temp, 0.5 * temp, math.log(m))
    meta = dict(D=DP, DV=DVP, MF=MF, HAS_PAD=has_pad)
    _QUERY(lambda _: (nsplit, B * H),
           q, k, v, do, o, stats, w_hi, w_lo, w32, kv, ksum, ck, pad_t, dq, dkvp, dksp, *common, *_s3(dq),
           H, T, E, EV, m, int(left), int(right), rows_per_split, float(temp), *consts, **meta)
    dkv = dkvp.sum(1).contiguous()
    dks = dksp.sum(1).contiguous()
    _KEY(lambda cfg: (triton.cdiv(T, cfg["BLOCK_N"]), B * H),
         q, k, v, do, o, stats, w_hi, w_lo, w32, dkv, dks, ck, pad_t, dk, dv, *common, *_s3(dk), *_s3(dv),
         H, T, E, EV, m, int(left), int(right), float(temp), *consts, **meta)
    return dq, dk, dv


class _SBLocalFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, proj, temp, left, right, key_padding_mask):
        o, state = sblocal_forward(q, k, v, proj, temp, left, right, key_padding_mask, return_state=True,
                                   out_dtype=saved_output_dtype(ctx))
        w_hi, w_lo, m, ck, kv, ksum, stats = state
        ctx.save_for_backward(q, k, v, o, w_hi, w_lo, ck, kv, ksum, stats,
                              *(() if key_padding_mask is None else (key_padding_mask,)))
        ctx.meta = (m, temp, left, right, key_padding_mask is not None)
        return o.to(v.dtype)

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, w_hi, w_lo, ck, kv, ksum, stats, *pad = ctx.saved_tensors
        m, temp, left, right, has_pad = ctx.meta
        grads = sblocal_backward(do, q, k, v, o, (w_hi, w_lo, m, ck, kv, ksum, stats), temp, left, right,
                                 pad[0] if has_pad else None)
        return (*grads, None, None, None, None, None)


def sblocal_attention(q, k, v, proj, temp, left, right, key_padding_mask=None):
    """Non-causal sblocal through the kernels, differentiable w.r.t. q, k, v (kernel backward)."""
    check_kernel_inputs("sblocal attention", q, k, v, key_padding_mask)
    q, k, v = (last_dim_contiguous(x) for x in (q, k, v))
    return _SBLocalFn.apply(q, k, v, proj, float(temp), int(left), int(right), key_padding_mask)
