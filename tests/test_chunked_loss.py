"""The chunked linear + cross-entropy loss against a float64 reference built from full logits."""

import pytest
import torch
import torch.nn.functional as F
from _numerics import TOLERANCE, assert_within_baseline

from flyweight.models.gpt2 import build_gpt2
from flyweight.train.metrics import NextTokenNLL, chunked_lm_nll_sum


def reference_nll(model, ids, vocab):
    """Summed next-token NLL from the model's full logits, float64, real vocabulary columns only."""
    logits = model(input_ids=ids, use_cache=False).logits.double()[..., :vocab]
    return F.cross_entropy(logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1), reduction="sum")


@pytest.mark.parametrize("pad,chunk", [(None, 7), (64, 5), (None, 10_000)])
def test_chunked_loss_matches_full_logits_in_float64(pad, chunk):
    model = build_gpt2("small", n_layer=2, n_embd=64, n_head=2, vocab_size=300, pad_vocab_to=pad,
                       dropout=0.0, seed=3).double()
    ids = torch.randint(0, 300, (3, 17), generator=torch.Generator().manual_seed(chunk))
    params = dict(model.named_parameters())

    def loss_and_grads(loss):
        return {"loss": loss, **dict(zip(params, torch.autograd.grad(loss, list(params.values()))))}

    ref = loss_and_grads(reference_nll(model, ids, 300))
    got = loss_and_grads(NextTokenNLL(model, loss_chunk=chunk)(ids))
    assert_within_baseline(got, ref, torch.float64)  # the same float64 math, summed in another order


def test_chunked_loss_ignores_targets_and_scales_by_the_incoming_gradient():
    torch.manual_seed(0)
    hidden = torch.randn(2, 6, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 8, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 11, (2, 6))
    nll, count = chunked_lm_nll_sum(hidden, weight, ids, chunk=4)
    assert count == 2 * 5
    logits = hidden @ weight.t()
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 11), ids[:, 1:].reshape(-1), reduction="sum")
    torch.testing.assert_close(nll, ref)
    (3.0 * nll).backward()
    gh, gw = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    (3.0 * ref).backward()
    torch.testing.assert_close(gh, hidden.grad)
    torch.testing.assert_close(gw, weight.grad)
    with pytest.raises(ValueError, match="positive"):
        chunked_lm_nll_sum(hidden, weight, ids, chunk=0)


def test_lightning_module_uses_the_chunked_loss():
    """trainer.loss_chunk reaches the training module: its summed NLL equals the full-logits one."""
    pytest.importorskip("lightning")  # flyweight.train.module is a LightningModule
    from flyweight.train.module import LMModule
    from flyweight.train.optim import OptimConfig

    model = build_gpt2("small", n_layer=1, n_embd=32, n_head=2, vocab_size=100, dropout=0.0, seed=1).double()
    ids = torch.randint(0, 100, (2, 9), generator=torch.Generator().manual_seed(0))
    plain = LMModule(model, OptimConfig(), warmup_steps=1, schedule_steps=2)
    chunked = LMModule(model, OptimConfig(), warmup_steps=1, schedule_steps=2, loss_chunk=4)
    (a, n_a), (b, n_b) = plain.nll_sum(ids), chunked.nll_sum(ids)
    assert n_a == n_b == 2 * 8
    assert_within_baseline({"nll": b}, {"nll": reference_nll(model, ids, 100)}, torch.float64)
    torch.testing.assert_close(a.double(), b, rtol=1e-6, atol=1e-6)  # the plain path's softmax is float32


def test_chunked_loss_without_grad_gives_the_same_value():
    """Under no_grad (evaluation) the chunked loss skips the gradient GEMMs but keeps its value."""
    torch.manual_seed(1)
    hidden = torch.randn(2, 6, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(11, 8, dtype=torch.float64)
    ids = torch.randint(0, 11, (2, 6))
    with_grad, _ = chunked_lm_nll_sum(hidden, weight, ids, chunk=4)
    with torch.no_grad():
        without, _ = chunked_lm_nll_sum(hidden, weight, ids, chunk=4)
    assert not without.requires_grad
    torch.testing.assert_close(without, with_grad.detach(), rtol=0, atol=0)
