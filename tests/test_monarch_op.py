"""The Monarch Triton kernels against the layer's PyTorch path and an independent float64 formula.

Without CUDA the kernels run under TRITON_INTERPRET=1 (conftest.py) on CPU tensors with the small
``INTERPRET_TILE``, so every case below crosses tile edges in M, in the block widths and in the
reductions. The baseline (in the kernels' dtype) and the float64 reference of
``_numerics.check_kernel`` are the Monarch formula written with einsum (not the layer's bmm code):

    h[k*r + t] = sum_i W1[k, t, i] x[k*p_in + i],   y[s*b + l] = sum_j W2[l, s, j] h[j*b + l]
"""

import os

import pytest
import torch
import torch.nn.functional as F
from _numerics import assert_within_baseline, check_kernel, upstream_gradient

from flyweight.kernels.monarch import monarch_sizes, route, slot_table
from flyweight.kernels.monarch import op as O
from flyweight.linear import MonarchLinear

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
HAS_KERNELS = ON_GPU or os.environ.get("TRITON_INTERPRET") == "1"
needs_kernels = pytest.mark.skipif(not HAS_KERNELS, reason="needs CUDA or TRITON_INTERPRET=1")
F64 = torch.float64


def formula(x, w1, w2, bias, in_features, out_features):
    """The Monarch product from its definition, in the tensors' dtype."""
    b, r, p_in = w1.shape
    p_out = w2.shape[1]
    m = x.shape[0]
    xp = F.pad(x, (0, b * p_in - in_features)).view(m, b, p_in)
    h = torch.einsum("mki,kti->mkt", xp, w1).reshape(m, b * r)  # middle index k*r + t
    hv = h.view(m, r, b)  # the same vector read as [j, l] with index j*b + l
    y = torch.einsum("mjl,lsj->msl", hv, w2).reshape(m, p_out * b)[:, :out_features]
    return y if bias is None else y + bias


def monarch_functions(layer):
    """(kernel, baseline) of (x, w1, w2[, bias]): the layer's forward on its backend, and ``formula``."""

    def kernel(x, w1, w2, bias=None):
        params = {"w1": w1, "w2": w2} | ({} if bias is None else {"bias": bias})
        return torch.func.functional_call(layer, params, (x,))

    def baseline(x, w1, w2, bias=None):
        y = formula(x.reshape(-1, layer.in_features), w1, w2, bias, layer.in_features, layer.out_features)
        return y.reshape(*x.shape[:-1], layer.out_features)

    return kernel, baseline


def monarch_inputs(layer, x):
    params = {"w1": layer.w1.detach(), "w2": layer.w2.detach()}
    return {"x": x, **params, **({} if layer.bias is None else {"bias": layer.bias.detach()})}


# the kernels take float16/bfloat16 on CUDA; float32 (every dtype) under the interpreter
KERNEL_DTYPE = torch.float16 if ON_GPU else torch.float32


CASES = [  # (in, out, nblocks, M, bias): rectangular both ways, padded widths, b not dividing r, odd M
    (64, 96, 4, 37, True),
    (96, 64, 4, 1, False),
    (50, 70, 4, 17, True),  # p_in = 13, p_out = 18: padded input and output, r = 13 not a multiple of b
    (40, 40, 8, 33, True),  # r = 5 < tile
    (100, 30, 3, 20, False),  # b = 3, padded
    (48, 200, 2, 70, True),  # r = 24, p_out = 100: several output tiles
    (256, 128, 4, 21, True),  # r = 32, r/b = 8: the vectorised slot runs (SLOT_VEC = 8)
]


