"""The SS1 operator (sketch + F.linear, one autograd rule) on every route, against float64.

References are independent of the code under test: the dense weight comes from the spec's formula
(``test_ss1.spec_index``) applied to the spec's Wc; F.linear through it is the baseline in the
layer's dtype and, in float64, the reference of ``_numerics.check_kernel`` for y and every gradient.
Without CUDA the Triton kernel runs under TRITON_INTERPRET=1 (conftest.py) on CPU tensors; the
float16 / bfloat16 cases on CUDA are in ``test_low_precision.py`` (``-m gpu``).
"""

import functools
import os

import pytest
import torch
import torch.nn.functional as F
from _numerics import TOLERANCE, assert_within_baseline, check_kernel

from flyweight.kernels.ss1 import check_backend, set_compiled_route, sketch_route
from flyweight.kernels.ss1 import kernels as K
from flyweight.kernels.ss1.op import sketch_torch, sketch_triton, ss1_sketch_op
from flyweight.kernels.ss1.tuning import CANDIDATES, SketchConfig, tiles_with
from flyweight.linear import SS1Linear
from test_ss1 import spec_index

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
HAS_KERNELS = ON_GPU or os.environ.get("TRITON_INTERPRET") == "1"
needs_kernels = pytest.mark.skipif(not HAS_KERNELS, reason="needs CUDA or TRITON_INTERPRET=1")
F64 = torch.float64


@functools.lru_cache(maxsize=None)
def _spec_index_cached(n, k, coeffs, R, bk, bn, vec):
    return spec_index(n, k, coeffs, R, bk, bn, vec)


def ss1_functions(layer: SS1Linear, spec_index=_spec_index_cached):
    """(kernel, baseline) of (x, weight[, bias]): the layer's forward on its route, and F.linear through
    the dense weight of the spec's formula, W[n, r] = Wc[n, spec_index[n, r]] (independent of the
    layer's sketch code; for GPU-sized layers ``spec_index`` is ``test_ss1.spec_index_vectorised``)."""
    lay = layer.layout
    idx = spec_index(lay.out_features, lay.padded_in, lay.hash_coeffs, lay.compression, lay.block_k,
                     lay.block_n, lay.vec).to(layer.weight.device)

    def kernel(x, weight, bias=None):
        params = {"weight": weight} if bias is None else {"weight": weight, "bias": bias}
        return torch.func.functional_call(layer, params, (x,))

    def baseline(x, weight, bias=None):
        return F.linear(x, lay.spec_from_stored(weight).gather(1, idx)[:, : lay.in_features], bias)

    return kernel, baseline


def ss1_inputs(layer: SS1Linear, x: torch.Tensor) -> dict:
    params = {"weight": layer.weight.detach()} | ({} if layer.bias is None else {"bias": layer.bias.detach()})
    return {"x": x, **params}


CASES = [  # (R, M, bias, in_features): every R, odd M, bias on/off, padded widths (100, 200)
    (1, 17, True, 128),
    (1, 1, False, 100),
    (2, 97, True, 128),
    (2, 17, False, 200),
    (4, 1, True, 128),
    (4, 33, True, 100),
    (4, 97, False, 128),
    (8, 17, True, 256),
    (8, 5, False, 200),
]


@pytest.mark.parametrize("route", ["torch", pytest.param("triton", marks=needs_kernels)])
@pytest.mark.parametrize("R,M,bias,in_f", CASES)
def test_op_matches_float64_spec(route, R, M, bias, in_f):
    torch.manual_seed(R * 100 + M)
    # 40 outputs: the last hash block is partial; 5 blocks over D = 4 phases
    layer = SS1Linear(in_f, 40, compression=R, block_k=16, block_n=8, vec=4, bias=bias, seed=R + 1,
                      pad=in_f % (R * 16) != 0, device=DEVICE)
    layer.backend = route
    x = torch.randn(M, in_f, device=DEVICE)
    got = check_kernel(*ss1_functions(layer), ss1_inputs(layer, x), torch.float32, seed=M)
    assert set(got) == {"out", "dx", "dweight"} | ({"dbias"} if bias else set())
    if route == "torch":  # float64: exact to rounding
        layer64 = layer.double()
        check_kernel(*ss1_functions(layer64), ss1_inputs(layer64, x.double()), torch.float64, seed=M)


