"""Triton kernels of local / Performer / Scatterbrain attention against dense T x T brute force, and
the PyTorch paths (causal variants included) against the same.

Every comparison is ``_numerics.check_kernel``: the dense formula in the kernel's dtype is the
baseline, in float64 the reference, for the output and dq, dk, dv. Without CUDA the kernels run under
TRITON_INTERPRET=1 (conftest.py) on float32 CPU tensors with small tiles (16 rows), so T of 30-70
crosses several query and key tiles and odd lengths leave partial tiles; float16 / bfloat16 at T up
to 4096 on CUDA are in ``test_low_precision.py`` (``-m gpu``).
"""

import math
import os

import pytest
import torch
from _numerics import assert_within_baseline, check_kernel

from flyweight.attention import make_attention

ON_GPU = torch.cuda.is_available()
pytestmark = pytest.mark.skipif(
    not ON_GPU and os.environ.get("TRITON_INTERPRET") != "1", reason="needs CUDA or TRITON_INTERPRET=1"
)
DEVICE = "cuda" if ON_GPU else "cpu"
KERNEL_DTYPE = torch.float16 if ON_GPU else torch.float32


def inputs(B=2, H=2, T=37, E=16, EV=None, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    EV = E if EV is None else EV
    return tuple(scale * torch.randn(B, H, T, d, generator=g, dtype=torch.float64) for d in (E, E, EV))


def padding(B, T, seed=1, frac=0.3, all_padded_row=None):
    g = torch.Generator().manual_seed(seed)
    kpm = torch.rand(B, T, generator=g) < frac
    if all_padded_row is not None:
        kpm[all_padded_row] = True
    return kpm


def allowed_window(T, w, causal):
    i, j = torch.arange(T)[:, None], torch.arange(T)[None]
    if causal:
        return (j <= i) & (j > i - w)
    return (j - i >= -(w // 2)) & (j - i <= math.ceil(w / 2) - 1)


# The dense references below materialise T x T matrices in the inputs' dtype and on their device: the
# plain PyTorch baselines of check_kernel, and in float64 its references.
def dense_softmax(q, k, v, temp, allowed, kpm=None):
    """softmax over the allowed keys (T x T); rows with no allowed key give 0."""
    s = temp * q @ k.transpose(-1, -2)
    ok = allowed.to(q.device).expand(s.shape)
    if kpm is not None:
        ok = ok & ~kpm.to(q.device)[:, None, None, :]
    s = s.masked_fill(~ok, -math.inf)
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return p @ v


def phi(x, W, temp, cosh):
    """The explicit feature map m^-1/2 exp(w x' - |x'|^2 / 2) (cosh: also exp(-w x' - ...))."""
    xs = x * temp**0.5
    wx = xs @ W.T.to(x.device, x.dtype)
    sq = (xs * xs).sum(-1, keepdim=True) / 2
    feats = [torch.exp(wx - sq)] + ([torch.exp(-wx - sq)] if cosh else [])
    f = torch.cat(feats, -1)
    return f / f.shape[-1] ** 0.5


def dense_performer(q, k, v, W, temp, kpm=None, causal=False, eps=0.0):
    a = phi(q, W, temp, False) @ phi(k, W, temp, False).transpose(-1, -2)
    T = q.shape[-2]
    if causal:
        a = a * torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    if kpm is not None:
        a = a.masked_fill(kpm.to(q.device)[:, None, None, :], 0.0)
    den = a.sum(-1, keepdim=True) + eps
    return a @ v / torch.where(den > 0, den, 1.0)  # a row with no visible key: 0 (its numerator is 0)


def dense_sblocal(q, k, v, W, temp, w, kpm=None, causal=False):
    """The Scatterbrain estimator with T x T matrices: exact in the window, low rank elsewhere."""
    T = q.shape[-2]
    s = torch.exp(temp * q @ k.transpose(-1, -2))
    p = phi(q, W, temp, True) @ phi(k, W, temp, True).transpose(-1, -2)
    visible = torch.ones(T, T, dtype=torch.bool, device=q.device)
    visible = (visible.tril() if causal else visible).expand(s.shape)
    if kpm is not None:
        visible = visible & ~kpm.to(q.device)[:, None, None, :]
    L = allowed_window(T, min(w, 2 * T), causal).to(q.device) & visible
    zero = torch.zeros((), dtype=q.dtype, device=q.device)
    exact, p_in, p_vis = torch.where(L, s, zero), torch.where(L, p, zero), torch.where(visible, p, zero)
    z = exact.sum(-1, keepdim=True) + torch.clamp(p_vis.sum(-1, keepdim=True) - p_in.sum(-1, keepdim=True),
                                                  min=1e-24)
    z = torch.where(visible.any(-1, keepdim=True), z, 1.0)  # a row with no visible key: 0 (numerator 0)
    return ((exact - p_in) @ v + p_vis @ v) / z


def check_attention(attn, dense, q, k, v, temp, kpm=None, dtype=KERNEL_DTYPE, backward=True) -> dict:
    """``attn`` on DEVICE against ``dense`` (a function of q, k, v) by check_kernel's rule: the output
    and, with ``backward``, dq, dk and dv, in ``dtype``; returns the kernel's results by name."""
    attn = attn.to(DEVICE)
    mask = None if kpm is None else kpm.to(DEVICE)
    inputs = {"q": q.to(DEVICE), "k": k.to(DEVICE), "v": v.to(DEVICE)}
    return check_kernel(lambda q, k, v: attn(q, k, v, softmax_temp=temp, key_padding_mask=mask), dense,
                        inputs, dtype, backward=backward)


# ---- local ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "T,w,causal,pad,EV",
    [(37, 5, False, False, 16), (50, 16, False, True, 32), (20, 64, False, False, 16),
     (33, 1, False, True, 16),
     (45, 7, True, False, 16), (61, 20, True, True, 16), (64, 32, False, True, 16)],
)
def test_local_kernel_forward_and_backward_match_dense(T, w, causal, pad, EV):
    q, k, v = inputs(T=T, EV=EV, seed=T)
    kpm = padding(2, T, all_padded_row=1) if pad else None
    temp = 0.3
    allowed = allowed_window(T, w, causal)
    dense = lambda q, k, v: dense_softmax(q, k, v, temp, allowed, kpm)  # noqa: E731
    for impl in ("triton", "torch"):  # the kernels, and the PyTorch path in the same dtype
        attn = make_attention("local", window_size=w, causal=causal, impl=impl)
        check_attention(attn, dense, q, k, v, temp, kpm)


def test_local_kernel_reads_strided_views():
    """(B, T, 3, H, E) projections viewed as (B, H, T, E), as the models pass them."""
    B, T, H, E = 2, 40, 2, 16
    qkv = torch.randn(B, T, 3, H, E, dtype=torch.float64, generator=torch.Generator().manual_seed(5))

    def split(x):
        return [x[:, :, i].transpose(1, 2) for i in range(3)]

    attn = make_attention("local", window_size=9, impl="triton")
    check_kernel(lambda qkv: attn(*split(qkv)), lambda qkv: dense_softmax(*split(qkv), E**-0.5,
                                                                          allowed_window(T, 9, False)),
                 {"qkv": qkv.to(DEVICE)}, KERNEL_DTYPE)


# ---- performer -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("T,m,pad,eps", [(37, 16, False, 0.0), (50, 24, True, 1e-3), (70, 6, True, 0.0),
                                         (33, 40, False, 1e-8)])
