"""flyweight.utils.env: every FLYWEIGHT_* variable declared once, read through one checked path."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from flyweight.utils import env
from flyweight.utils.env import SWITCHES, env_choice, env_flag, env_int, env_path, unknown_switches

REPO = Path(__file__).resolve().parents[1]
NAME = re.compile(r"\bFLYWEIGHT_[A-Z0-9_]*[A-Z0-9]\b")
MISSPELT_EXAMPLE = "FLYWEIGHT_SS1_FUSE"  # the misspelling env.py and docs/environment.md show


def test_choice_takes_declared_values_and_default():
    assert env_choice("FLYWEIGHT_SS1_FUSED", {}) == "never"
    assert env_choice("FLYWEIGHT_SS1_FUSED", {"FLYWEIGHT_SS1_FUSED": ""}) == "never"
    assert env_choice("FLYWEIGHT_SS1_FUSED", {"FLYWEIGHT_SS1_FUSED": " inference "}) == "inference"


def test_misspelt_choice_names_variable_values_and_default():
    with pytest.raises(ValueError) as err:
        env_choice("FLYWEIGHT_SS1_FUSED", {"FLYWEIGHT_SS1_FUSED": "inferance"})
    msg = str(err.value)
    assert "FLYWEIGHT_SS1_FUSED='inferance'" in msg
    assert "never, inference" in msg and "default 'never'" in msg


@pytest.mark.parametrize("value, expected", [("1", True), ("TRUE", True), ("yes", True), ("on", True),
                                             ("0", False), ("False", False), ("no", False), ("off", False)])
def test_flag_values(value, expected):
    assert env_flag("FLYWEIGHT_OFFLINE", {"FLYWEIGHT_OFFLINE": value}) is expected


def test_flag_defaults_and_rejects_other_words():
    assert env_flag("FLYWEIGHT_MONARCH_AUTOTUNE", {}) is True
    assert env_flag("FLYWEIGHT_OFFLINE", {}) is False
    with pytest.raises(ValueError, match=r"FLYWEIGHT_OFFLINE='offline' is not a flag.*set 1 or 0"):
        env_flag("FLYWEIGHT_OFFLINE", {"FLYWEIGHT_OFFLINE": "offline"})


@pytest.mark.parametrize("value", ["0", "-8", "4k", "2.5"])
def test_int_rejects_what_is_not_a_positive_integer(value):
    with pytest.raises(ValueError, match="FLYWEIGHT_CE_BLOCK=.*not a positive integer"):
        env_int("FLYWEIGHT_CE_BLOCK", {"FLYWEIGHT_CE_BLOCK": value})
    assert env_int("FLYWEIGHT_CE_BLOCK", {"FLYWEIGHT_CE_BLOCK": "1024"}) == 1024
    assert env_int("FLYWEIGHT_CE_BLOCK", {}) == 4096


def test_path_expands_home_and_may_have_no_default():
    assert env_path("FLYWEIGHT_CACHE", {}) == Path.home() / ".cache" / "flyweight"
    assert env_path("FLYWEIGHT_CACHE", {"FLYWEIGHT_CACHE": "~/x"}) == Path.home() / "x"
    assert env_path("FLYWEIGHT_SPEED_TABLE", {}) is None


def test_reading_an_undeclared_name_or_the_wrong_kind_is_an_error():
    with pytest.raises(KeyError, match="not declared"):
        env_flag("FLYWEIGHT_NOT_A_SWITCH", {})
    with pytest.raises(TypeError, match="choice switch, read it with env_choice"):
        env_flag("FLYWEIGHT_SS1_FUSED", {})


def test_unknown_names_are_reported_with_the_nearest_declared_one():
    lines = unknown_switches({"FLYWEIGHT_SS1_FUSE": "inference", "FLYWEIGHT_CACHE": "/tmp", "PATH": "/bin",
                              "FLYWEIGHT_QQQQQQQQQQQQQQQQQQ": "1"})
    assert len(lines) == 2
    assert "FLYWEIGHT_QQQQQQQQQQQQQQQQQQ" in lines[0] and "docs/environment.md" in lines[0]
    assert "FLYWEIGHT_SS1_FUSE is not a flyweight variable" in lines[1]
    assert "did you mean FLYWEIGHT_SS1_FUSED?" in lines[1]


def test_every_declared_default_is_valid():
    for switch in SWITCHES.values():
        assert switch.kind in env.KINDS, switch
        if switch.kind == "choice":
            assert switch.default in switch.choices, switch
        elif switch.kind == "flag":
            assert switch.default.lower() in env.FLAG_VALUES, switch
        elif switch.kind == "int":
            assert int(switch.default) >= 1, switch
        else:
            assert not switch.choices, switch


def _sources() -> list[Path]:
    return ([*(REPO / "src").rglob("*.py"), *(REPO / "benchmarks").glob("*.py"), *(REPO / "scripts").rglob("*"),
             *(REPO / "docs").glob("*.md"), REPO / "README.md", REPO / "BENCHMARKS.md"])


def test_every_name_the_repo_mentions_is_declared():
    """A switch read or documented anywhere is in SWITCHES, so unknown_switches() never flags a real one."""
    mentioned = {}
    for path in _sources():
        if path.is_file():
            for name in NAME.findall(path.read_text(errors="ignore")):
                mentioned.setdefault(name, path.relative_to(REPO))
    undeclared = {n: str(p) for n, p in mentioned.items() if n not in SWITCHES and n != MISSPELT_EXAMPLE}
    assert not undeclared, f"declare these in flyweight/utils/env.py SWITCHES: {undeclared}"


def test_no_module_reads_a_flyweight_variable_around_the_helper():
    direct = re.compile(r"os\.environ(?:\.get\(|\[)\s*[\"']FLYWEIGHT_|os\.getenv\(\s*[\"']FLYWEIGHT_")
    offenders = []
    for path in (REPO / "src").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            # setting a variable (artifact.py points the cache at a folder for one call) is not reading it
            if direct.search(line) and not re.search(r"os\.environ\[[^]]+\]\s*=", line):
                offenders.append(f"{path.relative_to(REPO)}:{number}")
    assert not offenders, f"read these through flyweight.utils.env: {offenders}"


def test_docs_table_equals_the_declared_switches():
    table = (REPO / "docs" / "environment.md").read_text()
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].startswith("`FLYWEIGHT_"):
            rows[cells[0].strip("`")] = (cells[1], cells[2])
    assert set(rows) == set(SWITCHES)
    for name, (kind, default) in rows.items():
        switch = SWITCHES[name]
        expected_kind = " / ".join(f"`{c}`" for c in switch.choices) if switch.kind == "choice" else {
            "flag": "flag", "int": "integer", "path": "path", "setup": "setup"}[switch.kind]
        assert kind == expected_kind, name
        assert default == (f"`{switch.default}`" if switch.default is not None else "none"), name


def _import(code: str, **variables: str) -> subprocess.CompletedProcess:
    environ = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO / "src"), "HOME": str(Path.home()), **variables}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=environ, cwd=REPO)


def test_a_misspelt_kernel_switch_stops_the_import_that_reads_it():
    done = _import("import flyweight.kernels.ss1.tuning", FLYWEIGHT_SS1_FUSED="inferance")
    assert done.returncode != 0
    assert "FLYWEIGHT_SS1_FUSED='inferance' is not one of never, inference" in done.stderr


def test_a_valid_kernel_switch_reaches_the_module():
    done = _import("import flyweight.kernels.ss1.tuning as t; print(t.FUSED)", FLYWEIGHT_SS1_FUSED="inference")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "inference"


def test_import_flyweight_warns_about_a_misspelt_name():
    done = _import("import flyweight", FLYWEIGHT_SS1_FUSE="inference")
    assert done.returncode == 0, done.stderr
    assert "FLYWEIGHT_SS1_FUSE is not a flyweight variable" in done.stderr
    assert "did you mean FLYWEIGHT_SS1_FUSED?" in done.stderr
    quiet = _import("import flyweight", FLYWEIGHT_SS1_FUSED="never")
    assert quiet.returncode == 0 and "not a flyweight variable" not in quiet.stderr
