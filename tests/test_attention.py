"""Attention variants against brute-force dense references (float64), memory, seeds and low precision."""

import math

import pytest
import torch
from _numerics import TOLERANCE, assert_within_baseline
from torch.utils._python_dispatch import TorchDispatchMode

from flyweight.attention import ATTENTION_KINDS, make_attention, matched_budget
from flyweight.attention.features import gaussian_orthogonal_matrix

KINDS = ["full", "local", "performer", "sblocal"]


def dense_attention(q, k, v, temp=None, allowed=None, key_padding_mask=None):
    """softmax(temp q k^T + mask) v, materialising the T x T matrix (the reference)."""
    temp = q.shape[-1] ** -0.5 if temp is None else temp
    s = temp * q @ k.transpose(-1, -2)
    if allowed is not None:
        s = s.masked_fill(~allowed, -math.inf)
    if key_padding_mask is not None:
        s = s.masked_fill(key_padding_mask[:, None, None, :], -math.inf)
    return torch.softmax(s, -1) @ v


def band(T, w):
    i, j = torch.arange(T)[:, None], torch.arange(T)[None]
    return (j - i >= -(w // 2)) & (j - i <= math.ceil(w / 2) - 1)


def qkv(B=2, H=2, T=37, E=8, scale=1.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return tuple(scale * torch.randn(B, H, T, E, generator=g, dtype=dtype) for _ in range(3))


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_registry_and_errors():
    assert set(KINDS) <= set(ATTENTION_KINDS)
    with pytest.raises(ValueError, match="unknown attention 'nope'; valid: .*sblocal"):
        make_attention("nope")
    with pytest.raises(TypeError, match="accepted: \\('window_size', 'causal', 'impl'\\)"):
        make_attention("local", nb_features=3)
    with pytest.raises(ValueError, match="nb_features must be a positive even"):
        make_attention("sblocal", window_size=4, nb_features=3)
    with pytest.raises(ValueError, match="key_padding_mask must be a bool"):
        make_attention("full")(*qkv(T=5), key_padding_mask=torch.zeros(2, 5))


@pytest.mark.parametrize("T,w", [(1, 1), (7, 1), (7, 2), (37, 5), (37, 16), (97, 33), (20, 64)])
def test_local_equals_masked_full(T, w):
    q, k, v = qkv(T=T)
    out = make_attention("local", window_size=w)(q, k, v, softmax_temp=0.3)
    ref = dense_attention(q, k, v, 0.3, band(T, w))
    torch.testing.assert_close(out, ref, **TOLERANCE[torch.float64].close())


def test_local_with_key_padding():
    q, k, v = qkv(T=41)
    pad = torch.zeros(2, 41, dtype=torch.bool)
    pad[0, 38:] = True  # query 40 still sees keys 36, 37
    pad[1, ::3] = True
    out = make_attention("local", window_size=9)(q, k, v, key_padding_mask=pad)
    ref = dense_attention(q, k, v, None, band(41, 9), pad)
    torch.testing.assert_close(out, ref, **TOLERANCE[torch.float64].close())
    # a query whose whole window is padding gets 0 (the dense reference would give NaN)
    pad[0, 30:] = True
    out = make_attention("local", window_size=9)(q, k, v, key_padding_mask=pad)
    assert torch.isfinite(out).all() and out[0, :, 36:].abs().max() == 0


@pytest.mark.parametrize("T", [5, 64, 97])
def test_sblocal_window_covering_everything_is_full(T):
    q, k, v = qkv(T=T)
    pad = torch.zeros(2, T, dtype=torch.bool)
    pad[1, T // 2 :] = True
    out = make_attention("sblocal", window_size=2 * T, nb_features=4, seed=3)(q, k, v, key_padding_mask=pad)
    ref = dense_attention(q, k, v, key_padding_mask=pad)
    torch.testing.assert_close(out, ref, **TOLERANCE[torch.float64].close())


def test_full_matches_reference_with_padding():
    q, k, v = qkv(T=23)
    pad = torch.rand(2, 23, generator=torch.Generator().manual_seed(1)) < 0.3
    out = make_attention("full")(q, k, v, softmax_temp=0.5, key_padding_mask=pad)
    torch.testing.assert_close(out, dense_attention(q, k, v, 0.5, None, pad))


def test_performer_ignores_padded_keys():
    q, k, v = qkv(T=30, scale=0.5)
    pad = torch.zeros(2, 30, dtype=torch.bool)
    pad[:, 20:] = True
    attn = make_attention("performer", nb_features=16, seed=0)
    out = attn(q, k, v, key_padding_mask=pad)
    # padded keys (changed arbitrarily) must not change the output
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 20:] += 5.0
    v2[:, :, 20:] -= 3.0
    torch.testing.assert_close(attn(q, k2, v2, key_padding_mask=pad), out)


@pytest.mark.parametrize("kind", ["performer", "sblocal"])
def test_error_shrinks_as_features_grow(kind):
    q, k, v = qkv(B=1, H=2, T=128, E=16, scale=0.6, seed=1)
    ref = dense_attention(q, k, v)
    errors = []
    for m in (8, 64, 512):
        kw = {"window_size": 8} if kind == "sblocal" else {}
        errs = [rel_err(make_attention(kind, nb_features=m, seed=s, **kw)(q, k, v), ref) for s in range(4)]
        errors.append(sum(errs) / len(errs))
    assert errors[0] > errors[1] > errors[2], errors
    assert errors[2] < 0.5 * errors[0], errors


def structured_qkv(T=512, E=16, segment=8, strength=4.0, noise=0.2, seed=0):
    """Tokens in runs of `segment` share a direction (strong local attention) plus a broad low-rank part."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(T // segment, E, generator=g, dtype=torch.float64)
    base = (base / base.norm(dim=-1, keepdim=True)).repeat_interleave(segment, 0)[None, None]
    q = strength * base + noise * torch.randn(1, 2, T, E, generator=g, dtype=torch.float64)
    k = strength * base + noise * torch.randn(1, 2, T, E, generator=g, dtype=torch.float64)
    v = torch.randn(1, 2, T, E, generator=g, dtype=torch.float64)
    return q, k, v


def test_sblocal_beats_performer_and_local_at_the_same_budget():
    q, k, v = structured_qkv()
    T, E = q.shape[2], q.shape[3]
    ref = dense_attention(q, k, v)
    local = make_attention("local", window_size=128)
    perf = [make_attention("performer", nb_features=64, seed=s) for s in range(4)]
    sb = [make_attention("sblocal", window_size=64, nb_features=32, seed=s) for s in range(4)]
    mem = {a.kind: a.cost(T, E).memory for a in (local, perf[0], sb[0])}
    assert len(set(mem.values())) == 1, mem  # the same attention memory
    e_local = rel_err(local(q, k, v), ref)
    e_perf = sum(rel_err(a(q, k, v), ref) for a in perf) / 4
    e_sb = sum(rel_err(a(q, k, v), ref) for a in sb) / 4
    assert e_sb < 0.8 * e_perf and e_sb < 0.8 * e_local, (e_sb, e_perf, e_local)


class MaxTensorSize(TorchDispatchMode):
    """Records the largest tensor any op produces (numel)."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.max_numel = max(self.max_numel, t.numel())
        return out


@pytest.mark.parametrize(
    "kind,kwargs",
    [
        ("local", {"window_size": 128}),
        ("performer", {"nb_features": 64}),
        ("sblocal", {"window_size": 64, "nb_features": 32}),
    ],
)
def test_no_t_by_t_allocation_at_4096(kind, kwargs):
    T, E = 4096, 16
    q, k, v = qkv(B=1, H=1, T=T, E=E, dtype=torch.float32)
    attn = make_attention(kind, **kwargs)
    with MaxTensorSize() as rec:
        out = attn(q, k, v)
    assert out.shape == q.shape and torch.isfinite(out).all()
    assert rec.max_numel <= 4 * T * 128, rec.max_numel  # O(T * (w + m)), far below T * T = 16.8M
    from flyweight.bench.timing import peak_memory_bytes

    peak = peak_memory_bytes(lambda: attn(q, k, v), torch.device("cpu"))
    assert peak < T * T * 4 / 4, peak  # a quarter of what one fp32 T x T matrix needs (64 MiB)
    # the detector does see a T x T matrix when one exists
    with MaxTensorSize() as rec_dense:
        dense_attention(q, k, v)
    assert rec_dense.max_numel >= T * T


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kind", KINDS)
def test_low_precision_large_logits_stay_finite(kind, dtype):
    q, k, v = qkv(B=1, H=2, T=96, E=16, scale=1.0, dtype=torch.float32, seed=2)
    q, k = q * 12, k * 12  # logits ~ +-150: exp overflows fp16/bf16 and fp32 without max subtraction
    kw = {
        "local": {"window_size": 16},
        "performer": {"nb_features": 32},
        "sblocal": {"window_size": 16, "nb_features": 16},
    }.get(kind, {})
    attn = make_attention(kind, **kw)
    out = attn(q.to(dtype), k.to(dtype), v.to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    # float64 on the same (rounded) inputs: the error left is the low-precision computation's own
    ref = attn(*(t.to(dtype).double() for t in (q, k, v)))
    assert torch.isfinite(ref).all()
    assert_within_baseline({"out": out}, {"out": ref}, dtype)  # a few output ulps at |v| ~ 2


def test_features_are_seeded_and_redrawable():
    q, k, v = qkv(T=16, scale=0.5)
    a, b = (
        make_attention("performer", nb_features=12, seed=5),
        make_attention("performer", nb_features=12, seed=5),
    )
    torch.testing.assert_close(a(q, k, v), b(q, k, v))
    c = make_attention("performer", nb_features=12, seed=6)
    assert not torch.allclose(a(q, k, v), c(q, k, v))
    before = a.features.clone()
    a.redraw_features()
    assert a.seed == 6 and not torch.equal(before, a.features)
    torch.testing.assert_close(a.features, c.features)
    sb = make_attention("sblocal", window_size=4, nb_features=12, seed=1)
    sb(q, k, v)
    assert sb.features.shape == (6, 8)  # cosh: m/2 projections give m features


def test_block_orthogonal_features():
    w = gaussian_orthogonal_matrix(40, 16, seed=0, dtype=torch.float64)
    assert w.shape == (40, 16)
    for start in (0, 16):  # rows inside a block are orthogonal
        blk = w[start : start + 16]
        gram = blk @ blk.T
        off = gram - torch.diag(torch.diagonal(gram))
        assert off.abs().max() < 1e-9
    torch.testing.assert_close(w, gaussian_orthogonal_matrix(40, 16, seed=0, dtype=torch.float64))


def test_costs_and_spec_budgets():
    # the spec's "1/32 of full attention memory" settings for T2T-ViT at 224 px
    assert matched_budget("local", 3136) == {"name": "local", "window_size": 98}
    assert matched_budget("performer", 3136) == {"name": "performer", "nb_features": 49}
    assert matched_budget("sblocal", 3136) == {"name": "sblocal", "window_size": 49, "nb_features": 24}
    assert matched_budget("local", 784)["window_size"] == 24
    assert matched_budget("performer", 784)["nb_features"] == 12
    assert matched_budget("sblocal", 784, seed=3) == {
        "name": "sblocal",
        "window_size": 12,
        "nb_features": 6,
        "seed": 3,
    }
    for T in (3136, 784, 196):
        full = make_attention("full").cost(T, 64)
        assert full.memory == T * T and full.flops == 4 * T * T * 64
        for kind in ("local", "performer", "sblocal"):
            spec = matched_budget(kind, T)
            cost = make_attention(spec.pop("name"), **spec).cost(T, 64)
            assert cost.memory <= T * T / 32 and cost.flops < full.flops / 8


def test_sblocal_matches_the_spec_formula_densely():
    """The spec's estimator written with T x T matrices (same features) equals the block-wise code."""
    q, k, v = qkv(B=1, H=2, T=45, E=8, scale=0.7, seed=4)
    w, m, temp = 7, 16, 0.4
    attn = make_attention("sblocal", window_size=w, nb_features=m, seed=2)
    out = attn(q, k, v, softmax_temp=temp)
    W = attn.features.double()  # (m/2, E) projections

    def phi(x):
        xs = x * temp**0.5
        wx = xs @ W.T
        sq = (xs * xs).sum(-1, keepdim=True) / 2
        return torch.cat([torch.exp(wx - sq), torch.exp(-wx - sq)], -1) / m**0.5

    s = temp * q @ k.transpose(-1, -2)
    p = phi(q) @ phi(k).transpose(-1, -2)
    L = band(45, w)
    exact = torch.where(L, torch.exp(s), torch.zeros(()))
    p_in = torch.where(L, p, torch.zeros(()))
    z = exact.sum(-1, keepdim=True) + torch.clamp(
        p.sum(-1, keepdim=True) - p_in.sum(-1, keepdim=True), min=1e-24
    )
    o = ((exact - p_in) @ v + phi(q) @ (phi(k).transpose(-1, -2) @ v)) / z
    torch.testing.assert_close(out, o, **TOLERANCE[torch.float64].close())


def test_performer_matches_the_favor_formula():
    q, k, v = qkv(B=2, H=1, T=33, E=8, scale=0.7, seed=5)
    attn = make_attention("performer", nb_features=24, seed=9)
    out = attn(q, k, v)
    W, temp = attn.features.double(), 8**-0.5

    def phi(x):
        xs = x * temp**0.5
        return torch.exp(xs @ W.T - (xs * xs).sum(-1, keepdim=True) / 2) / 24**0.5

    fq, fk = phi(q), phi(k)
    ref = fq @ (fk.transpose(-1, -2) @ v) / (fq @ fk.sum(-2, keepdim=True).transpose(-1, -2))
    torch.testing.assert_close(out, ref, **TOLERANCE[torch.float64].close())