@needs_kernels
def test_interpreter_runs_the_kernel_without_cuda():
    if ON_GPU:
        pytest.skip("compiled kernels on GPU")
    assert type(K.ss1_sketch_kernel).__name__ == "InterpretedFunction"


@needs_kernels
@pytest.mark.parametrize("cfg", [CANDIDATES[0], CANDIDATES[1], SketchConfig(16, 16, 4)], ids=str)
def test_sketch_kernel_tiles_match_float64(cfg, monkeypatch):
    """Every tile shape computes the same sketch: fp32 kernel against the float64 gather-and-sum."""
    import flyweight.kernels.ss1.op as op

    monkeypatch.setattr(op, "tiles_for", lambda m, kc: tiles_with(cfg, m, kc))
    torch.manual_seed(3)
    layer = SS1Linear(200, 24, compression=4, block_k=16, block_n=8, vec=4, pad=True, device=DEVICE)
    x = torch.randn(37, 200, device=DEVICE)
    got = {"sketch": sketch_triton(x, layer.sketch_args, torch.float32)}
    plain = {"sketch": sketch_torch(x, layer.sketch_index, layer.sketch_args, torch.float32)}
    ref = {"sketch": sketch_torch(x.double().cpu(), layer.sketch_index.cpu(), layer.sketch_args, F64)}
    assert_within_baseline(got, ref, torch.float32, plain)
    strided = torch.randn(37, 300, device=DEVICE)[:, 50:250]  # a column slice: read in place
    torch.testing.assert_close(sketch_triton(strided, layer.sketch_args, torch.float32).cpu(),
                               sketch_torch(strided.cpu(), layer.sketch_index.cpu(), layer.sketch_args, torch.float32))


@needs_kernels
def test_triton_op_route_matches_torch_sketch():
    torch.manual_seed(4)
    layer = SS1Linear(128, 40, compression=4, block_k=16, block_n=8, vec=4, device=DEVICE)
    x = torch.randn(9, 128, device=DEVICE)
    got = ss1_sketch_op(x, list(layer.sketch_args), torch.float32)
    torch.testing.assert_close(got, sketch_torch(x, layer.sketch_index, layer.sketch_args, torch.float32))
    if ON_GPU:  # the fake implementation traces the body: only with compiled kernels
        torch.library.opcheck(ss1_sketch_op, (x, list(layer.sketch_args), torch.float32))


def test_compile_fullgraph_on_a_fresh_layer():
    """No graph break (an RLock, a lazy table, a data-dependent branch would raise); grads match eager."""
    torch.manual_seed(5)
    layer = SS1Linear(100, 40, compression=4, block_k=16, block_n=8, vec=4, pad=True)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    x = torch.randn(6, 100, requires_grad=True)
    y = compiled(x)
    y.square().sum().backward()
    got = (y.detach(), x.grad, layer.weight.grad, layer.bias.grad)
    layer.zero_grad(set_to_none=True)
    xe = x.detach().clone().requires_grad_()
    ye = layer(xe)
    ye.square().sum().backward()
    for a, b in zip(got, (ye.detach(), xe.grad, layer.weight.grad, layer.bias.grad)):
        torch.testing.assert_close(a, b)


def test_export_a_fresh_layer():
    torch.manual_seed(6)
    layer = SS1Linear(100, 24, compression=4, block_k=8, block_n=8, vec=2, pad=True)
    program = torch.export.export(layer, (torch.randn(3, 100),))
    x = torch.randn(3, 100)
    torch.testing.assert_close(program.module()(x), layer(x), rtol=0, atol=0)
    assert "index_select" in str(program.graph_module.code)  # traced PyTorch ops, no opaque call


