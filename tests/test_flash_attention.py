"""The Triton flash-attention kernels (forward, dQ, dK, dV) against the materialised softmax.

Every numerics test is ``_numerics.check_kernel``: the kernel's error against the float64 softmax at
most twice that of the plain PyTorch softmax in the same dtype. Without CUDA they run under
TRITON_INTERPRET=1 (set by conftest.py) on CPU tensors with the small fixed tiles of
``INTERPRET_BLOCKS``: the same kernel source the GPU compiles. float32 and float16 are tested here;
bfloat16 dots are wrong in Triton's CPU interpreter itself (a 16x16 bf16 ``tl.dot`` returns garbage
there), so bf16 is checked on the GPU by ``test_low_precision.py`` (``-m gpu``).
"""

import math
import os

import pytest
import torch
import torch.nn.functional as F

from _numerics import assert_within_baseline, check_kernel

from flyweight.kernels import flash_attention as FA
from flyweight.kernels.flash_attention import flash_attention

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"
pytestmark = pytest.mark.skipif(
    not ON_GPU and os.environ.get("TRITON_INTERPRET") != "1", reason="needs CUDA or TRITON_INTERPRET=1"
)
# float32 is interpreter-only (the CUDA path takes 16-bit inputs); on a GPU the tests use float16.
DTYPE = torch.float16 if ON_GPU else torch.float32


def attention(q, k, v, causal, scale=None):
    """softmax(scale q k^T + causal mask) v materialised in the inputs' dtype, the softmax in at least
    float32: the plain PyTorch baseline, and in float64 the reference."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = scale * q @ k.transpose(-1, -2)
    if causal:
        T = q.shape[-2]
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), -math.inf)
    return torch.softmax(s.to(torch.promote_types(s.dtype, torch.float32)), -1).to(q.dtype) @ v


def check_against_reference(q, k, v, causal, scale=None):
    """flash_attention against ``attention`` (check_kernel's rule) for the output, dq, dk and dv."""
    got = check_kernel(lambda q, k, v: flash_attention(q, k, v, causal=causal, scale=scale),
                       lambda q, k, v: attention(q, k, v, causal, scale), {"q": q, "k": k, "v": v}, q.dtype)
    assert all(x.dtype == q.dtype for x in got.values())
    return got


def output_and_grads(fn, q, k, v, do):
    """fn's output and dq, dk, dv for upstream gradient do (fresh leaves; the inputs are untouched)."""
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    out = fn(*leaves)
    out.backward(do.to(out.dtype))
    return [out.detach()] + [x.grad for x in leaves]


def rand_qkv(B, H, T, D, dtype=DTYPE, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, H, T, D, generator=g).to(device=DEVICE, dtype=dtype) for _ in range(3))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("T", [40, 64, 97])
@pytest.mark.parametrize("D", [16, 32, 64])
def test_matches_float64_reference(T, D, causal):
    # T=64 is a multiple of every interpreter tile (the unmasked fast path); 40 and 97 are not
    check_against_reference(*rand_qkv(2, 2, T, D, seed=T + D), causal=causal)


@pytest.mark.parametrize("causal", [True, False])
def test_non_contiguous_inputs_custom_scale_and_output_layout(causal):
    """q, k, v as (B, H, T, D) views of one fused (B, T, 3, H, D) projection (GPT-2's layout)."""
    B, T, H, D = 2, 45, 3, 32
    qkv = torch.randn(B, T, 3, H, D, generator=torch.Generator().manual_seed(3)).to(DEVICE, DTYPE)

    def split(x):
        return [x[:, :, i].transpose(1, 2) for i in range(3)]

    check_kernel(lambda qkv: flash_attention(*split(qkv), causal=causal, scale=0.37),
                 lambda qkv: attention(*split(qkv), causal, 0.37), {"qkv": qkv}, DTYPE)
    leaf = qkv.clone().requires_grad_()
    q, k, v = split(leaf)
    assert not q.is_contiguous() and q.stride(-1) == 1
    out = flash_attention(q, k, v, causal=causal, scale=0.37)
    grads = torch.autograd.grad(out, (q, k, v), torch.randn_like(out))
    # outputs and gradients keep the inputs' (B, T, H, D) memory order: transposing back is free
    for x in (out, *grads):
        assert x.transpose(1, 2).is_contiguous()


