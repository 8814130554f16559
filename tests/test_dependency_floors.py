"""The lower bounds in pyproject.toml are honest: no declared floor is older than a feature the code uses.

What CI can check, and does here: (1) each feature in FEATURES is really used under src/ (so the table
cannot go stale silently), (2) the floor declared for its package is at least the release that
introduced it, (3) the versions CI runs (this environment) and the pinned lock file satisfy every
declared range. What CI cannot check here: running the suite at the floor versions themselves (no
torch 2.11 / transformers 4.56 environment is built); the floors are "needs at least", from the
features below, plus "tested with" for torch (2.11 on the GPU machine).
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]

# (package, the release that introduced it, a regex over src/**/*.py, what it is)
FEATURES = [
    ("torch", "2.6", r"\btriton_op\b", "torch.library.triton_op (SS1 sketch as a compile-visible op)"),
    ("torch", "2.6", r"\bwrap_triton\b", "torch.library.wrap_triton"),
    ("torch", "2.4", r"\bcustom_op\(", "torch.library.custom_op (Monarch ops under torch.compile)"),
    ("torch", "2.4", r"\.register_fake\b", "custom_op(...).register_fake"),
    ("torch", "2.4", r"\bget_autocast_dtype\(", "torch.get_autocast_dtype(device_type)"),
    ("torch", "2.3", r"\btorch\.compiler\.is_compiling\(", "torch.compiler.is_compiling"),
    ("transformers", "4.53", r"\bmasking_utils\b", "transformers.masking_utils"),
    ("transformers", "4.48", r"\bAttentionInterface\b", "transformers.AttentionInterface"),
    ("transformers", "4.56", r"from_pretrained\((?:[^()]|\([^()]*\))*\bdtype=", "from_pretrained(dtype=...) (torch_dtype before)"),
]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirements() -> dict[str, Requirement]:
    reqs = [Requirement(r) for r in _pyproject()["project"]["dependencies"]]
    return {r.name.lower(): r for r in reqs}


def _floor(req: Requirement) -> Version | None:
    floors = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    return max(floors) if floors else None


def _source() -> str:
    return "\n".join(p.read_text() for p in sorted((ROOT / "src").rglob("*.py")))


@pytest.mark.parametrize("package,since,pattern,what", FEATURES, ids=[f[3].split(" ")[0] for f in FEATURES])
def test_declared_floor_covers_the_feature(package, since, pattern, what):
    assert re.search(pattern, _source()), f"{what} is not used any more: drop its row from FEATURES"
    req = _requirements()[package]
    floor = _floor(req)
    assert floor is not None, f"{package} has no lower bound, but the code uses {what} ({since}+)"
    assert floor >= Version(since), f"{req}: the code uses {what}, new in {package} {since}"


def test_floor_check_rejects_a_floor_below_a_feature():
    req = Requirement("transformers>=4.45")
    assert _floor(req) < Version("4.53")  # the state issue 16 found: masking_utils needs 4.53
    assert _floor(Requirement("torch>=2.11,<2.15")) == Version("2.11")


def test_every_dependency_has_a_floor():
    missing = [str(r) for r in _requirements().values() if _floor(r) is None]
    assert not missing, f"dependencies without a lower bound: {missing}"


def test_the_environment_ci_runs_satisfies_the_declared_ranges():
    env = {"sys_platform": sys.platform, "platform_machine": __import__("platform").machine()}
    checked = 0
    for name, req in _requirements().items():
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        installed = Version(metadata.version(name))
        assert req.specifier.contains(installed, prereleases=True), f"installed {name} {installed} outside {req}"
        checked += 1
    assert checked >= 10


def test_the_lock_file_satisfies_the_declared_ranges():
    pins = {}
    for line in (ROOT / "requirements-lock.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pin = Requirement(line)
            pins[pin.name.lower().replace("_", "-")] = Version(next(iter(pin.specifier)).version)
    for name, req in _requirements().items():
        key = name.replace("_", "-")
        if key in pins:
            assert req.specifier.contains(pins[key], prereleases=True), f"lock pins {name}=={pins[key]} outside {req}"
    assert {"torch", "transformers", "lightning"} <= set(pins)
