"""The fused LM head + cross-entropy (Triton kernel under TRITON_INTERPRET=1, and its PyTorch path)
against float64 references built from full logits."""

import os

import pytest
import torch
import torch.nn.functional as F
from _numerics import assert_within_baseline, check_kernel

from flyweight.kernels import lm_loss
from flyweight.kernels.lm_loss import fused_linear_nll, nll_and_grad_

HAS_KERNEL = lm_loss.triton is not None and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1")


def reference(logits, target, vocab):
    """Per-row NLL and d(sum NLL)/d(logits) in the logits' dtype (float64: the reference; float32: the
    plain PyTorch baseline); padded columns and ignored rows get zero."""
    x = logits[:, :vocab]
    nll = F.cross_entropy(x, target.clamp_min(0), reduction="none") * (target >= 0)
    grad = torch.softmax(x, dim=-1)
    grad[torch.arange(len(target)), target.clamp_min(0)] -= 1
    grad = grad * (target >= 0)[:, None]
    full = torch.zeros_like(logits)
    full[:, :vocab] = grad
    return nll, full


def make_case(n, width, seed, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, width, generator=g, dtype=torch.float64) * scale
    target = torch.randint(0, width, (n,), generator=g)
    return logits, target


@pytest.mark.parametrize("path", ["kernel", "torch"])
@pytest.mark.parametrize("n,width,vocab", [(5, 300, 300), (7, 320, 301), (3, 17, 11), (4, 1000, 999)])
def test_rows_match_float64_reference(path, n, width, vocab, monkeypatch):
    if path == "kernel" and not HAS_KERNEL:
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    if path == "torch":
        monkeypatch.setattr(lm_loss, "_use_triton", lambda t: False)
    logits64, target = make_case(n, width, seed=n * width)
    target = target.clamp_max(vocab - 1)
    target[1] = -100  # an ignored row
    work = logits64.float().clone()  # the kernel computes in float32
    ref_nll, ref_grad = reference(work.double(), target, vocab)
    plain_nll, plain_grad = reference(work.clone(), target, vocab)
    nll = nll_and_grad_(work, target, vocab)
    assert_within_baseline({"nll": nll, "grad": work}, {"nll": ref_nll, "grad": ref_grad}, torch.float32,
                           {"nll": plain_nll, "grad": plain_grad})
    assert work[1].abs().max() == 0 and (vocab == width or work[:, vocab:].abs().max() == 0)


@pytest.mark.skipif(not HAS_KERNEL, reason="needs CUDA or TRITON_INTERPRET=1")
def test_kernel_in_bfloat16_rounds_like_the_reference_and_can_skip_the_gradient():
    logits64, target = make_case(6, 200, seed=1)
    work = logits64.to(torch.bfloat16)
    ref_nll, ref_grad = reference(work.double(), target, 200)  # reference from the rounded logits
    plain_nll, plain_grad = reference(work.float(), target, 200)  # the softmax in float32, as documented
    before = work.clone()
    nll = nll_and_grad_(work, target, 200, write_grad=False)
    assert torch.equal(work, before)  # evaluation: the logits are left alone
    assert nll.dtype == torch.float32
    assert_within_baseline({"nll": nll}, {"nll": ref_nll}, torch.float32, {"nll": plain_nll})
    nll_and_grad_(work, target, 200)
    assert work.dtype == torch.bfloat16  # the gradient is stored in bf16: judged against its bf16 rounding
    assert_within_baseline({"grad": work}, {"grad": ref_grad}, torch.bfloat16,
                           {"grad": plain_grad.bfloat16()})


