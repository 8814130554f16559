"""The SS1 Triton kernels (forward, dX, dWc, db) against the exact PyTorch path.

On a machine without CUDA they run under TRITON_INTERPRET=1 (set by conftest.py) on CPU tensors in
float32: the same kernel source the GPU compiles, tiny shapes, small test-only tiles.
"""

import os

import pytest
import torch

from flyweight.kernels import ss1_triton as T
from flyweight.kernels.ss1 import check_backend, ss1_linear, use_triton
from flyweight.linear import SS1Linear

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
pytestmark = pytest.mark.skipif(
    not ON_GPU and os.environ.get("TRITON_INTERPRET") != "1", reason="needs CUDA or TRITON_INTERPRET=1"
)

# Small tiles keep the interpreter fast; they still span several hash blocks and K steps.
SMALL = dict(
    # TILES: output tiles per program (resident mode); PERSISTENT: programs per "SM" (tma mode;
    # the interpreter counts 4 SMs, so each program loops over several tiles).
    fwd=dict(mode="sketch", BM=16, BN=16, BKT=16, GROUP_M=2, TILES=2, PERSISTENT=1, num_warps=4, num_stages=1),
    dgrad=dict(BM=16, BJ=16, BR=16, GROUP_M=2, num_warps=4, num_stages=1),
    wgrad=dict(BN=16, BJ=16, BR=16, GROUP_M=2, num_warps=4, num_stages=1),
    sketch=dict(BM=16, BJ=16, num_warps=4, num_stages=1),
)


def small(mode="sketch", bn=16, bkt=16, tma_backward=False):
    """Test tiles; the backward follows the forward's family (gemm mode: library GEMMs throughout)."""
    cfg = {k: dict(v) for k, v in SMALL.items()}
    cfg["fwd"].update(mode=mode, BN=bn, BKT=bkt)
    if tma_backward:
        cfg["dgrad"]["TMA"] = cfg["wgrad"]["TMA"] = 1
    if mode == "gemm":
        cfg["dgrad"] = {"mode": "gemm"}
        cfg["wgrad"] = {"mode": "gemm"}
    return T.config_override(**cfg)


def pair(in_f, out_f, **kw):
    """A Triton-backed layer and an identical PyTorch-backed copy."""
    fast = SS1Linear(in_f, out_f, device=DEVICE, **kw)
    ref = SS1Linear(in_f, out_f, device=DEVICE, **kw)
    ref.load_state_dict(fast.state_dict())
    fast.backend, ref.backend = "triton", "torch"
    return fast, ref


def run_both(fast, ref, x):
    """Output and all gradients of both layers for the same input and upstream gradient."""
    xa = x.detach().clone().requires_grad_()
    xb = x.detach().clone().requires_grad_()
    ya, yb = fast(xa), ref(xb)
    g = torch.randn_like(yb)
    ya.backward(g)
    yb.backward(g)
    out = {"y": (ya, yb), "dx": (xa.grad, xb.grad), "dw": (fast.weight.grad, ref.weight.grad)}
    if fast.bias is not None:
        out["db"] = (fast.bias.grad, ref.bias.grad)
    return out


def assert_all_close(res, tol=2e-5):
    for name, (a, b) in res.items():
        assert a is not None and b is not None, name
        assert a.shape == b.shape, name
        err = (a - b).abs().max().item() / max(1e-6, b.abs().max().item())
        assert err < tol, f"{name}: relative max error {err:.2e}"


def test_interpreter_is_active_without_cuda():
    if ON_GPU:
        pytest.skip("compiled kernels on GPU")
    assert T.INTERPRET
    assert type(T._ss1_fwd_kernel).__name__ == "InterpretedFunction"


