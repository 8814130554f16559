"""GPT-2 with flyweight's Triton flash attention (build_gpt2(attention="triton")) against the same model
on SDPA: logits and every parameter gradient, plus the calls that must fall back to SDPA."""

import pytest
import torch
from _numerics import TOLERANCE, assert_within_baseline

from flyweight.attention import hf_backends
from flyweight.models.gpt2 import build_gpt2


def pair(**kw):
    a = build_gpt2("small", n_layer=2, n_embd=64, n_head=2, vocab_size=120, dropout=0.0, seed=4, **kw)
    b = build_gpt2("small", n_layer=2, n_embd=64, n_head=2, vocab_size=120, dropout=0.0, seed=4, attention="triton", **kw)
    return a, b


def test_triton_attention_matches_sdpa_logits_and_gradients(monkeypatch):
    calls = []
    from flyweight.kernels import flash_attention as fa
    real = fa.flash_attention
    monkeypatch.setattr(fa, "flash_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    ref_model, model = pair()
    assert model.config._attn_implementation == hf_backends.IMPLEMENTATIONS["triton"]
    ids = torch.randint(0, 120, (2, 37), generator=torch.Generator().manual_seed(0))
    ref = ref_model(input_ids=ids, use_cache=False).logits
    got = model(input_ids=ids, use_cache=False).logits
    assert len(calls) == 2  # one kernel call per layer: the Triton path really ran
    model64 = pair()[0].double()  # the float64 reference: the same weights on SDPA
    ref64 = model64(input_ids=ids, use_cache=False).logits

    def logits_and_grads(model, logits):
        logits.square().mean().backward()
        return {"logits": logits.detach(), **{name: p.grad for name, p in model.named_parameters()}}

    # the kernel path's error at most twice that of the SDPA model in the same dtype (float32 here)
    assert_within_baseline(logits_and_grads(model, got), logits_and_grads(model64, ref64), torch.float32,
                           logits_and_grads(ref_model, ref))


def test_padding_masks_and_cached_decoding_fall_back_to_sdpa():
    ref_model, model = pair()
    ids = torch.randint(0, 120, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding: needs a mask, which the kernel does not take
    ref = ref_model(input_ids=ids, attention_mask=mask).logits
    got = model(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(got[mask.bool()], ref[mask.bool()], **TOLERANCE[torch.float32].close())
    out_ref = ref_model.generate(ids[1:], max_new_tokens=4, do_sample=False, pad_token_id=0)
    out = model.generate(ids[1:], max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(out, out_ref)


def test_unknown_attention_is_rejected():
    with pytest.raises(ValueError, match="attention"):
        build_gpt2("tiny", attention="flash3")


@pytest.mark.parametrize("attention", ["sdpa", "triton"])
def test_compiled_loss_runs_causal_attention_without_a_mask(attention):
    """Under torch.compile transformers materialises a (T x T) mask; NextTokenNLL's promise of causal
    windows lets flyweight's implementations drop it: SDPA gets is_causal=True and no mask, and the
    Triton implementation really calls the kernel op. The loss equals the eager one."""
    from flyweight.train.metrics import NextTokenNLL

    model = build_gpt2("small", n_layer=2, n_embd=64, n_head=2, vocab_size=120, dropout=0.0, seed=4, attention=attention)
    ids = torch.randint(0, 120, (2, 32), generator=torch.Generator().manual_seed(2))
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    loss = torch.compile(NextTokenNLL(model), backend=capture)(ids)
    calls = [n for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    sdpa = [n for n in calls if "scaled_dot_product" in str(n.target)]
    flash = [n for n in calls if "flash_attn_fwd" in str(n.target)]
    if attention == "sdpa":
        assert len(sdpa) == 2 and not flash
        assert all(n.kwargs.get("attn_mask") is None and n.kwargs.get("is_causal") is True for n in sdpa)
    else:
        assert len(flash) == 2 and not sdpa
    torch.testing.assert_close(loss, NextTokenNLL(model)(ids), **TOLERANCE[torch.float32].close())
