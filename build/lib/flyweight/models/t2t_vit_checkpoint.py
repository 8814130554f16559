"""T2T-ViT checkpoints: the official release layout (yitu-opensource/T2T-ViT) <-> flyweight's layout.

The official files (e.g. ``81.7_T2T_ViTt_14.pth.tar``) hold ``{"state_dict_ema": {...}}``; the public fly
conversion renamed ``tokens_to_token.*`` -> ``patch_embed.*`` and ``pos_embed`` -> ``pos_embed.pe``; both
layouts are accepted, with or without a DataParallel ``module.`` prefix. Every official tensor is mapped by
an explicit rule below (an unknown name is an error), shapes are checked, and loading uses
``torch.load(weights_only=True)``. The token-performer's ``kqv`` (k, q, v order, with bias) becomes
flyweight's ``qkv``; its fixed random matrix ``w`` becomes the performer attention's ``features`` buffer.

A converted file is a safetensors file whose metadata holds the model config (also written beside it as
``<name>.json``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from flyweight.models.t2t_vit import (
    ATTENTION_BUFFER_SUFFIXES,
    T2T_VIT_VARIANTS,
    T2TViT,
    T2TViTConfig,
    load_state_dict_strict,
)

FORMAT = "flyweight-t2t-vit"

# official name (after prefix normalisation) -> flyweight name; {s} is the token stage 1 or 2
_T2T_RULES: list[tuple[str, str]] = [
    (r"attention{s}\.norm1\.(weight|bias)", "token{s}.norm1.\\1"),
    (r"attention{s}\.norm2\.(weight|bias)", "token{s}.norm2.\\1"),
    (r"attention{s}\.attn\.qkv\.(weight|bias)", "token{s}.qkv.\\1"),  # transformer type
    (r"attention{s}\.attn\.proj\.(weight|bias)", "token{s}.proj.\\1"),
    (r"attention{s}\.mlp\.fc1\.(weight|bias)", "token{s}.mlp.fc1.\\1"),
    (r"attention{s}\.mlp\.fc2\.(weight|bias)", "token{s}.mlp.fc2.\\1"),
    (r"attention{s}\.kqv\.(weight|bias)", "token{s}.qkv.\\1"),  # performer type: reordered below
    (r"attention{s}\.proj\.(weight|bias)", "token{s}.proj.\\1"),
    (r"attention{s}\.mlp\.0\.(weight|bias)", "token{s}.mlp.fc1.\\1"),
    (r"attention{s}\.mlp\.2\.(weight|bias)", "token{s}.mlp.fc2.\\1"),
    (r"attention{s}\.w", "token{s}.attn.features"),
]
_SAME_NAME = re.compile(
    r"(cls_token|pos_embed|norm\.(weight|bias)|head\.(weight|bias)|"
    r"blocks\.\d+\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias))"
)


def unwrap_checkpoint(obj) -> dict[str, torch.Tensor]:
    """The state dict inside a release file: ``state_dict_ema`` (else ``state_dict``/``model``) unwrapped."""
    if not isinstance(obj, dict):
        raise ValueError(f"expected a dict checkpoint, got {type(obj).__name__}")
    for key in ("state_dict_ema", "state_dict", "model"):
        if key in obj and isinstance(obj[key], dict):
            return obj[key]
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise ValueError(f"cannot find a state dict in the checkpoint; top-level keys: {sorted(obj)[:10]}")


def normalize_official_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        k = key[len("module.") :] if key.startswith("module.") else key
        k = re.sub(r"^patch_embed\.", "tokens_to_token.", k)
        k = "pos_embed" if k == "pos_embed.pe" else k
        out[k] = value
    return out


def infer_config(state: dict[str, torch.Tensor], variant: str | None = None) -> T2TViTConfig:
    """Architecture from tensor shapes (heads are not in the shapes: matched against the variant table)."""
    state = normalize_official_names(state)
    try:
        embed_dim = state["cls_token"].shape[-1]
        depth = len({int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))})
        mlp_ratio = state["blocks.0.mlp.fc1.weight"].shape[0] / embed_dim
        tokens_type = "performer" if "tokens_to_token.attention1.kqv.weight" in state else "transformer"
        n_patches = state["pos_embed"].shape[1] - 1
        token_dim = state["tokens_to_token.project.weight"].shape[1] // 9
        in_chans = state["tokens_to_token.attention1.norm1.weight"].shape[0] // 49
        num_classes = state["head.weight"].shape[0]
    except KeyError as err:
        raise ValueError(f"not a T2T-ViT checkpoint in the official layout: missing {err}") from None
    img_size = int(round(n_patches**0.5)) * 16
    if variant is None:
        matches = [
            name
            for name, arch in T2T_VIT_VARIANTS.items()
            if (arch["tokens_type"], arch["embed_dim"], arch["depth"], arch["mlp_ratio"])
            == (tokens_type, embed_dim, depth, mlp_ratio)
        ]
        if len(matches) != 1:
            raise ValueError(
                f"cannot tell the variant ({tokens_type}, dim {embed_dim}, depth {depth}); "
                f"pass it explicitly, one of: {', '.join(T2T_VIT_VARIANTS)}"
            )
        variant = matches[0]
    arch = dict(T2T_VIT_VARIANTS[variant])
    found = dict(tokens_type=tokens_type, embed_dim=embed_dim, depth=depth, mlp_ratio=mlp_ratio)
    if any(arch[k] != v for k, v in found.items()):
        raise ValueError(f"checkpoint ({found}) does not match variant {variant!r} ({arch})")
    return T2TViTConfig(
        **arch,
        img_size=img_size,
        in_chans=in_chans,
        num_classes=num_classes,
        token_dim=token_dim,
        qkv_bias="blocks.0.attn.qkv.bias" in state,
    )


def convert_official_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official (or fly-renamed) names -> flyweight names; an unknown official tensor is an error."""
    state = normalize_official_names(state)
    out: dict[str, torch.Tensor] = {}
    unmapped = []
    for key, value in state.items():
        new = None
        if _SAME_NAME.fullmatch(key):
            new = key
        elif key.startswith("tokens_to_token.project."):
            new = "t2t.project." + key.rsplit(".", 1)[1]
        elif key.startswith("tokens_to_token."):
            rest = key[len("tokens_to_token.") :]
            for stage in (1, 2):
                for pattern, target in _T2T_RULES:
                    m = re.fullmatch(pattern.format(s=stage), rest)
                    if m:
                        new = "t2t." + m.expand(target.format(s=stage))
                        break
                if new:
                    break
        if new is None:
            unmapped.append(key)
            continue
        if new in out:
            raise ValueError(f"two checkpoint tensors map to {new!r}")
        if ".kqv." in key:  # performer stores k, q, v; flyweight's qkv is q, k, v
            k_, q_, v_ = value.chunk(3, dim=0)
            value = torch.cat([q_, k_, v_], dim=0)
        out[new] = value.float().contiguous()
    if unmapped:
        raise ValueError(f"official tensors with no flyweight counterpart: {unmapped}")
    return out


