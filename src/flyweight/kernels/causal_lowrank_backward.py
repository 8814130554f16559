"""Backward of causal Performer and causal Scatterbrain in Triton (``causal_performer_attention``,
``causal_sblocal_attention``: differentiable through these kernels).

Performer (``causal_feature_attention``): out_i = fq_i . S_i / D_i with the prefix sums S_i = sum_{j<=i}
fk_j v_j^T, z_i = sum_{j<=i} fk_j and D_i = max(fq_i . z_i [+ eps term], 1e-30) (saved per row). With
g_i = dO_i / D_i and h_i = -(dO_i . O_i) / D_i (0 where the clamp is active), and the suffix sums
R_j = sum_{i>=j} fq_i g_i^T, r_j = sum_{i>=j} h_i fq_i:

    dfq_i = g_i S_i^T + h_i z_i          dfk_j = R_j v_j + r_j          dv_j = fk_j . R_j

Scatterbrain (in units of the saved offset M_i, as ``sblocal_backward``; u_i = dO_i / z_i,
dz_i = -(dO_i . O_i) / z_i, ls_i = exp(g_i - M_i)): the causal low-rank part is the Performer one with
g_i = ls_i u_i and h_i = ls_i live_i dz_i, and the causal window L(i) = i-w+1 .. i adds
ds_ij = e_ij (u_i . v_j + dz_i), the exact weights e_ij to dv and removes its low-rank estimates
(-(u_i . v_j + live_i dz_i) into dfq / dfk, -p_ij u_i into dv).

Each prefix / suffix sum is split like the forward's: the chunk states (the forward's exclusive prefix
at chunk starts; for R, r an exclusive suffix over per-chunk sums from ``_suffix_sums_kernel``) plus the
rest of the own chunk, streamed tile by tile on chip; the window is a second loop over its tiles.
Offsets are held constant (they cancel; exact).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from flyweight.kernels._tiles import TiledKernel, tile
from flyweight.kernels.causal_feature_attention import CHUNK, causal_lowrank_forward
from flyweight.kernels.feature_attention import (
    feature_prologue, key_features, load_state, saved_output_dtype, split_range, store_state,
)
from flyweight.kernels.local_attention import (
    _load_tile, _program_head, _program_tile, _s3, _store_tile, _window_keep, check_kernel_inputs, dot_f32,
    last_dim_contiguous, pad_mask_arg, padded_dim,
)
from flyweight.kernels.performer_backward import (
    _accumulate_state_grads, _feature_grad_to_input, _key_rows, _state_key_grads, _state_query_grad,
)
from flyweight.kernels.sblocal_backward import (
    _query_rows, _sblocal_row_terms, _window_cotangents, _window_weights,
)


@triton.jit
def _query_terms(Q_BASE, DO_BASE, O_BASE, STATS, offs_m, stride_qt, stride_dot, stride_ot, w_hi, w_lo,
                 offs_d, offs_dv, offs_f, T, E, EV, M, ck, sqrt_temp, half_temp, log_m, WINDOW: tl.constexpr):
    """Per query row (rows past T: fq = g = h = 0): q, fq, the low-rank cotangent terms g, h and, for
    Scatterbrain, u = dO / z, dz, live, M and ls (Performer: u = g, dz = h, live = 1, M = 0, ls = 1)."""
    q, cq, fq, do, o = _query_rows(Q_BASE, DO_BASE, O_BASE, offs_m, stride_qt, stride_dot, stride_ot, w_hi,
                                   w_lo, offs_d, offs_dv, offs_f, T, E, EV, M, sqrt_temp, half_temp)
    if WINDOW:
        ls, m_row, u, dz, live = _sblocal_row_terms(STATS, offs_m, T, cq, ck, log_m, do, o)
        g = ls[:, None] * u
        h = ls * live * dz
    else:
        row_ok = offs_m < T
        den = tl.load(STATS + offs_m, mask=row_ok, other=0.0)
        inv = 1.0 / tl.maximum(den, 1e-30)
        g = do * inv[:, None]
        h = tl.where(den > 1e-30, -tl.sum(do * o, 1) * inv, 0.0)
        u = g
        dz = h
        live = tl.where(row_ok, 1.0, 0.0)
        m_row = tl.zeros_like(h)
        ls = live
    return q, fq, g, h, u, dz, live, m_row, ls


@triton.jit
def _suffix_sums_kernel(
    Q, DO, O, STATS, WHI, WLO, CK, RP, RSP,
    stride_qb, stride_qh, stride_qt, stride_dob, stride_doh, stride_dot, stride_ob, stride_oh, stride_ot,
    H, T, E, EV, M, CHUNK, sqrt_temp, half_temp, log_m,
    D: tl.constexpr, DV: tl.constexpr, MF: tl.constexpr, WINDOW: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """Per chunk c: sum_{i in c} fq_i g_i^T (MF x DV) and sum_{i in c} h_i fq_i (MF)."""
    chunk = tl.program_id(0)
    nchunk = tl.num_programs(0)
    bh64, off_b, off_h = _program_head(H)
    offs_d, offs_dv, offs_f, feat_ok, w_hi, w_lo = feature_prologue(WHI, WLO, M, D, DV, MF)
    ck = tl.load(CK + bh64)
    acc = tl.zeros([MF, DV], dtype=tl.float32)
    acc_h = tl.zeros([MF], dtype=tl.float32)
    lo, hi = split_range(chunk, CHUNK, T)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q, fq, g, h, u, dz, live, m_row, ls = _query_terms(
            Q + off_b * stride_qb + off_h * stride_qh, DO + off_b * stride_dob + off_h * stride_doh,
            O + off_b * stride_ob + off_h * stride_oh, STATS + bh64 * 3 * T, offs_m, stride_qt, stride_dot,
            stride_ot, w_hi, w_lo, offs_d, offs_dv, offs_f, T, E, EV, M, ck, sqrt_temp, half_temp, log_m,
            WINDOW)
        acc, acc_h = _accumulate_state_grads(fq, g, h, acc, acc_h)
    store_state(RP, RSP, bh64 * nchunk + chunk, acc, acc_h, offs_f, offs_dv, MF, DV)


@triton.jit
def _causal_lowrank_dq_kernel(
    Q, K, V, DO, O, STATS, WHI, WLO, W32, KVS, KSS, CK, PAD, DQ,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot, stride_ob, stride_oh, stride_ot, stride_pb,
    stride_dqb, stride_dqh, stride_dqt,
    H, T, E, EV, M, NCHUNK, CHUNK, LEFT, scale, sqrt_temp, temp, half_temp, log_m,
    D: tl.constexpr, DV: tl.constexpr, MF: tl.constexpr, HAS_PAD: tl.constexpr, WINDOW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_m, offs_m, bh64, off_b, off_h = _program_tile(H, BLOCK_M)
    offs_d, offs_dv, offs_f, feat_ok, w_hi, w_lo = feature_prologue(WHI, WLO, M, D, DV, MF)
    ck = tl.load(CK + bh64)
    q, fq, g, h, u, dz, live, m_row, ls = _query_terms(
        Q + off_b * stride_qb + off_h * stride_qh, DO + off_b * stride_dob + off_h * stride_doh,
        O + off_b * stride_ob + off_h * stride_oh, STATS + bh64 * 3 * T, offs_m, stride_qt, stride_dot,
        stride_ot, w_hi, w_lo, offs_d, offs_dv, offs_f, T, E, EV, M, ck, sqrt_temp, half_temp, log_m, WINDOW)
    chunk = start_m // CHUNK
    chunk_start = chunk * CHUNK
    kv, ks = load_state(KVS, KSS, bh64 * NCHUNK + chunk, offs_f, offs_dv, MF, DV)
    dfq = _state_query_grad(g, h, kv, ks)
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh
    for start_n in range(chunk_start, tl.minimum(start_m + BLOCK_M, T), BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(k_base, offs_n, stride_kt, T, offs_d, E)
        v = _load_tile(v_base, offs_n, stride_vt, T, offs_dv, EV).to(tl.float32)
        seen = (offs_n[None, :] <= offs_m[:, None]) & (offs_n < T)[None, :]
        if HAS_PAD:
            is_pad = tl.load(PAD + off_b * stride_pb + offs_n, mask=offs_n < T, other=1)
            seen = seen & (is_pad == 0)[None, :]
        fk = key_features(k, w_hi, w_lo, sqrt_temp, half_temp, feat_ok, ck)
        dp = tl.where(seen, dot_f32(g, tl.trans(v)) + h[:, None], 0.0)
        dfq = dot_f32(dp, fk, dfq)
    dq = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    if WINDOW:  # the exact causal window, its low-rank estimates swapped out
        pad_base = PAD + off_b * stride_pb
        lo = (tl.maximum(start_m - LEFT, 0) // BLOCK_N) * BLOCK_N
        for start_n in range(lo, tl.minimum(start_m + BLOCK_M, T), BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            k = _load_tile(k_base, offs_n, stride_kt, T, offs_d, E)
            v = _load_tile(v_base, offs_n, stride_vt, T, offs_dv, EV).to(tl.float32)
            keep = _window_keep(offs_m, offs_n, T, LEFT, 0, pad_base, HAS_PAD)
            e = _window_weights(q, k, m_row, keep, scale)
            fk = key_features(k, w_hi, w_lo, sqrt_temp, half_temp, feat_ok, ck)
            ds, w = _window_cotangents(u, v, dz, live, e, keep)
            dp_window = tl.where(keep, w * ls[:, None], 0.0)
            dq = dot_f32(ds, k, dq)
            dfq -= dot_f32(dp_window, fk)
        dq = dq * scale
    dq += _feature_grad_to_input(fq * dfq, q, W32, offs_f, offs_d, sqrt_temp, temp, D)
    _store_tile(DQ + off_b * stride_dqb + off_h * stride_dqh, offs_m, stride_dqt, T, offs_d, E, dq)


@triton.jit
def _causal_lowrank_dkdv_kernel(
    Q, K, V, DO, O, STATS, WHI, WLO, W32, RS, RSS, CK, PAD, DK, DV_,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt,
    stride_dob, stride_doh, stride_dot, stride_ob, stride_oh, stride_ot, stride_pb,
    stride_dkb, stride_dkh, stride_dkt, stride_dvb, stride_dvh, stride_dvt,
    H, T, E, EV, M, NCHUNK, CHUNK, LEFT, scale, sqrt_temp, temp, half_temp, log_m,
    D: tl.constexpr, DV: tl.constexpr, MF: tl.constexpr, HAS_PAD: tl.constexpr, WINDOW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_n, offs_n, bh64, off_b, off_h = _program_tile(H, BLOCK_N)
    offs_d, offs_dv, offs_f, feat_ok, w_hi, w_lo = feature_prologue(WHI, WLO, M, D, DV, MF)
    ck = tl.load(CK + bh64)
    k, v, fk, key_ok = _key_rows(K + off_b * stride_kb + off_h * stride_kh,
                                 V + off_b * stride_vb + off_h * stride_vh, PAD + off_b * stride_pb,
                                 offs_n, stride_kt, stride_vt, T, E, EV, offs_d, offs_dv,
                                 w_hi, w_lo, sqrt_temp, half_temp, feat_ok, ck, HAS_PAD)
    chunk = start_n // CHUNK
    chunk_end = tl.minimum(chunk * CHUNK + CHUNK, T)
    r, rs = load_state(RS, RSS, bh64 * NCHUNK + chunk, offs_f, offs_dv, MF, DV)  # queries after the chunk
    dv, dfk = _state_key_grads(fk, v, r, rs)
    for start_m in range((start_n // BLOCK_M) * BLOCK_M, chunk_end, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        q, fq, g, h, u, dz, live, m_row, ls = _query_terms(
            Q + off_b * stride_qb + off_h * stride_qh, DO + off_b * stride_dob + off_h * stride_doh,
            O + off_b * stride_ob + off_h * stride_oh, STATS + bh64 * 3 * T, offs_m, stride_qt, stride_dot,
            stride_ot, w_hi, w_lo, offs_d, offs_dv, offs_f, T, E, EV, M, ck, sqrt_temp, half_temp, log_m,
            WINDOW)
        seen_t = (offs_m[None, :] >= offs_n[:, None]) & (offs_m < chunk_end)[None, :]  # (BLOCK_N, BLOCK_M)
        p_t = tl.where(seen_t, dot_f32(fk, tl.trans(fq)), 0.0)
        dv = dot_f32(p_t, g, dv)
        dp_t = tl.where(seen_t, dot_f32(v, tl.trans(g)) + h[None, :], 0.0)
        dfk = dot_f32(dp_t, fq, dfk)
    dk = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    if WINDOW:  # queries i = j .. j + LEFT see key j exactly, with its low-rank estimate swapped out
        pad_base = PAD + off_b * stride_pb
        hi_m = tl.minimum(start_n + BLOCK_N + LEFT, T)
        for start_m in range((start_n // BLOCK_M) * BLOCK_M, hi_m, BLOCK_M):
            offs_m = start_m + tl.arange(0, BLOCK_M)
            q, fq, g, h, u, dz, live, m_row, ls = _query_terms(
                Q + off_b * stride_qb + off_h * stride_qh, DO + off_b * stride_dob + off_h * stride_doh,
                O + off_b * stride_ob + off_h * stride_oh, STATS + bh64 * 3 * T, offs_m, stride_qt,
                stride_dot, stride_ot, w_hi, w_lo, offs_d, offs_dv, offs_f, T, E, EV, M, ck, sqrt_temp,
                half_temp, log_m, WINDOW)
            keep = _window_keep(offs_m, offs_n, T, LEFT, 0, pad_base, HAS_PAD)  # (BLOCK_M, BLOCK_N)
            e = _window_weights(q, k, m_row, keep, scale)
            p = tl.where(keep, ls[:, None] * dot_f32(fq, tl.trans(fk)), 0.0)
            ds, w = _window_cotangents(u, v, dz, live, e, keep)
            dp_window = tl.where(keep, w * ls[:, None], 0.0)
            dv = dot_f32(tl.trans(e - p), u, dv)
            dk = dot_f32(tl.trans(ds), q, dk)
            dfk -= dot_f32(tl.trans(dp_window), fq)
        dk = dk * scale
    dk += _feature_grad_to_input(fk * dfk, k, W32, offs_f, offs_d, sqrt_temp, temp, D)
    _store_tile(DK + off_b * stride_dkb + off_h * stride_dkh, offs_n, stride_dkt, T, offs_d, E, dk)
    _store_tile(DV_ + off_b * stride_dvb + off_h * stride_dvh, offs_n, stride_dvt, T, offs_dv, EV,
                tl.where(key_ok[:, None], dv, 0.0))


_KEYS = ["T", "D", "DV", "MF", "HAS_PAD", "WINDOW"]
_SUFFIX = TiledKernel("causal_lowrank_suffix", _suffix_sums_kernel,
                      [tile(32, None, 8, 1), tile(64, None, 8, 1)], tile(16, None, 4, 1),
                      ["T", "D", "DV", "MF", "WINDOW"])
_DQ = TiledKernel("causal_lowrank_dq", _causal_lowrank_dq_kernel,
                  [tile(32, 32, 8, 1)], tile(16, 16, 4, 1), _KEYS)
_DKDV = TiledKernel("causal_lowrank_dkdv", _causal_lowrank_dkdv_kernel,
                    [tile(32, 32, 8, 1)], tile(16, 16, 4, 1), _KEYS)


def causal_lowrank_backward(do, q, k, v, o, state, temp, window_left, key_padding_mask):
    """dq, dk, dv of ``causal_lowrank_forward`` (window_left None: Performer; else causal sblocal)."""
    w_hi, w_lo, m, ck, kvs, kss, stats = state
    B, H, T, E = q.shape
    EV = v.shape[-1]
    MF, DP = w_hi.shape
    DVP = padded_dim(EV)
    nchunk = kvs.shape[1]
    window = window_left is not None
    do = last_dim_contiguous(do)
    w32 = (w_hi.float() + w_lo.float()).contiguous()
    consts = (math.sqrt(temp), temp, 0.5 * temp, math.log(m))
    rp = torch.empty(B * H, nchunk, MF, DVP, device=q.device, dtype=torch.float32)
    rsp = torch.empty(B * H, nchunk, MF, device=q.device, dtype=torch.float32)
    _SUFFIX(lambda _: (nchunk, B * H), q, do, o, stats, w_hi, w_lo, ck, rp, rsp, *_s3(q), *_s3(do), *_s3(o),
            H, T, E, EV, m, CHUNK, consts[0], consts[2], consts[3], D=DP, DV=DVP, MF=MF, WINDOW=window)
    # exclusive suffix: state c = sum of chunks > c
    rs = torch.cat([rp[:, 1:].flip(1).cumsum(1).flip(1), torch.zeros_like(rp[:, :1])], dim=1).contiguous()
    rss = torch.cat([rsp[:, 1:].flip(1).cumsum(1).flip(1), torch.zeros_like(rsp[:, :1])], dim=1).contiguous()
    pad_t, pad_stride, has_pad = pad_mask_arg(key_padding_mask, q)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    common = (*_s3(q), *_s3(k), *_s3(v), *_s3(do), *_s3(o), pad_stride)
    meta = dict(D=DP, DV=DVP, MF=MF, HAS_PAD=has_pad, WINDOW=window)
    scalars = (H, T, E, EV, m, nchunk, CHUNK, int(window_left or 0), float(temp), *consts)
    _DQ(lambda cfg: (triton.cdiv(T, cfg["BLOCK_M"]), B * H),
        q, k, v, do, o, stats, w_hi, w_lo, w32, kvs, kss, ck, pad_t, dq, *common, *_s3(dq), *scalars, **meta)
    _DKDV(lambda cfg: (triton.cdiv(T, cfg["BLOCK_N"]), B * H),
          q, k, v, do, o, stats, w_hi, w_lo, w32, rs, rss, ck, pad_t, dk, dv, *common, *_s3(dk), *_s3(dv),
          *scalars, **meta)
    return dq, dk, dv


class _CausalLowRankFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, proj, temp, cosh, window_left, eps, key_padding_mask):
        o, state = causal_lowrank_forward(q, k, v, proj, temp, cosh=cosh, window_left=window_left, eps=eps,
                                          key_padding_mask=key_padding_mask, return_state=True,
                                          out_dtype=saved_output_dtype(ctx))
        w_hi, w_lo, m, ck, kvs, kss, stats = state
        ctx.save_for_backward(q, k, v, o, w_hi, w_lo, ck, kvs, kss, stats,
                              *(() if key_padding_mask is None else (key_padding_mask,)))
        ctx.meta = (m, temp, window_left, key_padding_mask is not None)
        return o.to(v.dtype)

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, w_hi, w_lo, ck, kvs, kss, stats, *pad = ctx.saved_tensors
        m, temp, window_left, has_pad = ctx.meta
        grads = causal_lowrank_backward(do, q, k, v, o, (w_hi, w_lo, m, ck, kvs, kss, stats), temp,
                                        window_left, pad[0] if has_pad else None)
        return (*grads, None, None, None, None, None, None)


def causal_performer_attention(q, k, v, proj, temp, eps=0.0, key_padding_mask=None):
    """Causal Performer through the kernels, differentiable w.r.t. q, k, v (kernel backward)."""
    check_kernel_inputs("performer attention", q, k, v, key_padding_mask)
    q, k, v = (last_dim_contiguous(x) for x in (q, k, v))
    return _CausalLowRankFn.apply(q, k, v, proj, float(temp), False, None, float(eps), key_padding_mask)


def causal_sblocal_attention(q, k, v, proj, temp, window_left, key_padding_mask=None):
    """Causal sblocal (window of window_left + 1 keys) through the kernels, differentiable w.r.t. q, k, v."""
    check_kernel_inputs("sblocal attention", q, k, v, key_padding_mask)
    q, k, v = (last_dim_contiguous(x) for x in (q, k, v))
    return _CausalLowRankFn.apply(q, k, v, proj, float(temp), True, int(window_left), 0.0, key_padding_mask)
