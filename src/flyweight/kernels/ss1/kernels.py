"""The SS1 Triton kernels: the phase-0 sketch S0 = sum over the R chunks of the rotated input, and the
same sketch fused into the GEMM that follows it.

Only ``@triton.jit`` code lives here; ``op.py`` checks, allocates and launches. By default the GEMM
after the sketch is the library's (``F.linear`` against the stored weight); ``ss1_fused_kernel``
builds each sketch tile on chip and feeds it to the tensor cores directly (one launch, S0 never in
memory), for forwards without grad where the measurements favour it (``tuning.FUSED``).
"""

import triton
import triton.language as tl


@triton.jit(do_not_specialize=["r0m", "r1m"])
def ss1_sketch_kernel(
    x_ptr, s_ptr,
    M, K, KC,
    stride_xm, stride_xk, stride_sm,
    r0m, r1m,
    R: tl.constexpr, BK: tl.constexpr, VEC: tl.constexpr, D: tl.constexpr,
    BM: tl.constexpr, BJ: tl.constexpr,
):
    """S0[m, j] = sum_c X[m, (k*R + c)*BK + (j % BK + h0(k, c)) % BK], k = j // BK, in fp32.

    K is the real input width: columns at or past it (the zero padding of a padded layer) read 0,
    so a padded layer needs no padded copy of X. Sources come in runs of VEC contiguous columns.
    """
    offs_m = tl.program_id(0) * BM + tl.arange(0, BM)
    offs_j = tl.program_id(1) * BJ + tl.arange(0, BJ)
    row_mask = (offs_m < M)[:, None]
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm
    acc = _sketch_tile(x_rows, stride_xk, offs_j, row_mask, K, KC, r0m, r1m, R, BK, VEC, D, BM, BJ)
    out = s_ptr + offs_m[:, None].to(tl.int64) * stride_sm + offs_j[None, :]
    tl.store(out, acc.to(s_ptr.dtype.element_ty), mask=row_mask & (offs_j < KC)[None, :])


@triton.jit
def _sketch_tile(x_rows, stride_xk, offs_j, row_mask, K, KC, r0m, r1m,
                 R: tl.constexpr, BK: tl.constexpr, VEC: tl.constexpr, D: tl.constexpr,
                 BM: tl.constexpr, BJ: tl.constexpr):
    """The (BM, BJ) tile of S0 at sketch columns offs_j, in fp32: the sum of its R rotated chunks."""
    k = offs_j // BK
    t = offs_j % BK
    j_mask = offs_j < KC
    acc = tl.zeros((BM, BJ), dtype=tl.float32)
    for c in tl.static_range(R):
        h0 = VEC * ((r1m * (k + 1) + r0m * (c + 1)) % D)
        src = (k * R + c) * BK + (t + h0) % BK
        src = tl.max_contiguous(tl.multiple_of(src, VEC), VEC)
        mask = row_mask & (j_mask & (src < K))[None, :]
        acc += tl.load(x_rows + src[None, :] * stride_xk, mask=mask, other=0.0).to(tl.float32)
    return acc


@triton.jit(do_not_specialize=["r0m", "r1m"])
def ss1_fused_kernel(
    x_ptr, w_ptr, b_ptr, y_ptr,
    M, K, KC, N,
    stride_xm, stride_xk, stride_wn, stride_ym,
    r0m, r1m,
    R: tl.constexpr, BK: tl.constexpr, VEC: tl.constexpr, D: tl.constexpr, HAS_BIAS: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BJ: tl.constexpr,
):
    """Y[m, n] = sum_j S0[m, j] Wr[n, j] + b[n]: each S0 tile is built on chip (as the sketch kernel
    builds it, rounded to the input dtype as the two-launch path stores it) and multiplied at once.

    Wr is (N, KC) row-major (the stored layout). fp32 accumulation; fp32 inputs multiply in IEEE fp32
    (no tf32), as ``F.linear`` does by default.
    """
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = pid_n * BN + tl.arange(0, BN)
    row_mask = (offs_m < M)[:, None]
    n_mask = offs_n < N
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm
    w_rows = w_ptr + offs_n[:, None].to(tl.int64) * stride_wn
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for j0 in range(0, KC, BJ):
        offs_j = j0 + tl.arange(0, BJ)
        s = _sketch_tile(x_rows, stride_xk, offs_j, row_mask, K, KC, r0m, r1m, R, BK, VEC, D, BM, BJ)
        w = tl.load(w_rows + offs_j[None, :], mask=n_mask[:, None] & (offs_j < KC)[None, :], other=0.0)
        if w_ptr.dtype.element_ty == tl.float32:
            acc += tl.dot(s, tl.trans(w), input_precision="ieee")
        else:
            acc += tl.dot(s.to(w_ptr.dtype.element_ty), tl.trans(w))
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=n_mask, other=0.0).to(tl.float32)[None, :]
    out = y_ptr + offs_m[:, None].to(tl.int64) * stride_ym + offs_n[None, :]
    tl.store(out, acc.to(y_ptr.dtype.element_ty), mask=row_mask & n_mask[None, :])
