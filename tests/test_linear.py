"""Every structured linear kind against its dense equivalent, autograd, projection and counts."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from _numerics import TOLERANCE, assert_within_baseline

from flyweight.linear import (
    LINEAR_KINDS,
    DenseLinear,
    LowRankLinear,
    MonarchLinear,
    SS1Linear,
    StructuredLinear,
    make_linear,
)

F64 = torch.float64

# (kind, kwargs, in, out): square, rectangular both ways, and non-divisible sizes where allowed.
CASES = [
    ("dense", {}, 96, 160),
    ("lowrank", {"rank": 5}, 96, 160),
    ("lowrank", {"compression": 4}, 160, 96),
    ("monarch", {"nblocks": 4}, 64, 64),
    ("monarch", {"nblocks": 4}, 64, 160),
    ("monarch", {"nblocks": 3}, 50, 37),
    ("ss1", {"compression": 4, "block_k": 8, "block_n": 16, "vec": 2}, 64, 96),
    ("ss1", {"compression": 2, "block_k": 8, "block_n": 16, "vec": 4}, 48, 40),
    ("ss1", {"compression": 4, "block_k": 8, "block_n": 8, "vec": 2, "pad": True}, 50, 24),
]
IDS = [f"{k}-{i}x{o}-{'-'.join(f'{a}{b}' for a, b in kw.items())}" for k, kw, i, o in CASES]


def build(kind, kwargs, i, o, dtype=F64, bias=True, seed=0):
    torch.manual_seed(seed)
    layer = make_linear(kind, i, o, bias=bias, dtype=dtype, **kwargs)
    with torch.no_grad():  # a non-zero bias so it is tested too
        if layer.bias is not None:
            layer.bias.normal_()
    return layer


def test_registry_names():
    assert set(LINEAR_KINDS) == {"dense", "lowrank", "monarch", "ss1"}
    assert LINEAR_KINDS["ss1"] is SS1Linear and LINEAR_KINDS["monarch"] is MonarchLinear
    for cls in LINEAR_KINDS.values():
        assert issubclass(cls, StructuredLinear)


@pytest.mark.parametrize("kind,kwargs,i,o", CASES, ids=IDS)
@pytest.mark.parametrize("bias", [True, False])
def test_forward_equals_dense_equivalent(kind, kwargs, i, o, bias):
    layer = build(kind, kwargs, i, o, bias=bias)
    x = torch.randn(2, 3, i, dtype=F64)
    y = layer(x)
    ref = x @ layer.to_dense().T
    if bias:
        ref = ref + layer.bias
    assert y.shape == (2, 3, o) and y.dtype == F64
    torch.testing.assert_close(y, ref, **TOLERANCE[torch.float64].close())
    assert layer.to_dense().shape == (o, i)


@pytest.mark.parametrize("kind,kwargs,i,o", CASES, ids=IDS)
def test_gradcheck(kind, kwargs, i, o):
    layer = build(kind, kwargs, i, o)
    x = torch.randn(3, i, dtype=F64, requires_grad=True)
    names = [n for n, _ in layer.named_parameters()]
    params = tuple(p for _, p in layer.named_parameters())

    def fn(inp, *ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (inp,))

    inputs = (x,) + tuple(p.detach().clone().requires_grad_(True) for p in params)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind,kwargs,i,o", CASES, ids=IDS)
def test_projection_of_own_dense_form_reproduces_function(kind, kwargs, i, o):
    layer = build(kind, kwargs, i, o)
    cfg = layer.settings()
    again = type(layer).from_dense(layer.to_dense(), layer.bias.detach(), **cfg)
    x = torch.randn(5, i, dtype=F64)
    torch.testing.assert_close(again(x), layer(x), **TOLERANCE[torch.float64].close())
    if kind in ("ss1", "dense") or (kind == "monarch" and i == o):
        # exact parameter recovery where the structure's parametrisation is unique
        if kind == "ss1":
            torch.testing.assert_close(again.weight, layer.weight, rtol=0, atol=1e-14)


@pytest.mark.parametrize("kind,kwargs,i,o", CASES, ids=IDS)
def test_projection_beats_random_init(kind, kwargs, i, o):
    torch.manual_seed(1)
    w = torch.randn(o, i, dtype=F64)
    proj = type(build(kind, kwargs, i, o)).from_dense(w, **kwargs)
    rand = build(kind, kwargs, i, o, seed=2)
    err_proj = torch.linalg.norm(proj.to_dense() - w)
    err_rand = torch.linalg.norm(rand.to_dense() - w)
    assert err_proj < err_rand
    if kind == "dense":
        assert err_proj == 0


def test_lowrank_full_rank_is_exact():
    torch.manual_seed(0)
    w = torch.randn(12, 7, dtype=F64)
    layer = LowRankLinear.from_dense(w, rank=7)
    torch.testing.assert_close(layer.to_dense(), w, **TOLERANCE[torch.float64].close())


def test_lowrank_projection_is_truncated_svd():
    torch.manual_seed(0)
    w = torch.randn(20, 30, dtype=F64)
    s = torch.linalg.svdvals(w)
    layer = LowRankLinear.from_dense(w, rank=6)
    err = torch.linalg.norm(layer.to_dense() - w)
    torch.testing.assert_close(err, s[6:].square().sum().sqrt())  # Eckart-Young


@pytest.mark.parametrize("i,o,b", [(16, 16, 4), (64, 64, 4), (48, 96, 4), (96, 40, 3), (30, 22, 4)])
def test_monarch_projection_is_least_squares_optimal(i, o, b):
    """No direction in parameter space lowers the Frobenius error of the projection."""
    torch.manual_seed(0)
    w = torch.randn(o, i, dtype=F64)
    proj = MonarchLinear.from_dense(w, bias=None, nblocks=b)
    eye = torch.eye(i, dtype=F64)

    def error(w1, w2):
        dense_t = torch.func.functional_call(proj, {"w1": w1, "w2": w2}, (eye,))
        return ((dense_t.T - w) ** 2).sum()

    w1 = proj.w1.detach().clone().requires_grad_(True)
    w2 = proj.w2.detach().clone().requires_grad_(True)
    base = error(w1, w2)
    g1, g2 = torch.autograd.grad(base, (w1, w2))
    assert g1.abs().max() < 1e-8 and g2.abs().max() < 1e-8  # stationary point
    with torch.no_grad():
        for _ in range(5):  # and random moves only make it worse
            assert error(w1 + 1e-3 * torch.randn_like(w1), w2 + 1e-3 * torch.randn_like(w2)) >= base - 1e-12


def test_monarch_square_sqrt_blocks_is_blockwise_rank1():
    """b*b = n: every (l, k) sub-block meets in exactly one middle index (the classic rule)."""
    n, b = 16, 4
    layer = MonarchLinear(n, n, nblocks=b, dtype=F64)
    for l in range(b):
        for k in range(b):
            js, ts = layer._mid_pairs(l, k)
            assert len(js) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind,kwargs,i,o", CASES[::2], ids=IDS[::2])
def test_dtypes_and_batch_shapes(kind, kwargs, i, o, dtype):
    layer = build(kind, kwargs, i, o, dtype=torch.float32)
    for shape in [(i,), (4, i), (2, 3, 4, i)]:
        x = torch.randn(*shape, dtype=dtype)
        y = layer(x)
        assert y.dtype == dtype and y.shape == (*shape[:-1], o)
        w64 = copy.deepcopy(layer).double().to_dense()  # the float32 parameters' exact dense product
        ref = x.double() @ w64.T + layer.bias.double()
        dense = F.linear(x, w64.to(dtype), layer.bias.to(dtype))  # the dense layer in x's dtype
        assert_within_baseline({"out": y}, {"out": ref}, dtype, {"out": dense})


def test_parameter_counts_match_closed_formulas():
    i, o = 768, 3072
    assert DenseLinear(i, o).num_parameters() == i * o + o
    r = math.floor(i * o / ((i + o) * 8))
    assert r == 76
    lr = LowRankLinear(i, o, compression=8)
    assert lr.rank == 76 and lr.num_parameters() == r * (i + o) + o
    mb = MonarchLinear(i, o, nblocks=4)
    p_in, p_out = 192, 768
    assert mb.num_parameters() == 4 * min(p_in, p_out) * (p_in + p_out) + o
    assert mb.flops_per_token() == 2 * 4 * 192 * (192 + 768)
    ss = SS1Linear(i, o, compression=4)
    assert ss.weight.shape == (o, i // 4) and ss.num_parameters() == o * i // 4 + o
    assert DenseLinear(i, o).flops_per_token() == 2 * i * o
    assert lr.flops_per_token() == 2 * 76 * (i + o)
    # SS1: the depth-K/R matmul plus the sketch additions
    assert ss.flops_per_token() == 2 * o * i // 4 + (i - i // 4)  # one sketch: K - K/R additions
    # non-divisible Monarch: padded blocks
    m = MonarchLinear(50, 37, nblocks=3, bias=False)
    assert m.num_parameters() == 3 * 13 * (17 + 13)


# ---- errors --------------------------------------------------------------------------------
def test_unknown_kind():
    with pytest.raises(ValueError, match=r"unknown linear kind 'butterfly'.*dense.*lowrank.*monarch.*ss1"):
        make_linear("butterfly", 8, 8)


@pytest.mark.parametrize("rank", [0, -3, 2.5])
def test_lowrank_bad_rank(rank):
    with pytest.raises(ValueError, match="rank"):
        LowRankLinear(8, 8, rank=rank)


def test_lowrank_compression_leaving_no_rank():
    with pytest.raises(ValueError, match="rank < 1"):
        LowRankLinear(4, 4, compression=16)


def test_lowrank_rank_above_full():
    with pytest.raises(ValueError, match="exceeds full rank"):
        LowRankLinear(8, 4, rank=5)


@pytest.mark.parametrize("kind,kwargs,i,o", CASES, ids=IDS)
def test_wrong_input_width(kind, kwargs, i, o):
    layer = build(kind, kwargs, i, o)
    with pytest.raises(ValueError, match=f"in_features={i}"):
        layer(torch.randn(2, i + 1, dtype=F64))


@pytest.mark.parametrize("kind", sorted(LINEAR_KINDS))
@pytest.mark.parametrize("bad", [0, -4, 1.5, True])
def test_bad_feature_sizes(kind, bad):
    with pytest.raises(ValueError, match="in_features must be a positive integer"):
        make_linear(kind, bad, 8)


@pytest.mark.parametrize("nblocks", [0, 2.0, 9])
def test_monarch_bad_nblocks(nblocks):
    with pytest.raises(ValueError, match="nblocks"):
        MonarchLinear(8, 16, nblocks=nblocks)


def test_each_kind_owns_its_size_rule_for_sweeps():
    """settings_for: SS1 pads widths that are not a multiple of compression * block_k; others as given."""
    from flyweight.bench.layers import _make

    assert SS1Linear.settings_for(1600, 6400, {"compression": 4}) == {"compression": 4, "pad": True}
    assert SS1Linear.settings_for(768, 3072, {"compression": 4}) == {"compression": 4, "pad": False}
    assert SS1Linear.settings_for(96, 64, {})["pad"] is True  # the defaults: compression 4 x block_k 32 = 128
    assert SS1Linear.settings_for(1600, 64, {"pad": False}) == {"pad": False}  # a given setting is kept
    given = {"nblocks": 4}
    assert LINEAR_KINDS["monarch"].settings_for(1600, 64, given) == given and LINEAR_KINDS["monarch"].settings_for(
        1600, 64, given) is not given
    layer = _make("ss1", 200, 64, {"compression": 2, "block_k": 32}, torch.float32, torch.device("cpu"))
    assert layer.pad and layer(torch.randn(3, 200)).shape == (3, 64)
