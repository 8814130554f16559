"""The SS1 Triton kernel: the phase-0 sketch S0 = sum over the R chunks of the rotated input.

Only ``@triton.jit`` code lives here; ``op.py`` checks, allocates and launches. The GEMM that
follows the sketch is the library's (``F.linear`` against the stored weight), so this is the whole
of SS1's own GPU code.
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
    k = offs_j // BK
    t = offs_j % BK
    row_mask = (offs_m < M)[:, None]
    j_mask = offs_j < KC
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * stride_xm
    acc = tl.zeros((BM, BJ), dtype=tl.float32)
    for c in tl.static_range(R):
        h0 = VEC * ((r1m * (k + 1) + r0m * (c + 1)) % D)
        src = (k * R + c) * BK + (t + h0) % BK
        src = tl.max_contiguous(tl.multiple_of(src, VEC), VEC)
        mask = row_mask & (j_mask & (src < K))[None, :]
        acc += tl.load(x_rows + src[None, :] * stride_xk, mask=mask, other=0.0).to(tl.float32)
    out = s_ptr + offs_m[:, None].to(tl.int64) * stride_sm + offs_j[None, :]
    tl.store(out, acc.to(s_ptr.dtype.element_ty), mask=row_mask & j_mask[None, :])
