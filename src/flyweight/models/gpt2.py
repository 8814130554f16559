"""GPT-2 (small / medium / large, and a tiny test size) with structured linear layers.

The model is Hugging Face's ``GPT2LMHeadModel`` (causal SDPA attention, tied embeddings,
``generate()``), with the block linears swapped by ``flyweight.convert``:

    model = build_gpt2("small", kind="ss1")                     # SS1 R=4 in every block: 60.7M params
    model = build_gpt2("small", kind="monarch", kinds={"attn_qkv": "dense"})

Roles: "mlp" (c_fc d->4d, c_proj 4d->d), "attn_qkv" (c_attn d->3d), "attn_out" (attn.c_proj d->d),
optionally "lm_head" (then untied from the embedding).

``pad_vocab_to=64`` pads the (tied) embedding/lm_head to a multiple of 64 rows (50257 -> 50304), so
the logits GEMM has tensor-core-friendly shapes. The padded rows are dead weight: their logits are
-inf (zero probability, zero gradient), the real rows' logits equal the unpadded model's, and the
parameter and FLOP counts below cover the real vocabulary only (see ``PaddedVocabHead``).

Initialisation follows GPT-2: N(0, 0.02), residual projections (attn.c_proj, mlp.c_proj) N(0,
0.02/sqrt(2*n_layer)), zero biases. For a structured layer "std" means the std of the entries of
its dense equivalent (``StructuredLinear.normal_init_``, which each kind defines).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from flyweight.attention.hf_backends import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS
from flyweight.attention.hf_backends import use_attention
from flyweight.convert.checkpoint import load_structured as _load_structured
from flyweight.convert.checkpoint import save_structured
from flyweight.convert.surgery import convert, get_structure, is_linear_like
from flyweight.convert.vocab import PaddedVocabHead, pad_vocabulary_, real_vocab_size
from flyweight.linear import LINEAR_KINDS, StructuredLinear
from flyweight.linear.base import check_positive_int, validate_linear
from flyweight.linear.config import make_config
from flyweight.utils.optional import HAS_TRITON

__all__ = [
    "DEFAULT_SETTINGS",
    "GPT2_ROLES",
    "GPT2_SIZES",
    "PaddedVocabHead",
    "build_gpt2",
    "load_structured",
    "model_flops_per_token",
    "num_parameters",
    "real_vocab_size",
    "save_structured",
]

GPT2_SIZES = {
    "tiny": {"n_layer": 2, "n_embd": 128, "n_head": 4},
    "small": {"n_layer": 12, "n_embd": 768, "n_head": 12},
    "medium": {"n_layer": 24, "n_embd": 1024, "n_head": 16},
    "large": {"n_layer": 36, "n_embd": 1280, "n_head": 20},
}
GPT2_ROLES = ("mlp", "attn_qkv", "attn_out", "lm_head")
# The default settings of each kind (docs/training.md, the wt103/* experiments): SS1 R=4, Monarch b=4, low-rank f=8.
DEFAULT_SETTINGS: dict[str, dict[str, Any]] = {
    "dense": {},
    "ss1": {"compression": 4},
    "monarch": {"nblocks": 4},
    "lowrank": {"compression": 8},
}
INIT_STD = 0.02


def _expand_roles(roles: Iterable[str], lm_head: bool) -> list[str]:
    if isinstance(roles, str):
        roles = (roles,)
    out: list[str] = []
    for role in roles:
        for r in ("attn_qkv", "attn_out") if role == "attn" else (role,):
            if r not in GPT2_ROLES:
                raise ValueError(f"unknown GPT-2 role {role!r}; valid roles: {', '.join(GPT2_ROLES)} (alias: attn)")
            if r not in out:
                out.append(r)
    if lm_head and "lm_head" not in out:
        out.append("lm_head")
    return out


def _settings_for(kind: str, main_kind: str, settings: dict | None) -> dict[str, Any]:
    """Per-kind layer settings: nested {kind: {...}} applies by kind, a flat dict to the main kind."""
    out = dict(DEFAULT_SETTINGS.get(kind, {}))
    given: dict[str, Any] = {}
    if settings:
        if all(k in LINEAR_KINDS for k in settings):
            given = dict(settings.get(kind, {}))
        elif kind == main_kind:
            given = dict(settings)
    if "rank" in given and "compression" not in given:
        out.pop("compression", None)  # a low-rank rank replaces the default compression, not joins it
    out.update(given)
    return out


def _role_shapes(role: str, n_embd: int, vocab_size: int) -> list[tuple[str, int, int]]:
    """(module, in_features, out_features) of one block's layers of ``role`` (GPT-2's MLP is 4x wide)."""
    return {
        "attn_qkv": [("attn.c_attn", n_embd, 3 * n_embd)],
        "attn_out": [("attn.c_proj", n_embd, n_embd)],
        "mlp": [("mlp.c_fc", n_embd, 4 * n_embd), ("mlp.c_proj", 4 * n_embd, n_embd)],
        "lm_head": [("lm_head", n_embd, vocab_size)],
    }[role]


def _check_layer_settings(kind: str, roles: list[str], settings: dict, n_embd: int, vocab_size: int) -> None:
    """Every converted layer shape, checked on the meta device before anything is built: a bad setting
    fails at once with the layer's own message instead of one warning per layer of the model."""
    make_config(kind, **settings)  # an unknown setting names the kind's typed config and its valid keys
    for role in roles:
        for module, in_f, out_f in _role_shapes(role, n_embd, vocab_size):
            try:
                validate_linear(kind, in_f, out_f, **settings)
            except (ValueError, TypeError) as err:
                raise type(err)(f"build_gpt2: kind {kind!r} with settings {settings} cannot build {module} "
                                f"({in_f}->{out_f}, role {role}): {err}") from None


