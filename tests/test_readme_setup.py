"""README's setup and shell commands say what they do (issue 16): the venv is named, the torch build is not promised."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def commands_outside_the_venv(block: str) -> list[str]:
    """Lines of a bash block that run python/flyweight neither as .venv/bin/... nor after activating."""
    if "source .venv/bin/activate" in block:
        return []
    bad = []
    for line in block.splitlines():
        cmd = line.split("#", 1)[0].strip()
        words = re.findall(r"(?:^|&&\s*|\|\s*)(\S*(?:python|flyweight))\b", cmd)
        if any(not w.startswith(".venv/bin/") for w in words):
            bad.append(line)
    return bad


def test_every_readme_command_runs_in_the_venv():
    blocks = bash_blocks((ROOT / "README.md").read_text())
    assert blocks
    for block in blocks:
        assert not commands_outside_the_venv(block)


def test_the_detector_flags_a_bare_python():
    assert commands_outside_the_venv("python run.py x=1\n.venv/bin/python run.py\n") == ["python run.py x=1"]
    assert commands_outside_the_venv("bash scripts/setup.sh && flyweight layers\n")
    assert not commands_outside_the_venv("source .venv/bin/activate\npython run.py\n")


def test_readme_does_not_promise_the_cpu_build():
    text = (ROOT / "README.md").read_text()
    setup = re.search(r"`scripts/setup.sh` creates `.venv`.*?\n\n", text, re.S).group(0)
    assert "installs the CPU build" not in setup
    assert "FLYWEIGHT_TORCH" in setup and "requirements-lock.txt" in setup
    script = (ROOT / "scripts" / "setup.sh").read_text()
    assert "FLYWEIGHT_TORCH" in script and "CPU build only" in script