CASES = [  # (R, M, bias, mode): every R, odd M, bias on/off, every forward mode
    (1, 17, True, "sketch"),
    (1, 1, False, "fused"),
    (1, 17, True, "resident"),
    (2, 97, True, "fused"),
    (2, 17, False, "sketch"),
    (2, 97, False, "tma"),
    (4, 1, True, "sketch"),
    (4, 17, True, "fused"),
    (4, 97, False, "sketch"),
    (4, 97, True, "resident"),
    (4, 17, True, "tma"),
    (8, 17, True, "sketch"),
    (8, 97, True, "fused"),
    (8, 1, False, "fused"),
    (8, 1, False, "resident"),
    (8, 33, True, "tma"),
    (1, 17, False, "gemm"),
    (2, 97, True, "gemm"),
    (4, 1, True, "gemm"),
    (8, 33, False, "gemm"),
]


@pytest.mark.parametrize("R,M,bias,mode", CASES)
def test_kernels_match_torch_path(R, M, bias, mode):
    torch.manual_seed(R * 100 + M)
    # 40 outputs: the last hash block is partial; 5 blocks over D=4 phases -> unequal phase sizes.
    fast, ref = pair(128, 40, compression=R, block_k=16, block_n=8, vec=4, bias=bias, seed=R + 1)
    with small(mode):
        res = run_both(fast, ref, torch.randn(M, 128, device=DEVICE))
    assert_all_close(res)


@pytest.mark.parametrize("R,M", [(2, 17), (4, 33), (8, 5)])
def test_tma_backward_kernels(R, M):
    """dX and dWc with the weight / sketch tiles loaded through TMA descriptors (Hopper path)."""
    torch.manual_seed(R * 7 + M)
    fast, ref = pair(128, 40, compression=R, block_k=16, block_n=8, vec=4, seed=R + 3)
    with small("tma", tma_backward=True):
        assert_all_close(run_both(fast, ref, torch.randn(M, 128, device=DEVICE)))


def test_phase_ordered_weight_cache_follows_in_place_updates():
    """The TMA path's phase-ordered weight copy is reused only while the weight is unchanged."""
    torch.manual_seed(3)
    fast, ref = pair(128, 64, compression=4, block_k=16, block_n=8, vec=4, seed=5)
    x = torch.randn(9, 128, device=DEVICE)
    with torch.no_grad(), small("tma"):
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)
        for layer in (fast, ref):
            layer.weight.mul_(-2.0)  # an optimizer step: same tensor, new version
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["gemm", "sketch", "fused", "resident", "tma"])
def test_3d_noncontiguous_input_and_default_hash_blocks(mode):
    torch.manual_seed(1)
    fast, ref = pair(128, 128, compression=4, seed=9)  # default block_k=32, block_n=64, vec=8
    x = torch.randn(5, 3, 128, device=DEVICE).transpose(0, 1)
    assert not x.is_contiguous()
    with small(mode, bn=32, bkt=32):
        res = run_both(fast, ref, x)
    assert res["y"][0].shape == (3, 5, 128)
    assert_all_close(res)


def test_strided_2d_input_is_read_in_place():
    """A column-sliced input (row stride != width) goes to the kernels without a copy."""
    torch.manual_seed(2)
    fast, ref = pair(64, 24, compression=2, block_k=8, block_n=8, vec=2)
    x = torch.randn(9, 100, device=DEVICE)[:, 10:74]
    assert x.stride() == (100, 1)
    with small("fused"):
        assert_all_close(run_both(fast, ref, x))


def test_padded_width_and_dense_equivalent():
    torch.manual_seed(3)
    fast = SS1Linear(100, 48, compression=4, block_k=8, block_n=16, vec=2, pad=True, device=DEVICE)
    fast.backend = "triton"
    x = torch.randn(7, 100, device=DEVICE, dtype=torch.float64)
    with small():
        y = fast(x.float())
    ref = x @ fast.to_dense().double().T + fast.bias.double()
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-5)


def test_only_needed_gradients_are_computed():
    torch.manual_seed(4)
    fast, ref = pair(64, 32, compression=2, block_k=8, block_n=8, vec=2)
    fast.weight.requires_grad_(False)
    x = torch.randn(5, 64, device=DEVICE, requires_grad=True)
    with small():
        fast(x).sum().backward()
    assert fast.weight.grad is None and fast.bias.grad is not None and x.grad is not None
    xr = x.detach().clone().requires_grad_()
    ref(xr).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-6)