@pytest.mark.parametrize("pad", [False, True])
def test_gradcheck(pad):
    torch.manual_seed(7)
    in_f = 36 if pad else 32
    layer = SS1Linear(in_f, 12, compression=2, block_k=8, block_n=4, vec=2, pad=pad, dtype=F64)
    x = torch.randn(3, in_f, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,)),
                                    (x, layer.weight.detach().requires_grad_(), layer.bias.detach().requires_grad_()))


def test_adam_steps_equal_training_the_spec_weight():
    """Adam and weight decay are elementwise: training Wr is training Wc, permuted."""
    torch.manual_seed(8)
    layer = SS1Linear(64, 40, compression=4, block_k=8, block_n=16, vec=2, dtype=F64)
    lay = layer.layout
    idx = spec_index(40, 64, lay.hash_coeffs, 4, 8, 16, 2)
    wc = torch.nn.Parameter(layer.spec_weight.clone())
    bias = torch.nn.Parameter(layer.bias.detach().clone())
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2, weight_decay=0.1)
    opt_ref = torch.optim.AdamW([bias, wc], lr=1e-2, weight_decay=0.1)
    for step in range(3):
        x = torch.randn(5, 64, dtype=F64)
        for o in (opt, opt_ref):
            o.zero_grad()
        layer(x).square().sum().backward()
        F.linear(x, wc.gather(1, idx), bias).square().sum().backward()
        opt.step()  # in place: the next call must see the updated weight
        opt_ref.step()
        torch.testing.assert_close(layer.spec_weight, wc.detach(), **TOLERANCE[F64].close())
    x = torch.randn(4, 64, dtype=F64)
    torch.testing.assert_close(layer(x), F.linear(x, wc.gather(1, idx), bias), **TOLERANCE[F64].close())


@pytest.mark.parametrize("route", ["torch", pytest.param("triton", marks=needs_kernels)])
def test_inference_mode_no_grad_and_in_place_updates(route):
    torch.manual_seed(9)
    layer = SS1Linear(128, 64, compression=4, block_k=16, block_n=8, vec=4, device=DEVICE)
    layer.backend = route
    x = torch.randn(5, 128, device=DEVICE)
    want = F.linear(x, layer.to_dense(), layer.bias)
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), want, **TOLERANCE[torch.float32].close())
    with torch.no_grad():
        y = layer(x)
        assert y.grad_fn is None
        layer.weight.mul_(-2.0)  # an in-place update between calls
        torch.testing.assert_close(layer(x), F.linear(x, layer.to_dense(), layer.bias),
                                   **TOLERANCE[torch.float32].close())


def test_saves_the_sketch_not_the_input():
    """Autograd keeps S0 (M x K/R) for the weight gradient; X itself is not saved."""
    torch.manual_seed(10)
    layer = SS1Linear(128, 32, compression=4, block_k=16, block_n=8, vec=4)
    x = torch.randn(9, 128, requires_grad=True)
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        y = layer(x)
    assert (9, 32) in shapes and (9, 128) not in shapes
    frozen = SS1Linear(128, 32, compression=4, block_k=16, block_n=8, vec=4)
    frozen.weight.requires_grad_(False)
    frozen(x).sum().backward()
    assert frozen.weight.grad is None and frozen.bias.grad is not None and x.grad is not None
    y.sum().backward()


@pytest.mark.parametrize("route", ["torch", pytest.param("triton", marks=needs_kernels)])
def test_autocast_writes_the_sketch_in_the_autocast_dtype(route):
    torch.manual_seed(11)
    layer = SS1Linear(128, 64, compression=2, block_k=16, block_n=8, vec=4, device=DEVICE)
    layer.backend = route
    x = torch.randn(7, 128, device=DEVICE, requires_grad=True)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        y = layer(x)
        plain = F.linear(x, layer.to_dense(), layer.bias)  # F.linear under the same autocast
    assert y.dtype == plain.dtype == torch.bfloat16
    ref = F.linear(x.detach().double(), layer.to_dense().double(), layer.bias.detach().double())
    assert_within_baseline({"out": y}, {"out": ref}, torch.bfloat16, {"out": plain})
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and layer.weight.grad.dtype == torch.float32


