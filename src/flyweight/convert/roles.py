"""Role presets, and peft's ``target_modules`` syntax for choosing linear layers by name.

A role ("mlp", "attn_qkv", "attn_out", "lm_head", "head", "t2t") is a list of name patterns per
model family, the way peft's ``target_modules`` presets work. Patterns are globs (``fnmatch``, where
``*`` also crosses dots) or regular expressions prefixed with ``re:``; both match the WHOLE name.

``select_targets`` reads peft's syntax on top of the roles:
- ``"all-linear"``: every linear layer except the output head (lm_head / classifier), as in peft;
- any other string: a role or alias, ``re:<regex>``, else a regex that must match the whole name
  (peft's rule for a string);
- a list: each entry is a role or alias, a glob / ``re:`` pattern, or a name that matches exactly
  or as a dotted suffix (``"c_fc"`` matches ``transformer.h.0.mlp.c_fc``), as in peft.
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
    # timm's VisionTransformer (and DeiT, ...): blocks.N.attn.{qkv,proj}, blocks.N.mlp.{fc1,fc2}, head
    "vit": {
        "mlp": (r"re:(.*\.)?blocks\.\d+\.mlp\.fc[12]",),
        "attn_qkv": (r"re:(.*\.)?blocks\.\d+\.attn\.qkv",),
        "attn_out": (r"re:(.*\.)?blocks\.\d+\.attn\.proj",),
        "head": ("head",),
    },
    # flyweight's T2T-ViT: the ViT blocks as above, plus the tokens-to-token module's own
    # token transformers and projection ("t2t", not part of "blocks")
    "t2t_vit": {
        "mlp": (r"re:(.*\.)?blocks\.\d+\.mlp\.fc[12]",),
        "attn_qkv": (r"re:(.*\.)?blocks\.\d+\.attn\.qkv",),
        "attn_out": (r"re:(.*\.)?blocks\.\d+\.attn\.proj",),
        "head": ("head",),
        "t2t": ("t2t.token1.*", "t2t.token2.*", "t2t.project"),
    },
}
# roles that are the model's output layer: "all-linear" leaves them out, as peft does
OUTPUT_ROLES = ("lm_head", "head")
ALL_LINEAR = "all-linear"

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
    if type(model).__name__ == "T2TViT":
        return "t2t_vit"
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


def is_role(entry: str) -> bool:
    return entry in ROLE_ALIASES or any(entry in family for family in ROLE_PRESETS.values())


def role_patterns(role: str, family: str | None, model, describe: str) -> tuple[str, ...]:
    """The name patterns of a role (or alias) in ``family``'s preset; an error naming the fix when the
    family is unknown or has none of the role's parts (``describe`` lists the model's linear modules)."""
    if family is None:
        model_type = getattr(getattr(model, "config", None), "model_type", None)
        raise ValueError(
            f"role {role!r} needs a known model family (presets: {', '.join(ROLE_PRESETS)}), and "
            f"{type(model).__name__} (model_type={model_type!r}) matched none; pass module names, "
            f"suffixes or patterns instead. Linear modules:\n{describe}"
        )
    roles = expand_role(role)
    missing = [r for r in roles if r not in ROLE_PRESETS[family]]
    if len(missing) == len(roles):
        raise ValueError(
            f"role {role!r} does not exist for the {family!r} preset (its roles: "
            f"{', '.join(ROLE_PRESETS[family])}); linear modules:\n{describe}"
        )
    return tuple(p for r in roles for p in ROLE_PRESETS[family].get(r, ()))


def entry_matcher(entry: str, family: str | None, model, describe: str, *, list_entry: bool):
    """A predicate name -> bool for one target entry in peft's syntax (see the module docstring)."""
    if not isinstance(entry, str):
        raise TypeError(f"target entries must be strings (name, suffix, role or pattern), got {entry!r}")
    if is_role(entry):
        patterns = role_patterns(entry, family, model, describe)
        return lambda name: any(matches(p, name) for p in patterns)
    if entry.startswith("re:"):
        return lambda name: re.fullmatch(entry[3:], name) is not None
    if not list_entry:  # peft: a plain string is a regex over the whole name
        return lambda name: re.fullmatch(entry, name) is not None
    if any(ch in entry for ch in "*?["):
        return lambda name: fnmatch.fnmatchcase(name, entry)
    return lambda name: name == entry or name.endswith("." + entry)


def select_targets(spec, names: list[str], output_names: set[str], family: str | None, model, describe: str):
    """The names (in module order) that ``spec`` selects; ``output_names`` are the output head's."""
    if isinstance(spec, str):
        if spec == ALL_LINEAR:
            return [n for n in names if n not in output_names]
        match = entry_matcher(spec, family, model, describe, list_entry=False)
    else:
        matchers = [entry_matcher(e, family, model, describe, list_entry=True) for e in spec]
        match = lambda name: any(m(name) for m in matchers)  # noqa: E731
    return [n for n in names if match(n)]
