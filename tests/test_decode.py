"""Static-cache greedy decoding gives the tokens of a plain greedy loop (dense and SS1 models)."""

import pytest
import torch

import flyweight
from flyweight.decode import greedy_generate


def plain_greedy(model, ids: torch.Tensor, new: int) -> torch.Tensor:
    """The reference: no cache, the whole sequence re-run every step, argmax of the last logits."""
    with torch.no_grad():
        for _ in range(new):
            logits = model(ids, use_cache=False).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return ids


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=128, n_head=4, vocab_size=97, n_positions=64,
                                      bos_token_id=0, eos_token_id=1))


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                                        max_position_embeddings=64, bos_token_id=0, eos_token_id=1))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("kind", ["dense", "ss1"])
def test_static_cache_decoding_equals_plain_greedy(family, kind):
    torch.manual_seed(0)
    model = (tiny_gpt2 if family == "gpt2" else tiny_llama)().double().eval()
    if kind == "ss1":
        flyweight.convert(model, "ss1", targets=("mlp", "attn_qkv", "attn_out"), compression=4)
        model.double()
    ids = torch.randint(2, 97, (3, 9))
    want = plain_greedy(model, ids, 12)
    got = greedy_generate(model, ids, 12)
    assert got.shape == (3, 21)
    assert torch.equal(got, want)
    assert len(set(got[:, 9:].flatten().tolist())) > 1  # a model stuck on one token would prove little


def test_rejects_a_model_without_generate():
    with pytest.raises(TypeError, match="transformers generation model"):
        greedy_generate(torch.nn.Linear(2, 2), torch.zeros(1, 2, dtype=torch.long), 3)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("kind", ["dense", "ss1"])
def test_static_decoder_equals_plain_greedy_and_reuses_its_cache(family, kind):
    from flyweight.decode import StaticDecoder

    torch.manual_seed(0)
    model = (tiny_gpt2 if family == "gpt2" else tiny_llama)().double().eval()
    if kind == "ss1":
        flyweight.convert(model, "ss1", targets=("mlp", "attn_qkv", "attn_out"), compression=4)
        model.double()
    decoder = StaticDecoder(model, batch_size=3, max_length=32, compile=False)
    for prompt in (9, 5):  # the second call resets the cache the first one filled
        ids = torch.randint(2, 97, (3, prompt))
        got = decoder.generate(ids, 12)
        assert torch.equal(got, plain_greedy(model, ids, 12))
        assert len(set(got[:, prompt:].flatten().tolist())) > 1


def test_static_decoder_step_traces_as_one_graph():
    """fullgraph=True: the decode step has no graph break, so reduce-overhead can record one CUDA graph."""
    from flyweight.decode import StaticDecoder

    torch.manual_seed(0)
    model = tiny_gpt2().eval()
    flyweight.convert(model, "ss1", targets=("mlp", "attn_qkv", "attn_out"), compression=4)
    torch._dynamo.reset()
    decoder = StaticDecoder(model, batch_size=2, max_length=24, compile=True, backend="eager")
    ids = torch.randint(2, 97, (2, 6))
    got = decoder.generate(ids, 8)
    eager = StaticDecoder(model, batch_size=2, max_length=24, compile=False).generate(ids, 8)
    assert torch.equal(got, eager)


def test_static_decoder_rejects_what_does_not_fit():
    from flyweight.decode import StaticDecoder

    decoder = StaticDecoder(tiny_gpt2().eval(), batch_size=2, max_length=16, compile=False)
    with pytest.raises(ValueError, match="build a StaticDecoder per batch size"):
        decoder.generate(torch.zeros(3, 4, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="must fit in max_length=16"):
        decoder.generate(torch.zeros(2, 10, dtype=torch.long), 8)
