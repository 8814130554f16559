"""Model surgery: replace a model's linear layers, in place, by a structured kind.

    report = flyweight.convert(model, SS1Config(compression=4), target_modules=["mlp", "attn"], init="project")
    print(report)

Linear layers are ``nn.Linear``, Hugging Face's ``Conv1D`` (GPT-2; weight stored transposed as
(in, out)) and flyweight's own ``StructuredLinear`` (re-conversion goes through ``to_dense``).
The structure of every replaced layer is recorded in ``model.config.flyweight_structure`` (or
``model.flyweight_structure`` for a model without a config), which ``save_structured`` writes
and ``load_structured`` rebuilds from.
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from flyweight.convert.roles import (
    OUTPUT_ROLES,
    detect_family,
    is_pattern,
    matches,
    role_of,
    role_patterns,
    select_targets,
)
from flyweight.linear import StructuredLinear, linear_class
from flyweight.linear.config import LinearConfig, make_config

log = logging.getLogger("flyweight.convert")

STRUCTURE_KEY = "flyweight_structure"
STRUCTURE_VERSION = 1
DEFAULT_TARGETS = ("mlp", "attn_qkv", "attn_out")
DEFAULT_SS1_SEED = 1024


def conv1d_class():
    """Hugging Face GPT-2's ``Conv1D`` (imported on first use: transformers is slow to import)."""
    from transformers.pytorch_utils import Conv1D

    return Conv1D


def is_linear_like(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, conv1d_class(), StructuredLinear))


def dense_view(module: nn.Module) -> tuple[int, int, torch.Tensor, torch.Tensor | None]:
    """(in_features, out_features, weight in nn.Linear (out, in) layout, bias) of a linear layer."""
    if isinstance(module, conv1d_class()):
        # Conv1D computes x @ W + b with W of shape (in, out): the Linear weight is W^T.
        in_features, out_features = module.weight.shape
        return in_features, out_features, module.weight.detach().t(), module.bias
    if isinstance(module, StructuredLinear):
        return module.in_features, module.out_features, module.to_dense(), module.bias
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, module.weight.detach(), module.bias
    raise TypeError(f"{type(module).__name__} is not a linear layer")