def test_last_dim_not_contiguous_is_copied():
    q, k, v = rand_qkv(1, 2, 33, 16, seed=5)

    def strided(x):  # same values, stride(-1) = T
        return x.transpose(-1, -2).contiguous().transpose(-1, -2)

    assert strided(q).stride(-1) != 1
    check_kernel(lambda q, k, v: flash_attention(strided(q), k, v, causal=True),
                 lambda q, k, v: attention(q, k, v, True), {"q": q, "k": k, "v": v}, DTYPE)


def test_single_token_and_head_dim_128():
    check_against_reference(*rand_qkv(1, 2, 1, 16, seed=6), causal=True)
    check_against_reference(*rand_qkv(1, 1, 20, 128, seed=7), causal=True)


def test_other_tiles(monkeypatch):
    """Square tiles: the diagonal is a single block in every kernel."""
    monkeypatch.setattr(FA, "INTERPRET_BLOCKS", {"fwd": (16, 16), "dkdv": (16, 16), "dq": (16, 16)})
    if ON_GPU:
        pytest.skip("interpreter tiles only")
    check_against_reference(*rand_qkv(1, 2, 50, 32, seed=8), causal=True)


def test_float16_error_at_most_twice_plain_pytorch():
    """FlashAttention's rule: in low precision the kernel's error is at most ~2x that of the plain
    (materialised) PyTorch attention in the same precision, for the output and every gradient."""
    check_against_reference(*rand_qkv(2, 2, 97, 32, dtype=torch.float16, seed=9), causal=True)


def test_log_sum_exp_and_deterministic_backward():
    q, k, v = rand_qkv(1, 2, 37, 16, seed=11)
    scale = 0.25
    _, lse = FA._fwd_impl(q, k, v, True, scale)

    def log2_sum_exp(q, k):  # of the causal scores, in q's dtype (the reduction in at least float32)
        s = scale * q @ k.transpose(-1, -2)
        s = s.masked_fill(torch.ones(37, 37, dtype=torch.bool, device=q.device).triu(1), -math.inf)
        return torch.logsumexp(s.to(torch.promote_types(s.dtype, torch.float32)), -1) * FA.LOG2E

    assert_within_baseline({"lse": lse}, {"lse": log2_sum_exp(q.double(), k.double())}, DTYPE,
                           {"lse": log2_sum_exp(q, k)})
    do = torch.randn_like(q)
    first = output_and_grads(lambda a, b, c: flash_attention(a, b, c, scale=scale), q, k, v, do)
    again = output_and_grads(lambda a, b, c: flash_attention(a, b, c, scale=scale), q, k, v, do)
    for a, b in zip(first, again):
        assert torch.equal(a, b)  # no atomics: bitwise reproducible