def build_gpt2(
    size: str = "small",
    *,
    kind: str = "dense",
    roles: Iterable[str] = ("mlp", "attn_qkv", "attn_out"),
    lm_head: bool = False,
    settings: dict | None = None,
    n_layer: int | None = None,
    n_embd: int | None = None,
    n_head: int | None = None,
    n_positions: int = 1024,
    vocab_size: int = 50257,
    pad_vocab_to: int | None = None,
    dropout: float = 0.1,
    seed: int | None = None,
    kinds: dict | None = None,
    device: str | torch.device | None = None,
    attention: str = "sdpa",
):
    """A ``transformers.GPT2LMHeadModel`` whose block linears are ``kind`` (per role: ``kinds``).

    settings: the kind's settings, flat ({"compression": 2}) for ``kind`` or nested per kind
    ({"ss1": {"compression": 2}, "monarch": {"nblocks": 8}}); defaults: DEFAULT_SETTINGS. SS1 layers
    get hash seeds ``seed_ss1 + index`` (``settings["seed"]``, default 1024), distinct per layer.
    seed: seeds the weight initialisation (global RNG left untouched). device: e.g. "meta" to
    count parameters without allocating.
    pad_vocab_to: pad the tied embedding/lm_head to a multiple of this many rows (64: 50257 ->
    50304); the padded logits are -inf (``PaddedVocabHead``). The real rows are initialised exactly
    as without padding (same seed, same values), the padded ones are zero. None/1: no padding.
    attention: "sdpa" (PyTorch's fused kernels), "triton" (flyweight's Triton flash attention; calls
    with a padding mask or attention dropout still use SDPA) or "auto" (triton where CUDA is, else
    sdpa). Either way a padding-free causal batch
    gets no materialised mask, also under torch.compile (``flyweight.attention.hf_backends``).
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    if size not in GPT2_SIZES:
        raise ValueError(f"unknown GPT-2 size {size!r}; valid sizes: {', '.join(GPT2_SIZES)}")
    dims = dict(GPT2_SIZES[size])
    for key, value in (("n_layer", n_layer), ("n_embd", n_embd), ("n_head", n_head)):
        if value is not None:
            dims[key] = value
    # transformers accepts zeros here and fails later (ZeroDivisionError, empty embeddings)
    for key, value in (("n_positions", n_positions), ("vocab_size", vocab_size), *dims.items()):
        check_positive_int(key, value)
    if dims["n_embd"] % dims["n_head"]:
        raise ValueError(f"n_embd={dims['n_embd']} must be a multiple of n_head={dims['n_head']} "
                         f"(e.g. n_head={math.gcd(dims['n_embd'], dims['n_head'])})")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    role_list = _expand_roles(roles, lm_head)
    kinds = dict(kinds or {})
    for role in kinds:
        if role not in role_list:
            raise ValueError(f"kinds: role {role!r} is not among the converted roles {role_list}")
    for k in {kind, *kinds.values()}:
        LINEAR_KINDS.get_or_raise(k)
    if attention == "auto":  # the fastest available (see flyweight.train.fastpath)
        on_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
        attention = "triton" if on_cuda and HAS_TRITON else "sdpa"
    if attention not in ATTENTION_IMPLEMENTATIONS:  # checked before building, not after
        raise ValueError(f"unknown attention {attention!r}; valid: {', '.join(ATTENTION_IMPLEMENTATIONS)}")
    if pad_vocab_to is not None and (isinstance(pad_vocab_to, bool) or not isinstance(pad_vocab_to, int)
                                     or pad_vocab_to < 1):
        raise ValueError(f"pad_vocab_to must be a positive integer (e.g. 64) or None, got {pad_vocab_to!r}")
    if pad_vocab_to and pad_vocab_to > 1 and "lm_head" in role_list:
        raise ValueError("pad_vocab_to pads the tied dense lm_head; it cannot be combined with a structured "
                         "lm_head (lm_head=True or the lm_head role): set pad_vocab_to=None")

    for k in {kinds.get(role, kind) for role in role_list} - {"dense"}:
        k_roles = [role for role in role_list if kinds.get(role, kind) == k]
        _check_layer_settings(k, k_roles, _settings_for(k, kind, settings), dims["n_embd"], vocab_size)

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        initializer_range=INIT_STD,
        attn_implementation="sdpa",
        **dims,
    )
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        with torch.device(device) if device is not None else contextlib.nullcontext():
            model = GPT2LMHeadModel(config)
        # Group roles by kind; "dense" roles keep GPT-2's own Conv1D layers.
        by_kind: dict[str, list[str]] = {}
        for role in role_list:
            by_kind.setdefault(kinds.get(role, kind), []).append(role)
        ss1_seen = 0
        for k, k_roles in by_kind.items():
            if k == "dense":
                continue
            config = make_config(k, **_settings_for(k, kind, settings))
            report = convert(model, config, target_modules=k_roles, init="random", seed_offset=ss1_seen)
            if report.skipped:
                raise ValueError(
                    f"build_gpt2: kind {k!r} cannot take {len(report.skipped)} layer(s), e.g. "
                    f"{report.skipped[0].name}: {report.skipped[0].skipped}"
                )
            if k == "ss1":
                ss1_seen += len(report.converted)
        _gpt2_init_(model)
        if pad_vocab_to and pad_vocab_to > 1:
            # after the init, so the real rows hold exactly the values of an unpadded build
            pad_vocabulary_(model, pad_vocab_to)

    use_attention(model, attention)
    spec = get_structure(model)
    if spec is not None:
        spec["builder"] = {
            "size": size, "kind": kind, "roles": role_list, "kinds": kinds,
            "linear": settings or {}, **dims,  # the key keeps its name: the saved config.json format
        }
    return model


def _gpt2_init_(model: nn.Module) -> None:
    """GPT-2's init on the structured layers (HF already initialised its own Conv1D layers)."""
    residual_std = INIT_STD / math.sqrt(2 * model.config.n_layer)
    for name, module in model.named_modules():
        if isinstance(module, StructuredLinear):
            std = residual_std if name.endswith(".c_proj") else INIT_STD
            module.normal_init_(std)