def linear_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every linear-like module with its fully-qualified name, in module order."""
    return [(n, m) for n, m in model.named_modules() if n and is_linear_like(m)]


def describe_modules(named: list[tuple[str, nn.Module]]) -> str:
    """Linear module names with layer indices folded to '*', e.g. 'h.*.attn.c_attn (x12, Conv1D 768->2304)'."""
    groups: dict[str, list] = {}
    for name, mod in named:
        key = re.sub(r"(?<=\.)\d+(?=\.|$)", "*", name)
        in_f, out_f = _sizes(mod)
        groups.setdefault(key, [0, type(mod).__name__, in_f, out_f])[0] += 1
    lines = [f"  {k} (x{c}, {t} {i}->{o})" for k, (c, t, i, o) in groups.items()]
    return "\n".join(lines) if lines else "  (no linear modules)"


def _sizes(mod: nn.Module) -> tuple[int, int]:
    if isinstance(mod, conv1d_class()):
        return tuple(mod.weight.shape)  # type: ignore[return-value]
    return mod.in_features, mod.out_features


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once


# ---- the report ------------------------------------------------------------------------------
@dataclass
class LayerChange:
    name: str
    role: str | None
    source: str  # class name of the replaced module
    kind: str
    in_features: int
    out_features: int
    params_before: int
    params_after: int
    settings: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None  # reason, when the kind could not take this layer


@dataclass
class ConversionReport:
    kind: str
    init: str
    changes: list[LayerChange]
    params_before: int
    params_after: int

    @property
    def converted(self) -> list[LayerChange]:
        return [c for c in self.changes if c.skipped is None]

    @property
    def skipped(self) -> list[LayerChange]:
        return [c for c in self.changes if c.skipped is not None]

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "init": self.init,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "converted": len(self.converted),
            "skipped": len(self.skipped),
            "changes": [vars(c) for c in self.changes],
        }

    def __rich__(self):
        from rich.table import Table

        table = Table(
            title=f"convert -> {self.kind} (init={self.init}): {len(self.converted)} converted, "
            f"{len(self.skipped)} skipped; params {self.params_before / 1e6:.3f}M -> "
            f"{self.params_after / 1e6:.3f}M"
        )
        for col in ("module", "role", "from", "to", "shape (in->out)", "params before", "params after", "settings"):
            table.add_column(col, justify="right" if col.startswith("params") else "left")
        for c in self.changes:
            settings = "SKIPPED: " + c.skipped if c.skipped else _short_settings(c.settings)
            table.add_row(
                c.name, c.role or "-", c.source, c.kind if not c.skipped else "-",
                f"{c.in_features}->{c.out_features}", f"{c.params_before:,}",
                f"{c.params_after:,}", settings,
            )
        return table

    def __str__(self) -> str:
        from rich.console import Console

        buf = io.StringIO()
        Console(file=buf, width=160, force_terminal=False, color_system=None).print(self.__rich__())
        return buf.getvalue()

    def __repr__(self) -> str:
        return (
            f"ConversionReport(kind={self.kind!r}, converted={len(self.converted)}, "
            f"skipped={len(self.skipped)}, params {self.params_before:,} -> {self.params_after:,})"
        )


def _short_settings(settings: dict[str, Any]) -> str:
    keep = {k: v for k, v in settings.items() if k not in ("hash_coeffs", "pad") or (k == "pad" and v)}
    return ", ".join(f"{k}={v}" for k, v in keep.items())


# ---- target selection ------------------------------------------------------------------------
def _resolve(
    what: str, entries: Iterable[str], named: list[tuple[str, nn.Module]], family: str | None, model
) -> list[str]:
    """Names of linear modules selected by role names / patterns in ``entries`` (each must match)."""
    if isinstance(entries, str):
        entries = (entries,)
    names = [n for n, _ in named]
    chosen: set[str] = set()
    for entry in entries:
        if not isinstance(entry, str):
            raise TypeError(f"{what}: entries must be strings (role or pattern), got {entry!r}")
        if is_pattern(entry) or entry in names:  # a pattern, or the exact name of a top-level module
            patterns: tuple[str, ...] = (entry,)
        else:
            patterns = role_patterns(entry, family, model, describe_modules(named))
        hits = [n for n in names if any(matches(p, n) for p in patterns)]
        if not hits:
            raise ValueError(
                f"{what}: {entry!r} (patterns {list(patterns)}) matches no linear module of this "
                f"{type(model).__name__}. Available linear modules:\n{describe_modules(named)}"
            )
        chosen.update(hits)
    return [n for n in names if n in chosen]


# ---- the surgery -----------------------------------------------------------------------------
_LEGACY_CALL = (
    "convert(model, {kind!r}, targets=..., skip=..., <settings>) is deprecated: pass a typed config and "
    "peft-style targets, e.g. convert(model, {cfg}, target_modules=..., exclude_modules=...) "
    "(flyweight.linear.config); filter_fn is then filter_fn(module, fqn) -> bool, True = convert"
)


def convert(
    model: nn.Module,
    config: LinearConfig | dict | str,
    *,
    target_modules: str | Iterable[str] | None = None,
    exclude_modules: str | Iterable[str] | None = None,
    filter_fn: Callable[[nn.Module, str], bool] | None = None,
    init: str = "random",
    seed_offset: int = 0,
    auto: Any = False,
    targets: str | Iterable[str] | None = None,
    skip: str | Iterable[str] | None = None,
    **settings: Any,
) -> ConversionReport:
    """Replace the selected linear layers of ``model``, in place, by layers of ``config``'s kind.

        flyweight.convert(model, SS1Config(compression=4), target_modules=["c_fc", "c_proj"])
        flyweight.convert(model, MonarchConfig(nblocks=4), target_modules="all-linear",
                          exclude_modules=["attn.c_proj"], init="project")

    config: a typed config (``SS1Config``, ``MonarchConfig``, ``LowRankConfig``, ``DenseConfig``, or the
    derived config of any registered kind), or its ``to_dict()``.
    target_modules / exclude_modules: peft's syntax (``flyweight.convert.roles``): ``"all-linear"``
    (every linear layer but the output head), a string = regex over the whole name, or a list of exact
    names, dotted suffixes, globs, ``re:`` regexes and role presets ("mlp", "attn_qkv", "attn_out",
    "attn", "blocks", "lm_head"; vision: "head", "t2t"). Default: the "blocks" roles.
    filter_fn(module, fqn) -> bool (torchao's convention): False keeps that layer as it is (reported
    as skipped).
    init: "project" projects the existing weight with the kind's ``from_dense`` (optimal in
    Frobenius norm); "random" uses the new layer's own initialisation.
    SS1 layers get distinct hash seeds ``config.seed + seed_offset + index``, recorded in the report
    and in the saved structure. A layer whose sizes the kind cannot take is skipped with the reason
    logged and reported.
    auto: True (or a ``flyweight.convert.autoselect.AutoSelect`` workload) keeps dense every layer that
    the measured speed table does not show faster than dense.

    Deprecated form: ``convert(model, "ss1", targets=..., skip=..., filter_fn=(name, in, out) -> reason,
    compression=4)``: still works (roles / globs / ``re:`` / exact top-level names), with a warning.
    """
    legacy = isinstance(config, str)
    if legacy:
        cfg = make_config(config, **settings)
        warnings.warn(_LEGACY_CALL.format(kind=config, cfg=_config_repr(cfg)), DeprecationWarning, stacklevel=2)
        if target_modules is not None or exclude_modules is not None:
            raise TypeError("convert: with a kind name use targets=/skip= (deprecated), with a config "
                            "target_modules=/exclude_modules=; not both")
        reason_fn, convert_fn = filter_fn, None
    else:
        if settings:
            raise TypeError(
                f"convert: settings {sorted(settings)} go into the config, e.g. "
                f"{type(config).__name__ if isinstance(config, LinearConfig) else 'SS1Config'}(...)"
            )
        if targets is not None or skip is not None:
            raise TypeError("convert: targets=/skip= belong to the deprecated kind-name call; with a config "
                            "use target_modules=/exclude_modules=")
        cfg = make_config(config)
        reason_fn, convert_fn = None, None if filter_fn is None else _checked_bool_filter(filter_fn)
    kind = cfg.kind
    cls = linear_class(kind)
    settings = cfg.settings()
    if auto:
        from flyweight.convert.autoselect import AutoSelect, auto_filter

        measured = auto_filter(kind, settings, auto if isinstance(auto, AutoSelect) else AutoSelect(), cls)
        given = reason_fn
        reason_fn = measured if given is None else (lambda n, i, o: given(n, i, o) or measured(n, i, o))
    if init not in ("random", "project"):
        raise ValueError(f"init must be 'random' or 'project', got {init!r}")
    named = linear_modules(model)
    family = detect_family(model, [n for n, _ in named])
    if legacy:
        selected = _resolve("targets", DEFAULT_TARGETS if targets is None else targets, named, family, model)
        if skip:
            dropped = set(_resolve("skip", skip, named, family, model))
            selected = [n for n in selected if n not in dropped]
    else:
        selected = _select(model, named, family, target_modules, exclude_modules)
    by_name = dict(named)
    params_before = _num_params(model)
    # a kind with a hash seed (SS1) gives each layer its own: seed + seed_offset + index
    base_seed = int(settings.pop("seed")) if "seed" in settings else None
    changes: list[LayerChange] = []
    new_layers: dict[str, dict[str, Any]] = {}
    untied_head = False
    kept_by_filter = 0

    for index, name in enumerate(selected):
        old = by_name[name]
        in_f, out_f, weight, bias = dense_view(old)
        kwargs = dict(settings)
        if base_seed is not None and "hash_coeffs" not in kwargs:
            kwargs["seed"] = base_seed + seed_offset + index
        change = LayerChange(
            name=name, role=role_of(name, family), source=type(old).__name__, kind=kind,
            in_features=in_f, out_features=out_f,
            params_before=sum(p.numel() for p in old.parameters()), params_after=0,
        )
        reason = None
        if convert_fn is not None and not convert_fn(old, name):
            reason = "filter_fn(module, fqn) returned False"
        elif reason_fn is not None:
            reason = reason_fn(name, in_f, out_f)
        if reason:
            change.skipped = reason
            change.params_after = change.params_before
            log.info("convert: keeping %s (%d->%d): %s", name, in_f, out_f, reason)
            changes.append(change)
            kept_by_filter += 1
            continue
        try:
            new = _build(cls, kind, init, in_f, out_f, weight, bias, kwargs)
        except ValueError as err:
            change.skipped = str(err)
            change.params_after = change.params_before
            log.warning("convert: skipping %s (%s %d->%d) for kind %r: %s", name, change.source, in_f, out_f, kind, err)
            changes.append(change)
            continue
        if _shares_weight(model, old):
            untied_head = True  # e.g. a tied lm_head: the new layer has its own weights now
        new.train(old.training)
        if not any(p.requires_grad for p in old.parameters()):
            new.requires_grad_(False)  # a frozen layer stays frozen
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
        change.params_after = sum(p.numel() for p in new.parameters())
        change.settings = new.settings()
        changes.append(change)
        new_layers[name] = {
            "kind": kind,
            "in_features": in_f,
            "out_features": out_f,
            "bias": new.bias is not None,
            "config": new.settings(),
            "role": change.role,
            "source": change.source,
        }

    if len(selected) > kept_by_filter and not new_layers:
        reasons = sorted({c.skipped for c in changes if c.skipped})
        raise ValueError(f"convert: kind {kind!r} could not take any of the {len(selected)} selected layers: {reasons}")
    if untied_head:
        _untie(model)
    record_structure(model, new_layers)
    return ConversionReport(kind, init, changes, params_before, _num_params(model))


def _config_repr(cfg: LinearConfig) -> str:
    given = {k: v for k, v in cfg.settings().items() if getattr(type(cfg), k, None) != v}
    return f"{type(cfg).__name__}({', '.join(f'{k}={v!r}' for k, v in given.items())})"


def _checked_bool_filter(filter_fn: Callable[[nn.Module, str], bool]) -> Callable[[nn.Module, str], bool]:
    """torchao's filter_fn(module, fqn) -> bool; the old (name, in, out) -> reason form is refused."""
    try:
        params = [p for p in inspect.signature(filter_fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):
        params = []
    if len(params) == 3:
        raise TypeError(
            "convert: filter_fn takes (module, fqn) and returns True to convert the layer (torchao's "
            "convention); a (name, in_features, out_features) -> reason function belongs to the deprecated "
            "kind-name call, convert(model, 'ss1', filter_fn=...)"
        )
    return filter_fn


def output_module_names(model: nn.Module, named: list[tuple[str, nn.Module]], family: str | None) -> set[str]:
    """The output head's names: the model's output embeddings, and the family's head roles."""
    out: set[str] = set()
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    for name, mod in named:
        if head is not None and mod is head:
            out.add(name)
        elif role_of(name, family) in OUTPUT_ROLES:
            out.add(name)
    return out


def _select(model, named, family, target_modules, exclude_modules) -> list[str]:
    names = [n for n, _ in named]
    describe = describe_modules(named)
    outputs = output_module_names(model, named, family)
    spec = DEFAULT_TARGETS if target_modules is None else target_modules
    selected = select_targets(spec, names, outputs, family, model, describe)
    if not selected:
        raise ValueError(
            f"convert: target_modules={spec!r} matches no linear module of this {type(model).__name__}. "
            f"Linear modules:\n{describe}"
        )
    if exclude_modules:
        dropped = set(select_targets(exclude_modules, names, outputs, family, model, describe))
        selected = [n for n in selected if n not in dropped]
        if not selected:
            raise ValueError(f"convert: exclude_modules={exclude_modules!r} removes every selected layer")
    return selected


def _build(cls, kind, init, in_f, out_f, weight, bias, kwargs) -> StructuredLinear:
    factory = {"device": weight.device, "dtype": weight.dtype}
    if init == "project":
        if weight.device.type == "meta":
            raise ValueError("init='project' needs real weights, the model is on the meta device")
        b = None if bias is None else bias.detach()
        with _single_thread_if_small(weight):
            return cls.from_dense(weight, b, **factory, **kwargs)
    return cls(in_f, out_f, bias=bias is not None, **factory, **kwargs)


@contextlib.contextmanager
def _single_thread_if_small(weight: torch.Tensor, limit: int = 1 << 22):
    """Projections run many small SVDs; multi-threaded LAPACK on a busy CPU can make each one take
    ~1 s instead of ~0.2 ms (threads spin-waiting on each other), so small ones run on one thread."""
    if weight.device.type != "cpu" or weight.numel() > limit:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _shares_weight(model: nn.Module, module: nn.Module) -> bool:
    """True when one of ``module``'s parameters is also registered elsewhere (weight tying)."""
    own = {id(p) for p in module.parameters()}
    inside = {id(p) for _, p in module.named_parameters()}
    seen = 0
    for _, p in model.named_parameters(remove_duplicate=False):
        if id(p) in own:
            seen += 1
    return seen > len(inside)


def _untie(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "tie_word_embeddings"):
        config.tie_word_embeddings = False


QUANT_METHOD = "flyweight"


def mark_flyweight_checkpoint(config) -> dict[str, Any]:
    """Route a plain transformers ``from_pretrained`` of this model's checkpoints through flyweight.

    transformers calls the quantizer registered for ``config.quantization_config["quant_method"]``
    (``flyweight.integrations.transformers``), which rebuilds the structured modules before the
    weights load. Returns the fields (also set on ``config`` when given)."""
    fields = {"quantization_config": {"quant_method": QUANT_METHOD, "loader": "flyweight.from_pretrained"}}
    if config is not None:
        for key, value in fields.items():
            setattr(config, key, value)
    return fields


def record_structure(model: nn.Module, new_layers: dict[str, dict[str, Any]]) -> None:
    """Merge the replaced layers into the model's structure spec (config attribute when there is one)."""
    spec = get_structure(model) or {"version": STRUCTURE_VERSION, "layers": {}}
    spec["layers"].update(new_layers)
    config = getattr(model, "config", None)
    if config is not None:
        setattr(config, STRUCTURE_KEY, spec)
        if hasattr(config, "to_dict"):  # a transformers config: its save_pretrained must not load as dense
            mark_flyweight_checkpoint(config)
    else:
        setattr(model, STRUCTURE_KEY, spec)


def get_structure(model: nn.Module) -> dict[str, Any] | None:
    config = getattr(model, "config", None)
    spec = getattr(config, STRUCTURE_KEY, None) if config is not None else None
    if spec is None:
        spec = getattr(model, STRUCTURE_KEY, None)
    return spec
