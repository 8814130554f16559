"""GPT-2 with structured layers: counts, causality, init, FLOPs, generate, save/load."""

import json
import math

import pytest
import torch
from _numerics import TOLERANCE

from flyweight.convert import StructureMismatchError
from flyweight.linear import LowRankLinear, MonarchLinear, SS1Linear, StructuredLinear, make_linear
from flyweight.models.gpt2 import (
    GPT2_SIZES,
    build_gpt2,
    load_structured,
    model_flops_per_token,
    num_parameters,
    save_structured,
)

KINDS = ["dense", "ss1", "monarch", "lowrank"]
VOCAB = 101  # tiny vocabulary keeps the tiny model tiny


def tiny(kind, **kw):
    kw.setdefault("vocab_size", VOCAB)
    kw.setdefault("n_positions", 64)
    return build_gpt2("tiny", kind=kind, seed=0, **kw).eval()


# ---- parameter counts of the wt103/* experiments (docs/training.md) -------------------------------
@pytest.mark.parametrize(
    "kind,expected_m", [("dense", 124.4), ("ss1", 60.7), ("monarch", 67.8), ("lowrank", 50.05)]
)
def test_gpt2_small_parameter_counts(kind, expected_m):
    model = build_gpt2("small", kind=kind, device="meta")
    assert abs(num_parameters(model) / 1e6 - expected_m) <= 0.05
    # the tied head counted twice adds exactly the embedding matrix
    assert num_parameters(model, tied=False) - num_parameters(model) == 50257 * 768
    structured = [m for m in model.modules() if isinstance(m, StructuredLinear)]
    assert len(structured) == (0 if kind == "dense" else 48)


def test_sizes_are_the_gpt2_family():
    assert GPT2_SIZES["medium"] == {"n_layer": 24, "n_embd": 1024, "n_head": 16}
    model = build_gpt2("medium", device="meta")
    assert abs(num_parameters(model) / 1e6 - 354.8) < 0.1  # GPT-2 medium, tied head


# ---- causality: token t+1 must not influence logits at positions <= t --------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_causal_every_kind(kind):
    model = tiny(kind, lm_head=kind != "dense")
    torch.manual_seed(1)
    ids = torch.randint(0, VOCAB, (2, 12))
    t = 5
    changed = ids.clone()
    changed[:, t + 1] = (changed[:, t + 1] + 7) % VOCAB
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    assert torch.equal(a[:, : t + 1], b[:, : t + 1])
    assert not torch.allclose(a[:, t + 1 :], b[:, t + 1 :])  # the change is visible later on


def test_attention_runs_through_sdpa(monkeypatch):
    """The default attention is F.scaled_dot_product_attention, once per layer (through Hugging Face's
    SDPA function); an explicit materialised softmax in its place gives the same logits."""
    import torch.nn.functional as F

    model = tiny("ss1")
    ids = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(3))
    sdpa, calls = F.scaled_dot_product_attention, []

    def counted(*args, **kwargs):
        calls.append("sdpa")
        return sdpa(*args, **kwargs)

    def explicit(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        calls.append("explicit")
        assert dropout_p == 0.0 and not kwargs.get("enable_gqa", False)
        s = (q @ k.transpose(-1, -2)) * (q.shape[-1] ** -0.5 if scale is None else scale)
        if is_causal:
            s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool).triu(1), -math.inf)
        if attn_mask is not None:
            s = s.masked_fill(~attn_mask, -math.inf) if attn_mask.dtype == torch.bool else s + attn_mask
        return torch.softmax(s, -1) @ v

    monkeypatch.setattr(F, "scaled_dot_product_attention", counted)
    with torch.no_grad():
        logits = model(ids).logits
    monkeypatch.setattr(F, "scaled_dot_product_attention", explicit)
    with torch.no_grad():
        again = model(ids).logits
    n = model.config.n_layer
    assert calls == ["sdpa"] * n + ["explicit"] * n
    torch.testing.assert_close(again, logits, **TOLERANCE[torch.float32].close())