def test_performer_kernel_matches_dense_favor(T, m, pad, eps):
    q, k, v = inputs(T=T, scale=0.8, seed=T)
    kpm = padding(2, T, all_padded_row=1) if pad else None
    temp = 0.3
    attn = make_attention("performer", nb_features=m, eps=eps, seed=3, impl="triton")
    attn.redraw_features(3, head_dim=16)
    W = attn.features.double()
    # the backward recomputes the PyTorch path
    check_attention(attn, lambda q, k, v: dense_performer(q, k, v, W, temp, kpm, eps=eps), q, k, v, temp, kpm)


def test_feature_sums_combine_splits_with_different_offsets():
    """Key splits whose features differ by e^30 are rescaled to one offset before summing."""
    from flyweight.kernels import feature_attention as FA

    T, E = 48, 16
    q, k, v = inputs(B=1, H=1, T=T, scale=0.5, seed=8)
    k[..., 24:, :] *= 6.0  # the second split's log-features are much larger
    attn = make_attention("performer", nb_features=16, seed=1, impl="triton")
    attn.redraw_features(1, head_dim=E)
    W = attn.features.double()
    check_attention(attn, lambda q, k, v: dense_performer(q, k, v, W, 0.25), q, k, v, 0.25, backward=False)
    assert FA._num_splits(T, 1, torch.device(DEVICE)) > 1 or ON_GPU


# ---- sblocal -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("T,w,m,pad", [(37, 5, 16, False), (50, 16, 24, True), (20, 64, 6, False),
                                       (70, 9, 8, True), (45, 49, 24, False)])
