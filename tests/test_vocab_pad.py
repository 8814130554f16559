"""Vocabulary padding (build_gpt2(pad_vocab_to=64)): the real-vocabulary logits, loss and gradients are
those of the unpadded model with the same weights (float64), the padded rows take no probability mass and
no gradient, the counts are the real vocabulary's, and padded models save, load and resolve from configs."""

import math

import pytest
import torch
from _numerics import TOLERANCE

from flyweight.models.gpt2 import (
    PaddedVocabHead,
    build_gpt2,
    load_structured,
    model_flops_per_token,
    num_parameters,
    real_vocab_size,
    save_structured,
)
from flyweight.train.metrics import NextTokenNLL, lm_nll_sum
from flyweight.train.model_config import gpt2_kwargs
from flyweight.train.optim import OptimConfig, make_optimizer

V = 101  # padded to 128 by pad_vocab_to=64


def pair(kind="dense", **kw):
    """(unpadded, padded) tiny GPT-2s of one seed, in float64, eval mode."""
    common = {"kind": kind, "vocab_size": V, "n_positions": 32, "dropout": 0.0, "seed": 3, **kw}
    a = build_gpt2("tiny", **common).double().eval()
    b = build_gpt2("tiny", pad_vocab_to=64, **common).double().eval()
    return a, b


def test_padding_layout_and_same_initial_weights():
    a, b = pair()
    assert b.config.vocab_size == 128 and real_vocab_size(b) == V and real_vocab_size(a) == V
    assert isinstance(b.lm_head, PaddedVocabHead) and b.lm_head.weight is b.transformer.wte.weight
    assert type(a.lm_head) is torch.nn.Linear
    wa, wb = a.state_dict(), b.state_dict()
    assert wa.keys() == wb.keys()
    for k in wa:  # the same seed gives the same values; the padded rows are zero
        if k in ("transformer.wte.weight", "lm_head.weight"):
            assert torch.equal(wb[k][:V], wa[k]) and torch.count_nonzero(wb[k][V:]) == 0
        else:
            assert torch.equal(wa[k], wb[k]), k


@pytest.mark.parametrize("kind", ["dense", "ss1"])
def test_real_logits_loss_and_grads_equal_the_unpadded_model(kind):
    a, b = pair(kind)
    with torch.no_grad():  # independent weights, copied into both: "same weights", not just same seed
        for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
            pa.normal_(0, 0.05, generator=torch.Generator().manual_seed(len(name)))
            pb[: pa.shape[0]].copy_(pa)
            if pb.shape != pa.shape:  # the padded rows: any values, masked anyway
                pb[pa.shape[0]:].normal_(0, 1.0)
    a.train(), b.train()
    ids = torch.randint(0, V, (3, 17), generator=torch.Generator().manual_seed(0))
    la, lb = a(input_ids=ids).logits, b(input_ids=ids).logits
    assert lb.shape == (3, 17, 128)
    torch.testing.assert_close(lb[..., :V], la, **TOLERANCE[torch.float64].close())
    assert torch.all(lb[..., V:] == -math.inf)
    assert torch.all(torch.softmax(lb, -1)[..., V:] == 0)  # no probability mass at all
    (na, n), (nb, m) = lm_nll_sum(la, ids), lm_nll_sum(lb, ids)
    assert n == m == 3 * 16 and torch.isfinite(nb)
    torch.testing.assert_close(nb.double(), na.double(), rtol=1e-12, atol=0)
    na.backward(), nb.backward()
    for (name, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pb.grad[: pa.shape[0]], pa.grad, msg=name,
                                   **TOLERANCE[torch.float64].close())
        if pb.shape != pa.shape:
            assert torch.count_nonzero(pb.grad[pa.shape[0]:]) == 0, name
    # Hugging Face's own labels= loss reshapes the logits by config.vocab_size: it must agree too
    torch.testing.assert_close(b(input_ids=ids, labels=ids).loss, a(input_ids=ids, labels=ids).loss)


