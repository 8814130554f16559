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