def read_official_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickles with arbitrary objects are refused on purpose
        raise ValueError(
            f"{path}: torch.load(weights_only=True) refused it ({err}); re-save only the state "
            "dict (torch.save(ckpt['state_dict_ema'], ...)) from a trusted environment"
        ) from None
    return unwrap_checkpoint(obj)


def convert_checkpoint(src: str | Path, dst: str | Path, variant: str | None = None) -> T2TViTConfig:
    """Official release file -> flyweight safetensors (+ json config); proves the strict load first."""
    official = read_official_checkpoint(src)
    cfg = infer_config(official, variant)
    state = convert_official_state_dict(official)
    load_state_dict_strict(T2TViT(cfg), state)
    save_t2t_vit(dst, state, cfg)
    return cfg


def save_t2t_vit(path: str | Path, state: dict[str, torch.Tensor], cfg: T2TViTConfig) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg_json = json.dumps(cfg.to_dict())
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in state.items()},
        str(path),
        metadata={"format": FORMAT, "config": cfg_json},
    )
    path.with_suffix(".json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], T2TViTConfig]:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != FORMAT or "config" not in meta:
        raise ValueError(
            f"{path} is not a flyweight T2T-ViT file (no '{FORMAT}' metadata); convert the official "
            "checkpoint with scripts/convert_checkpoint_t2t_vit.py"
        )
    return state, T2TViTConfig.from_dict(json.loads(meta["config"]))


def load_t2t_vit(
    path: str | Path,
    t2t_attention1: dict | None = None,
    t2t_attention2: dict | None = None,
    variant: str | None = None,
) -> T2TViT:
    """A ready model from a converted ``.safetensors`` file or an official ``.pth``/``.pth.tar``
    (converted on the fly).

    The token-transformer attentions can be swapped (``t2t_attention1/2``: registry specs); random-feature
    buffers stored for a different attention than the one asked for are dropped and redrawn from its seed.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        state, cfg = _read_safetensors(path)
    else:
        official = read_official_checkpoint(path)
        cfg, state = infer_config(official, variant), convert_official_state_dict(official)
    stored = {1: cfg.attention_spec(1), 2: cfg.attention_spec(2)}
    if t2t_attention1 is not None:
        cfg.t2t_attention1 = dict(t2t_attention1)
    if t2t_attention2 is not None:
        cfg.t2t_attention2 = dict(t2t_attention2)
    for stage in (1, 2):
        if cfg.attention_spec(stage) != stored[stage]:
            for suffix in ATTENTION_BUFFER_SUFFIXES:
                state.pop(f"t2t.token{stage}{suffix}", None)
    model = T2TViT(cfg)
    load_state_dict_strict(model, state)
    return model.eval()