def test_padded_rows_stay_zero_under_adamw_and_never_generated():
    _, b = pair()
    b.train()
    opt = make_optimizer(b, OptimConfig(lr=1e-2, weight_decay=0.1))
    ids = torch.randint(0, V, (4, 16), generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        nll, n = lm_nll_sum(b(input_ids=ids).logits, ids)
        (nll / n).backward()
        opt.step()
        opt.zero_grad()
    assert torch.count_nonzero(b.transformer.wte.weight[V:]) == 0
    # make the padded rows the most attractive logits there could be: without the mask they would win
    b.eval()
    with torch.no_grad():
        h = b.transformer(input_ids=ids[:1, :4]).last_hidden_state[0, -1]
        b.transformer.wte.weight[V:] = 50 * h / h.norm()
        raw = torch.nn.functional.linear(h, b.lm_head.weight)
    assert raw.argmax() >= V  # the unmasked GEMM would pick a padded row
    out = b.generate(ids[:1, :4], max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert out.shape == (1, 10) and int(out.max()) < V


def test_counts_are_the_real_vocabulary():
    dense, padded = build_gpt2("small", device="meta"), build_gpt2("small", device="meta", pad_vocab_to=64)
    assert padded.config.vocab_size == 50304
    assert num_parameters(padded) == num_parameters(dense) == 124_439_808
    assert num_parameters(padded, tied=False) == num_parameters(dense, tied=False)
    assert model_flops_per_token(padded, 1024) == model_flops_per_token(dense, 1024)
    d, L, T = 768, 12, 1024  # by hand: the lm_head is charged 2 * d * 50257, not 50304
    assert model_flops_per_token(padded, T) == L * 2 * 12 * d * d + 2 * d * 50257 + L * 4 * d * T


def test_aligned_vocabulary_is_left_alone_and_bad_settings_rejected():
    m = build_gpt2("tiny", vocab_size=128, n_positions=16, pad_vocab_to=64, seed=0)
    assert type(m.lm_head) is torch.nn.Linear and m.config.vocab_size == 128
    assert build_gpt2("tiny", vocab_size=V, n_positions=16, pad_vocab_to=1, seed=0).config.vocab_size == V
    for bad in (0, -64, 6.4, "64", True):
        with pytest.raises(ValueError, match="pad_vocab_to"):
            build_gpt2("tiny", vocab_size=V, n_positions=16, pad_vocab_to=bad)
    with pytest.raises(ValueError, match="structured lm_head"):
        build_gpt2("tiny", kind="lowrank", lm_head=True, vocab_size=V, n_positions=16, pad_vocab_to=64)


@pytest.mark.parametrize("kind", ["dense", "monarch"])
def test_save_load_keeps_the_mask(tmp_path, kind):
    _, b = pair(kind)
    save_structured(b, tmp_path)
    loaded = load_structured(tmp_path)
    assert isinstance(loaded.lm_head, PaddedVocabHead) and loaded.lm_head.vocab_size == V
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    ids = torch.randint(0, V, (2, 9))
    with torch.no_grad():
        assert torch.equal(b(ids).logits, loaded(ids).logits)
    assert num_parameters(loaded) == num_parameters(b)


def test_compiled_model_and_loss_match_eager():
    """NextTokenNLL under torch.compile equals eager code: the in-place -inf fill survives dynamo's
    tracing and AOT autograd's functionalisation in one graph. (aot_eager keeps this test fast; inductor
    itself runs in the benchmark's CPU smoke run and on the GPU.)"""
    b = build_gpt2("tiny", n_layer=1, n_embd=32, n_head=2, vocab_size=V, n_positions=16, dropout=0.0,
                   seed=0, pad_vocab_to=64)
    ids = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(2))
    eager = NextTokenNLL(b)(ids)
    eager.backward()
    grads = [p.grad.clone() for p in b.parameters()]
    b.zero_grad()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(NextTokenNLL(b))(ids)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    b.zero_grad()
    compiled = torch.compile(NextTokenNLL(b), backend="aot_eager")(ids)
    compiled.backward()
    torch.testing.assert_close(compiled, eager, **TOLERANCE[torch.float32].close())
    for g, p in zip(grads, b.parameters()):
        torch.testing.assert_close(p.grad, g, **TOLERANCE[torch.float32].close())
    assert torch.count_nonzero(b.transformer.wte.weight.grad[V:]) == 0


def test_experiment_configs_pad_on_gpu_runs_only():
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="flyweight.configs", version_base="1.3"):
        gpu = compose(config_name="config", overrides=["experiment=wt103/gpt2-ss1"])
        cpu = compose(config_name="config", overrides=["experiment=tiny-lm"])
        off = compose(config_name="config", overrides=["experiment=wt103/gpt2", "model.pad_vocab_to=null"])
    assert gpu.model.pad_vocab_to == 64 and cpu.model.pad_vocab_to is None and off.model.pad_vocab_to is None
    model = build_gpt2(**gpt2_kwargs(gpu.model), device="meta")
    assert isinstance(model.lm_head, PaddedVocabHead) and model.config.vocab_size == 50304
    assert abs(num_parameters(model) / 1e6 - 60.7) <= 0.05  # wt103/gpt2-ss1's SS1 count, padding not counted
