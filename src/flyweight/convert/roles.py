"""Role presets: which fully-qualified module names play which part of a transformer block.

A role ("mlp", "attn_qkv", "attn_out", "lm_head") is a list of name patterns per model family,
the way peft's ``target_modules`` presets work. Patterns are globs (``fnmatch``, where ``*`` also
crosses dots) or regular expressions prefixed with ``re:``; both match the WHOLE name.
"""

from __future__ import annotations

import fnmatch
import re

# family -> role -> patterns. Llama-style names are shared by Mistral, Qwen2, SmolLM, ...
ROLE_PRESETS: dict[str, dict[str, tuple[str, ...]]] = {
    "gpt2": {
        "mlp": ("*.mlp.c_fc", "*.mlp.c_proj"),
        "attn_qkv": ("*.attn.c_attn",),
        "attn_out": ("*.attn.c_proj",),
        "lm_head": ("lm_head",),
    },
    "llama": {
        "mlp": ("*.mlp.gate_proj", "*.mlp.up_proj", "*.mlp.down_proj"),
        "attn_qkv": ("*.self_attn.q_proj", "*.self_attn.k_proj", "*.self_attn.v_proj"),
        "attn_out": ("*.self_attn.o_proj",),
        "lm_head": ("lm_head",),
    },
    "bert": {
        # BERT has two "output.dense": the attention's (attn_out) and the MLP's (layer.N.output).
        "mlp": (r"re:(.*\.)?layer\.\d+\.intermediate\.dense", r"re:(.*\.)?layer\.\d+\.output\.dense"),
        "attn_qkv": ("*.attention.self.query", "*.attention.self.key", "*.attention.self.value"),
        "attn_out": ("*.attention.output.dense",),
        "lm_head": ("cls.predictions.decoder",),
    },
}

# Aliases: one name for several roles.
ROLE_ALIASES: dict[str, tuple[str, ...]] = {
    "attn": ("attn_qkv", "attn_out"),
    "blocks": ("mlp", "attn_qkv", "attn_out"),
}

# Hugging Face config.model_type -> preset family.
MODEL_TYPE_FAMILY = {
    "gpt2": "gpt2",
    "llama": "llama",
    "mistral": "llama",
    "qwen2": "llama",
    "qwen3": "llama",
    "gemma": "llama",
    "gemma2": "llama",
    "phi3": "llama",
    "bert": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "distilbert": "bert",
}


def role_names() -> list[str]:
    roles = {r for family in ROLE_PRESETS.values() for r in family}
    return sorted(roles | set(ROLE_ALIASES))


def is_pattern(target: str) -> bool:
    """A target is a name pattern (not a role) when it is a regex, a glob, or a dotted name."""
    return target.startswith("re:") or any(ch in target for ch in "*?[.")


def matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def expand_role(role: str) -> tuple[str, ...]:
    """A role or alias -> the base roles it stands for (unknown names raise with the valid list)."""
    if role in ROLE_ALIASES:
        return ROLE_ALIASES[role]
    if any(role in family for family in ROLE_PRESETS.values()):
        return (role,)
    raise ValueError(
        f"unknown role {role!r}; valid roles: {', '.join(role_names())}. "
        "Or pass a module-name pattern (glob like '*.mlp.*' or 're:<regex>')."
    )


def detect_family(model, names: list[str]) -> str | None:
    """The preset family of a model: from config.model_type, else the preset that matches most names."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in MODEL_TYPE_FAMILY:
        return MODEL_TYPE_FAMILY[model_type]
    best, best_hits = None, 0
    for family, roles in ROLE_PRESETS.items():
        hits = sum(any(matches(p, n) for p in pats) for pats in roles.values() for n in names)
        if hits > best_hits:
            best, best_hits = family, hits
    return best


def role_of(name: str, family: str | None) -> str | None:
    """The base role a module name plays in its family's preset, or None."""
    if family is None:
        return None
    for role, patterns in ROLE_PRESETS[family].items():
        if any(matches(p, name) for p in patterns):
            return role
    return None
