"""Random-feature (FAVOR+) attention in Triton: fused feature maps, key reductions and the query apply.

With log-features lx = sqrt(tau) W x - tau |x|^2 / 2 (``flyweight.attention.features.log_features``),
fk = exp(lk - ck) (ck: the max over every key and feature of one head) and fq = exp(lq - cq) (cq: the
row max), Performer is

    out_i = fq_i . KV / (fq_i . ksum [+ eps m exp(-cq_i - ck)]),   KV = sum_j fk_j v_j^T, ksum = sum_j fk_j

Two kernels, no T x m feature matrix in HBM:

* ``key_feature_sums``: one program per (split of the keys, batch*head) computes the key features of
  its tiles on chip and accumulates KV (m x Ev) and ksum (m) under a running max (rescaled like an
  online softmax), so the global ck needs no extra pass; the few per-split partials are combined
  on the host (deterministic; no atomics).
* ``_performer_apply_kernel``: one program per query block computes fq and the two contractions.

The projection W is applied in two operand-precision halves (W = W_hi + W_lo, both in the input
dtype), so the feature exponents are as exact as fp32 while the GEMMs run on bf16/fp16 tensor cores.
Products of fp32 operands (fk^T V, fq KV) go through ``dot_f32`` (three bf16 products on CUDA, about 2^-16).

Backward kernels: ``performer_backward``, ``sblocal_backward``, ``causal_lowrank_backward``.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from flyweight.kernels._tiles import TiledKernel, tile
from flyweight.kernels._triton_env import INTERPRET
from flyweight.kernels.local_attention import (  # noqa: F401  (dot_f32 is re-exported)
    _load_tile, _program_head, _program_tile, _store_tile, check_kernel_inputs, last_dim_contiguous,
    pad_mask_arg, dot_f32, padded_dim,
)

PROGRAMS_PER_SM = 2
SPLIT_GRANULE = 16 if INTERPRET else 64  # keys per split are a multiple of this (any BLOCK_N <= it)
_SM_COUNT: dict[int, int] = {}


def feature_dim(m: int) -> int:
    return max(16, triton.next_power_of_2(int(m)))


@triton.jit
def feature_logs(x, w_hi, w_lo, sqrt_temp, half_temp, feat_ok):
    """(rows, MF) log-features of x (rows, D): sqrt(tau) W x - tau |x|^2 / 2; padded features -inf."""
    wx = tl.dot(x, tl.trans(w_lo))
    wx = tl.dot(x, tl.trans(w_hi), wx)
    xf = x.to(tl.float32)
    lx = wx * sqrt_temp - half_temp * tl.sum(xf * xf, 1)[:, None]
    return tl.where(feat_ok[None, :], lx, float("-inf"))


@triton.jit
def load_projection(WHI, WLO, offs_f, offs_d, D: tl.constexpr):
    """The (MF, D) host-padded projection halves."""
    w_hi = tl.load(WHI + offs_f[:, None] * D + offs_d[None, :])
    w_lo = tl.load(WLO + offs_f[:, None] * D + offs_d[None, :])
    return w_hi, w_lo


@triton.jit
def feature_prologue(WHI, WLO, M, D: tl.constexpr, DV: tl.constexpr, MF: tl.constexpr):
    """What every feature kernel sets up first: the column offsets of the (padded) head dims and of the
    features, which features are real (< M), and the projection halves."""
    offs_d = tl.arange(0, D)
    offs_dv = tl.arange(0, DV)
    offs_f = tl.arange(0, MF)
    w_hi, w_lo = load_projection(WHI, WLO, offs_f, offs_d, D)
    return offs_d, offs_dv, offs_f, offs_f < M, w_hi, w_lo


@triton.jit
def split_range(split, per_split, T):
    """[lo, hi): the rows of split ``split`` when each takes ``per_split`` of the T rows."""
    lo = split * per_split
    return lo, tl.minimum(lo + per_split, T)


@triton.jit
def query_features(q, w_hi, w_lo, sqrt_temp, half_temp, feat_ok):
    """(cq, fq) of query rows q: cq the row max of the log-features lq, fq = exp(lq - cq)."""
    lq = feature_logs(q, w_hi, w_lo, sqrt_temp, half_temp, feat_ok)
    cq = tl.max(lq, 1)
    return cq, tl.math.exp(lq - cq[:, None])


@triton.jit
def key_features(k, w_hi, w_lo, sqrt_temp, half_temp, feat_ok, ck):
    """fk = exp(lk - ck) of key rows k, capped at 1: <= 1 for every real key (ck is their max), and rows
    past T or padding (which the callers mask) stay finite."""
    return tl.math.exp(tl.minimum(feature_logs(k, w_hi, w_lo, sqrt_temp, half_temp, feat_ok) - ck, 0.0))


@triton.jit
def load_state(KV, KS, idx, offs_f, offs_dv, MF: tl.constexpr, DV: tl.constexpr):
    """Low-rank state ``idx``: the (MF, DV) matrix KV[idx] and the (MF,) vector KS[idx] (fp32, padded)."""
    kv = tl.load(KV + idx * MF * DV + offs_f[:, None] * DV + offs_dv[None, :])
    ks = tl.load(KS + idx * MF + offs_f)
    return kv, ks


@triton.jit
def lowrank_query_terms(q, w_hi, w_lo, sqrt_temp, half_temp, feat_ok, KV, KS, idx, offs_f, offs_dv,
                        MF: tl.constexpr, DV: tl.constexpr):
    """(cq, fq, fq . KV, fq . ksum) of query rows q against low-rank state ``idx``: the numerator and
    the mass of the low-rank estimate, on the scale exp(cq + ck)."""
    cq, fq = query_features(q, w_hi, w_lo, sqrt_temp, half_temp, feat_ok)
    kv, ks = load_state(KV, KS, idx, offs_f, offs_dv, MF, DV)
    return cq, fq, dot_f32(fq, kv), tl.sum(fq * ks[None, :], 1)


@triton.jit
def store_state(KV, KS, idx, kv, ks, offs_f, offs_dv, MF: tl.constexpr, DV: tl.constexpr):
    """Write low-rank state ``idx`` (``load_state``'s counterpart)."""
    tl.store(KV + idx * MF * DV + offs_f[:, None] * DV + offs_dv[None, :], kv)
    tl.store(KS + idx * MF + offs_f, ks)


@triton.jit
def _key_feature_sums_kernel(
    K, V, WHI, WLO, PAD, CMAX, KVP, KSP,
    stride_kb, stride_kh, stride_kt, stride_vb, stride_vh, stride_vt, stride_pb,
    H, T, E, EV, M, keys_per_split, sqrt_temp, half_temp,
    D: tl.constexpr, DV: tl.constexpr, MF: tl.constexpr, HAS_PAD: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    split = tl.program_id(0)
    nsplit = tl.num_programs(0)
    bh64, off_b, off_h = _program_head(H)
    offs_d, offs_dv, offs_f, feat_ok, w_hi, w_lo = feature_prologue(WHI, WLO, M, D, DV, MF)
    k_base = K + off_b * stride_kb + off_h * stride_kh
    v_base = V + off_b * stride_vb + off_h * stride_vh

    c = tl.max(tl.full([BLOCK_N], float("-inf"), dtype=tl.float32), 0)  # running max of lk (a scalar)
    kv = tl.zeros([MF, DV], dtype=tl.float32)
    ks = tl.zeros([MF], dtype=tl.float32)
    lo, hi = split_range(split, keys_per_split, T)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        key_ok = offs_n < hi
        k = tl.load(k_base + offs_n[:, None] * stride_kt + offs_d[None, :],
                    mask=key_ok[:, None] & (offs_d < E)[None, :], other=0.0)
        if HAS_PAD:
            is_pad = tl.load(PAD + off_b * stride_pb + offs_n, mask=key_ok, other=1)
            key_ok = key_ok & (is_pad == 0)
        lk = feature_logs(k, w_hi, w_lo, sqrt_temp, half_temp, feat_ok)
        lk = tl.where(key_ok[:, None], lk, float("-inf"))
        c_new = tl.maximum(c, tl.max(tl.max(lk, 1), 0))
        c_shift = tl.where(c_new == float("-inf"), 0.0, c_new)  # nothing seen yet: avoid -inf - -inf
        alpha = tl.math.exp(c - c_shift)
        fk = tl.math.exp(lk - c_shift)
        v = tl.load(v_base + offs_n[:, None] * stride_vt + offs_dv[None, :],
                    mask=key_ok[:, None] & (offs_dv < EV)[None, :], other=0.0).to(tl.float32)
        kv = dot_f32(tl.trans(fk), v, kv * alpha)
        ks = ks * alpha + tl.sum(fk, 0)
        c = c_new
    part = bh64 * nsplit + split
    tl.store(CMAX + part, c)
    store_state(KVP, KSP, part, kv, ks, offs_f, offs_dv, MF, DV)


@triton.jit
def _performer_apply_kernel(
    Q, WHI, WLO, KV, KS, CK, O,
    stride_qb, stride_qh, stride_qt, stride_ob, stride_oh, stride_ot,
    H, T, E, EV, M, sqrt_temp, half_temp, log_eps_m,
    D: tl.constexpr, DV: tl.constexpr, MF: tl.constexpr, HAS_EPS: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    start_m, offs_m, bh64, off_b, off_h = _program_tile(H, BLOCK_M)
    offs_d, offs_dv, offs_f, feat_ok, w_hi, w_lo = feature_prologue(WHI, WLO, M, D, DV, MF)
    q = _load_tile(Q + off_b * stride_qb + off_h * stride_qh, offs_m, stride_qt, T, offs_d, E)
    cq, fq, num, den = lowrank_query_terms(q, w_hi, w_lo, sqrt_temp, half_temp, feat_ok, KV, KS, bh64,
                                           offs_f, offs_dv, MF, DV)
    if HAS_EPS:  # eps on the unshifted scale (PerformerAttention's eps)
        ck = tl.load(CK + bh64)
        den += tl.math.exp(tl.minimum(log_eps_m - cq - ck, 80.0))
    out = num / tl.maximum(den, 1e-30)[:, None]
    _store_tile(O + off_b * stride_ob + off_h * stride_oh, offs_m, stride_ot, T, offs_dv, EV, out)


_SUMS = TiledKernel("key_feature_sums", _key_feature_sums_kernel,
                    [tile(None, 32, 8, 2), tile(None, 64, 8, 2), tile(None, 16, 4, 2)],
                    tile(None, 16, 4, 1), ["T", "D", "DV", "MF", "HAS_PAD"])
_APPLY = TiledKernel("performer_apply", _performer_apply_kernel,
                     [tile(64, None, 8, 1), tile(128, None, 8, 1), tile(32, None, 4, 1)],
                     tile(16, None, 4, 1), ["T", "D", "DV", "MF"])

# ==========================================================================================
# Host side
# ==========================================================================================
_HALVES_CACHE: dict = {}
_HALVES_CACHE_SIZE = 16


def projection_halves(proj: torch.Tensor, cosh: bool, dtype: torch.dtype, head_dim: int):
    """(W_hi, W_lo) padded to (MF, D) in ``dtype`` with W_hi + W_lo = W (cosh: W stacked on -W).

    Memoised per (tensor, in-place version, dtype): a forward then costs no host-side launches for the
    projection (they would dominate at short T). A redrawn or reloaded projection is a new key."""
    key = (proj.data_ptr(), proj._version, tuple(proj.shape), proj.device, cosh, dtype, head_dim)
    hit = _HALVES_CACHE.get(key)
    if hit is not None and hit[0] is proj:
        return hit[1]
    halves = _projection_halves(proj, cosh, dtype, head_dim)
    if len(_HALVES_CACHE) >= _HALVES_CACHE_SIZE:
        _HALVES_CACHE.pop(next(iter(_HALVES_CACHE)))
    _HALVES_CACHE[key] = (proj, halves)
    return halves


def _projection_halves(proj, cosh, dtype, head_dim):
    w = torch.cat([proj, -proj]) if cosh else proj
    w = w.float()
    m, E = w.shape
    if E != head_dim:
        raise ValueError(f"feature projection has head dim {E}, q has {head_dim}")
    full = torch.zeros(feature_dim(m), padded_dim(E), dtype=torch.float32, device=w.device)
    full[:m, :E] = w
    hi = full.to(dtype)
    lo = (full - hi.float()).to(dtype)
    return hi.contiguous(), lo.contiguous(), m


def _num_splits(T, bh, device) -> int:
    if INTERPRET:
        return max(1, min(2, triton.cdiv(T, SPLIT_GRANULE)))
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNT:
        _SM_COUNT[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    want = triton.cdiv(PROGRAMS_PER_SM * _SM_COUNT[idx], bh)
    return max(1, min(want, triton.cdiv(T, 2 * SPLIT_GRANULE)))  # at least 128 keys per program


def split_sizes(T, bh, device) -> tuple[int, int]:
    """(number of splits, rows per split) for the programs over splits of T rows: a multiple of
    SPLIT_GRANULE rows each, about ``_num_splits`` of them."""
    nsplit = _num_splits(T, bh, device)
    per_split = triton.cdiv(triton.cdiv(T, nsplit), SPLIT_GRANULE) * SPLIT_GRANULE
    return triton.cdiv(T, per_split), per_split


def launch_key_feature_sums(k, v, w_hi, w_lo, m, temp, key_padding_mask, keys_per_split, cmax, kvp, ksp):
    """Per-split max and partial sums into cmax (BH, S), kvp (BH, S, MF, DVp), ksp (BH, S, MF)."""
    B, H, T, E = k.shape
    pad_t, pad_stride, has_pad = pad_mask_arg(key_padding_mask, k)
    _SUMS(lambda meta: (cmax.shape[1], B * H),
          k, v, w_hi, w_lo, pad_t, cmax, kvp, ksp, *k.stride()[:3], *v.stride()[:3], pad_stride,
          H, T, E, v.shape[-1], m, keys_per_split, math.sqrt(temp), 0.5 * temp,
          D=w_hi.shape[1], DV=padded_dim(v.shape[-1]), MF=w_hi.shape[0], HAS_PAD=has_pad)


def key_feature_sums(k, v, w_hi, w_lo, m, temp, key_padding_mask=None):
    """(ck (B*H,), KV (B*H, MF, Ev) fp32, ksum (B*H, MF) fp32) of the shifted key features."""
    B, H, T, E = k.shape
    EV = v.shape[-1]
    MF = w_hi.shape[0]
    nsplit, keys_per_split = split_sizes(T, B * H, k.device)
    cmax = torch.empty(B * H, nsplit, device=k.device, dtype=torch.float32)
    kvp = torch.empty(B * H, nsplit, MF, padded_dim(EV), device=k.device, dtype=torch.float32)
    ksp = torch.empty(B * H, nsplit, MF, device=k.device, dtype=torch.float32)
    launch_key_feature_sums(k, v, w_hi, w_lo, m, temp, key_padding_mask, keys_per_split, cmax, kvp, ksp)
    ck = cmax.amax(-1).clamp_min(torch.finfo(torch.float32).min)  # all keys padding: any finite offset
    weight = torch.exp(cmax - ck[:, None])  # rescale each split to the common offset
    kv = (kvp * weight[:, :, None, None]).sum(1).contiguous()
    ksum = (ksp * weight[:, :, None]).sum(1).contiguous()
    return ck.contiguous(), kv, ksum


def forward_inputs(name, q, k, v, proj, cosh, key_padding_mask):
    """What the feature-attention forwards start with: q, k, v checked and last-dim contiguous, and the
    projection halves (w_hi, w_lo, m)."""
    check_kernel_inputs(name, q, k, v, key_padding_mask)
    q, k, v = (last_dim_contiguous(x) for x in (q, k, v))
    return q, k, v, projection_halves(proj, cosh, q.dtype, q.shape[-1])


def empty_output(q, v, out_dtype):
    """The forward's output (B, H, T, Ev) in out_dtype (default v's). Allocated after the key-side
    reductions, whose split partials are freed by then: allocated before them, the output was live at
    their peak and raised the forward's peak memory by its own size (24 MiB at T = 16,384 on the H200)."""
    return torch.empty((*q.shape[:3], v.shape[-1]), device=q.device, dtype=out_dtype or v.dtype)


def saved_output_dtype(ctx):
    """The output dtype a kernel forward writes when its autograd wrapper will run the backward: fp32.

    The backward's row terms (``rowsum(dO * O)``, the cotangent of the normaliser) then see the output
    before it is rounded to fp16 / bf16. With the rounded output they carried its rounding error, which
    at large logits cost the Performer and Scatterbrain backward 2.1-2.8x the PyTorch path's dq / dk
    error (whose autograd keeps the fp32 output). Inference (no grad) writes the input dtype directly.
    """
    return torch.float32 if any(ctx.needs_input_grad[:3]) else None


def performer_forward(q, k, v, proj, temp, eps=0.0, key_padding_mask=None, cosh=False, return_state=False,
                      out_dtype=None):
    """PerformerAttention's forward through the kernels (no autograd: ``performer_backward`` wraps it).
    out_dtype: the output's dtype (default v's; the autograd wrappers ask for fp32, see ``saved_output_dtype``).
    return_state: also (w_hi, w_lo, m, ck, KV, ksum), what the backward kernels re-use."""
    q, k, v, (w_hi, w_lo, m) = forward_inputs("performer attention", q, k, v, proj, cosh, key_padding_mask)
    B, H, T, E = q.shape
    EV = v.shape[-1]
    ck, kv, ksum = key_feature_sums(k, v, w_hi, w_lo, m, temp, key_padding_mask)
    o = empty_output(q, v, out_dtype)
    log_eps_m = math.log(eps * m) if eps > 0 else 0.0
    _APPLY(lambda meta: (triton.cdiv(T, meta["BLOCK_M"]), B * H),
           q, w_hi, w_lo, kv, ksum, ck, o, *q.stride()[:3], *o.stride()[:3],
           H, T, E, EV, m, math.sqrt(temp), 0.5 * temp, log_eps_m,
           D=w_hi.shape[1], DV=padded_dim(EV), MF=w_hi.shape[0], HAS_EPS=eps > 0)
    return (o, (w_hi, w_lo, m, ck, kv, ksum)) if return_state else o
