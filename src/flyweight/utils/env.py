"""Every ``FLYWEIGHT_*`` environment variable, declared in one table and read through one checked path.

A switch read with ``os.environ.get(name, default) == "inference"`` treats a misspelt value
(``FLYWEIGHT_SS1_FUSED=inferance``) as the default and says nothing; a misspelt name
(``FLYWEIGHT_SS1_FUSE=inference``) is never read at all. Here each variable is declared once in
``SWITCHES`` with its kind, its valid values and what it does, and read with

    env_choice("FLYWEIGHT_SS1_FUSED")    # one of the declared choices, else ValueError naming them
    env_flag("FLYWEIGHT_MONARCH_AUTOTUNE")  # 1/0, true/false, yes/no, on/off
    env_int("FLYWEIGHT_CE_BLOCK")         # a positive integer
    env_path("FLYWEIGHT_CACHE")           # a path, ``~`` expanded; None when unset without a default

An unset or empty variable takes the declared default. ``unknown_switches()`` lists the ``FLYWEIGHT_*``
names set in the environment that the table does not declare, each with the nearest declared name;
``import flyweight`` warns about them. ``docs/environment.md`` documents the same table (a test keeps
the two equal).
"""

from __future__ import annotations

import difflib
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PREFIX = "FLYWEIGHT_"
FLAG_VALUES = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False,
               "off": False}
KINDS = ("choice", "flag", "int", "path", "setup")


@dataclass(frozen=True)
class Switch:
    """One environment variable: ``kind`` is how its value is parsed ("setup": read by
    ``scripts/setup.sh`` only, never by Python), ``default`` the value when unset (None: no default)."""

    name: str
    kind: str
    default: str | None
    what: str
    choices: tuple[str, ...] = ()


SWITCHES: dict[str, Switch] = {s.name: s for s in (
    # kernels: which kernel or route runs
    Switch("FLYWEIGHT_SS1_FUSED", "choice", "never",
           "SS1 fused sketch+GEMM kernel: never, or for CUDA forwards without grad (inference)",
           ("never", "inference")),
    Switch("FLYWEIGHT_SS1_COMPILED", "choice", "inductor",
           "how torch.compile runs the SS1 sketch: Inductor's own code, or the Triton kernel as a triton_op",
           ("inductor", "triton_op")),
    Switch("FLYWEIGHT_MONARCH_FUSED", "choice", "never",
           "Monarch fused forward kernel: never, or for forwards without grad where b divides r (inference)",
           ("never", "inference")),
    Switch("FLYWEIGHT_MONARCH_SECOND", "choice", "joined",
           "Monarch forward's second product: contiguous stores (joined) or one block per program (strided)",
           ("joined", "strided")),
    Switch("FLYWEIGHT_MONARCH_BWD", "choice", "joined",
           "Monarch backward's dY reads for b = 2, 4: joined or strided", ("joined", "strided")),
    Switch("FLYWEIGHT_FLASH_OP", "choice", "custom_op",
           "how the flash-attention kernel is registered for torch.compile", ("custom_op", "triton_op")),
    # kernels: tile choice
    Switch("FLYWEIGHT_MONARCH_AUTOTUNE", "flag", "1", "autotune the Monarch kernels' tiles on CUDA (0: default tiles)"),
    Switch("FLYWEIGHT_MONARCH_TUNE_CACHE", "flag", "1", "keep the Monarch autotuner's picks in an on-disk cache"),
    Switch("FLYWEIGHT_FLASH_AUTOTUNE", "flag", "1", "autotune the flash-attention kernels (0: first config)"),
    Switch("FLYWEIGHT_APPROX_AUTOTUNE", "flag", "1",
           "autotune the local / Performer / Scatterbrain kernels (0: first tile)"),
    Switch("FLYWEIGHT_CE_BLOCK", "int", "4096", "columns per block of the fused LM-loss kernel on CUDA"),
    Switch("FLYWEIGHT_CE_WARPS", "int", "8", "warps per program of the fused LM-loss kernel on CUDA"),
    # files and downloads
    Switch("FLYWEIGHT_CACHE", "path", "~/.cache/flyweight", "where downloads, corpora and tokenizers are kept"),
    Switch("FLYWEIGHT_OFFLINE", "flag", "0", "never download: a file missing from the cache is an error"),
    Switch("FLYWEIGHT_SPEED_TABLE", "path", None,
           "speed table CSV that automatic kind selection reads (default: this GPU's, else the shipped one)"),
    # errors
    Switch("FLYWEIGHT_TRACEBACK", "flag", "0", "show the whole traceback of a user error instead of one line"),
    # scripts/setup.sh
    Switch("FLYWEIGHT_TORCH", "setup", "torch==2.13.0", "the pip requirement (and options) setup.sh installs torch with"),
    Switch("FLYWEIGHT_NO_LOCK", "setup", "0", "1: setup.sh resolves the newest versions in range, not the lock file"),
)}


