"""Test-session setup shared by every test module.

Without CUDA, the Triton kernels run in Triton's interpreter on CPU tensors. The interpreter is
chosen when ``triton.jit`` decorates a kernel, i.e. when a kernel module (e.g.
``flyweight.kernels.ss1.kernels``) is first imported, so the variable must be set here, before any
test module imports it.
"""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# the language-modelling tests' tiny tokenizer and WikiText-layout corpus, built once per test module
@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    from _lm_helpers import make_tokenizer

    return make_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def wt_dir(tmp_path_factory):
    from _lm_helpers import write_wikitext

    return write_wikitext(tmp_path_factory.mktemp("wikitext"))


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.gpu`` tests run the compiled kernels on CUDA tensors: skipped without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (marked gpu)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