# ---- training and generation work for every kind ---------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_loss_backward_and_generate(kind):
    model = tiny(kind)
    model.train()
    ids = torch.randint(0, VOCAB, (2, 10))
    out = model(ids, labels=ids)
    assert math.isfinite(out.loss.item()) and abs(out.loss.item() - math.log(VOCAB)) < 0.5
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    gen = model.generate(ids[:1, :4], max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert gen.shape == (1, 10) and torch.equal(gen[:, :4], ids[:1, :4])


def test_roles_and_per_role_kinds():
    model = tiny("monarch", kinds={"attn_qkv": "lowrank"}, roles=("mlp", "attn"), lm_head=True)
    block = model.transformer.h[0]
    assert isinstance(block.mlp.c_fc, MonarchLinear) and isinstance(block.attn.c_proj, MonarchLinear)
    assert isinstance(block.attn.c_attn, LowRankLinear) and isinstance(model.lm_head, MonarchLinear)
    assert model.config.tie_word_embeddings is False
    only_mlp = tiny("ss1", roles=("mlp",))
    assert type(only_mlp.transformer.h[0].attn.c_attn).__name__ == "Conv1D"
    with pytest.raises(ValueError, match="valid roles"):
        tiny("ss1", roles=("ffn",))
    with pytest.raises(ValueError, match="valid sizes"):
        build_gpt2("huge")
    with pytest.raises(ValueError, match="valid kinds"):
        tiny("butterfly")


def test_linear_settings_flat_and_nested():
    m = tiny("ss1", settings={"compression": 2})
    assert m.transformer.h[0].mlp.c_fc.compression == 2
    m = tiny("ss1", kinds={"mlp": "monarch"}, settings={"ss1": {"compression": 2}, "monarch": {"nblocks": 2}})
    assert m.transformer.h[0].attn.c_attn.compression == 2 and m.transformer.h[0].mlp.c_fc.nblocks == 2


def test_ss1_seeds_distinct_and_recorded():
    model = tiny("ss1", kinds={"attn_out": "ss1"}, settings={"seed": 7})
    layers = {n: m for n, m in model.named_modules() if isinstance(m, SS1Linear)}
    seeds = [m.seed for m in layers.values()]
    assert len(seeds) == 8 and len(set(seeds)) == 8 and min(seeds) == 7
    spec = model.config.flyweight_structure["layers"]
    for name, layer in layers.items():
        assert spec[name]["config"]["seed"] == layer.seed
        assert spec[name]["config"]["hash_coeffs"] == list(layer.hash_coeffs)


# ---- GPT-2 initialisation in the dense-equivalent sense ---------------------------------------
@pytest.mark.parametrize(
    "kind,kw", [("dense", {}), ("ss1", {"compression": 4}), ("monarch", {"nblocks": 4}), ("lowrank", {"rank": 32})]
)
def test_normal_init_gives_dense_equivalent_std(kind, kw):
    torch.manual_seed(0)
    layer = make_linear(kind, 512, 768, **kw)
    layer.normal_init_(0.02)
    w = layer.to_dense()
    assert abs(w.mean().item()) < 1e-3
    assert abs(w.std().item() / 0.02 - 1) < 0.05
    assert torch.count_nonzero(layer.bias) == 0


@pytest.mark.parametrize("kind", ["ss1", "monarch", "lowrank"])
def test_gpt2_residual_projections_scaled(kind):
    model = build_gpt2("tiny", kind=kind, n_layer=8, n_embd=256, n_head=4, vocab_size=VOCAB, seed=0)
    h = model.transformer.h
    fc = torch.cat([b.mlp.c_fc.to_dense().flatten() for b in h])
    proj = torch.cat([b.mlp.c_proj.to_dense().flatten() for b in h] + [b.attn.c_proj.to_dense().flatten() for b in h])
    assert abs(fc.std().item() / 0.02 - 1) < 0.05
    assert abs(proj.std().item() / (0.02 / math.sqrt(2 * 8)) - 1) < 0.05


def test_seed_makes_build_reproducible_and_leaves_global_rng():
    state = torch.get_rng_state()
    a, b = tiny("lowrank"), tiny("lowrank")
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


# ---- FLOPs: the one function MFU uses --------------------------------------------------------
def test_flops_dense_small_by_hand():
    model = build_gpt2("small", device="meta")
    d, L, V, T = 768, 12, 50257, 1024
    per_block = 2 * (d * 3 * d + d * d + 2 * d * 4 * d)
    expected = L * per_block + 2 * d * V + L * 4 * d * T
    assert model_flops_per_token(model, T) == expected
    causal = model_flops_per_token(model, T, causal=True)
    assert causal == int(L * per_block + 2 * d * V + L * 4 * d * (T + 1) / 2)


def test_flops_structured_use_layer_counts():
    model = build_gpt2("small", kind="ss1", device="meta")
    dense = build_gpt2("small", device="meta")
    d, L = 768, 12
    gemm = L * 2 * (d * 3 * d + d * d + 2 * d * 4 * d) // 4  # depth K/R matmuls
    layer_sum = sum(m.flops_per_token() for m in model.modules() if isinstance(m, SS1Linear))
    assert gemm <= layer_sum < gemm * 1.1  # plus the sketch additions
    assert model_flops_per_token(dense, 1024) - model_flops_per_token(model, 1024) == L * 2 * (
        d * 3 * d + d * d + 2 * d * 4 * d
    ) - layer_sum
    with pytest.raises(ValueError, match="seq_len"):
        model_flops_per_token(model, 0)


# ---- save / load -----------------------------------------------------------------------------
@pytest.mark.parametrize("kind,lm_head", [(k, False) for k in KINDS] + [("ss1", True), ("lowrank", True)])
def test_save_load_bit_identical(tmp_path, kind, lm_head):
    model = tiny(kind, lm_head=lm_head)
    with torch.no_grad():  # non-zero biases, so they round-trip too
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_structured(model, tmp_path)
    loaded = load_structured(tmp_path)
    assert not loaded.training
    ids = torch.randint(0, VOCAB, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert num_parameters(loaded) == num_parameters(model)
    assert (getattr(loaded.lm_head, "weight", None) is loaded.transformer.wte.weight) == (not lm_head)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert len(cfg["flyweight_structure"]["layers"]) == (0 if kind == "dense" else 8 + lm_head)


@pytest.mark.parametrize(
    "field,value,match",
    [("hash_coeffs", [1, 3, 5, 7], "hash_coeffs"), ("compression", 2, "compression"), ("seed", 99, "seed")],
)
def test_tampered_config_rejected(tmp_path, field, value, match):
    save_structured(tiny("ss1"), tmp_path)
    cfg_file = tmp_path / "config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg["flyweight_structure"]["layers"]["transformer.h.1.mlp.c_fc"]["config"][field] = value
    cfg_file.write_text(json.dumps(cfg))
    with pytest.raises(StructureMismatchError, match=match):
        load_structured(tmp_path)


def test_tensors_not_matching_spec_rejected(tmp_path):
    """A config without the header copy (e.g. tensors from another run) is checked against shapes."""
    from safetensors.torch import load_file, save_file

    save_structured(tiny("monarch"), tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    state["transformer.h.0.mlp.c_fc.w1"] = torch.zeros(2, 3, 4)
    save_file(state, str(tmp_path / "model.safetensors"))  # no flyweight metadata now
    with pytest.raises(StructureMismatchError, match="shape mismatches.*h.0.mlp.c_fc.w1"):
        load_structured(tmp_path)