def test_sblocal_kernel_matches_dense_scatterbrain(T, w, m, pad):
    q, k, v = inputs(T=T, scale=0.8, seed=T)
    kpm = padding(2, T, all_padded_row=1) if pad else None
    temp = 0.3
    attn = make_attention("sblocal", window_size=w, nb_features=m, seed=5, impl="triton")
    attn.redraw_features(5, head_dim=16)
    W = attn.features.double()
    check_attention(attn, lambda q, k, v: dense_sblocal(q, k, v, W, temp, w, kpm), q, k, v, temp, kpm)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16] if ON_GPU else [torch.float16])
def test_sblocal_kernel_large_logits_stay_finite(dtype):
    """Scores of several hundred (exp overflows fp32 without the shared offset) stay finite."""
    q, k, v = inputs(B=1, H=1, T=40, scale=6.0, seed=2)
    attn = make_attention("sblocal", window_size=8, nb_features=16, seed=0, impl="triton")
    # exp(scores) overflows even float64 here: the PyTorch path (shared offsets too) is the baseline and,
    # in float64, the reference; check_kernel asserts the output finite
    torch_path = make_attention("sblocal", window_size=8, nb_features=16, seed=0, impl="torch").to(DEVICE)
    check_attention(attn, lambda q, k, v: torch_path(q, k, v, softmax_temp=1.0), q, k, v, 1.0, dtype=dtype,
                    backward=False)


# ---- causal kernels (chunked prefix states) -------------------------------------------------------------
@pytest.mark.parametrize("T,pad", [(30, False), (77, True), (100, False)])
def test_causal_lowrank_kernels_match_dense(T, pad):
    """T > CHUNK (32 under the interpreter): queries use the prefix states of earlier chunks."""
    q, k, v = inputs(T=T, scale=0.8, seed=T)
    kpm = padding(2, T, all_padded_row=1) if pad else None
    temp = 0.3
    perf = make_attention("performer", nb_features=24, seed=4, eps=1e-3 if pad else 0.0, causal=True,
                          impl="triton")
    perf.redraw_features(4, head_dim=16)
    W = perf.features.double()
    check_attention(perf, lambda q, k, v: dense_performer(q, k, v, W, temp, kpm, causal=True, eps=perf.eps),
                    q, k, v, temp, kpm)
    sb = make_attention("sblocal", window_size=9, nb_features=16, seed=4, causal=True, impl="triton")
    sb.redraw_features(4, head_dim=16)
    W = sb.features.double()
    check_attention(sb, lambda q, k, v: dense_sblocal(q, k, v, W, temp, 9, kpm, causal=True), q, k, v, temp,
                    kpm)


# ---- causal PyTorch variants (references for the causal kernels) ----------------------------------------
@pytest.mark.parametrize("T", [1, 30, 130])
def test_causal_torch_paths_match_dense(T):
    q, k, v = inputs(T=T, scale=0.8, seed=T)
    kpm = padding(2, T) if T > 1 else None
    temp = 0.3
    loc = make_attention("local", window_size=7, causal=True, impl="torch")
    dense = lambda q, k, v: dense_softmax(q, k, v, temp, allowed_window(T, 7, True), kpm)  # noqa: E731
    check_attention(loc, dense, q, k, v, temp, kpm, dtype=torch.float64)
    perf = make_attention("performer", nb_features=16, seed=2, causal=True, impl="torch")
    perf.redraw_features(2, head_dim=16)
    W = perf.features.double()
    dense = lambda q, k, v: dense_performer(q, k, v, W, temp, kpm, causal=True)  # noqa: E731
    check_attention(perf, dense, q, k, v, temp, kpm, dtype=torch.float64)
    sb = make_attention("sblocal", window_size=7, nb_features=16, seed=2, causal=True, impl="torch")
    sb.redraw_features(2, head_dim=16)
    W = sb.features.double()
    dense = lambda q, k, v: dense_sblocal(q, k, v, W, temp, 7, kpm, causal=True)  # noqa: E731
    check_attention(sb, dense, q, k, v, temp, kpm, dtype=torch.float64)


# ---- dispatch ------------------------------------------------------------------------------------------
def test_auto_uses_the_kernel_only_for_cuda_half_precision(monkeypatch):
    from flyweight.kernels import local_attention as LA

    calls = []
    monkeypatch.setattr(LA, "local_attention", lambda *a, **kw: calls.append(1) or a[2])
    q, k, v = inputs(T=8)
    make_attention("local", window_size=3)(q.float(), k.float(), v.float())  # CPU: PyTorch path
    assert calls == []
    make_attention("local", window_size=3, impl="triton")(q.float(), k.float(), v.float())
    assert calls == [1]
    with pytest.raises(ValueError, match="impl must be one of"):
        make_attention("local", impl="cuda")


