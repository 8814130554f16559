"""Backward of non-causal Performer (FAVOR+) in Triton, and the differentiable ``performer_attention``.

Forward (``feature_attention``): out_i = fq_i . KV / D_i, D_i = max(fq_i . ksum [+ eps term], 1e-30).
The offsets cq_i and ck cancel between numerator and denominator (the eps term is written on the
unshifted scale), so they are held constant here, which is exact. With g_i = dO_i / D_i and
h_i = -(dO_i . O_i) / D_i (0 where the clamp is active):

    dfq = g KV^T + h ksum^T,   dKV = sum_i fq_i g_i^T,   dksum = sum_i h_i fq_i
    dfk = V dKV^T + 1 dksum^T, dV = fk dKV
    dx = sqrt(tau) (f (.) df) W - tau rowsum(f (.) df) x      for (x, f) = (q, fq) and (k, fk)

Two kernels, no T x m matrix in HBM: one pass over the queries (programs over splits of T) writes dq and
per-split partial dKV, dksum (summed on the host); one pass over the keys writes dk and dv.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from flyweight.kernels._tiles import TiledKernel, tile
from flyweight.kernels.feature_attention import (
    feature_prologue, key_features, load_state, performer_forward, query_features, saved_output_dtype,
    split_range, split_sizes, store_state,
)
from flyweight.kernels.local_attention import (
    _load_tile, _program_head, _program_tile, _s3, _store_tile, check_kernel_inputs, dot_f32,
    last_dim_contiguous, pad_mask_arg, padded_dim,
)


@triton.jit
def _feature_grad_to_input(dl, x, W32, offs_f, offs_d, sqrt_temp, temp,
                           D: tl.constexpr):
    """d(input) from d(log-features) dl (rows, MF): sqrt(tau) dl W - tau rowsum(dl) x."""
    w = tl.load(W32 + offs_f[:, None] * D + offs_d[None, :])
    dx = dot_f32(dl, w) * sqrt_temp
    return dx - temp * tl.sum(dl, 1)[:, None] * x.to(tl.float32)


@triton.jit
def _key_rows(K_BASE, V_BASE, PAD_BASE, offs_n, stride_kt, stride_vt, T, E, EV, offs_d, offs_dv,
              w_hi, w_lo, sqrt_temp, half_temp, feat_ok, ck, HAS_PAD: tl.constexpr):
    """k, v (fp32), fk (0 for keys past T or padding) and which keys are real, of the key rows offs_n."""
    key_ok = offs_n < T
    if HAS_PAD:
        is_pad = tl.load(PAD_BASE + offs_n, mask=key_ok, other=1)
        key_ok = key_ok & (is_pad == 0)
    k = _load_tile(K_BASE, offs_n, stride_kt, T, offs_d, E)
    v = _load_tile(V_BASE, offs_n, stride_vt, T, offs_dv, EV).to(tl.float32)
    fk = tl.where(key_ok[:, None], key_features(k, w_hi, w_lo, sqrt_temp, half_temp, feat_ok, ck), 0.0)
    return k, v, fk, key_ok


@triton.jit
def _state_query_grad(g, h, kv, ks):
    """d(fq) through the low-rank state (KV, ksum) of query rows with cotangent terms g, h:
    g KV^T + h ksum^T."""
    return dot_f32(g, tl.trans(kv)) + h[:, None] * ks[None, :]


@triton.jit
def _accumulate_state_grads(fq, g, h, dkv, dks):
    """(dKV + fq^T g, dksum + sum_i h_i fq_i): the query rows' share of the state's cotangents."""
    return dot_f32(tl.trans(fq), g, dkv), dks + tl.sum(fq * h[:, None], 0)


@triton.jit
def _state_key_grads(fk, v, dkv, dks):
    """(dv, d(fk)) of key rows through the state's cotangents (dKV, dksum): fk dKV and v dKV^T + dksum
    (the sblocal and causal key kernels; the Performer key kernel computes them in the other order)."""
    return dot_f32(fk, dkv), dot_f32(v, tl.trans(dkv)) + dks[None, :]


@triton.jit
def _performer_bwd_query_kernel(
    Q, DO, O, WHI, WLO, W32, KV, KS, CK, DQ, DKVP, DKSP,
    stride_qb, stride_qh, stride_qt, stride_dob, stride_doh, stride_dot,
    stride_ob, stride_oh, stride_ot, stride_dqb, stride_dqh, stride_dqt,
    H, T, E, EV, M, rows_per_split, sqrt_temp, temp, half_temp, log_eps_m,
    D: tl.constexpr, DV: tl.constexpr, MF: tl.constexpr, HAS_EPS: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    split = tl.program_id(0)
    nsplit = tl.num_programs(0)
    bh64, off_b, off_h = _program_head(H)
    offs_d, offs_dv, offs_f, feat_ok, w_hi, w_lo = feature_prologue(WHI, WLO, M, D, DV, MF)
    kv, ks = load_state(KV, KS, bh64, offs_f, offs_dv, MF, DV)
    ck = tl.load(CK + bh64)
    q_base = Q + off_b * stride_qb + off_h * stride_qh
    do_base = DO + off_b * stride_dob + off_h * stride_doh
    o_base = O + off_b * stride_ob + off_h * stride_oh
    dkv = tl.zeros([MF, DV], dtype=tl.float32)
    dks = tl.zeros([MF], dtype=tl.float32)
    lo, hi = split_range(split, rows_per_split, T)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        row_ok = offs_m < hi
        dmask = row_ok[:, None] & (offs_d < E)[None, :]
        vmask = row_ok[:, None] & (offs_dv < EV)[None, :]
        q = tl.load(q_base + offs_m[:, None] * stride_qt + offs_d[None, :], mask=dmask, other=0.0)
        cq, fq = query_features(q, w_hi, w_lo, sqrt_temp, half_temp, feat_ok)
        fq = tl.where(row_ok[:, None], fq, 0.0)
        den = tl.sum(fq * ks[None, :], 1)
        if HAS_EPS:
            den += tl.math.exp(tl.minimum(log_eps_m - cq - ck, 80.0))
        live = den > 1e-30
        inv = 1.0 / tl.maximum(den, 1e-30)
        do = tl.load(do_base + offs_m[:, None] * stride_dot + offs_dv[None, :], mask=vmask, other=0.0)
        do = do.to(tl.float32)
        o = tl.load(o_base + offs_m[:, None] * stride_ot + offs_dv[None, :], mask=vmask, other=0.0)
        g = do * inv[:, None]
        h = tl.where(live, -tl.sum(do * o.to(tl.float32), 1) * inv, 0.0)
        dfq = _state_query_grad(g, h, kv, ks)
        dlq = fq * dfq
        dq = _feature_grad_to_input(dlq, q, W32, offs_f, offs_d, sqrt_temp, temp, D)
        dq_base = DQ + off_b * stride_dqb + off_h * stride_dqh
        tl.store(dq_base + offs_m[:, None] * stride_dqt + offs_d[None, :], dq.to(DQ.dtype.element_ty), mask=dmask)
        dkv, dks = _accumulate_state_grads(fq, g, h, dkv, dks)
    store_state(DKVP, DKSP, bh64 * nsplit + split, dkv, dks, offs_f, offs_dv, MF, DV)


@triton.jit
def _performer_bwd_key_kernel(
    K, V, WHI, WLO, W32, DKV, DKS, CK, PAD, DK, DV_,
    stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt, stride_pb,
    stride_dkb, stride_dkh, stride_dkt, stride_dvb, stride_dvh, stride_dvt,
    H, T, E, EV, M, sqrt_temp, temp, half_temp,
    D: tl.constexpr, DV: tl.constexpr, MF: tl.constexpr, HAS_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    start_n, offs_n, bh64, off_b, off_h = _program_tile(H, BLOCK_N)
    offs_d, offs_dv, offs_f, feat_ok, w_hi, w_lo = feature_prologue(WHI, WLO, M, D, DV, MF)
    ck = tl.load(CK + bh64)
    k, v, fk, key_ok = _key_rows(K + off_b * stride_kb + off_h * stride_kh,
                                 V + off_b * stride_vb + off_h * stride_vh, PAD + off_b * stride_pb,
                                 offs_n, stride_kt, stride_vt, T, E, EV, offs_d, offs_dv,
                                 w_hi, w_lo, sqrt_temp, half_temp, feat_ok, ck, HAS_PAD)
    dkv, dks = load_state(DKV, DKS, bh64, offs_f, offs_dv, MF, DV)
    # d(fk) before dv: in this order Triton lays the kernel out in 16 KiB of shared memory, not 32 KiB
    dfk = dot_f32(v, tl.trans(dkv)) + dks[None, :]
    dv = dot_f32(fk, dkv)
    dk = _feature_grad_to_input(fk * dfk, k, W32, offs_f, offs_d, sqrt_temp, temp, D)
    _store_tile(DK + off_b * stride_dkb + off_h * stride_dkh, offs_n, stride_dkt, T, offs_d, E, dk)
    _store_tile(DV_ + off_b * stride_dvb + off_h * stride_dvh, offs_n, stride_dvt, T, offs_dv, EV, dv)


_QUERY = TiledKernel("performer_bwd_query", _performer_bwd_query_kernel,
                     [tile(16, None, 4, 2), tile(32, None, 8, 2), tile(64, None, 8, 2)], tile(16, None, 4, 1),
                     ["T", "D", "DV", "MF"])
_KEY = TiledKernel("performer_bwd_key", _performer_bwd_key_kernel,
                   [tile(None, 32, 8, 1), tile(None, 16, 4, 1), tile(None, 64, 8, 1)], tile(None, 16, 4, 1),
                   ["T", "D", "DV", "MF", "HAS_PAD"])


def split_backward_buffers(do, q, k, v, w_hi, w_lo):
    """What the backwards with a query pass over splits of T (Performer, sblocal) set up: dO last-dim
    contiguous, the fp32 projection W_hi + W_lo, (number of splits, rows per split), empty dq, dk, dv,
    and the per-split fp32 partials of dKV (BH, nsplit, MF, DVp) and dksum (BH, nsplit, MF)."""
    B, H, T, _ = q.shape
    MF = w_hi.shape[0]
    nsplit, rows_per_split = split_sizes(T, B * H, q.device)
    grads = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    dkvp = torch.empty(B * H, nsplit, MF, padded_dim(v.shape[-1]), device=q.device, dtype=torch.float32)
    dksp = torch.empty(B * H, nsplit, MF, device=q.device, dtype=torch.float32)
    w32 = (w_hi.float() + w_lo.float()).contiguous()
    return last_dim_contiguous(do), w32, (nsplit, rows_per_split), grads, (dkvp, dksp)


def performer_backward(do, q, k, v, o, state, temp, eps, key_padding_mask):
    w_hi, w_lo, m, ck, kv, ksum = state
    B, H, T, E = q.shape
    EV = v.shape[-1]
    MF, DP = w_hi.shape
    DVP = padded_dim(EV)
    do, w32, (nsplit, rows_per_split), (dq, dk, dv), (dkvp, dksp) = split_backward_buffers(
        do, q, k, v, w_hi, w_lo)
    log_eps_m = math.log(eps * m) if eps > 0 else 0.0
    _QUERY(lambda meta: (nsplit, B * H),
           q, do, o, w_hi, w_lo, w32, kv, ksum, ck, dq, dkvp, dksp, *_s3(q), *_s3(do), *_s3(o), *_s3(dq),
           H, T, E, EV, m, rows_per_split, math.sqrt(temp), temp, 0.5 * temp, log_eps_m,
           D=DP, DV=DVP, MF=MF, HAS_EPS=eps > 0)
    dkv = dkvp.sum(1).contiguous()
    dks = dksp.sum(1).contiguous()
    pad_t, pad_stride, has_pad = pad_mask_arg(key_padding_mask, k)
    _KEY(lambda meta: (triton.cdiv(T, meta["BLOCK_N"]), B * H),
         k, v, w_hi, w_lo, w32, dkv, dks, ck, pad_t, dk, dv, *_s3(k), *_s3(v), pad_stride, *_s3(dk), *_s3(dv),
         H, T, E, EV, m, math.sqrt(temp), temp, 0.5 * temp,
         D=DP, DV=DVP, MF=MF, HAS_PAD=has_pad)
    return dq, dk, dv


class _PerformerFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, proj, temp, eps, key_padding_mask):
        o, state = performer_forward(q, k, v, proj, temp, eps, key_padding_mask, return_state=True,
                                     out_dtype=saved_output_dtype(ctx))
        w_hi, w_lo, m, ck, kv, ksum = state
        ctx.save_for_backward(q, k, v, o, w_hi, w_lo, ck, kv, ksum,
                              *(() if key_padding_mask is None else (key_padding_mask,)))
        ctx.meta = (m, temp, eps, key_padding_mask is not None)
        return o.to(v.dtype)

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, w_hi, w_lo, ck, kv, ksum, *pad = ctx.saved_tensors
        m, temp, eps, has_pad = ctx.meta
        dq, dk, dv = performer_backward(do, q, k, v, o, (w_hi, w_lo, m, ck, kv, ksum), temp, eps,
                                        pad[0] if has_pad else None)
        return dq, dk, dv, None, None, None, None


def performer_attention(q, k, v, proj, temp, eps=0.0, key_padding_mask=None):
    """Non-causal Performer through the kernels, differentiable w.r.t. q, k, v (kernel backward)."""
    check_kernel_inputs("performer attention", q, k, v, key_padding_mask)
    q, k, v = (last_dim_contiguous(x) for x in (q, k, v))
    return _PerformerFn.apply(q, k, v, proj, float(temp), float(eps), key_padding_mask)