def test_fake_impl_and_compile_without_graph_breaks():
    from torch._subclasses.fake_tensor import FakeTensorMode

    layer = SS1Linear(64, 40, compression=2, block_k=8, block_n=8, vec=2, device=DEVICE)
    meta = T.meta_of(layer.layout)
    with FakeTensorMode():
        x = torch.empty(6, 64)
        y = torch.ops.flyweight.ss1_forward(x, torch.empty(40, 32), torch.empty(40), meta)
        dx, dw, db = torch.ops.flyweight.ss1_backward(torch.empty(6, 40), x, torch.empty(40, 32), meta, [1, 1, 0])
    assert y.shape == (6, 40) and dx.shape == (6, 64) and dw.shape == (40, 32) and db.numel() == 0

    layer.backend = "triton"
    x = torch.randn(6, 64, device=DEVICE, requires_grad=True)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)  # fullgraph: a break would raise
    with small():
        y = compiled(x)
        y.square().sum().backward()
        grads_compiled = (x.grad, layer.weight.grad, layer.bias.grad)
        eager_x = x.detach().clone().requires_grad_()
        layer.zero_grad(set_to_none=True)
        ye = layer(eager_x)
        ye.square().sum().backward()
    torch.testing.assert_close(y, ye)
    for got, want in zip(grads_compiled, (eager_x.grad, layer.weight.grad, layer.bias.grad)):
        torch.testing.assert_close(got, want)