def test_auto_keeps_training_in_unchecked_dtypes_on_the_pytorch_path():
    """impl='auto' on CUDA: the kernels for inference in fp16 and bf16 and for training in fp16; a bf16
    backward goes through the PyTorch path until its kernels pass the GPU numerics check."""
    from flyweight.attention.base import auto_picks_kernel

    for dtype in (torch.float16, torch.bfloat16):
        assert auto_picks_kernel(True, dtype, True, 64, needs_grad=False)
    assert auto_picks_kernel(True, torch.float16, True, 64, needs_grad=True)
    assert not auto_picks_kernel(True, torch.bfloat16, True, 64, needs_grad=True)
    bf16_checked = (torch.float16, torch.bfloat16)
    assert auto_picks_kernel(True, torch.bfloat16, True, 64, needs_grad=True, backward_dtypes=bf16_checked)
    assert not auto_picks_kernel(False, torch.float16, True, 64, needs_grad=False)  # CPU
    assert not auto_picks_kernel(True, torch.float32, True, 64, needs_grad=False)
    assert not auto_picks_kernel(True, torch.float16, False, 64, needs_grad=False)  # mixed dtypes
    assert not auto_picks_kernel(True, torch.float16, True, 512, needs_grad=False)  # head dim > 256


def test_each_kind_declares_the_backward_dtypes_that_passed_the_gpu_check():
    """Local attention's bf16 backward passes on the H200, and so do the non-causal Performer and
    Scatterbrain ones; their causal bf16 backward is not re-checked, so impl='auto' trains it in bf16
    through the PyTorch path."""
    from flyweight.attention.base import auto_picks_kernel

    assert make_attention("local").backward_kernel_dtypes == (torch.float16, torch.bfloat16)
    for kind in ("performer", "sblocal"):
        assert make_attention(kind).backward_kernel_dtypes == (torch.float16, torch.bfloat16)
        assert make_attention(kind, causal=True).backward_kernel_dtypes == (torch.float16,)
        for causal, picks in ((False, True), (True, False)):  # a bf16 training call on CUDA
            attn = make_attention(kind, causal=causal)
            assert auto_picks_kernel(True, torch.bfloat16, True, 64, needs_grad=True,
                                     backward_dtypes=attn.backward_kernel_dtypes) is picks


def test_kernel_errors_name_the_fix(monkeypatch):
    from flyweight.kernels import local_attention as LA

    q, k, v = (x.float() for x in inputs(T=8))
    monkeypatch.setattr(LA, "INTERPRET", False)
    with pytest.raises(ValueError, match="needs CUDA tensors.*impl='torch'"):
        make_attention("sblocal", window_size=3, nb_features=4, impl="triton")(q, k, v)


def test_t2t_vit_token_attentions_run_the_kernels():
    """The T2T-ViT token transformers (strided q, k, v views of one projection) give the same logits
    through the kernels as through the PyTorch paths, for every approximate variant."""
    from flyweight.models.t2t_vit import build_t2t_vit

    torch.manual_seed(0)
    model = build_t2t_vit("t2t_vit_t_7", img_size=32).eval()
    images = torch.randn(2, 3, 32, 32)
    specs = {"local": ({"name": "local", "window_size": 9}, {"name": "local", "window_size": 4}),
             "performer": ({"name": "performer", "nb_features": 12}, {"name": "performer", "nb_features": 6}),
             "sblocal": ({"name": "sblocal", "window_size": 7, "nb_features": 8},
                         {"name": "sblocal", "window_size": 3, "nb_features": 4})}
    for name, (s1, s2) in specs.items():
        logits = {}
        for impl in ("torch", "triton"):
            model.set_t2t_attention({**s1, "impl": impl}, {**s2, "impl": impl})
            with torch.no_grad():
                logits[impl] = model(images)
                if impl == "torch":  # the float64 reference: the same model and features on the PyTorch path
                    reference = model.double()(images.double())
                    model.float()
        assert_within_baseline({name: logits["triton"]}, {name: reference}, torch.float32,
                               {name: logits["torch"]})


