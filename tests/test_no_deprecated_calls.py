"""The repository's own code calls ``flyweight.convert`` the current way: a typed config, not a kind name.

The kind-name form (``convert(model, "ss1", targets=..., compression=4)``) still works for users, with a
DeprecationWarning; the benchmarks, scripts and the package must not depend on it.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [*ROOT.glob("benchmarks/**/*.py"), *ROOT.glob("scripts/**/*.py"), *ROOT.glob("src/**/*.py"), ROOT / "run.py"]


def deprecated_convert_calls(tree: ast.AST) -> list[int]:
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
        if name != "convert":
            continue
        kind_name = len(node.args) >= 2 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str)
        legacy_kw = any(k.arg in ("targets", "skip") for k in node.keywords)
        if kind_name or legacy_kw:
            lines.append(node.lineno)
    return lines


def test_the_detector_sees_the_deprecated_form():
    assert deprecated_convert_calls(ast.parse('flyweight.convert(m, "ss1", compression=4)')) == [1]
    assert deprecated_convert_calls(ast.parse("convert(m, cfg, targets=('mlp',))")) == [1]
    assert deprecated_convert_calls(ast.parse("flyweight.convert(m, SS1Config(), target_modules=['mlp'])")) == []


def test_no_deprecated_convert_call_in_the_repository():
    found = {}
    for path in SOURCES:
        if path.name == "surgery.py" and path.parent.name == "convert":
            continue  # the implementation of the deprecated form itself
        hits = deprecated_convert_calls(ast.parse(path.read_text(), str(path)))
        if hits:
            found[str(path.relative_to(ROOT))] = hits
    assert not found, f"deprecated convert(model, 'kind', targets=...) calls: {found}"
