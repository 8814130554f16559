"""SS1 against an independent, literal loop implementation of the operator (docs/ss1-kernels.md)."""

import pytest
import torch
from _numerics import TOLERANCE, assert_within_baseline

from flyweight.kernels.ss1 import HASH_PRIME, draw_hash_coeffs
from flyweight.linear import SS1Linear, make_linear

F64 = torch.float64


def spec_hash(coeffs, vec, bk, pn, k, c):
    r0, r1, r2, r3 = coeffs
    return ((r3 + r2 * pn + r1 * (k + 1) + r0 * (c + 1)) * vec) % bk


def spec_index(n_out, in_features, coeffs, R, bk, bn, vec):
    """(N, K) column of Wc that W[n, r] reads: k*BK + (s - h(n // BN, k, c)) mod BK, the spec's loops."""
    idx = torch.zeros(n_out, in_features, dtype=torch.int64)
    for n in range(n_out):
        for r in range(in_features):
            blk, s = divmod(r, bk)
            k, c = divmod(blk, R)
            idx[n, r] = k * bk + (s - spec_hash(coeffs, vec, bk, n // bn, k, c)) % bk
    return idx


def spec_index_vectorised(n_out, in_features, coeffs, R, bk, bn, vec):
    """``spec_index`` with the loops as index arithmetic on tensors: the same formula, fast enough for
    GPU-sized layers (``test_vectorised_spec_index_is_the_loop_one`` ties the two)."""
    r0, r1, r2, r3 = coeffs
    n, r = torch.arange(n_out)[:, None], torch.arange(in_features)[None, :]
    blk, s = r // bk, r % bk
    k, c = blk // R, blk % R
    h = ((r3 + r2 * (n // bn) + r1 * (k + 1) + r0 * (c + 1)) * vec) % bk
    return k * bk + (s - h) % bk


def spec_dense(wc, in_features, coeffs, R, bk, bn, vec):
    """W[n, r] = Wc[n, k*BK + (s - h(n // BN, k, c)) mod BK]."""
    return wc.gather(1, spec_index(wc.shape[0], in_features, coeffs, R, bk, bn, vec))


def spec_sketch_forward(x, wc, coeffs, R, bk, bn, vec):
    """y[:, n] = sum_k sum_t Wc[n, k*BK+t] * sum_c x[:, (k*R+c)*BK + (t + h) mod BK]."""
    m, kdim = x.shape
    y = torch.zeros(m, wc.shape[0], dtype=x.dtype)
    for n in range(wc.shape[0]):
        for k in range(kdim // (R * bk)):
            for t in range(bk):
                acc = torch.zeros(m, dtype=x.dtype)
                for c in range(R):
                    h = spec_hash(coeffs, vec, bk, n // bn, k, c)
                    acc += x[:, (k * R + c) * bk + (t + h) % bk]
                y[:, n] += wc[n, k * bk + t] * acc
    return y


SMALL = [
    dict(i=32, o=24, R=1, bk=8, bn=8, vec=2),
    dict(i=32, o=24, R=2, bk=8, bn=8, vec=2),
    dict(i=64, o=40, R=4, bk=8, bn=16, vec=2),
    dict(i=64, o=20, R=8, bk=8, bn=8, vec=1),
    dict(i=128, o=72, R=4, bk=32, bn=64, vec=8),  # the default block sizes
]


@pytest.mark.parametrize("cfg", SMALL, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_dense_equivalent_matches_spec_loops(cfg):
    torch.manual_seed(0)
    layer = SS1Linear(cfg["i"], cfg["o"], compression=cfg["R"], block_k=cfg["bk"], block_n=cfg["bn"],
                      vec=cfg["vec"], seed=7, dtype=F64)
    wc = layer.spec_weight
    assert torch.equal(wc, layer.state_dict()["weight"])  # the state dict holds the spec's weight
    ref = spec_dense(wc, cfg["i"], layer.hash_coeffs, cfg["R"], cfg["bk"], cfg["bn"], cfg["vec"])
    torch.testing.assert_close(layer.to_dense(), ref, rtol=0, atol=0)
    x = torch.randn(3, cfg["i"], dtype=F64)
    y_spec = spec_sketch_forward(x, wc, layer.hash_coeffs, cfg["R"], cfg["bk"], cfg["bn"], cfg["vec"])
    torch.testing.assert_close(layer(x), y_spec + layer.bias, **TOLERANCE[F64].close())


@pytest.mark.parametrize("cfg", SMALL + [dict(i=96, o=200, R=2, bk=16, bn=64, vec=4)],
                         ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_vectorised_spec_index_is_the_loop_one(cfg):
    layer = SS1Linear(cfg["i"], cfg["o"], compression=cfg["R"], block_k=cfg["bk"], block_n=cfg["bn"],
                      vec=cfg["vec"])
    args = (cfg["o"], cfg["i"], layer.hash_coeffs, cfg["R"], cfg["bk"], cfg["bn"], cfg["vec"])
    assert torch.equal(spec_index_vectorised(*args), spec_index(*args))


def test_layout_phase_identity_equals_spec_hash():
    """h(pn, k, c) = (h0(k, c) + shift(pn)) mod BK: the identity the stored layout rests on."""
    layer = SS1Linear(256, 640, compression=4, seed=3)
    lay = layer.layout
    h0 = lay.phase0_rotations()
    shifts = lay.row_shifts()
    for pn in range(lay.num_out_blocks):
        assert int(shifts[pn * 64]) == 8 * lay.phase(pn)
        for k in range(lay.num_supergroups):
            for c in range(lay.compression):
                h = spec_hash(layer.hash_coeffs, 8, 32, pn, k, c)
                assert lay.hash(pn, k, c) == h
                assert lay.rotation(lay.phase(pn), k, c) == h
                assert (int(h0[k, c]) + int(shifts[pn * 64])) % 32 == h


def test_hash_coeffs_odd_deterministic_and_device_independent():
    a = SS1Linear(128, 64, seed=11)
    b = SS1Linear(128, 64, seed=11, dtype=F64)
    c = SS1Linear(128, 64, seed=12)
    assert isinstance(a.hash_coeffs, tuple) and len(a.hash_coeffs) == 4
    assert all(isinstance(v, int) and v % 2 == 1 and 3 <= v < HASH_PRIME for v in a.hash_coeffs)
    assert a.hash_coeffs == b.hash_coeffs == draw_hash_coeffs(11)
    assert a.hash_coeffs != c.hash_coeffs
    # drawing ignores the default device / dtype / global RNG state
    torch.manual_seed(999)
    prev = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        assert draw_hash_coeffs(11) == a.hash_coeffs
    finally:
        torch.set_default_dtype(prev)
    with torch.device("meta"):
        assert SS1Linear(128, 64, seed=11).hash_coeffs == a.hash_coeffs


def test_hash_coeffs_given_explicitly_are_used_not_redrawn():
    ref = SS1Linear(128, 64, seed=5, dtype=F64)
    again = SS1Linear(128, 64, seed=999, hash_coeffs=ref.hash_coeffs, dtype=F64)
    assert again.hash_coeffs == ref.hash_coeffs
    again.load_state_dict(ref.state_dict())
    torch.testing.assert_close(again.to_dense(), ref.to_dense(), rtol=0, atol=0)
    with pytest.raises(ValueError, match="odd"):
        SS1Linear(128, 64, hash_coeffs=(2, 3, 5, 7))


@pytest.mark.parametrize("R", [1, 2, 4, 8])
def test_each_weight_slot_serves_exactly_R_dense_entries(R):
    layer = SS1Linear(256, 96, compression=R, seed=1)
    idx = spec_index(96, 256, layer.hash_coeffs, R, 32, 64, 8)  # (N, K) -> Wc column
    counts = torch.zeros(96, 256 // R, dtype=torch.int64)
    counts.scatter_add_(1, idx, torch.ones_like(idx))
    assert (counts == R).all()
    # in the stored layout every input column reads one column, the same for every row
    assert (torch.bincount(layer.unsketch_index, minlength=256 // R) == R).all()


def test_projection_is_the_mean_rule():
    torch.manual_seed(0)
    R, bk, bn, vec = 4, 8, 16, 2
    w = torch.randn(32, 64, dtype=F64)
    layer = SS1Linear.from_dense(w, compression=R, block_k=bk, block_n=bn, vec=vec, seed=3)
    coeffs = layer.hash_coeffs
    for n in range(32):
        for k in range(64 // (R * bk)):
            for t in range(bk):
                vals = [w[n, (k * R + c) * bk + (t + spec_hash(coeffs, vec, bk, n // bn, k, c)) % bk] for c in range(R)]
                assert torch.isclose(layer.spec_weight[n, k * bk + t], torch.stack(vals).mean(), atol=1e-14)
    # the mean is the least-squares optimum: the residual is orthogonal to the structure
    resid = w - layer.to_dense()
    probe = SS1Linear(64, 32, compression=R, block_k=bk, block_n=bn, vec=vec, seed=3, bias=False, dtype=F64)
    assert abs((resid * probe.to_dense()).sum()) < 1e-10


def test_compression_one_is_dense():
    torch.manual_seed(0)
    w = torch.randn(40, 64, dtype=F64)
    layer = SS1Linear.from_dense(w, compression=1, block_k=8, block_n=8, vec=2)
    torch.testing.assert_close(layer.to_dense(), w, rtol=0, atol=0)


def test_padding_not_a_multiple():
    torch.manual_seed(0)
    # 100 inputs at R=4, BK=8: supergroup 32 -> padded to 128, weight has 128/4 = 32 columns
    layer = SS1Linear(100, 24, compression=4, block_k=8, block_n=8, vec=2, pad=True, dtype=F64)
    assert layer.weight.shape == (24, 32)
    assert layer.to_dense().shape == (24, 100)
    x = torch.randn(5, 100, dtype=F64)
    torch.testing.assert_close(layer(x), x @ layer.to_dense().T + layer.bias, **TOLERANCE[F64].close())
    full = spec_dense(layer.spec_weight, 128, layer.hash_coeffs, 4, 8, 8, 2)
    torch.testing.assert_close(layer.to_dense(), full[:, :100], rtol=0, atol=0)
    # from_dense averages only the real entries: a slot fed by 1 real + 3 padded gets that entry
    w = torch.randn(24, 100, dtype=F64)
    proj = SS1Linear.from_dense(w, compression=4, block_k=8, block_n=8, vec=2, pad=True)
    idx = spec_index(24, 100, proj.hash_coeffs, 4, 8, 8, 2)
    for n in range(24):
        for col in range(32):
            served = (idx[n] == col).nonzero().flatten()
            expected = w[n, served].mean() if served.numel() else torch.tensor(0.0, dtype=F64)
            assert torch.isclose(proj.spec_weight[n, col], expected, atol=1e-14)


def test_gpt2_xl_width_needs_pad():
    with pytest.raises(ValueError) as err:
        SS1Linear(1600, 6400, compression=4)
    msg = str(err.value)
    assert "in_features=1600" in msg and "1536" in msg and "1664" in msg and "pad=True" in msg
    layer = SS1Linear(1600, 64, compression=4, pad=True)
    assert layer.weight.shape == (64, 1664 // 4)


@pytest.mark.parametrize("R", [3, 0, 6, -2, 2.0])
def test_compression_must_be_power_of_two(R):
    with pytest.raises(ValueError, match=r"compression must be a power of two \(1, 2, 4, 8, 16"):
        make_linear("ss1", 256, 64, compression=R)


@pytest.mark.parametrize("name,value", [("block_k", 24), ("block_n", 0), ("vec", 3)])
def test_block_sizes_validated(name, value):
    with pytest.raises(ValueError, match=name):
        SS1Linear(256, 64, **{name: value})


def test_3d_noncontiguous_input_and_module_device_move():
    layer = SS1Linear(128, 64, compression=2, dtype=F64)
    x = torch.randn(4, 3, 128, dtype=F64).transpose(0, 1)  # non-contiguous
    torch.testing.assert_close(layer(x), x @ layer.to_dense().T + layer.bias, **TOLERANCE[F64].close())
    layer.to(torch.float32)
    assert layer(x.float()).dtype == torch.float32


def test_autocast_runs_in_the_autocast_dtype_like_f_linear():
    layer = SS1Linear(128, 64, compression=2)
    x = torch.randn(3, 128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
        plain = torch.nn.functional.linear(x, layer.to_dense(), layer.bias)  # under the same autocast
    assert y.dtype == plain.dtype == torch.bfloat16
    ref = torch.nn.functional.linear(x.double(), layer.to_dense().double(), layer.bias.detach().double())
    assert_within_baseline({"out": y}, {"out": ref}, torch.bfloat16, {"out": plain})