def test_compile_without_graph_breaks_and_fake_strides():
    from torch._subclasses.fake_tensor import FakeTensorMode

    B, T, H, D = 2, 40, 2, 16
    qkv = torch.randn(B, T, 3, H, D, generator=torch.Generator().manual_seed(12)).to(DEVICE, DTYPE)

    def attn(x):
        q, k, v = (x[:, :, i].transpose(1, 2) for i in range(3))
        return flash_attention(q, k, v, causal=True).transpose(1, 2).reshape(B, T, H * D)

    def run(fn):
        x = qkv.clone().requires_grad_()
        y = fn(x)
        y.square().sum().backward()
        return y.detach(), x.grad

    compiled = torch.compile(attn, backend="aot_eager", fullgraph=True)  # fullgraph: a break raises
    (y, g), (ye, ge) = run(compiled), run(attn)
    torch.testing.assert_close(y, ye)
    torch.testing.assert_close(g, ge)

    # the opaque op's fake implementation must promise the strides the real kernels produce
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    real_fwd = FA.flash_attn_fwd_opaque(q, k, v, True, 0.25)
    real_bwd = FA.flash_attn_bwd_opaque(real_fwd[0], q, k, v, *real_fwd, True, 0.25)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fq, fk, fv = (mode.from_tensor(x) for x in (q, k, v))
        fake_fwd = FA.flash_attn_fwd_opaque(fq, fk, fv, True, 0.25)
        fake_bwd = FA.flash_attn_bwd_opaque(fake_fwd[0], fq, fk, fv, *fake_fwd, True, 0.25)
    for r, f in zip((*real_fwd, *real_bwd), (*fake_fwd, *fake_bwd)):
        assert (r.shape, r.stride(), r.dtype) == (f.shape, f.stride(), f.dtype)
    # the triton_op registration (what CUDA compiles through) runs the same kernels when called eagerly
    traced_fwd = FA.flash_attn_fwd(q, k, v, True, 0.25)
    traced_bwd = FA.flash_attn_bwd(real_fwd[0], q, k, v, *traced_fwd, True, 0.25)
    for a, b in zip((*real_fwd, *real_bwd), (*traced_fwd, *traced_bwd)):
        assert torch.equal(a, b)


def test_cpu_fallback_is_sdpa(monkeypatch):
    """Without CUDA and without the interpreter, flash_attention is F.scaled_dot_product_attention."""
    monkeypatch.setattr(FA, "INTERPRET", False)
    q, k, v = (x.cpu().float() for x in rand_qkv(2, 3, 29, 16, dtype=torch.float32, seed=13))
    assert not FA.uses_kernels(q)
    calls = []
    real_sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(FA.F, "scaled_dot_product_attention", lambda *a, **kw: calls.append(kw) or real_sdpa(*a, **kw))
    for causal, scale in ((True, None), (False, 0.3)):
        check_against_reference(q, k, v, causal, scale)
    assert [c["is_causal"] for c in calls] == [True, False] and calls[1]["scale"] == 0.3


def test_errors_name_the_argument():
    q, k, v = rand_qkv(1, 2, 8, 16)
    with pytest.raises(ValueError, match="same shape"):
        flash_attention(q, k[:, :, :4], v)
    with pytest.raises(ValueError, match="q must be 4-D"):
        flash_attention(q[0], k, v)
    with pytest.raises(TypeError, match="k must be a torch.Tensor"):
        flash_attention(q, None, v)
    with pytest.raises(ValueError, match="share a dtype"):
        flash_attention(q, k.double(), v)
    with pytest.raises(ValueError, match="head dim D = q.shape\\[-1\\] must be one of \\(16, 32, 64, 128\\), got 24"):
        flash_attention(*(torch.randn(1, 1, 8, 24, device=DEVICE, dtype=DTYPE) for _ in range(3)))
    with pytest.raises(ValueError, match="dtype of q/k/v must be one of .*got torch.float64"):
        flash_attention(q.double(), k.double(), v.double())
    with pytest.raises(ValueError, match="scale must be finite"):
        flash_attention(q, k, v, scale=float("nan"))
    with pytest.raises(TypeError, match="scale must be a float or None"):
        flash_attention(q, k, v, scale="0.1")
    with pytest.raises(TypeError, match="causal must be a bool"):
        flash_attention(q, k, v, causal=1)
    with pytest.raises(ValueError, match="must be >= 1"):
        flash_attention(q[:, :, :0], k[:, :, :0], v[:, :, :0])
    meta = torch.empty(1, 2, 8, 16, device="meta", dtype=DTYPE)
    with pytest.raises(ValueError, match="device must be cuda"):
        flash_attention(meta, meta, meta)