def load_structured(path, *, device: str | torch.device | None = None, model: nn.Module | None = None) -> nn.Module:
    """``flyweight.from_pretrained``: the saved model exactly, a padded vocabulary's -inf logits included."""
    return _load_structured(path, device=device, model=model)


# ---- counting: the one place params and FLOPs come from -----------------------------------------
def num_parameters(model: nn.Module, *, tied: bool = True) -> int:
    """Parameters of the model; a tied lm_head/embedding counted once (``tied=False``: twice).

    The rows of a padded vocabulary are not counted: they are zeros that never receive a gradient, so
    a padded model reports the count of the same model without padding.
    """
    dead = {id(m.weight): (m.out_features - m.vocab_size) * m.in_features
            for m in model.modules() if isinstance(m, PaddedVocabHead)}
    return sum(p.numel() - dead.get(id(p), 0) for _, p in model.named_parameters(remove_duplicate=tied))


def _linear_flops(module: nn.Module) -> int:
    if isinstance(module, StructuredLinear):
        return module.flops_per_token()
    if isinstance(module, PaddedVocabHead):  # useful work only: the real vocabulary's logits
        return 2 * module.in_features * module.vocab_size
    if isinstance(module, nn.Linear):
        return 2 * module.in_features * module.out_features
    in_f, out_f = module.weight.shape  # Conv1D: (in, out)
    return 2 * in_f * out_f


def model_flops_per_token(model: nn.Module, seq_len: int, *, causal: bool = False) -> int:
    """Forward FLOPs per token at context ``seq_len``; training FLOPs are 3x this.

    = every linear layer's own ``flops_per_token()`` (structured or dense, lm_head included;
    multiply-add = 2 FLOPs, biases, norms, activations and embedding look-ups not counted; a padded
    vocabulary's lm_head counts its real rows only, so MFU measures useful work and a padded model
    reports the FLOPs of the unpadded one)
    + attention: per layer 2*d_attn*seq_len for the scores (q.k) and as much for the weighted
    values, d_attn = n_head * head_dim. By default every query is charged all ``seq_len`` keys
    (the PaLM / nanoGPT MFU convention: 6N + 12*L*d*T per trained token); ``causal=True`` charges
    the (seq_len + 1) / 2 keys a causal query actually sees on average.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
    seen: set[int] = set()
    linear = 0
    for _, module in model.named_modules():
        if is_linear_like(module) and id(module) not in seen:
            seen.add(id(module))
            linear += _linear_flops(module)
    config = model.config
    n_layer = config.num_hidden_layers
    n_head = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    keys = (seq_len + 1) / 2 if causal else seq_len
    attention = n_layer * 2 * (2 * n_head * head_dim * keys)
    return int(linear + attention)
