"""One typed, serialisable config per linear kind: what ``convert``, checkpoints and Hydra share.

    cfg = SS1Config(compression=4, block_k=32)
    flyweight.convert(model, cfg, target_modules="all-linear")
    cfg.to_dict()  # {"kind": "ss1", "compression": 4, "seed": 1024, ...}, like peft's adapter config
    LinearConfig.from_dict({"kind": "monarch", "nblocks": 8})  # -> MonarchConfig(nblocks=8)

A config holds the layer's structure settings only (never in/out features): the same config applies
to every selected layer. ``None`` fields mean "the layer's own default" and are not passed on.
A kind registered with ``@register_linear`` without a config class of its own gets one derived from
its constructor's keyword arguments, so a new kind needs only its layer class.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
from pathlib import Path
from typing import Any, ClassVar

from flyweight.utils.registry import Registry

CONFIG_FILE = "flyweight_linear_config.json"
# constructor arguments that belong to each layer, not to the structure
_PER_LAYER_ARGS = ("self", "in_features", "out_features", "bias", "device", "dtype")

# the typed config of each kind; unknown kinds are reported with the layer registry's names (config_class)
CONFIG_CLASSES: Registry[type["LinearConfig"]] = Registry("linear config", "valid kinds")


@dataclasses.dataclass(frozen=True)
class LinearConfig:
    """Base of the per-kind configs; ``kind`` names the registered layer class."""

    kind: ClassVar[str] = "?"

    def settings(self) -> dict[str, Any]:
        """The kind's settings: keyword arguments for the layer constructor / ``from_dense`` (None fields left out)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    def replace(self, **changes: Any) -> "LinearConfig":
        return dataclasses.replace(self, **changes)

    # ---- serialisation (peft-style: a flat JSON object with the kind) -------------------------
    def to_dict(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"kind": self.kind, **{k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}}

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def save_pretrained(self, folder: str | Path) -> Path:
        path = Path(folder)
        path.mkdir(parents=True, exist_ok=True)
        (path / CONFIG_FILE).write_text(self.to_json_string())
        return path / CONFIG_FILE

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "LinearConfig":
        path = Path(folder)
        path = path / CONFIG_FILE if path.is_dir() else path
        return cls.from_dict(json.loads(path.read_text()))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LinearConfig":
        """Rebuild a config; on the base class the ``kind`` key picks the subclass."""
        data = dict(data)
        kind = data.pop("kind", None)
        if cls is LinearConfig:
            if kind is None:
                raise ValueError(f"LinearConfig.from_dict needs a 'kind' key, got keys {sorted(data)}")
            return config_class(kind).from_dict(data)
        if kind is not None and kind != cls.kind:
            raise ValueError(f"{cls.__name__} is kind {cls.kind!r}, the dict says kind {kind!r}")
        return cls(**_checked_fields(cls, data))

    def __post_init__(self) -> None:
        # lists from JSON / YAML become tuples, so configs stay hashable and compare equal
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))


def _checked_fields(cls: type[LinearConfig], data: dict[str, Any]) -> dict[str, Any]:
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - valid)
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], sorted(valid), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ValueError(
            f"{cls.__name__} (kind {cls.kind!r}) has no setting {', '.join(map(repr, unknown))}{hint}; "
            f"valid settings: {', '.join(sorted(valid)) or '(none)'}"
        )
    return data


def register_config(kind: str):
    """Class decorator: the typed config of ``kind`` (the layer class itself registers separately)."""

    return CONFIG_CLASSES.register(kind)


def derive_config_class(layer_cls: type) -> type[LinearConfig]:
    """A frozen dataclass of ``layer_cls.__init__``'s structure arguments, with their defaults."""
    fields = []
    for name, param in inspect.signature(layer_cls.__init__).parameters.items():
        if name in _PER_LAYER_ARGS or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        default = None if param.default is inspect.Parameter.empty else param.default
        fields.append((name, Any, dataclasses.field(default=default)))
    name = f"{layer_cls.__name__}Config"
    cls = dataclasses.make_dataclass(name, fields, bases=(LinearConfig,), frozen=True)
    cls.__module__ = layer_cls.__module__
    cls.__doc__ = f"Derived config of kind {layer_cls.kind!r}: the keyword arguments of {layer_cls.__name__}."
    return register_config(layer_cls.kind)(cls)


def config_class(kind: str) -> type[LinearConfig]:
    if kind not in CONFIG_CLASSES:
        from flyweight.linear.base import LINEAR_KINDS

        raise ValueError(f"unknown linear kind {kind!r}; valid kinds: {', '.join(sorted(LINEAR_KINDS))}")
    return CONFIG_CLASSES[kind]


def make_config(kind: str | LinearConfig | dict, **settings: Any) -> LinearConfig:
    """A typed config from a kind name and settings, a dict with 'kind', or a config (copied)."""
    if isinstance(kind, LinearConfig):
        return kind.replace(**settings) if settings else kind
    if isinstance(kind, dict):
        return LinearConfig.from_dict({**kind, **settings})
    return config_class(kind).from_dict(settings)


# ---- the built-in kinds --------------------------------------------------------------------------
@register_config("dense")
@dataclasses.dataclass(frozen=True)
class DenseConfig(LinearConfig):
    """A plain (out, in) weight: no settings."""


@register_config("lowrank")
@dataclasses.dataclass(frozen=True)
class LowRankConfig(LinearConfig):
    """Rank-r factors; ``rank`` directly, or ``compression`` f picks r ~ in*out / ((in+out) f) (default 8)."""

    rank: int | None = None
    compression: float | None = None


@register_config("monarch")
@dataclasses.dataclass(frozen=True)
class MonarchConfig(LinearConfig):
    """Two block-diagonal factors with ``nblocks`` blocks each."""

    nblocks: int = 4


@register_config("ss1")
@dataclasses.dataclass(frozen=True)
class SS1Config(LinearConfig):
    """SS1 with compression R. ``convert`` gives layer i the hash seed ``seed + seed_offset + i``;
    ``hash_coeffs`` (four odd integers) fixes the hash exactly instead (a saved layer's)."""

    compression: int = 4
    seed: int = 1024
    block_k: int = 32
    block_n: int = 64
    vec: int = 8
    pad: bool = False
    hash_coeffs: tuple[int, int, int, int] | None = None