def _declared(name: str, kind: str) -> Switch:
    switch = SWITCHES.get(name)
    if switch is None:
        raise KeyError(f"{name} is not declared in flyweight.utils.env.SWITCHES; add it there (and to "
                       "docs/environment.md)")
    if switch.kind != kind:
        raise TypeError(f"{name} is a {switch.kind} switch, read it with env_{switch.kind}")
    return switch


def _raw(switch: Switch, environ: Mapping[str, str] | None) -> str | None:
    value = (os.environ if environ is None else environ).get(switch.name, "").strip()
    return value if value else switch.default


def _invalid(switch: Switch, value: str, expected: str, fix: str) -> ValueError:
    return ValueError(f"{switch.name}={value!r} is not {expected} ({switch.what}). Fix: {fix}, or unset it "
                      f"for the default {switch.default!r}")


def env_choice(name: str, environ: Mapping[str, str] | None = None) -> str:
    """The value of choice switch ``name``; a value outside its choices raises ValueError naming them."""
    switch = _declared(name, "choice")
    value = _raw(switch, environ)
    if value not in switch.choices:
        raise _invalid(switch, value, f"one of {', '.join(switch.choices)}", "set one of those")
    return value


def env_flag(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """The value of flag switch ``name`` (1/0, true/false, yes/no, on/off, any case)."""
    switch = _declared(name, "flag")
    value = _raw(switch, environ)
    if value.lower() not in FLAG_VALUES:
        raise _invalid(switch, value, "a flag", "set 1 or 0")
    return FLAG_VALUES[value.lower()]


def env_int(name: str, environ: Mapping[str, str] | None = None) -> int:
    """The value of integer switch ``name``: a positive integer."""
    switch = _declared(name, "int")
    value = _raw(switch, environ)
    if not (value.isdigit() and int(value) >= 1):
        raise _invalid(switch, value, "a positive integer", "set one")
    return int(value)


def env_path(name: str, environ: Mapping[str, str] | None = None) -> Path | None:
    """The value of path switch ``name`` with ``~`` expanded; None when unset and it has no default."""
    value = _raw(_declared(name, "path"), environ)
    return None if value is None else Path(value).expanduser()


def unknown_switches(environ: Mapping[str, str] | None = None) -> list[str]:
    """One line per ``FLYWEIGHT_*`` variable set in ``environ`` that ``SWITCHES`` does not declare."""
    environ = os.environ if environ is None else environ
    lines = []
    for name in sorted(n for n in environ if n.startswith(PREFIX) and n not in SWITCHES):
        near = difflib.get_close_matches(name, SWITCHES, n=1)
        lines.append(f"{name} is not a flyweight variable and is ignored"
                     + (f"; did you mean {near[0]}?" if near else "; see docs/environment.md"))
    return lines


def warn_unknown_switches(environ: Mapping[str, str] | None = None) -> None:
    for line in unknown_switches(environ):
        warnings.warn(line, UserWarning, stacklevel=2)
