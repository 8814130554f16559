"""Causal Performer and causal Scatterbrain in Triton: the low-rank part through chunked prefix states.

Query i sees keys j <= i. The keys are cut into chunks of ``CHUNK`` rows; ``key_feature_sums`` (one
program per chunk) gives each chunk's sum of fk v^T and fk, and an exclusive prefix over the chunks
(a cumsum over T / CHUNK small m x Ev matrices, rescaled to the head's offset ck) gives the state
S_c = sum_{j < start of chunk c} fk_j v_j^T. One program per query block then adds

    fq_i . S_c                                  (the keys before its chunk)
  + sum_{start_c <= j <= i} (fq_i . fk_j) v_j   (the rest of its chunk, key tiles recomputed on chip)

and, for Scatterbrain, the exact causal window i-w+1 .. i with its low-rank estimate swapped out, in
the same key loop and under the same running offset M_i = max(g_i, scores) as the non-causal kernel
(``scatterbrain_attention``). Memory: T / CHUNK states of m x Ev fp32 per head, never T x m.
Backward: ``causal_lowrank_backward`` (it re-uses the saved chunk states and per-row statistics).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from flyweight.kernels._tiles import TiledKernel, tile
from flyweight.kernels._triton_env import INTERPRET
from flyweight.kernels.feature_attention import (
    empty_output, feature_prologue, forward_inputs, key_features, launch_key_feature_sums, lowrank_query_terms,
)
from flyweight.kernels.local_attention import (
    _load_tile, _program_tile, _store_tile, dot_f32, pad_mask_arg, padded_dim,
)
from flyweight.kernels.scatterbrain_attention import _online_offset_step, _window_output

CHUNK = 32 if INTERPRET else 512  # keys per prefix state; a multiple of every BLOCK_M below


@triton.jit
def _causal_lowrank_kernel(
    Q, K, V, WHI, WLO, KVS, KSS, CK, O, PAD, STATS,
    stride_qb, stride_qh, stride_qt, stride_kb, stride_kh, stride_kt,
    stride_vb, stride_vh, stride_vt, stride_ob, stride_oh, stride_ot, stride_pb,
    H, T, E, EV, M, NCHUNK, CHUNK, LEFT, scale, sqrt_temp, half_temp, log_m, log_eps_m,
    D: tl.constexpr, DV: tl.constexpr, MF: tl.constexpr, HAS_PAD: tl.constexpr,
    WINDOW: tl.constexpr, HAS_EPS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    start_m, offs_m, bh64, off_b, off_h = _program_tile(H, BLOCK_M)
    offs_d, offs_dv, offs_f, feat_ok, w_hi, w_lo = feature_prologue(WHI, WLO, M, D, DV, MF)
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh
    pad_base = PAD + off_b * stride_pb
    ck = tl.load(CK + bh64)

    q = _load_tile(Q + off_b * stride_qb + off_h * stride_qh, offs_m, stride_qt, T, offs_d, E)
    chunk = start_m // CHUNK
    chunk_start = chunk * CHUNK
    # lr_num, lr_mass: the keys before the chunk
    cq, fq, lr_num, lr_mass = lowrank_query_terms(q, w_hi, w_lo, sqrt_temp, half_temp, feat_ok, KVS, KSS,
                                                  bh64 * NCHUNK + chunk, offs_f, offs_dv, MF, DV)

    g = cq + ck - log_m
    m_i = g
    acc = tl.zeros([BLOCK_M, DV], dtype=tl.float32)
    prefix_sum = tl.zeros([BLOCK_M], dtype=tl.float32)  # low-rank mass of keys chunk_start .. i
    exact_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    window_lowrank_sum = tl.zeros([BLOCK_M], dtype=tl.float32)
    lo = chunk_start
    if WINDOW:
        lo = tl.minimum(lo, (tl.maximum(start_m - LEFT, 0) // BLOCK_N) * BLOCK_N)
    hi = tl.minimum(start_m + BLOCK_M, T)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        k = _load_tile(k_base, offs_n, stride_kt, T, offs_d, E)
        rel = offs_n[None, :] - offs_m[:, None]
        visible = (rel <= 0) & (offs_n < T)[None, :] & (offs_m < T)[:, None]
        if HAS_PAD:
            is_pad = tl.load(pad_base + offs_n, mask=offs_n < T, other=1)
            visible = visible & (is_pad == 0)[None, :]
        in_prefix = visible & (offs_n >= chunk_start)[None, :]
        fk = key_features(k, w_hi, w_lo, sqrt_temp, half_temp, feat_ok, ck)
        p = dot_f32(fq, tl.trans(fk))
        v = _load_tile(v_base, offs_n, stride_vt, T, offs_dv, EV).to(tl.float32)
        if WINDOW:
            in_window = visible & (rel >= -LEFT)
            s = tl.where(in_window, tl.dot(q, tl.trans(k)) * scale, float("-inf"))
            m_new, alpha, exact = _online_offset_step(m_i, s)
            p = p * tl.math.exp(g - m_new)[:, None]
            p_window = tl.where(in_window, p, 0.0)
            p_prefix = tl.where(in_prefix, p, 0.0)
            acc = dot_f32(exact - p_window + p_prefix, v, acc * alpha[:, None])
            exact_sum = exact_sum * alpha + tl.sum(exact, 1)
            window_lowrank_sum = window_lowrank_sum * alpha + tl.sum(p_window, 1)
            prefix_sum = prefix_sum * alpha + tl.sum(p_prefix, 1)
            m_i = m_new
        else:
            p_prefix = tl.where(in_prefix, p, 0.0)
            acc = dot_f32(p_prefix, v, acc)
            prefix_sum += tl.sum(p_prefix, 1)
    if WINDOW:
        lowrank_scale = tl.math.exp(g - m_i)
        lowrank_mass = lr_mass * lowrank_scale + prefix_sum
        outside = lowrank_mass - window_lowrank_sum
        out = _window_output(acc, exact_sum, lr_num, lowrank_scale, outside, m_i,
                             STATS + bh64 * 3 * T + offs_m, offs_m < T, T)
    else:
        den = lr_mass + prefix_sum
        if HAS_EPS:
            den += tl.math.exp(tl.minimum(log_eps_m - cq - ck, 80.0))
        out = (acc + lr_num) / tl.maximum(den, 1e-30)[:, None]
        tl.store(STATS + bh64 * 3 * T + offs_m, den, mask=offs_m < T)  # for the backward
    _store_tile(O + off_b * stride_ob + off_h * stride_oh, offs_m, stride_ot, T, offs_dv, EV, out)


_FWD = TiledKernel("causal_lowrank_fwd", _causal_lowrank_kernel,
                   [tile(64, 64, 8, 2), tile(32, 32, 4, 2)],
                   tile(16, 16, 4, 1), ["T", "D", "DV", "MF", "HAS_PAD", "WINDOW"])


def chunk_states(k, v, w_hi, w_lo, m, temp, key_padding_mask):
    """(ck (BH,), S (BH, nchunk, MF, DVp), z (BH, nchunk, MF)): exclusive prefix sums at chunk starts."""
    B, H, T, E = k.shape
    EV = v.shape[-1]
    MF = w_hi.shape[0]
    nchunk = triton.cdiv(T, CHUNK)
    cmax = torch.empty(B * H, nchunk, device=k.device, dtype=torch.float32)
    kvp = torch.empty(B * H, nchunk, MF, padded_dim(EV), device=k.device, dtype=torch.float32)
    ksp = torch.empty(B * H, nchunk, MF, device=k.device, dtype=torch.float32)
    launch_key_feature_sums(k, v, w_hi, w_lo, m, temp, key_padding_mask, CHUNK, cmax, kvp, ksp)
    ck = cmax.amax(-1).clamp_min(torch.finfo(torch.float32).min)
    weight = torch.exp(cmax - ck[:, None])
    kvp.mul_(weight[:, :, None, None])
    ksp.mul_(weight[:, :, None])
    # exclusive prefix: state c = sum of chunks < c (in place: shift by one, then cumsum)
    kvs = torch.cat([torch.zeros_like(kvp[:, :1]), kvp[:, :-1]], dim=1).cumsum_(1)
    kss = torch.cat([torch.zeros_like(ksp[:, :1]), ksp[:, :-1]], dim=1).cumsum_(1)
    return ck.contiguous(), kvs.contiguous(), kss.contiguous()


def causal_lowrank_forward(q, k, v, proj, temp, *, cosh, window_left=None, eps=0.0, key_padding_mask=None,
                           return_state=False, out_dtype=None):
    """Causal Performer (window_left None, exp features, eps) or causal sblocal (window_left = w - 1,
    cosh features) forward through the kernels (no autograd; the modules wrap it).
    out_dtype: the output's dtype (default v's; the autograd wrappers ask for fp32, see ``saved_output_dtype``).
    return_state: also (w_hi, w_lo, m, ck, prefix states S, z, per-row stats (BH, 3, T): Performer's
    denominators in row 0; sblocal's offset M, normaliser z and floor-inactive flag)."""
    name = "sblocal attention" if window_left is not None else "performer attention"
    q, k, v, (w_hi, w_lo, m) = forward_inputs(name, q, k, v, proj, cosh, key_padding_mask)
    B, H, T, E = q.shape
    EV = v.shape[-1]
    ck, kvs, kss = chunk_states(k, v, w_hi, w_lo, m, temp, key_padding_mask)
    o = empty_output(q, v, out_dtype)
    stats = torch.empty((B * H, 3, T), device=q.device, dtype=torch.float32)
    pad_t, pad_stride, has_pad = pad_mask_arg(key_padding_mask, q)
    _FWD(lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H),
        q, k, v, w_hi, w_lo, kvs, kss, ck, o, pad_t, stats, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
        *o.stride()[:3], pad_stride, H, T, E, EV, m, kvs.shape[1], CHUNK,
        int(window_left or 0), float(temp), math.sqrt(temp), 0.5 * temp, math.log(m),
        math.log(eps * m) if eps > 0 else 0.0,
        D=w_hi.shape[1], DV=padded_dim(EV), MF=w_hi.shape[0], HAS_PAD=has_pad,
        WINDOW=window_left is not None, HAS_EPS=eps > 0)
    return (o, (w_hi, w_lo, m, ck, kvs, kss, stats)) if return_state else o
