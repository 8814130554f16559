"""The "lm" task's config checked as a whole before any work: one message naming the key, the value, the
rule and a valid example.

Hydra's typed groups (configs/schema.py) already refuse unknown keys and wrong types at composition;
what they cannot say is a range or a relation between keys, and a plain-dict config (``train_lm(dict)``)
gets no type checks at all. Without this, ``data.micro_batch_size=0`` ended in a ``ZeroDivisionError``,
``trainer.max_steps=-1`` in ``__len__() should return >= 0``, ``data.max_length`` > ``model.n_positions``
in an ``IndexError`` once training started, and ``model.settings.compression=3`` only failed after the data
was tokenized (issue 15). The model's own settings are checked by building it on the meta device
(``build_gpt2(..., device="meta")``: no memory, the layers' own messages).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    def __init__(self, key: str, value: Any, rule: str, example: str):
        super().__init__(f"{key}={value!r}: {rule}; for example {key}={example}")
        self.key, self.value = key, value


def _precisions() -> tuple[str, ...]:
    # Lightning's own list of precision names (a private Literal; fall back to the documented ones)
    try:
        from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT

        def flat(t):
            args = typing.get_args(t)
            return [x for a in args for x in flat(a)] if args else [t]

        names = tuple(str(x) for x in flat(_PRECISION_INPUT))
    except Exception:
        names = ("16-true", "16-mixed", "bf16-true", "bf16-mixed", "32-true", "64-true")
    return ("auto", *names)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_at_least(group: Mapping, prefix: str, key: str, low: int, example, optional: bool = False,
                  also: tuple = ()) -> None:
    v = group.get(key)
    if (optional and v is None) or v in also:
        return
    if not _is_int(v) or v < low:
        extra = " (or null)" if optional else ""
        extra += "".join(f" or {a}" for a in also if a is not None)
        raise ConfigError(f"{prefix}.{key}", v, f"must be an integer >= {low}{extra}", str(example))


def _number_in(group: Mapping, prefix: str, key: str, low: float, high: float | None, example,
               optional: bool = False, low_open: bool = False) -> None:
    v = group.get(key)
    if optional and v is None:
        return
    ok = _is_number(v) and (v > low if low_open else v >= low) and (high is None or v <= high)
    if not ok:
        rng = f"{'>' if low_open else '>='} {low}" + (f" and <= {high}" if high is not None else "")
        raise ConfigError(f"{prefix}.{key}", v, f"must be a number {rng}" + (" (or null)" if optional else ""),
                          str(example))


def _choice(group: Mapping, prefix: str, key: str, choices, example, as_text: bool = False) -> None:
    v = group.get(key)
    if (str(v) if as_text else v) not in choices:
        raise ConfigError(f"{prefix}.{key}", v, f"must be one of {', '.join(map(str, choices))}", str(example))


def check_data(d: Mapping) -> None:
    _int_at_least(d, "data", "max_length", 2, 1024)
    _int_at_least(d, "data", "global_batch_size", 1, 512)
    _int_at_least(d, "data", "micro_batch_size", 1, 8, also=("auto", None))
    _int_at_least(d, "data", "eval_batch_size", 1, 16, optional=True)
    _int_at_least(d, "data", "num_workers", 0, 2)
    for key in ("val_fraction", "test_fraction"):
        _number_in(d, "data", key, 0.0, 1.0, 0.05, low_open=False)
    if d["val_fraction"] + d["test_fraction"] >= 1:
        raise ConfigError("data.val_fraction", d["val_fraction"], f"plus data.test_fraction={d['test_fraction']} "
                          "must be < 1 (the rest is the train split)", "0.05")
    mb = d.get("micro_batch_size")
    if _is_int(mb) and mb > d["global_batch_size"]:
        raise ConfigError("data.micro_batch_size", mb, f"must be <= data.global_batch_size={d['global_batch_size']} "
                          "(the global batch is split into micro-batches)", str(d["global_batch_size"]))


def check_trainer(t: Mapping) -> None:
    _int_at_least(t, "trainer", "max_steps", 1, 1000, optional=True)
    _number_in(t, "trainer", "max_epochs", 0.0, None, 1, optional=True, low_open=True)
    if t.get("max_steps") is None and t.get("max_epochs") is None:
        raise ConfigError("trainer.max_steps", None, "set trainer.max_steps or trainer.max_epochs", "1000")
    _int_at_least(t, "trainer", "stop_at_step", 1, 100, optional=True)
    _int_at_least(t, "trainer", "val_every_n_steps", 0, 500, optional=True)
    _int_at_least(t, "trainer", "ckpt_every_n_steps", 0, 1000, optional=True)
    _int_at_least(t, "trainer", "keep_checkpoints", -1, 2)
    _int_at_least(t, "trainer", "log_every_n_steps", 1, 10)
    _int_at_least(t, "trainer", "num_nodes", 1, 1)
    _int_at_least(t, "trainer", "max_micro_batch", 1, 128)
    _number_in(t, "trainer", "grad_clip", 0.0, None, 1.0, optional=True)
    _number_in(t, "trainer", "max_time", 0.0, None, 3600, optional=True, low_open=True)
    _number_in(t, "trainer", "memory_fraction", 0.0, 1.0, 0.85, low_open=True)
    _choice(t, "trainer", "accelerator", ("auto", "cpu", "gpu", "cuda", None), "cpu")
    _choice(t, "trainer", "precision", _precisions(), "bf16-mixed", as_text=True)
    if t.get("devices") not in ("auto", None, -1) and (not _is_int(t.get("devices")) or t["devices"] < 1):
        raise ConfigError("trainer.devices", t.get("devices"), "must be auto or an integer >= 1", "1")
    for key in ("compile", "fused_loss"):
        _choice(t, "trainer", key, (True, False, "auto"), "auto")
    resume = t.get("resume")
    if resume not in (None, "", "auto", "never", "none", False) and not Path(str(resume)).expanduser().is_file():
        raise ConfigError("trainer.resume", resume, "must be auto (the newest readable checkpoint of the run "
                          "folder), never, or an existing .ckpt file", "auto")


def check_optim(o: Mapping) -> None:
    _number_in(o, "optim", "lr", 0.0, None, 6e-4, low_open=True)
    _number_in(o, "optim", "weight_decay", 0.0, None, 0.1)
    _int_at_least(o, "optim", "warmup_steps", 0, 100, optional=True)
    _number_in(o, "optim", "warmup_epochs", 0.0, None, 1.0, optional=True)
    _number_in(o, "optim", "min_lr_ratio", 0.0, 1.0, 0.1)


def check_model(m: Mapping, max_length: int | None) -> None:
    from flyweight.models.gpt2 import build_gpt2

    _int_at_least(m, "model", "n_positions", 1, 1024)
    _number_in(m, "model", "dropout", 0.0, 1.0, 0.1)
    if max_length is not None and max_length > m["n_positions"]:
        raise ConfigError("data.max_length", max_length, f"must be <= model.n_positions={m['n_positions']} (the "
                          "model has no position embedding beyond it)", str(m["n_positions"]))
    from flyweight.train.model_config import gpt2_kwargs

    kwargs = gpt2_kwargs(m)
    if "vocab_size" not in kwargs:
        if m.get("lm_head"):
            return  # the converted lm_head's shape needs the tokenizer's vocabulary: checked when built
        kwargs["vocab_size"] = 50257  # any vocabulary: the block layers' shapes do not depend on it
    kwargs.pop("attention", None)  # resolved per accelerator later; not a shape
    build_gpt2(**{**kwargs, "device": "meta"})  # raises the layer's / size's own message


def check_lm_config(cfg: Mapping, mode: str = "train") -> None:
    """Raise :class:`ConfigError` (a ``ValueError``) for the first bad value of an "lm" config; no work done."""
    from flyweight.train.model_config import ModelConfig
    from flyweight.data.datamodule import DataConfig
    from flyweight.train.lm import TrainerConfig
    from flyweight.train.optim import OptimConfig

    def merged(cls, group):
        return {**{f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls)}, **dict(cfg.get(group) or {})}

    data, trainer = merged(DataConfig, "data"), merged(TrainerConfig, "trainer")
    check_data(data)
    if mode == "train":
        check_trainer(trainer)
        check_optim(merged(OptimConfig, "optim"))
    elif cfg.get("ckpt") and Path(str(cfg["ckpt"])).expanduser().is_dir():
        return  # a save_structured folder carries its own model config, checked when loaded
    check_model(merged(ModelConfig, "model"), data["max_length"])