def test_float16_on_cpu_does_not_overflow_where_dense_does_not():
    torch.manual_seed(12)
    layer = SS1Linear(256, 64, compression=8, block_k=8, block_n=8, vec=2, bias=False)
    x = (3e4 * torch.ones(4, 256)).half()  # each sketch entry sums 8 inputs: 2.4e5 > fp16's 65504
    with torch.no_grad():
        layer.weight.fill_(1e-3)
    layer.half()
    y = layer(x)
    dense = F.linear(x, layer.to_dense())
    assert torch.isfinite(dense).all() and torch.isfinite(y).all()
    assert not torch.isfinite(x[:, layer.sketch_index].view(4, -1, 8, 8).sum(2)).all()  # the naive sum would
    ref = F.linear(x.double(), layer.to_dense().double())
    assert_within_baseline({"out": y}, {"out": ref}, torch.float16, {"out": dense})


def test_backend_choice_and_errors():
    x = torch.randn(2, 64)
    assert sketch_route(x, "auto") == "torch"  # CPU tensors: PyTorch ops
    assert sketch_route(x, "torch") == "torch"
    with pytest.raises(ValueError, match="auto, torch, triton"):
        check_backend("cuda")
    layer = SS1Linear(64, 16, compression=2, block_k=8, block_n=8, vec=2)
    layer.backend = "cuda"
    with pytest.raises(ValueError, match="auto, torch, triton"):
        layer(x)
    if HAS_KERNELS:
        with pytest.raises(ValueError, match="float16, bfloat16, float32"):
            sketch_route(x.double(), "triton")
    with pytest.raises(ValueError, match="inductor, triton_op"):
        set_compiled_route("cudagraphs")


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("R,M,bias,in_f", CASES)
def test_fused_kernel_matches_float64_spec(R, M, bias, in_f, dtype):
    """The fused sketch+GEMM kernel (one launch, S0 on chip) against F.linear through the spec's dense
    weight in float64, held to the plain PyTorch formula's error in the same dtype (forward only: it
    serves no-grad calls). bf16 only on the GPU: Triton 3.9's interpreter computes tl.dot of bf16
    operands wrongly (errors of 1e10 on a 16 x 16 product of unit normals)."""
    from flyweight.kernels.ss1.op import fused_linear_triton

    torch.manual_seed(R * 100 + M)
    layer = SS1Linear(in_f, 40, compression=R, block_k=16, block_n=8, vec=4, bias=bias, seed=R + 1,
                      pad=in_f % (R * 16) != 0, device=DEVICE)
    _, baseline = ss1_functions(layer)
    x = torch.randn(M, in_f, device=DEVICE)
    check_kernel(lambda x, weight, bias=None: fused_linear_triton(x, weight, bias, layer.sketch_args),
                 baseline, ss1_inputs(layer, x), dtype, backward=False, seed=M)


@needs_kernels
@pytest.mark.parametrize("bias", [True, False])
def test_fused_triton_op_matches_the_eager_fused_launch(bias):
    """``flyweight::ss1_fused`` (what a compiled no-grad call runs when the fused kernel is on) computes
    what the eager fused launch computes."""
    from flyweight.kernels.ss1.op import fused_linear_triton, ss1_fused_op

    torch.manual_seed(5)
    layer = SS1Linear(128, 40, compression=4, block_k=16, block_n=8, vec=4, bias=bias, device=DEVICE)
    w, b = layer.weight.detach(), None if layer.bias is None else layer.bias.detach()
    x = torch.randn(9, 128, device=DEVICE)
    got = ss1_fused_op(x, w, b, list(layer.sketch_args))
    torch.testing.assert_close(got, fused_linear_triton(x, w, b, layer.sketch_args), rtol=0, atol=0)
    if ON_GPU:  # the fake implementation traces the body: only with compiled kernels
        torch.library.opcheck(ss1_fused_op, (x, w, b, list(layer.sketch_args)))


