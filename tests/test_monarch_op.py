"""The Monarch Triton kernels against the layer's PyTorch path and an independent float64 formula.

Without CUDA the kernels run under TRITON_INTERPRET=1 (conftest.py) on CPU tensors with the small
``INTERPRET_TILE``, so every case below crosses tile edges in M, in the block widths and in the
reductions. The reference is the Monarch formula written with einsum (not the layer's bmm code):

    h[k*r + t] = sum_i W1[k, t, i] x[k*p_in + i],   y[s*b + l] = sum_j W2[l, s, j] h[j*b + l]
"""

import os

import pytest
import torch
import torch.nn.functional as F
from _numerics import assert_matches

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


def reference(layer, x, g):
    """y, dX, dW1, dW2, db in float64 through ``formula``."""
    w1 = layer.w1.detach().cpu().double().requires_grad_()
    w2 = layer.w2.detach().cpu().double().requires_grad_()
    b = None if layer.bias is None else layer.bias.detach().cpu().double().requires_grad_()
    x64 = x.detach().cpu().double().requires_grad_()
    y = formula(x64, w1, w2, b, layer.in_features, layer.out_features)
    y.backward(g.detach().cpu().double())
    out = {"y": y.detach(), "dx": x64.grad, "dw1": w1.grad, "dw2": w2.grad}
    if b is not None:
        out["db"] = b.grad
    return out


def run(layer, x, g):
    layer.zero_grad(set_to_none=True)
    xa = x.detach().clone().requires_grad_()
    y = layer(xa)
    y.backward(g)
    out = {"y": y.detach(), "dx": xa.grad, "dw1": layer.w1.grad, "dw2": layer.w2.grad}
    if layer.bias is not None:
        out["db"] = layer.bias.grad
    return out


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
    layer = MonarchLinear(in_f, out_f, bias=bias, nblocks=b).to(DEVICE)
    layer.backend = "triton"
    x = torch.randn(m, in_f, device=DEVICE)
    g = torch.randn(m, out_f, device=DEVICE)
    want = reference(layer, x, g)
    assert_matches(run(layer, x, g), want, 1e-5 if not ON_GPU else 2e-2)  # GPU float32 dots are tf32
    layer.backend = "torch"
    assert_matches(run(layer, x, g), want, 1e-5 if not ON_GPU else 2e-2)  # and the exact path agrees


@needs_kernels
def test_half_precision_and_batched_input():
    torch.manual_seed(3)
    layer = MonarchLinear(50, 70, nblocks=4).to(DEVICE, torch.float16)
    layer.backend = "triton"
    x = torch.randn(3, 11, 50, device=DEVICE, dtype=torch.float16)
    g = torch.randn(3, 11, 70, device=DEVICE, dtype=torch.float16)
    got = run(layer, x, g)
    want = reference(layer, x.reshape(-1, 50), g.reshape(-1, 70))
    got = {k: v.reshape(want[k].shape) for k, v in got.items()}
    assert got["y"].dtype == torch.float16 and layer.w1.grad.dtype == torch.float16
    assert_matches(got, want, 5e-3)


@needs_kernels
def test_weight_gradient_splits_sum_partials(monkeypatch):
    """Force several row slices per weight gradient: the partial sums still add up to the reference."""
    monkeypatch.setattr(O, "_target_programs", lambda device: 64)
    torch.manual_seed(5)
    layer = MonarchLinear(64, 96, nblocks=4).to(DEVICE)
    layer.backend = "triton"
    x, g = torch.randn(70, 64, device=DEVICE), torch.randn(70, 96, device=DEVICE)
    assert O._splits(70, 4, torch.device(DEVICE))[0] > 1
    assert_matches(run(layer, x, g), reference(layer, x, g), 1e-5 if not ON_GPU else 2e-2)


@needs_kernels
def test_no_grad_and_frozen_input():
    torch.manual_seed(7)
    layer = MonarchLinear(64, 32, nblocks=4).to(DEVICE)
    layer.backend = "triton"
    x = torch.randn(9, 64, device=DEVICE)
    want = formula(x.double().cpu(), layer.w1.detach().double().cpu(), layer.w2.detach().double().cpu(),
                   layer.bias.detach().double().cpu(), 64, 32)
    with torch.no_grad():
        y = layer(x)
    assert (y.cpu().double() - want).abs().max() < 1e-4
    layer(x).sum().backward()  # x needs no grad: only the weight gradients are computed
    assert layer.w1.grad is not None and layer.w2.grad is not None and layer.bias.grad is not None


