"""flyweight without Triton installed (macOS, Windows, a bare CPU install): the PyTorch paths work.

A subprocess installs an import hook that makes ``import triton`` fail as it does where the package is
missing, then imports flyweight and every non-kernel module, converts a model to every linear kind,
and runs a forward and backward pass through every layer kind, every attention kind and a GPT-2
built by flyweight, all on CPU. "auto" must not pick a Triton path; asking for one names the cause.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

BLOCK_TRITON = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoTriton(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "triton" or name.startswith("triton."):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoTriton())
    for mod in [m for m in sys.modules if m == "triton" or m.startswith("triton.")]:
        del sys.modules[mod]
    """
)

CHECKS = textwrap.dedent(
    """
    import importlib, pkgutil
    import pytest, torch

    try:
        import triton  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the import hook did not block triton")

    import flyweight
    from flyweight.utils.optional import HAS_TRITON
    assert not HAS_TRITON

    # every module outside flyweight.kernels imports (kernel modules are loaded only to launch kernels)
    for info in pkgutil.walk_packages(flyweight.__path__, "flyweight."):
        if not info.name.startswith("flyweight.kernels."):
            importlib.import_module(info.name)

    from transformers import GPT2Config, GPT2LMHeadModel
    from flyweight.attention import ATTENTION_KINDS, make_attention
    from flyweight.linear import LINEAR_KINDS, make_linear
    from flyweight.linear.config import make_config
    from flyweight.models.gpt2 import build_gpt2

    SETTINGS = {"dense": {}, "lowrank": {"compression": 4}, "monarch": {"nblocks": 2}, "ss1": {"compression": 2}}
    assert set(LINEAR_KINDS) == set(SETTINGS), sorted(LINEAR_KINDS)
    torch.manual_seed(0)
    for kind, kw in SETTINGS.items():
        layer = make_linear(kind, 64, 128, **kw)
        x = torch.randn(3, 5, 64, requires_grad=True)
        y = layer(x)
        assert y.shape == (3, 5, 128)
        y.square().sum().backward()
        assert x.grad is not None and all(p.grad is not None for p in layer.parameters()), kind
        assert torch.allclose(y.detach(), x.detach() @ layer.to_dense().T + layer.bias, atol=1e-4), kind

        model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=64, n_head=2, vocab_size=100, n_positions=16))
        report = flyweight.convert(model, make_config(kind, **kw), target_modules="all-linear", init="project")
        assert len(report.converted) == 4, (kind, report)
        ids = torch.randint(0, 100, (2, 8))
        model(ids, labels=ids).loss.backward()

    for name, cls in sorted(ATTENTION_KINDS.items()):
        for causal in (False, True) if "causal" in cls.ACCEPTS else (False,):
            given = dict(window_size=4, nb_features=8, seed=0, causal=causal)
            attn = make_attention(name, **{k: v for k, v in given.items() if k in cls.ACCEPTS})
            q, k, v = (torch.randn(2, 2, 12, 16, requires_grad=True) for _ in range(3))
            out = attn(q, k, v)
            assert out.shape == (2, 2, 12, 16)
            out.sum().backward()
            assert q.grad is not None and k.grad is not None and v.grad is not None, name

    model = build_gpt2("tiny", kind="ss1", vocab_size=100)  # attention "auto": SDPA without Triton
    ids = torch.randint(0, 100, (2, 8))
    model(ids, labels=ids).loss.backward()

    with pytest.raises(RuntimeError, match="needs Triton"):
        make_attention("local", window_size=4, impl="triton")(q, k, v)
    with pytest.raises(RuntimeError, match="needs Triton"):
        build_gpt2("tiny", kind="dense", vocab_size=100, attention="triton")
    assert "triton" not in sys.modules
    print("ok")
    """
)


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TRITON_INTERPRET", None)
    env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)


def test_the_hook_blocks_triton():
    proc = _run(BLOCK_TRITON + "import triton\n")
    assert proc.returncode != 0 and "No module named 'triton'" in proc.stderr


def test_cpu_paths_work_without_triton():
    proc = _run(BLOCK_TRITON + CHECKS)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-4000:]


def test_auto_choices_fall_back_and_explicit_triton_names_the_cause(monkeypatch):
    """In-process, with HAS_TRITON forced off where the choices are made (runs whatever kernels/ does)."""
    import torch

    import flyweight.attention.base as attention_base
    import flyweight.attention.hf_backends as hf_backends
    import flyweight.models.gpt2 as gpt2
    import flyweight.train.fastpath as fastpath
    import flyweight.utils.optional as optional

    assert fastpath.resolve_attention("auto", "gpu") == ("triton" if optional.HAS_TRITON else "sdpa")
    for mod in (attention_base, fastpath, gpt2, optional):
        monkeypatch.setattr(mod, "HAS_TRITON", False)
    assert fastpath.resolve_attention("auto", "gpu") == "sdpa"
    q = torch.randn(1, 1, 4, 8)
    assert not attention_base.use_kernel("auto", q, q, q)
    with pytest.raises(RuntimeError, match="attention impl='triton' needs Triton"):
        attention_base.use_kernel("triton", q, q, q)
    model = gpt2.build_gpt2("tiny", kind="dense", vocab_size=100, device="meta")
    with pytest.raises(RuntimeError, match="attention='triton' needs Triton"):
        hf_backends.use_attention(model, "triton")
