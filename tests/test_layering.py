"""The package's layers import only downward: the table of docs/architecture.md, checked on every import.

Every ``import flyweight.X`` / ``from flyweight.X import`` in src/flyweight (module level and inside
functions alike) is an edge between two top-level parts. An edge missing from ALLOWED is a new
back-edge; the ones in KNOWN_BACK_EDGES are written down with their reason and must still exist, so
that the day one is removed the table shrinks too.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "flyweight"

# part -> the parts it may import (its own modules aside)
ALLOWED = {
    "utils": set(),
    "kernels": {"utils"},
    "linear": {"kernels", "utils"},
    "attention": {"kernels", "utils"},
    "convert": {"linear", "utils"},
    "integrations": {"convert", "linear", "utils"},
    "models": {"attention", "convert", "linear", "utils"},
    "data": {"utils"},
    "train": {"attention", "convert", "data", "kernels", "linear", "models", "utils"},
    "bench": {"attention", "convert", "data", "kernels", "linear", "models", "train", "utils"},
    "configs": {"data", "train", "utils"},
    "decode": {"models", "utils"},
    "runner": {"utils"},
    "hydra_main": {"configs", "runner", "utils"},
    "cli": {"data", "hydra_main", "runner", "utils"},
    "__init__": {"convert", "integrations", "linear", "utils"},
}
KNOWN_BACK_EDGES: dict[tuple[str, str], str] = {}


def imported_parts(tree: ast.AST) -> set[str]:
    parts = set()
    for node in ast.walk(tree):
        names = [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            if name.startswith("flyweight."):
                parts.add(name.split(".")[1])
    return parts


def edges() -> dict[tuple[str, str], list[str]]:
    found: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        part = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        for dst in imported_parts(ast.parse(path.read_text(), str(path))) - {part}:
            found[(part, dst)].append(str(path.relative_to(PACKAGE)))
    return found


def test_every_part_is_in_the_table():
    parts = {p.name.removesuffix(".py") for p in PACKAGE.iterdir()
             if (p.is_dir() and (p / "__init__.py").exists()) or p.suffix == ".py"}
    assert parts == set(ALLOWED), f"parts not in ALLOWED: {parts - set(ALLOWED)}; gone: {set(ALLOWED) - parts}"


def test_imports_only_go_down():
    bad = {edge: files for edge, files in edges().items()
           if edge[1] not in ALLOWED[edge[0]] and edge not in KNOWN_BACK_EDGES}
    assert not bad, f"imports against the layering (docs/architecture.md): {bad}"


def test_known_back_edges_still_exist():
    found = edges()
    gone = [edge for edge in KNOWN_BACK_EDGES if edge not in found]
    assert not gone, f"back-edges removed: drop them from KNOWN_BACK_EDGES and docs/architecture.md: {gone}"


def test_the_detector_sees_function_level_imports():
    tree = ast.parse("def f():\n    from flyweight.bench.timing import time_us\n    import flyweight.train.lm\n")
    assert imported_parts(tree) == {"bench", "train"}


def test_the_doc_states_the_same_table():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for part, allowed in ALLOWED.items():
        if part in ("__init__",):
            continue
        row = re.search(rf"^\| `{re.escape(part)}` \|[^\n]*\| ([^|\n]*) \|$", doc, re.M)
        assert row, f"docs/architecture.md has no row for `{part}`"
        listed = set(re.findall(r"`(\w+)`", row.group(1)))
        assert listed == allowed, f"{part}: the doc lists {sorted(listed)}, the test allows {sorted(allowed)}"


def test_the_doc_names_every_test_file():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    tests_part = doc[doc.index("## Where the tests are"):]
    missing = [p.name for p in sorted((ROOT / "tests").glob("test_*.py")) if f"`{p.name}`" not in tests_part]
    assert not missing, f"docs/architecture.md's test map does not name: {missing}"