def test_slot_vec_runs_are_contiguous():
    """Where op.slot_vec promises runs of 8, each aligned group of 8 slots is one plane, in order."""
    for in_f, out_f, b in [(256, 128, 4), (768, 3072, 4), (3072, 768, 4), (768, 2304, 2), (768, 3072, 8)]:
        sizes = monarch_sizes(in_f, out_f, b)
        vec = O.slot_vec(sizes)
        _, planes, cols = slot_table(sizes).long()
        off = planes * sizes.mid * 1000 + cols  # any plane stride
        if vec == 1:
            assert (sizes.mid % b) or (sizes.mid // b) % 8
            continue
        groups = off.view(b, -1, vec)
        assert torch.all(groups - groups[..., :1] == torch.arange(vec))
        assert torch.all(groups[..., 0] % vec == 0)


def test_slot_table_is_the_stride_permutation():
    """Slot u of block k sends W1 row t to H[plane, :, col] with plane*1 + col*b = k*r + t."""
    for in_f, out_f, b, _, _ in CASES:
        sizes = monarch_sizes(in_f, out_f, b)
        rows, planes, cols = slot_table(sizes).long()
        r = sizes.mid
        for k in range(b):
            assert sorted(rows[k].tolist()) == list(range(r))  # each W1 row once
            assert torch.equal(cols[k] * b + planes[k], k * r + rows[k])
        h_pos = (planes * r + cols).flatten()
        assert sorted(h_pos.tolist()) == list(range(b * r))  # every H slot written exactly once
        assert torch.all(planes[:, 1:] >= planes[:, :-1])  # stores grouped by plane


@needs_kernels
@pytest.mark.parametrize("in_f,out_f,b,m,bias", CASES)
def test_kernels_match_float64_formula(in_f, out_f, b, m, bias):
    torch.manual_seed(in_f + out_f + m)
    layer = MonarchLinear(in_f, out_f, bias=bias, nblocks=b).to(DEVICE, KERNEL_DTYPE)
    x = torch.randn(m, in_f, device=DEVICE, dtype=KERNEL_DTYPE)
    for backend in ("triton", "torch"):  # the kernels, and the exact PyTorch path
        layer.backend = backend
        got = check_kernel(*monarch_functions(layer), monarch_inputs(layer, x), KERNEL_DTYPE)
        assert set(got) == {"out", "dx", "dw1", "dw2"} | ({"dbias"} if bias else set())


@needs_kernels
def test_half_precision_and_batched_input():
    torch.manual_seed(3)
    layer = MonarchLinear(50, 70, nblocks=4).to(DEVICE, torch.float16)
    layer.backend = "triton"
    x = torch.randn(3, 11, 50, device=DEVICE, dtype=torch.float16)
    got = check_kernel(*monarch_functions(layer), monarch_inputs(layer, x), torch.float16)
    assert got["out"].shape == (3, 11, 70) and got["out"].dtype == got["dw1"].dtype == torch.float16


@needs_kernels
def test_weight_gradient_splits_sum_partials(monkeypatch):
    """Force several row slices per weight gradient: the partial sums still add up to the reference."""
    monkeypatch.setattr(O, "_target_programs", lambda device: 64)
    torch.manual_seed(5)
    layer = MonarchLinear(64, 96, nblocks=4).to(DEVICE, KERNEL_DTYPE)
    layer.backend = "triton"
    x = torch.randn(70, 64, device=DEVICE, dtype=KERNEL_DTYPE)
    assert O._splits(70, 4, torch.device(DEVICE))[0] > 1
    check_kernel(*monarch_functions(layer), monarch_inputs(layer, x), KERNEL_DTYPE)


@needs_kernels
def test_no_grad_and_frozen_input():
    torch.manual_seed(7)
    layer = MonarchLinear(64, 32, nblocks=4).to(DEVICE, KERNEL_DTYPE)
    layer.backend = "triton"
    x = torch.randn(9, 64, device=DEVICE, dtype=KERNEL_DTYPE)
    with torch.no_grad():
        check_kernel(*monarch_functions(layer), monarch_inputs(layer, x), KERNEL_DTYPE, backward=False)
    layer(x).sum().backward()  # x needs no grad: only the weight gradients are computed
    assert layer.w1.grad is not None and layer.w2.grad is not None and layer.bias.grad is not None


@needs_kernels
def test_custom_op_matches_eager():
    torch.manual_seed(11)
    layer = MonarchLinear(50, 70, nblocks=4).to(DEVICE, KERNEL_DTYPE)
    sizes = list(layer.sizes)
    x = torch.randn(13, 50, device=DEVICE, dtype=KERNEL_DTYPE)
    _, baseline = monarch_functions(layer)
    check_kernel(lambda x, w1, w2, bias: O.monarch_fwd(x, w1, w2, bias, layer.slot_table, sizes)[0], baseline,
                 monarch_inputs(layer, x), KERNEL_DTYPE)
    torch.library.opcheck(O.monarch_fwd, (x, layer.w1.detach(), layer.w2.detach(),
                                          layer.bias.detach(), layer.slot_table, sizes),
                          test_utils=("test_schema", "test_faketensor"))


def test_routes():
    layer = MonarchLinear(64, 64)
    assert route(torch.zeros(2, 64)) == "torch"  # CPU: the exact PyTorch path
    assert route(torch.zeros(2, 64, dtype=torch.float16)) == "torch"
    assert route(torch.zeros(2, 64), "torch") == "torch"
    with pytest.raises(ValueError, match="backend must be one of"):
        route(torch.zeros(2, 64), "cuda")
    if not HAS_KERNELS:
        with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
            route(torch.zeros(2, 64), "triton")
    y = layer(torch.randn(3, 64))
    assert y.shape == (3, 64)


def test_cpu_path_unchanged_and_table_moves():
    """backend auto on CPU is the PyTorch path bit for bit; the slot table is a non-persistent buffer."""
    torch.manual_seed(1)
    layer = MonarchLinear(50, 70, nblocks=4)
    x = torch.randn(5, 50)
    y = layer(x)
    assert torch.equal(y, layer._matmul(x) + layer.bias)
    assert "slot_table" not in layer.state_dict()
    assert torch.equal(layer.slot_table, slot_table(layer.sizes))
    layer.to(torch.float64)
    assert layer.slot_table.dtype == torch.int32  # buffers of integer dtype keep it


@needs_kernels
@pytest.mark.parametrize("second", ["strided", "joined"])
@pytest.mark.parametrize("b", [2, 3, 4, 8])
def test_joined_and_strided_kernels(monkeypatch, second, b):
    """The kernels that touch Y / dY: one block per program (stride-b accesses) or all b blocks of a
    contiguous tile in one program (forward for b in 2/4/8, backward for b in 2/4)."""
    from flyweight.kernels.monarch import tuning

    monkeypatch.setattr(tuning, "SECOND", second)
    monkeypatch.setattr(tuning, "BACKWARD", second)
    torch.manual_seed(b)
    # output padded: the last tile is cut
    layer = MonarchLinear(40, 8 * b + 3, nblocks=b).to(DEVICE, KERNEL_DTYPE)
    layer.backend = "triton"
    x = torch.randn(19, 40, device=DEVICE, dtype=KERNEL_DTYPE)
    monkeypatch.setattr(O, "_target_programs", lambda device: 16)  # several weight-gradient slices
    check_kernel(*monarch_functions(layer), monarch_inputs(layer, x), KERNEL_DTYPE)


@needs_kernels
def test_autocast_casts_into_the_kernels():
    """Under autocast the product runs in the autocast dtype; float32 parameters get float32 grads."""
    torch.manual_seed(13)
    layer = MonarchLinear(64, 96, nblocks=4).to(DEVICE)
    layer.backend = "triton"
    x = torch.randn(21, 64, device=DEVICE)
    kernel, baseline = monarch_functions(layer)

    def autocast(fn):  # float64 (the reference) is left alone by autocast
        return lambda **inputs: torch.autocast(DEVICE, dtype=torch.float16)(fn)(**inputs)

    got = check_kernel(autocast(kernel), autocast(baseline), monarch_inputs(layer, x), torch.float32,
                       precision=torch.float16)
    assert got["out"].dtype == torch.float16
    assert got["dw1"].dtype == got["dx"].dtype == torch.float32


@needs_kernels
def test_compiled_fullgraph_matches_eager():
    """torch.compile(fullgraph=True) goes through the custom ops (aot_eager on CPU) and agrees with eager."""
    torch.manual_seed(17)
    layer = MonarchLinear(50, 70, nblocks=4).to(DEVICE, KERNEL_DTYPE)
    layer.backend = "triton"
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager" if not ON_GPU else "inductor")
    x = torch.randn(13, 50, device=DEVICE, dtype=KERNEL_DTYPE)
    eager = check_kernel(*monarch_functions(layer), monarch_inputs(layer, x), KERNEL_DTYPE)
    layer.zero_grad(set_to_none=True)
    xa = x.clone().requires_grad_()
    y = compiled(xa)
    y.backward(upstream_gradient(y.shape, KERNEL_DTYPE, DEVICE))  # the gradient check_kernel pushed back
    got = {"out": y.detach(), "dx": xa.grad, "dw1": layer.w1.grad, "dw2": layer.w2.grad,
           "dbias": layer.bias.grad}
    if ON_GPU:  # inductor may fuse and reorder around the kernels
        assert_within_baseline(got, {k: v.double() for k, v in eager.items()}, KERNEL_DTYPE)
    else:  # aot_eager runs the same ops as eager: bit for bit
        assert [k for k in eager if not torch.equal(got[k], eager[k])] == []


@needs_kernels
@pytest.mark.parametrize("in_f,out_f,b,m", [(64, 96, 4, 37), (96, 64, 4, 5), (256, 128, 4, 21),
                                            (48, 200, 2, 70), (256, 500, 2, 7), (40, 120, 8, 9),
                                            (60, 90, 3, 17)])
def test_fused_forward_matches_float64(monkeypatch, in_f, out_f, b, m):
    """The single-kernel forward (inference): same function, padded widths, r/b from 4 to 64."""
    from flyweight.kernels.monarch import tuning

    torch.manual_seed(in_f + m)
    layer = MonarchLinear(in_f, out_f, nblocks=b).to(DEVICE, KERNEL_DTYPE)
    layer.backend = "triton"
    x = torch.randn(m, in_f, device=DEVICE, dtype=KERNEL_DTYPE)
    sizes = layer.sizes
    if not O.fused_applies(sizes):
        with pytest.raises(ValueError, match="divide the middle width"):
            O.fused_forward(x, layer.w1, layer.w2, layer.bias, sizes)
        return
    monkeypatch.setattr(tuning, "FUSED", "inference")
    calls = []
    real = O.fused_forward
    monkeypatch.setattr(O, "fused_forward", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        check_kernel(*monarch_functions(layer), monarch_inputs(layer, x), KERNEL_DTYPE, backward=False)
    assert calls == [1]  # the fused kernel ran, not the two-kernel forward
