"""Low precision that cannot overflow where the dense layer does not (issue 15, item 5).

SS1's sketch adds R inputs before the GEMM; summed in float16 it overflowed at R >= 8 for 1e4-scale
activations (512 of 512 outputs inf) while the dense layer with the same weight stayed finite. The
reference is that dense layer in float64; the SS1 error may be at most twice the plain float16 dense
layer's error (plus a small eps), the flash-attention test rule.
"""

import pytest
import torch
import torch.nn.functional as F

from flyweight.linear import make_linear


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("compression", [8, 16])
def test_ss1_low_precision_on_cpu_matches_dense_where_dense_is_finite(dtype, compression):
    torch.manual_seed(0)
    layer = make_linear("ss1", 512, 512, compression=compression, block_k=32)
    x64 = torch.randn(16, 512, dtype=torch.float64) * 1e4  # 1e4-scale activations, as in the report
    w64, b64 = layer.to_dense().double(), layer.bias.detach().double()
    ref = x64 @ w64.t() + b64
    x = x64.to(dtype)
    sums_in_fp16 = x.half().index_select(1, layer.sketch_index).view(16, -1, compression, 32).sum(2)
    assert not torch.isfinite(sums_in_fp16).all()  # the case is real: a float16 sketch sum overflows
    low = layer.to(dtype)
    y = low(x)
    dense = F.linear(x, low.to_dense().to(dtype), low.bias)
    assert torch.isfinite(dense).all()
    assert torch.isfinite(y).all(), f"{int((~torch.isfinite(y)).sum())} of {y.numel()} outputs are not finite"
    err, dense_err = (y.double() - ref).abs().max(), (dense.double() - ref).abs().max()
    assert err <= 2 * dense_err + 1e-3 * ref.abs().max(), (err, dense_err)
    assert y.dtype == dtype
