"""Static checks of the @triton.jit sources that the interpreter cannot catch.

Under ``TRITON_INTERPRET=1`` a kernel may read any Python global; the GPU compiler (Triton 3.6) rejects
a global that is not a ``tl.constexpr`` ("Cannot access global variable ..."), so a kernel can pass every
CPU test and fail to compile on the GPU. This test imports the kernels without the interpreter (in a
subprocess: conftest turns it on for this process), walks every jitted function's source and fails on
a global read that the compiler would refuse.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

_CHECK = r"""
import ast, builtins, importlib, inspect, json, pkgutil, types
import triton, triton.language as tl
import flyweight.kernels as K

def jitted(mod):
    for name, obj in vars(mod).items():
        fn = getattr(obj, "fn", None)  # autotuned / heuristics wrappers hold the JITFunction in .fn
        while fn is not None and not isinstance(obj, triton.runtime.JITFunction):
            obj, fn = fn, getattr(fn, "fn", None)
        if isinstance(obj, triton.runtime.JITFunction) and obj.fn.__module__ == mod.__name__:
            yield name, obj

def allowed(value):
    return (isinstance(value, (types.ModuleType, tl.constexpr, triton.runtime.JITFunction, tl.dtype))
            or callable(value))

bad, checked = [], 0
for info in pkgutil.walk_packages(K.__path__, K.__name__ + "."):
    mod = importlib.import_module(info.name)
    for name, jit in jitted(mod):
        checked += 1
        tree = ast.parse(inspect.cleandoc("\n" + jit.src) if jit.src.startswith(" ") else jit.src)
        local = {a.arg for a in ast.walk(tree) if isinstance(a, ast.arg)}
        local |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in local:
                if node.id in jit.fn.__globals__ and not allowed(jit.fn.__globals__[node.id]) \
                        and not hasattr(builtins, node.id):
                    bad.append(f"{info.name}.{name} reads global {node.id} = {jit.fn.__globals__[node.id]!r}")
print(json.dumps({"checked": checked, "bad": sorted(set(bad))}))
"""


def test_jit_functions_read_only_constexpr_globals():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", _CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["checked"] >= 40, result  # every kernel module was walked (about 70 jitted functions)
    assert result["bad"] == [], "wrap these globals in tl.constexpr(...): " + "; ".join(result["bad"])