def test_projection_cache_follows_redraws_and_loads():
    """The kernels' cached projection halves are rebuilt after an in-place load or a redraw."""
    q, k, v = inputs(T=20, scale=0.8, seed=1)
    a = make_attention("performer", nb_features=16, seed=0, impl="triton")
    b = make_attention("performer", nb_features=16, seed=7, impl="torch")
    b.redraw_features(7, head_dim=16)

    def dense(q, k, v):  # with b's features, which a must be using
        return dense_performer(q, k, v, b.features.double(), 0.3)

    a.to(DEVICE)(*(x.to(DEVICE, KERNEL_DTYPE) for x in (q, k, v)), softmax_temp=0.3)  # caches seed 0's halves
    a.load_state_dict(b.state_dict())  # in-place copy of seed 7's features
    check_attention(a, dense, q, k, v, 0.3, backward=False)
    a.redraw_features(3)
    b.redraw_features(3)
    check_attention(a, dense, q, k, v, 0.3, backward=False)


@pytest.mark.skipif(ON_GPU, reason="fp16 under the interpreter; the GPU runs benchmarks/approx_attention_gpu.py")
@pytest.mark.parametrize("kind,causal,pad", [("performer", True, False), ("sblocal", True, False),
                                             ("performer", False, True)])
def test_fp16_backward_at_large_logits_is_as_precise_as_the_pytorch_path(kind, causal, pad):
    """fp16 inputs with 3x logits (wide feature ranges), under the interpreter (exact fp32 products), so
    the only rounding left is the storage of inputs, output and gradients, as in the PyTorch path: the
    kernel's output and gradient errors against float64 must match the PyTorch path's within 1.25x.
    With the output saved in fp16 for the backward (its rounding entering rowsum(dO * O)) the kernel's
    dq / dk errors were 1.4-2.0x the PyTorch path's here and 2.1-2.8x on the H200."""
    torch.manual_seed(0)
    B, H, T, E, m = 1, 2, 96, 16, 32
    kw = dict(nb_features=m, causal=causal, seed=1, **({"window_size": 8} if kind == "sblocal" else {}))
    kernel = make_attention(kind, impl="triton", **kw)
    kernel.redraw_features(1, head_dim=E)
    torch_path = make_attention(kind, impl="torch", **kw)
    torch_path.load_state_dict(kernel.state_dict())
    x = [(3 * torch.randn(B, H, T, E)).half() for _ in range(3)]
    kpm = torch.rand(B, T) < 0.15 if pad else None
    do = torch.randn(B, H, T, E)
    x64 = [t.double().requires_grad_() for t in x]
    ref = torch_path.double()(*x64, key_padding_mask=kpm)
    want = (ref, *torch.autograd.grad(ref, x64, do.double()))
    torch_path.float()
    errs = {}
    for name, mod in (("kernel", kernel), ("torch", torch_path)):
        xi = [t.clone().requires_grad_() for t in x]
        out = mod(*xi, key_padding_mask=kpm)
        got = (out, *torch.autograd.grad(out, xi, do.half()))
        errs[name] = [((a.double() - b).abs().max() / b.abs().max()).item() for a, b in zip(got, want)]
    for tensor, k_err, t_err in zip(("out", "dq", "dk", "dv"), errs["kernel"], errs["torch"]):
        assert k_err <= 1.25 * t_err + 1e-6, f"{tensor}: kernel {k_err:.2e} vs PyTorch path {t_err:.2e}"


@pytest.mark.parametrize("kind,causal", [("performer", False), ("sblocal", False), ("performer", True)])
def test_forward_allocates_its_output_after_the_key_reductions(kind, causal, monkeypatch):
    """The key-side reductions' split partials are freed before the output exists, so the output is not
    live at their peak (allocated first, it added its own size to the forward's peak memory: 34 -> 58 MiB
    at T = 16,384 on the H200)."""
    if not ON_GPU and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    from flyweight.kernels import causal_feature_attention as CF
    from flyweight.kernels import feature_attention as FA
    from flyweight.kernels import scatterbrain_attention as SB

    order = []
    reductions = {FA: "key_feature_sums", SB: "key_feature_sums", CF: "chunk_states"}
    for module, name in reductions.items():
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, **kw: (order.append("reduce"), _real(*a, **kw))[1])
    for module in (FA, SB, CF):
        real_empty = module.empty_output
        monkeypatch.setattr(module, "empty_output",
                            lambda *a, _real=real_empty, **kw: (order.append("output"), _real(*a, **kw))[1])
    settings = {"nb_features": 16, "seed": 0}
    if kind == "sblocal":
        settings["window_size"] = 8
    attn = make_attention(kind, causal=causal, impl="triton", **settings)
    q, k, v = (x.float().to(DEVICE) for x in inputs(T=40))
    with torch.no_grad():
        attn(q, k, v)
    assert order == ["reduce", "output"], order