def test_opcheck_schema_fake_and_autograd_registration():
    torch.manual_seed(5)
    layer = SS1Linear(64, 24, compression=2, block_k=8, block_n=8, vec=2, device=DEVICE)
    args = (torch.randn(3, 64, device=DEVICE, requires_grad=True), layer.weight.detach().clone().requires_grad_(),
            layer.bias.detach().clone(), T.meta_of(layer.layout))
    with small():
        torch.library.opcheck(torch.ops.flyweight.ss1_forward.default, args,
                              test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


def test_backend_choice_and_errors():
    x = torch.randn(2, 64)
    assert not use_triton(x, "auto")  # CPU tensors stay on the PyTorch path
    assert not use_triton(x, "torch")
    with pytest.raises(ValueError, match="auto, torch, triton"):
        check_backend("cuda")
    with pytest.raises(ValueError, match="float16, bfloat16, float32"):
        use_triton(x.double(), "triton")
    layer = SS1Linear(64, 16, compression=2, block_k=8, block_n=8, vec=2)
    y = ss1_linear(x, layer.weight, layer.bias, layer.layout)  # tables built on demand
    torch.testing.assert_close(y, layer(x))


def test_autotune_cache_roundtrip_and_tuning_off(tmp_path, monkeypatch):
    path = tmp_path / "tune.json"
    monkeypatch.setenv("FLYWEIGHT_SS1_AUTOTUNE_CACHE", str(path))
    cache = T._TuneCache()
    assert cache.get("gpu|fwd|k") is None
    cache.put("gpu|fwd|k", {"mode": "sketch", "BM": 64})
    fresh = T._TuneCache()  # a new process reads what the last one wrote
    assert fresh.get("gpu|fwd|k") == {"mode": "sketch", "BM": 64}
    for value, expected in (("0", False), ("off", False), ("1", True), ("ON", True)):
        monkeypatch.setenv("FLYWEIGHT_SS1_AUTOTUNE", value)
        assert T.env_autotune() is expected
    monkeypatch.setenv("FLYWEIGHT_SS1_AUTOTUNE", "maybe")
    with pytest.raises(ValueError, match="FLYWEIGHT_SS1_AUTOTUNE"):
        T.env_autotune()
    # tuning off (or no GPU): the fixed default config, the first candidate for that M
    monkeypatch.setenv("FLYWEIGHT_SS1_AUTOTUNE", "0")
    assert T._choose("fwd", torch.empty(4, 8), "k", 4, run=None) == T.default_config("fwd", 4)
    assert T.default_config("fwd", 4)["mode"] == "fused" and T.default_config("fwd", 4096)["mode"] == "gemm"
    # a caller restricted to the phase kernels (the weight gradient from a kept Xs) never gets gemm
    assert "mode" not in T.default_config("wgrad", 4096, modes=("phase",))


@pytest.mark.parametrize("R,mode,saved", [(4, "sketch", (4, 9, 32)), (2, "sketch", (9, 128)),
                                           (2, "gemm", (9, 64)), (8, "gemm", (9, 16))])
def test_forward_keeps_the_sketch_for_the_weight_gradient(R, mode, saved):
    """The forward saves its sketch instead of X when it is no larger (sketch mode: Xs (P, M, K/R)
    when P <= R; gemm mode: S0 (M, K/R) always): dWc needs only the sketch, dX neither."""
    torch.manual_seed(6)
    fast, ref = pair(128, 32, compression=R, block_k=16, block_n=8, vec=4, seed=4)  # 4 blocks -> P = 4
    x = torch.randn(9, 128, device=DEVICE, requires_grad=True)
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        with small(mode):
            y = fast(x)
    assert saved in shapes and fast.weight.shape in shapes
    with small(mode):
        y.backward(torch.ones_like(y))
    xr = x.detach().clone().requires_grad_()
    ref(xr).backward(torch.ones_like(y))
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("R,M,mode", [(4, 17, "fused"), (2, 5, "sketch"), (8, 33, "fused")])
def test_split_k_forward(R, M, mode):
    """Small-M path: K/R split across programs, fp32 partials summed (with bias) by a second kernel."""
    torch.manual_seed(R + M)
    fast, ref = pair(256, 40, compression=R, block_k=16, block_n=8, vec=4, seed=2)
    cfg = {k: dict(v) for k, v in SMALL.items()}
    cfg["fwd"].update(mode=mode, SPLIT_K=3)  # whole BKT steps: R=2 gives 48+48+32 columns, R=4/8 two halves
    with T.config_override(**cfg):
        assert_all_close(run_both(fast, ref, torch.randn(M, 256, device=DEVICE)))


def test_gemm_mode_under_inference_mode_and_weight_updates():
    """gemm mode caches the rotated weight per weight version; inference tensors have no version
    counter (never cached), and an in-place update must be seen by the next call."""
    torch.manual_seed(11)
    fast, ref = pair(128, 64, compression=4, block_k=16, block_n=8, vec=4, seed=6)
    x = torch.randn(5, 128, device=DEVICE)
    with torch.inference_mode(), small("gemm"):
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)
    with torch.no_grad(), small("gemm"):
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)
        for layer in (fast, ref):
            layer.weight.add_(0.5)
        torch.testing.assert_close(fast(x), ref(x), rtol=1e-5, atol=1e-5)


def test_weight_gradient_from_a_kept_xs_ignores_a_gemm_choice():
    """A phase-mode forward keeps Xs; a gemm config for the weight gradient (which reads S0) must
    not be applied to it: the phase kernel runs instead and the gradient is still exact."""
    torch.manual_seed(12)
    fast, ref = pair(128, 32, compression=4, block_k=16, block_n=8, vec=4, seed=4)
    cfg = {k: dict(v) for k, v in SMALL.items()}
    cfg["wgrad"] = {"mode": "gemm"}
    with T.config_override(**cfg):
        res = run_both(fast, ref, torch.randn(9, 128, device=DEVICE))
    assert_all_close(res)


def test_derived_weight_copies_are_freed_with_their_weight():
    """The rotated / phase-ordered weight copies live only as long as the weight they come from."""
    import gc

    torch.manual_seed(13)
    layer = SS1Linear(128, 64, compression=4, block_k=16, block_n=8, vec=4, seed=7, device=DEVICE)
    layer.backend = "triton"
    plan = T.plan_for(T.meta_of(layer.layout), 128, torch.device(DEVICE))
    before = len(plan.weight_cache)
    with torch.no_grad(), small("gemm"):
        layer(torch.randn(3, 128, device=DEVICE))
    assert len(plan.weight_cache) == before + 1
    del layer
    gc.collect()
    assert len(plan.weight_cache) == before