@pytest.mark.parametrize("path", ["kernel", "torch"])
def test_fused_linear_nll_value_and_gradients_match_autograd(path, monkeypatch):
    if path == "kernel" and not HAS_KERNEL:
        pytest.skip("needs CUDA or TRITON_INTERPRET=1")
    if path == "torch":
        monkeypatch.setattr(lm_loss, "_use_triton", lambda t: False)
    dtype = torch.float32 if path == "kernel" else torch.float64
    g = torch.Generator().manual_seed(3)
    hidden = torch.randn(9, 16, generator=g, dtype=torch.float64)
    weight = torch.randn(64, 16, generator=g, dtype=torch.float64)  # 60 real rows + 4 padding
    target = torch.randint(0, 60, (9,), generator=g)
    target[-1] = -1
    # check_kernel's random upstream gradient (2.5 here) scales both weight and hidden gradients
    def plain(hidden, weight):
        return F.cross_entropy(hidden @ weight[:60].t(), target, ignore_index=-1, reduction="sum")

    got = check_kernel(lambda hidden, weight: fused_linear_nll(hidden, weight, target, vocab=60), plain,
                       {"hidden": hidden, "weight": weight}, dtype, seed=3)
    assert got["out"].dtype == dtype and got["dweight"][60:].abs().max() == 0  # padding rows never learn


def test_no_grad_evaluation_and_bad_inputs():
    hidden, weight = torch.randn(4, 8), torch.randn(10, 8)
    target = torch.tensor([1, 2, -1, 9])
    with torch.no_grad():
        check_kernel(lambda hidden, weight: fused_linear_nll(hidden, weight, target),
                     lambda hidden, weight: F.cross_entropy(hidden @ weight.t(), target, ignore_index=-1,
                                                            reduction="sum"),
                     {"hidden": hidden, "weight": weight}, torch.float32, backward=False)
    with pytest.raises(ValueError, match="target"):
        fused_linear_nll(hidden, weight, target.float())
    with pytest.raises(ValueError, match="hidden"):
        fused_linear_nll(hidden, torch.randn(10, 7), target)
    with pytest.raises(ValueError, match="vocab"):
        nll_and_grad_(torch.randn(4, 10), target, vocab=11)


@pytest.mark.parametrize("pad", [None, 64])
def test_next_token_nll_with_fused_loss_matches_full_logits(pad):
    """NextTokenNLL(fused_loss=True) on a GPT-2 (padded vocabulary or not): the loss and every
    parameter's gradient equal the plain full-logits loss computed in float64."""
    from flyweight.models.gpt2 import build_gpt2
    from flyweight.train.metrics import NextTokenNLL

    model = build_gpt2("small", n_layer=2, n_embd=32, n_head=2, vocab_size=300, pad_vocab_to=pad, dropout=0.0, seed=5)
    ids = torch.randint(0, 300, (2, 11), generator=torch.Generator().manual_seed(1))
    params = dict(model.named_parameters())

    def loss_and_grads(loss):
        return {"loss": loss, **dict(zip(params, torch.autograd.grad(loss, list(params.values()))))}

    got = loss_and_grads(NextTokenNLL(model, fused_loss=True)(ids))
    plain = loss_and_grads(NextTokenNLL(model)(ids))  # the full-logits loss in float32: the baseline
    logits = model.double()(input_ids=ids, use_cache=False).logits[..., :300]
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 300), ids[:, 1:].reshape(-1), reduction="sum")
    ref = loss_and_grads(ref)
    assert_within_baseline(got, ref, torch.float32, plain)
    with pytest.raises(ValueError, match="alternative"):
        NextTokenNLL(model, fused_loss=True, loss_chunk=8)


def test_trainer_fused_loss_auto_is_on_for_gpus_only():
    pytest.importorskip("lightning")  # flyweight.train.lm is the Lightning trainer
    from flyweight.train.lm import resolve_fused_loss

    assert resolve_fused_loss("auto", "gpu", None) is True
    assert resolve_fused_loss("auto", "cpu", None) is False
    assert resolve_fused_loss("auto", "gpu", 8192) is False  # the chunked loss was asked for
    assert resolve_fused_loss(True, "cpu", None) is True
    with pytest.raises(ValueError, match="fused_loss"):
        resolve_fused_loss("yes", "gpu", None)