@needs_kernels
def test_custom_op_matches_eager():
    torch.manual_seed(11)
    layer = MonarchLinear(50, 70, nblocks=4).to(DEVICE)
    sizes = list(layer.sizes)
    x = torch.randn(13, 50, device=DEVICE, requires_grad=True)
    y, h = O.monarch_fwd(x, layer.w1, layer.w2, layer.bias, layer.slot_table, sizes)
    g = torch.randn_like(y)
    y.backward(g)
    want = reference(layer, x, g)
    assert (y.detach().cpu().double() - want["y"]).abs().max() < 1e-4
    assert (x.grad.cpu().double() - want["dx"]).abs().max() < 1e-4
    assert (layer.w2.grad.cpu().double() - want["dw2"]).abs().max() < 1e-4
    torch.library.opcheck(O.monarch_fwd, (x.detach(), layer.w1.detach(), layer.w2.detach(),
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
    layer = MonarchLinear(40, 8 * b + 3, nblocks=b).to(DEVICE)  # output padded: the last tile is cut
    layer.backend = "triton"
    x, g = torch.randn(19, 40, device=DEVICE), torch.randn(19, 8 * b + 3, device=DEVICE)
    monkeypatch.setattr(O, "_target_programs", lambda device: 16)  # several weight-gradient slices
    assert_matches(run(layer, x, g), reference(layer, x, g), 1e-5 if not ON_GPU else 2e-2)


@needs_kernels
def test_autocast_casts_into_the_kernels():
    """Under autocast the product runs in the autocast dtype; float32 parameters get float32 grads."""
    torch.manual_seed(13)
    layer = MonarchLinear(64, 96, nblocks=4).to(DEVICE)
    layer.backend = "triton"
    x, g = torch.randn(21, 64, device=DEVICE), torch.randn(21, 96, device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.float16):
        xa = x.clone().requires_grad_()
        y = layer(xa)
    assert y.dtype == torch.float16
    y.backward(g.half())
    got = {"y": y.detach(), "dx": xa.grad, "dw1": layer.w1.grad, "dw2": layer.w2.grad, "db": layer.bias.grad}
    assert layer.w1.grad.dtype == torch.float32 and xa.grad.dtype == torch.float32
    assert_matches(got, reference(layer, x, g), 5e-3)


@needs_kernels
def test_compiled_fullgraph_matches_eager():
    """torch.compile(fullgraph=True) goes through the custom ops (aot_eager on CPU) and agrees with eager."""
    torch.manual_seed(17)
    layer = MonarchLinear(50, 70, nblocks=4).to(DEVICE)
    layer.backend = "triton"
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager" if not ON_GPU else "inductor")
    x, g = torch.randn(13, 50, device=DEVICE), torch.randn(13, 70, device=DEVICE)
    want = run(layer, x, g)
    xa = x.clone().requires_grad_()
    layer.zero_grad(set_to_none=True)
    y = compiled(xa)
    y.backward(g)
    got = {"y": y.detach(), "dx": xa.grad, "dw1": layer.w1.grad, "dw2": layer.w2.grad, "db": layer.bias.grad}
    assert_matches(got, {k: v.cpu().double() for k, v in want.items()}, 1e-6 if not ON_GPU else 2e-2)


@needs_kernels
@pytest.mark.parametrize("in_f,out_f,b,m", [(64, 96, 4, 37), (96, 64, 4, 5), (256, 128, 4, 21),
                                            (48, 200, 2, 70), (256, 500, 2, 7), (40, 120, 8, 9),
                                            (60, 90, 3, 17)])
def test_fused_forward_matches_float64(monkeypatch, in_f, out_f, b, m):
    """The single-kernel forward (inference): same function, padded widths, r/b from 4 to 64."""
    from flyweight.kernels.monarch import tuning

    torch.manual_seed(in_f + m)
    layer = MonarchLinear(in_f, out_f, nblocks=b).to(DEVICE)
    layer.backend = "triton"
    x = torch.randn(m, in_f, device=DEVICE)
    want = reference(layer, x, torch.zeros(m, out_f))["y"]
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
        y = layer(x)
    assert calls == [1]  # the fused kernel ran, not the two-kernel forward
    err = (y.cpu().double() - want).abs().max().item() / want.abs().max().item()
    assert err <= (1e-5 if not ON_GPU else 2e-2)
