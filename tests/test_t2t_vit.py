"""T2T-ViT: architecture numbers, and the official-checkpoint converter proven against an independent
reference forward written from the official layout (random tensors with the official names and shapes)."""

import argparse
import math

import pytest
import torch
import torch.nn.functional as F
from _numerics import TOLERANCE

from flyweight.models.t2t_vit import T2T_VIT_VARIANTS, T2TViTConfig, build_t2t_vit, sinusoid_positions
from flyweight.models.t2t_vit_checkpoint import convert_checkpoint, load_t2t_vit

# ---- a synthetic release file in the official key layout --------------------------------------------------


def official_state_dict(variant: str, img_size: int = 224, num_classes: int = 1000, seed: int = 0):
    arch = T2T_VIT_VARIANTS[variant]
    g = torch.Generator().manual_seed(seed)
    E, hidden = arch["embed_dim"], int(arch["embed_dim"] * arch["mlp_ratio"])
    sd = {}

    def lin(name, out_f, in_f, bias=True):
        sd[name + ".weight"] = torch.randn(out_f, in_f, generator=g) * in_f**-0.5
        if bias:
            sd[name + ".bias"] = torch.randn(out_f, generator=g) * 0.1

    def norm(name, dim):
        sd[name + ".weight"] = 1 + 0.1 * torch.randn(dim, generator=g)
        sd[name + ".bias"] = 0.1 * torch.randn(dim, generator=g)

    for stage, dim in ((1, 3 * 49), (2, 64 * 9)):
        p = f"tokens_to_token.attention{stage}"
        norm(p + ".norm1", dim)
        norm(p + ".norm2", 64)
        if arch["tokens_type"] == "transformer":
            lin(p + ".attn.qkv", 192, dim, bias=False)
            lin(p + ".attn.proj", 64, 64)
            lin(p + ".mlp.fc1", 64, 64)
            lin(p + ".mlp.fc2", 64, 64)
        else:
            lin(p + ".kqv", 192, dim)
            lin(p + ".proj", 64, 64)
            lin(p + ".mlp.0", 64, 64)
            lin(p + ".mlp.2", 64, 64)
            sd[p + ".w"] = torch.linalg.qr(torch.randn(64, 32, generator=g))[0].T * math.sqrt(32)
    lin("tokens_to_token.project", E, 576)
    sd["cls_token"] = 0.02 * torch.randn(1, 1, E, generator=g)
    sd["pos_embed"] = 0.1 * torch.randn(1, (img_size // 16) ** 2 + 1, E, generator=g)
    for i in range(arch["depth"]):
        p = f"blocks.{i}"
        norm(p + ".norm1", E)
        norm(p + ".norm2", E)
        lin(p + ".attn.qkv", 3 * E, E, bias=False)
        lin(p + ".attn.proj", E, E)
        lin(p + ".mlp.fc1", hidden, E)
        lin(p + ".mlp.fc2", E, hidden)
    norm("norm", E)
    lin("head", num_classes, E)
    return sd


def reference_forward(sd, img, variant):
    """The official forward, written directly on the official tensors (no flyweight code)."""
    arch = T2T_VIT_VARIANTS[variant]

    def ln(t, p):
        return F.layer_norm(t, t.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps=1e-5)

    def lin(t, p):
        return F.linear(t, sd[p + ".weight"], sd.get(p + ".bias"))

    def token_transformer(t, p):
        q, k, v = lin(ln(t, p + ".norm1"), p + ".attn.qkv").chunk(3, dim=-1)
        a = torch.softmax((q * t.shape[-1] ** -0.5) @ k.transpose(1, 2), dim=-1)
        t = v + lin(a @ v, p + ".attn.proj")
        return t + lin(F.gelu(lin(ln(t, p + ".norm2"), p + ".mlp.fc1")), p + ".mlp.fc2")

    def token_performer(t, p):
        k, q, v = lin(ln(t, p + ".norm1"), p + ".kqv").chunk(3, dim=-1)
        w = sd[p + ".w"]

        def prm(x):
            return torch.exp(x @ w.T - (x * x).sum(-1, keepdim=True) / 2) / math.sqrt(w.shape[0])

        kp, qp = prm(k), prm(q)
        d = qp @ kp.sum(1)[:, :, None]
        y = (qp @ (v.transpose(1, 2) @ kp).transpose(1, 2)) / (d + 1e-8)
        t = v + lin(y, p + ".proj")
        return t + lin(F.gelu(lin(ln(t, p + ".norm2"), p + ".mlp.0")), p + ".mlp.2")

    token = token_transformer if arch["tokens_type"] == "transformer" else token_performer
    B, side = img.shape[0], img.shape[-1] // 4
    x = F.unfold(img, 7, stride=4, padding=2).transpose(1, 2)
    x = token(x, "tokens_to_token.attention1")
    x = F.unfold(x.transpose(1, 2).reshape(B, 64, side, side), 3, stride=2, padding=1).transpose(1, 2)
    x = token(x, "tokens_to_token.attention2")
    x = F.unfold(x.transpose(1, 2).reshape(B, 64, side // 2, side // 2), 3, stride=2, padding=1).transpose(
        1, 2
    )
    x = lin(x, "tokens_to_token.project")
    x = torch.cat([sd["cls_token"].expand(B, -1, -1), x], 1) + sd["pos_embed"]
    H = arch["num_heads"]
    for i in range(arch["depth"]):
        p = f"blocks.{i}"
        h = ln(x, p + ".norm1")
        N, C = h.shape[1], h.shape[2]
        q, k, v = lin(h, p + ".attn.qkv").reshape(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) * (C // H) ** -0.5, dim=-1)
        x = x + lin((a @ v).transpose(1, 2).reshape(B, N, C), p + ".attn.proj")
        x = x + lin(F.gelu(lin(ln(x, p + ".norm2"), p + ".mlp.fc1")), p + ".mlp.fc2")
    return lin(ln(x, "norm")[:, 0], "head")


def save_release(tmp_path, sd, name="release.pth.tar"):
    path = tmp_path / name
    torch.save({"state_dict_ema": sd}, path)
    return path


# ---- tests ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant,published_m", [("t2t_vit_t_14", 21.5), ("t2t_vit_14", 21.5), ("t2t_vit_7", 4.3)]
)
def test_parameter_counts_match_the_paper(variant, published_m):
    # built at 32 px (positions are a buffer, not parameters, so the count does not depend on it)
    assert abs(build_t2t_vit(variant, img_size=32).num_parameters() / 1e6 - published_m) < 0.05


def test_sinusoid_positions():
    pe = sinusoid_positions(10, 8)
    assert pe.shape == (1, 10, 8)
    assert torch.isclose(pe[0, 3, 4], torch.tensor(math.sin(3 / 10000 ** (4 / 8))))
    assert torch.isclose(pe[0, 7, 5], torch.tensor(math.cos(7 / 10000 ** (4 / 8))))


@pytest.mark.parametrize("variant", ["t2t_vit_t_7", "t2t_vit_7"])
def test_converter_strict_load_gives_identical_logits(tmp_path, variant):
    sd = official_state_dict(variant, img_size=32, num_classes=10)
    src = save_release(tmp_path, sd)
    from importlib import util

    spec = util.spec_from_file_location("convert_t2t", "scripts/convert_checkpoint_t2t_vit.py")
    script = util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(src), "--variant", variant]) == 0
    converted = tmp_path / "release.safetensors"
    assert converted.is_file() and (tmp_path / "release.json").is_file()

    img = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = reference_forward(sd, img, variant)
        for path in (converted, src):  # the converted file and the release file converted on the fly
            model = load_t2t_vit(path, variant=variant)
            assert model.cfg.tokens_type == T2T_VIT_VARIANTS[variant]["tokens_type"]
            torch.testing.assert_close(model(img), ref, **TOLERANCE[torch.float32].close())


def test_converter_full_size_t2t_vit_t_14(tmp_path):
    sd = official_state_dict("t2t_vit_t_14", seed=3)
    cfg = convert_checkpoint(save_release(tmp_path, sd), tmp_path / "t14.safetensors")  # variant inferred
    assert (cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.img_size, cfg.num_classes) == (384, 14, 6, 224, 1000)
    model = load_t2t_vit(tmp_path / "t14.safetensors")
    img = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(
            model(img), reference_forward(sd, img, "t2t_vit_t_14"), **TOLERANCE[torch.float32].close()
        )
    cost = model.attention_cost()
    assert cost["attention_memory"] == 3136**2 + 784**2


def test_fly_renamed_layout_and_module_prefix_load(tmp_path):
    sd = official_state_dict("t2t_vit_t_7", img_size=32, num_classes=5)
    renamed = {
        ("module." + k.replace("tokens_to_token.", "patch_embed.")).replace(
            "module.pos_embed", "module.pos_embed.pe"
        ): v
        for k, v in sd.items()
    }
    model = load_t2t_vit(save_release(tmp_path, renamed), variant="t2t_vit_t_7")
    img = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(
            model(img), reference_forward(sd, img, "t2t_vit_t_7"), **TOLERANCE[torch.float32].close()
        )


def test_loading_is_strict(tmp_path):
    sd = official_state_dict("t2t_vit_t_7", img_size=32, num_classes=5)
    missing = dict(sd)
    del missing["blocks.3.mlp.fc1.bias"]
    with pytest.raises(ValueError, match="missing: \\['blocks.3.mlp.fc1.bias'\\]"):
        load_t2t_vit(save_release(tmp_path, missing, "a.pth.tar"), variant="t2t_vit_t_7")
    extra = {**sd, "blocks.0.attn.rel_bias": torch.zeros(3)}
    with pytest.raises(ValueError, match="no flyweight counterpart: \\['blocks.0.attn.rel_bias'\\]"):
        load_t2t_vit(save_release(tmp_path, extra, "b.pth.tar"), variant="t2t_vit_t_7")
    bad = {**sd, "tokens_to_token.attention2.attn.proj.weight": torch.zeros(64, 63)}
    with pytest.raises(ValueError, match="shape mismatch: t2t.token2.proj.weight"):
        load_t2t_vit(save_release(tmp_path, bad, "c.pth.tar"), variant="t2t_vit_t_7")
    pickled = tmp_path / "d.pth.tar"
    torch.save({"state_dict_ema": sd, "args": argparse.Namespace(lr=1)}, pickled)
    with pytest.raises(ValueError, match="weights_only=True"):
        load_t2t_vit(pickled)


def test_swapping_the_token_attention(tmp_path):
    sd = official_state_dict("t2t_vit_t_7", img_size=64, num_classes=10)
    src = save_release(tmp_path, sd)
    img = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = load_t2t_vit(src, variant="t2t_vit_t_7")(img)
        # a local window covering every token (256 and 64 here) is exact
        wide = load_t2t_vit(
            src,
            {"name": "local", "window_size": 512},
            {"name": "local", "window_size": 128},
            variant="t2t_vit_t_7",
        )
        torch.testing.assert_close(wide(img), full, **TOLERANCE[torch.float32].close())
        narrow = load_t2t_vit(
            src,
            {"name": "sblocal", "window_size": 8, "nb_features": 4, "seed": 1},
            {"name": "performer", "nb_features": 4, "seed": 1},
            variant="t2t_vit_t_7",
        )
        out = narrow(img)
        assert torch.isfinite(out).all() and not torch.allclose(out, full, atol=1e-3)
        # seeded: the same seed gives the same logits
        again = load_t2t_vit(
            src,
            {"name": "sblocal", "window_size": 8, "nb_features": 4, "seed": 1},
            {"name": "performer", "nb_features": 4, "seed": 1},
            variant="t2t_vit_t_7",
        )
        torch.testing.assert_close(again(img), out)


def test_performer_checkpoint_features_are_kept_or_redrawn(tmp_path):
    sd = official_state_dict("t2t_vit_7", img_size=32, num_classes=10)
    convert_checkpoint(save_release(tmp_path, sd), tmp_path / "t7.safetensors", "t2t_vit_7")
    native = load_t2t_vit(tmp_path / "t7.safetensors")
    torch.testing.assert_close(native.t2t.token1.attn.features, sd["tokens_to_token.attention1.w"])
    # another attention: the stored features do not apply and are redrawn from its seed (no error)
    swapped = load_t2t_vit(
        tmp_path / "t7.safetensors", {"name": "sblocal", "window_size": 8, "nb_features": 8}, {"name": "full"}
    )
    assert swapped.t2t.token1.attn.features.shape == (4, 64)


def test_config_errors():
    with pytest.raises(ValueError, match="unknown T2T-ViT variant 'vit_b'"):
        T2TViTConfig.from_name("vit_b")
    with pytest.raises(ValueError, match="tokens_type must be one of"):
        T2TViTConfig(tokens_type="conv")
    with pytest.raises(ValueError, match="multiple of 16"):
        T2TViTConfig(img_size=100)