@needs_kernels
@pytest.mark.parametrize("tiles", [(16, 16, 16), (32, 64, 32)], ids=str)
def test_fused_kernel_tiles_and_strided_input(tiles):
    """Tiles smaller than the problem (several programs and reduction steps) and a column slice of a
    wider tensor (read in place) give the two-launch path's result."""
    from flyweight.kernels.ss1.op import fused_linear_triton
    from flyweight.kernels.ss1.tuning import FusedConfig

    torch.manual_seed(7)
    layer = SS1Linear(200, 72, compression=4, block_k=16, block_n=8, vec=4, pad=True, device=DEVICE)
    x = torch.randn(45, 300, device=DEVICE)[:, 50:250]
    two_launch = F.linear(sketch_triton(x, layer.sketch_args, torch.float32), layer.weight, layer.bias)
    got = fused_linear_triton(x, layer.weight.detach(), layer.bias.detach(), layer.sketch_args,
                              tiles=FusedConfig(*tiles, 1, 1))
    torch.testing.assert_close(got, two_launch.detach())


def test_fused_route_only_for_eager_cuda_calls_without_grad_when_switched_on(monkeypatch):
    """FLYWEIGHT_SS1_FUSED=inference: eager CUDA forwards without grad take the fused kernel; a call that
    needs grad, backend='torch', float64, CPU tensors and the default ("never") keep sketch + F.linear."""
    from flyweight.kernels.ss1 import op
    from flyweight.utils.optional import HAS_TRITON

    if not HAS_TRITON:
        pytest.skip("needs Triton")
    bf16 = torch.bfloat16
    assert not op.fused_applies("cuda", bf16, "auto", needs_grad=False)  # default: never
    monkeypatch.setattr(op.tuning, "FUSED", "inference")
    assert op.fused_applies("cuda", bf16, "auto", needs_grad=False)
    assert op.fused_applies("cuda", torch.float16, "triton", needs_grad=False)
    assert not op.fused_applies("cuda", bf16, "auto", needs_grad=True)
    assert not op.fused_applies("cuda", bf16, "torch", needs_grad=False)
    assert not op.fused_applies("cuda", torch.float64, "auto", needs_grad=False)
    assert not op.fused_applies("cpu", bf16, "auto", needs_grad=False)
    with torch.no_grad():  # compiled no-grad calls go through the triton_op, eager ones launch directly
        route = []
        monkeypatch.setattr(op, "fused_applies", lambda *a: True)
        monkeypatch.setattr(op, "ss1_fused_op", lambda *a: route.append("op") or torch.zeros(2, 40))
        monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
        layer = SS1Linear(128, 40, compression=4, block_k=16, block_n=8, vec=4)
        op.ss1_linear(torch.randn(2, 128), layer.weight, layer.bias, layer.sketch_index, layer.unsketch_index,
                      layer.sketch_args)
        assert route == ["op"]
    monkeypatch.undo()
    monkeypatch.setattr(op.tuning, "FUSED", "inference")
    calls = []
    monkeypatch.setattr(op, "fused_applies", lambda *a: True)
    monkeypatch.setattr(op, "fused_linear_triton", lambda *a: calls.append(a) or torch.zeros(2, 40))
    layer = SS1Linear(128, 40, compression=4, block_k=16, block_n=8, vec=4)
    with torch.no_grad():
        out = layer(torch.randn(2, 128))
    assert len(calls) == 1 and out.shape == (2, 40)  # the layer's forward reaches the fused route
