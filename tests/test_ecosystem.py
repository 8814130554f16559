"""Issue 16: flyweight next to transformers, peft and torchao, as a new user meets it.

One test (or a few) per problem found: reload through transformers, padded vocabularies, peft-style
targets, torchao's filter_fn convention, the callable package, LoRA and quantize_ on structured
layers, new kinds end to end, vision presets, the documented snippets.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from _numerics import TOLERANCE
from torch import nn

import flyweight
from flyweight.linear import LINEAR_KINDS, StructuredLinear, unregister_linear
from flyweight.linear.config import (
    CONFIG_CLASSES,
    DenseConfig,
    LinearConfig,
    LowRankConfig,
    MonarchConfig,
    SS1Config,
    make_config,
)
from flyweight.models.gpt2 import PaddedVocabHead, build_gpt2

ROOT = Path(__file__).resolve().parents[1]
KINDS = [("dense", {}), ("lowrank", {"compression": 4}), ("monarch", {"nblocks": 2}), ("ss1", {"compression": 2})]


def tiny_gpt2(seed=0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=100, n_positions=32)
    return GPT2LMHeadModel(cfg).eval()


def linear_names(model, cls=StructuredLinear):
    return sorted(n for n, m in model.named_modules() if isinstance(m, cls))


# ---- 1. reload that cannot go wrong ------------------------------------------------------------
@pytest.mark.parametrize("pad", [None, 64], ids=["unpadded", "padded64"])
@pytest.mark.parametrize("kind,kw", KINDS, ids=[k for k, _ in KINDS])
def test_reload_bit_identical_every_kind(tmp_path, kind, kw, pad):
    """flyweight.from_pretrained AND a plain AutoModelForCausalLM.from_pretrained of model.save_pretrained
    give the saved function bit for bit (-inf on padding rows included); so does save_structured."""
    from transformers import AutoModelForCausalLM

    model = build_gpt2("tiny", kind=kind, settings=kw, seed=3, pad_vocab_to=pad, vocab_size=1000).eval()
    x = torch.randint(0, 1000, (2, 12))
    with torch.no_grad():
        ref = model(x).logits
    if pad:
        assert torch.isneginf(ref[..., 1000:]).all() and ref.shape[-1] == 1024
    model.save_pretrained(tmp_path / "hf")
    flyweight.convert.save_structured(model, tmp_path / "fw")
    loaders = {
        "flyweight.from_pretrained(hf)": lambda: flyweight.from_pretrained(tmp_path / "hf"),
        "flyweight.from_pretrained(fw)": lambda: flyweight.from_pretrained(tmp_path / "fw"),
        "AutoModelForCausalLM(hf)": lambda: AutoModelForCausalLM.from_pretrained(tmp_path / "hf"),
        "AutoModelForCausalLM(fw)": lambda: AutoModelForCausalLM.from_pretrained(tmp_path / "fw"),
    }
    for what, load in loaders.items():
        loaded = load().eval()
        assert linear_names(loaded) == linear_names(model), what
        assert not getattr(loaded, "is_quantized", False), what  # an ordinary model again
        with torch.no_grad():
            out = loaded(x).logits
        assert torch.equal(out, ref), f"{what}: logits differ by {(out - ref).nan_to_num().abs().max()}"
        assert isinstance(loaded.lm_head, PaddedVocabHead) == bool(pad), what


def test_plain_from_pretrained_without_flyweight_is_not_silent(tmp_path):
    """In a process that never imported flyweight transformers cannot rebuild the structure; what it
    logs must name the method, and the config names flyweight.from_pretrained as the loader."""
    model = build_gpt2("tiny", kind="lowrank", seed=0, vocab_size=1000)
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["quantization_config"] == {"quant_method": "flyweight", "loader": "flyweight.from_pretrained"}
    code = (
        "import sys\nfrom transformers import AutoModelForCausalLM\nfrom transformers.utils import logging\n"
        "logging.set_verbosity_warning()\n"
        f"AutoModelForCausalLM.from_pretrained({str(tmp_path)!r})\n"
        "assert 'flyweight' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Unknown quantization type, got flyweight" in proc.stderr + proc.stdout


def test_load_structured_restores_padding_mask(tmp_path):
    """flyweight.convert.load_structured (not only the GPT-2 one) puts -inf on the padding rows."""
    model = build_gpt2("tiny", kind="ss1", seed=1, pad_vocab_to=64, vocab_size=1000).eval()
    flyweight.convert.save_structured(model, tmp_path)
    loaded = flyweight.convert.load_structured(tmp_path)
    x = torch.randint(0, 1000, (1, 8))
    with torch.no_grad():
        probs = loaded(x).logits.softmax(-1)
    assert probs[..., 1000:].sum() == 0
    assert torch.allclose(probs[..., :1000].sum(-1), torch.ones(1, 8))


# ---- 2. typed configs and peft-style targets -------------------------------------------------
def test_typed_configs_round_trip_and_match_layer_arguments(tmp_path):
    import inspect

    for cfg in (SS1Config(compression=8, block_k=16, hash_coeffs=[3, 5, 7, 9]), MonarchConfig(nblocks=8),
                LowRankConfig(rank=4), DenseConfig()):
        again = LinearConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
        assert again == cfg and type(again) is type(cfg)
        cfg.save_pretrained(tmp_path / cfg.kind)
        assert LinearConfig.from_pretrained(tmp_path / cfg.kind) == cfg
        # every config field is a constructor argument of its layer (no drift)
        params = set(inspect.signature(LINEAR_KINDS[cfg.kind].__init__).parameters)
        assert set(cfg.settings()) <= params
    assert SS1Config().to_dict()["kind"] == "ss1"
    with pytest.raises(ValueError, match="no setting 'nblocks'.*valid settings: block_k"):
        SS1Config.from_dict({"nblocks": 4})
    with pytest.raises(ValueError, match="unknown linear kind 'butterfly'"):
        make_config("butterfly")


def test_checkpoint_spec_entries_are_typed_configs():
    model = tiny_gpt2()
    flyweight.convert(model, SS1Config(compression=2), target_modules=["c_fc"])
    spec = flyweight.convert.get_structure(model)
    for entry in spec["layers"].values():
        cfg = make_config(entry["kind"], **entry["config"])
        assert isinstance(cfg, SS1Config) and cfg.compression == 2 and cfg.hash_coeffs is not None


def test_peft_target_syntax_exact_suffix_regex_all_linear_exclude():
    model = tiny_gpt2()
    r = flyweight.convert(model, LowRankConfig(rank=4), target_modules=["c_fc"])
    assert [c.name for c in r.converted] == ["transformer.h.0.mlp.c_fc", "transformer.h.1.mlp.c_fc"]

    model = tiny_gpt2()
    r = flyweight.convert(model, MonarchConfig(nblocks=2), target_modules="all-linear")
    names = [c.name for c in r.converted]
    assert len(names) == 8 and "lm_head" not in names  # peft: all-linear leaves the output layer out

    model = tiny_gpt2()
    r = flyweight.convert(model, MonarchConfig(nblocks=2), target_modules="all-linear", exclude_modules=["attn.c_proj"])
    assert sorted(c.name.split(".", 3)[3] for c in r.converted) == sorted(["attn.c_attn", "mlp.c_fc", "mlp.c_proj"] * 2)

    model = tiny_gpt2()
    r = flyweight.convert(model, DenseConfig(), target_modules=r".*\.1\.mlp\.c_(fc|proj)")  # str = regex
    assert [c.name for c in r.converted] == ["transformer.h.1.mlp.c_fc", "transformer.h.1.mlp.c_proj"]

    model = tiny_gpt2()
    r = flyweight.convert(model, SS1Config(compression=2), target_modules=["mlp", "lm_head"])  # roles = presets
    assert len(r.converted) == 5

    with pytest.raises(ValueError, match=r"(?s)matches no linear module.*transformer\.h\.\*\.mlp\.c_fc"):
        flyweight.convert(tiny_gpt2(), DenseConfig(), target_modules=["fc1"])


def test_filter_fn_is_torchaos_convention():
    """filter_fn(module, fqn) -> bool, True = convert (torchao's meaning of the same name)."""
    model = tiny_gpt2()
    seen = []

    def only_layer_0(module, fqn):
        seen.append((type(module).__name__, fqn))
        return ".0." in fqn

    r = flyweight.convert(model, LowRankConfig(rank=4), target_modules="all-linear", filter_fn=only_layer_0)
    assert {c.name for c in r.converted} == {n for _, n in seen if ".0." in n}
    assert len(r.converted) == 4 and len(r.skipped) == 4
    assert ("Conv1D", "transformer.h.1.mlp.c_fc") in seen
    with pytest.raises(TypeError, match=r"filter_fn takes \(module, fqn\)"):
        flyweight.convert(tiny_gpt2(), DenseConfig(), filter_fn=lambda name, i, o: None)


def test_old_call_still_works_with_deprecation_warning():
    model = tiny_gpt2()
    with pytest.warns(DeprecationWarning, match="SS1Config\\(compression=2\\)"):
        r = flyweight.convert(model, "ss1", targets=("mlp",), skip="transformer.h.0.*", compression=2,
                              filter_fn=lambda name, i, o: "kept" if name.endswith("c_proj") else None)
    assert [c.name for c in r.converted] == ["transformer.h.1.mlp.c_fc"]
    assert {c.skipped for c in r.skipped} == {"kept"}


def test_hydra_linear_settings_are_checked_by_the_typed_config():
    with pytest.raises(ValueError, match="MonarchConfig.*no setting 'compression'"):
        build_gpt2("tiny", kind="monarch", settings={"compression": 4}, vocab_size=100, device="meta")


# ---- the package ----------------------------------------------------------------------------
def test_convert_is_a_callable_package_and_models_load_lazily():
    code = (
        "import flyweight.convert as fc\n"
        "assert callable(fc) and fc.save_structured and fc.load_structured and fc.SS1Config\n"
        "import flyweight\n"
        "assert flyweight.convert is fc and flyweight.convert.save_structured is fc.save_structured\n"
        "assert flyweight.models.gpt2.build_gpt2 is not None\n"
        "from flyweight.convert import convert\n"
        "m = flyweight.models.gpt2.build_gpt2('tiny', vocab_size=100)\n"
        "r = flyweight.convert(m, flyweight.SS1Config(compression=2), target_modules=['c_fc'])\n"
        "assert len(r.converted) == 2\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=_env())
    assert proc.returncode == 0, proc.stderr[-2000:]


def _env():
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ---- vision presets ----------------------------------------------------------------------------
def test_t2t_vit_role_presets():
    from flyweight.models.t2t_vit import T2TViT, T2TViTConfig

    model = T2TViT(T2TViTConfig(img_size=32, embed_dim=64, depth=2, num_heads=2, num_classes=10, token_dim=16))
    r = flyweight.convert(model, LowRankConfig(rank=4), target_modules=["mlp"])
    assert [c.name for c in r.converted] == [f"blocks.{i}.mlp.fc{j}" for i in range(2) for j in (1, 2)]
    r = flyweight.convert(model, MonarchConfig(nblocks=2), target_modules=["attn"])
    assert [c.name for c in r.converted] == [f"blocks.{i}.attn.{p}" for i in range(2) for p in ("qkv", "proj")]
    names = [c.name for c in flyweight.convert(
        T2TViT(T2TViTConfig(img_size=32, embed_dim=64, depth=2, num_heads=2, num_classes=10, token_dim=16)),
        DenseConfig(), target_modules="all-linear").converted]
    assert "head" not in names and "t2t.project" in names
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 10)


def test_timm_style_vit_presets():
    class Mlp(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(32, 64), nn.Linear(64, 32)

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.proj = nn.Linear(32, 96), nn.Linear(32, 32)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.mlp = Attn(), Mlp()

    class VisionTransformer(nn.Module):
        def __init__(self):
            super().__init__()
            self.patch_embed = nn.Conv2d(3, 32, 4)
            self.blocks = nn.ModuleList([Block(), Block()])
            self.head = nn.Linear(32, 10)

    model = VisionTransformer()
    r = flyweight.convert(model, DenseConfig(), target_modules=["blocks"])
    assert len(r.converted) == 8 and all(c.name.startswith("blocks.") for c in r.converted)
    assert [c.name for c in flyweight.convert(model, DenseConfig(), target_modules=["head"]).converted] == ["head"]


# ---- 4. extension: a kind registered with @register_linear, end to end -------------------------
def _docs_block(title: str) -> str:
    text = (ROOT / "docs" / "surgery.md").read_text()
    section = text[text.index(title):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_docs_add_a_kind_example_runs_end_to_end(tmp_path, monkeypatch):
    """The docs' "Add a kind" example: one class, then init, build_gpt2, convert, save/load all work."""
    code = _docs_block("## Add a kind")
    assert len(code.strip().splitlines()) <= 50  # "a 40-line example", imports included
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    try:
        exec(compile(code, "docs/surgery.md", "exec"), namespace)
        assert "blockdiag" in LINEAR_KINDS and "blockdiag" in CONFIG_CLASSES
        model = namespace["model"]
        assert linear_names(model) and all(type(model.get_submodule(n)).__name__ == "BlockDiagonalLinear"
                                           for n in linear_names(model))
        x = torch.randint(0, 1000, (2, 8))
        with torch.no_grad():
            ref = model.eval()(x).logits
        model.save_pretrained(tmp_path / "ckpt")
        again = flyweight.from_pretrained(tmp_path / "ckpt")
        with torch.no_grad():
            assert torch.equal(again(x).logits, ref)
        # the derived typed config of the new kind
        cfg = make_config("blockdiag", nblocks=2)
        assert cfg.to_dict() == {"kind": "blockdiag", "nblocks": 2}
        # projection: from_dense of a block-diagonal matrix is exact
        layer = LINEAR_KINDS["blockdiag"](8, 8, nblocks=2)
        assert torch.equal(LINEAR_KINDS["blockdiag"].from_dense(layer.to_dense(), nblocks=2).to_dense(),
                           layer.to_dense())
    finally:
        unregister_linear("blockdiag")


def test_kind_without_normal_init_names_the_fix():
    from flyweight.linear import register_linear

    @register_linear("noinit-test")
    class NoInit(StructuredLinear):
        def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
            super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
            self.w = nn.Parameter(torch.zeros(out_features, in_features))

    try:
        with pytest.raises(NotImplementedError, match=r"define normal_init_\(std, generator\)"):
            NoInit(4, 4).normal_init_(0.02)
    finally:
        unregister_linear("noinit-test")


# ---- the documented first snippet works verbatim -------------------------------------------------
def test_docs_quickstart_snippet_runs_verbatim(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_docs_block("## Three lines"), "docs/surgery.md", "exec"), namespace)
    assert namespace["report"].converted and (tmp_path / "out" / "model.safetensors").is_file()


# ---- 3. PEFT and torchao -----------------------------------------------------------------------
def test_lora_on_ss1_trains_saves_and_loads_through_peft(tmp_path):
    pytest.importorskip("peft")
    from peft import LoraConfig

    from flyweight.integrations.peft import StructuredLoraLinear, get_peft_model, load_lora

    base = build_gpt2("tiny", kind="ss1", seed=0, vocab_size=1000, dropout=0.0)
    base.save_pretrained(tmp_path / "base")
    frozen = {k: v.clone() for k, v in base.state_dict().items()}
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], init_lora_weights=False))
    wrapped = [n for n, m in lora.named_modules() if isinstance(m, StructuredLoraLinear)]
    assert len(wrapped) == 4 and all(n.endswith(("attn.c_attn", "mlp.c_fc")) for n in wrapped)
    trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)

    torch.manual_seed(0)
    x = torch.randint(0, 1000, (4, 16))
    opt = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    lora.train()
    losses = []
    for _ in range(8):
        loss = lora(input_ids=x, labels=x).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    base_now = lora.get_base_model().state_dict()
    for k, v in frozen.items():  # the structured weights stayed frozen
        key = next(n for n in base_now if n.replace(".base_layer", "") == k)
        assert torch.equal(base_now[key], v), k

    lora.eval()
    with torch.no_grad():
        ref = lora(input_ids=x).logits
    lora.save_pretrained(tmp_path / "adapter")
    again = load_lora(flyweight.from_pretrained(tmp_path / "base"), tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(again(input_ids=x).logits, ref)
    with pytest.raises(NotImplementedError, match="cannot merge a LoRA adapter into a SS1Linear"):
        again.merge_and_unload()


def test_torchao_quantizes_dense_and_ss1_and_names_what_it_cannot():
    pytest.importorskip("torchao")
    from torchao.quantization import Int8WeightOnlyConfig
    from torchao.quantization import quantize_ as bare_quantize_

    from flyweight.integrations.torchao import quantize_

    def model_of(kind, kw):
        torch.manual_seed(0)
        return nn.Sequential(flyweight.make_linear(kind, 128, 128, **kw), nn.ReLU(), nn.Linear(128, 64))

    x = torch.randn(4, 128)
    for kind, kw in (("dense", {}), ("ss1", {"compression": 2})):
        model = model_of(kind, kw)
        bare_quantize_(model, Int8WeightOnlyConfig())
        assert type(model[0].weight) is nn.Parameter  # bare quantize_: the structured layer silently skipped
        model = model_of(kind, kw)
        assert quantize_(model, Int8WeightOnlyConfig()) == []
        assert type(model[0].weight).__name__ == "Int8Tensor" and type(model[2].weight).__name__ == "Int8Tensor"
        # the quantized layer computes with the dequantized weight: same layer with those values
        ref = flyweight.make_linear(kind, 128, 128, **kw)
        with torch.no_grad():
            ref.weight.copy_(model[0].weight.dequantize())
            ref.bias.copy_(model[0].bias)
            torch.testing.assert_close(model[0](x), ref(x), **TOLERANCE[torch.float32].close())
    for kind, kw in (("lowrank", {"rank": 8}), ("monarch", {"nblocks": 4})):
        model = model_of(kind, kw)
        with pytest.warns(UserWarning, match=f"cannot quantize 1 structured layer.*{kind}"):
            assert quantize_(model, Int8WeightOnlyConfig()) == ["0"]
        assert type(model[2].weight).__name__ == "Int8Tensor"  # the nn.Linear still is


# ---- 5. packaging -----------------------------------------------------------------------------
def _pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement(name):
    from packaging.requirements import Requirement

    reqs = [Requirement(r) for r in _pyproject()["project"]["dependencies"]]
    return next(r for r in reqs if r.name == name)


def test_triton_only_where_it_exists():
    marker = _requirement("triton").marker
    assert marker is not None
    platforms = {
        ("linux", "x86_64"): True, ("linux", "aarch64"): True,
        ("darwin", "arm64"): False, ("darwin", "x86_64"): False, ("win32", "AMD64"): False,
    }
    for (system, machine), wanted in platforms.items():
        assert marker.evaluate({"sys_platform": system, "platform_machine": machine}) is wanted, (system, machine)


def test_declared_floors_cover_what_the_code_imports():
    from packaging.version import Version

    # transformers.masking_utils (flyweight.attention.hf_backends) exists from 4.53 on; dtype= from 4.56
    floor = min(Version(s.version) for s in _requirement("transformers").specifier if s.operator == ">=")
    assert floor >= Version("4.56")
    torch_floor = min(Version(s.version) for s in _requirement("torch").specifier if s.operator == ">=")
    assert torch_floor >= Version("2.11")  # the oldest torch anything was tested with (GPU machine)


def test_license_and_extras():
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0" in text
    assert _pyproject()["project"]["license"] == "Apache-2.0"
    extras = _pyproject()["project"]["optional-dependencies"]
    for extra in ("dev", "hub", "pretrained", "peft", "torchao", "wandb"):
        assert extras.get(extra), extra


def test_lock_file_pins_exact_versions_and_setup_uses_it():
    from packaging.requirements import Requirement

    lines = [ln.strip() for ln in (ROOT / "requirements-lock.txt").read_text().splitlines()]
    pins = [Requirement(ln) for ln in lines if ln and not ln.startswith("#")]
    names = {p.name.lower() for p in pins}
    assert {"transformers", "safetensors", "lightning", "pytest", "peft"} <= names
    assert "flyweight" not in names
    for pin in pins:
        (spec,) = pin.specifier
        assert spec.operator == "==", pin
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert '-c "$LOCK"' in setup and "FLYWEIGHT_NO_LOCK" in setup
