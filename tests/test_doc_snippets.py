"""Every ```python block of README.md and docs/*.md runs verbatim, each in a fresh interpreter.

A block that cannot run here (it needs CUDA, or runs for minutes) is marked by the line right before
it: ``<!-- not-run: why -->``; the reason must be given. Blocks run in a temporary folder, on CPU,
with Hugging Face's offline switches set, so a snippet that needs the network fails here too.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"<!--\s*not-run:(.*?)-->")


def python_blocks(path: Path) -> list[tuple[int, str, str | None]]:
    """(line of the opening fence, code, not-run reason or None) for every ```python block."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            before = next((ln for ln in reversed(lines[:start]) if ln.strip()), "")
            mark = NOT_RUN.search(before)
            blocks.append((start + 1, "\n".join(lines[start + 1:j]) + "\n", None if mark is None else mark.group(1)))
            i = j
        i += 1
    return blocks


BLOCKS = [(p, line, code, reason) for p in DOCS for line, code, reason in python_blocks(p)]


def test_the_docs_have_python_blocks_to_run():
    runnable = [b for b in BLOCKS if b[3] is None]
    assert {p.name for p, *_ in runnable} >= {"README.md", "surgery.md", "attention.md"}


def test_every_not_run_marker_gives_a_reason_and_precedes_a_block():
    for path in DOCS:
        lines = path.read_text().splitlines()
        for n, ln in enumerate(lines):
            mark = NOT_RUN.search(ln)
            if mark is None:
                continue
            assert len(mark.group(1).strip()) >= 10, f"{path.name}:{n + 1}: not-run without a reason"
            following = next((x for x in lines[n + 1:] if x.strip()), "")
            assert following.strip() == "```python", f"{path.name}:{n + 1}: not-run marker not before a block"


@pytest.mark.parametrize(
    "path,line,code,reason", BLOCKS, ids=[f"{p.relative_to(ROOT)}:{line}" for p, line, _, _ in BLOCKS]
)
def test_snippet_runs_verbatim(path, line, code, reason, tmp_path):
    if reason is not None:
        pytest.skip(f"not-run: {reason.strip()}")
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", ""),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        CUDA_VISIBLE_DEVICES="",
    )
    script = tmp_path / "snippet.py"
    # blank lines up to the fence: a traceback's line numbers are the markdown file's
    script.write_text("\n" * line + code)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, f"{path.name}:{line} failed:\n{proc.stderr[-3000:]}"
