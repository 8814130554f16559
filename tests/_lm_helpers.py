"""Shared fixtures of the language-modelling tests: synthetic text in the real formats, a tiny tokenizer.

Nothing here downloads: the tokenizer is a byte-level BPE trained in a temporary folder on the
synthetic text, and the corpora are files written in WikiText's raw layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

WORDS = ["the", "cat", "dog", "sat", "on", "a", "mat", "and", "ran", "to", "house", "red", "blue", "green", "big", "small", "old", "new", "river", "city", "king", "queen", "war", "peace", "music", "art", "science", "of", "in", "was", "is", "by", "for", "with", "from", "at", "film", "book"]


def synthetic_articles(n_articles: int, seed: int = 0, sentences: int = 6) -> list[tuple[str, list[str]]]:
    """(title, paragraphs) pairs of word salad with some repeated structure."""
    rng = np.random.default_rng(seed)
    out = []
    for a in range(n_articles):
        title = f"{WORDS[a % len(WORDS)].title()} {a}"
        paras = []
        for _ in range(2):
            sents = [" ".join(rng.choice(WORDS, size=rng.integers(4, 12))).capitalize() + " ."
                     for _ in range(sentences)]
            paras.append(" ".join(sents))
        out.append((title, paras))
    return out


def write_wikitext(folder: Path, seed: int = 0, sizes=(12, 3, 3)) -> Path:
    """A folder in the raw WikiText layout: ' = Title = ' headings, paragraphs, blank lines."""
    folder.mkdir(parents=True, exist_ok=True)
    for (name, n), s in zip(zip(("wiki.train.raw", "wiki.valid.raw", "wiki.test.raw"), sizes), range(3)):
        lines = [" \n"]
        for title, paras in synthetic_articles(n, seed=seed * 10 + s):
            lines += [f" = {title} = \n", " \n"]
            for p in paras:
                lines += [f" {p} \n", " \n"]
        (folder / name).write_text("".join(lines), encoding="utf-8")
    return folder


def make_tokenizer(folder: Path, vocab_size: int = 320, texts: list[str] | None = None) -> Path:
    """A small byte-level BPE (GPT-2's scheme) trained on synthetic text, saved as tokenizer.json."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder.mkdir(parents=True, exist_ok=True)
    if texts is None:
        texts = [" ".join(p) for _, p in synthetic_articles(40, seed=123)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=["<|endoftext|>"], show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.save(str(folder / "tokenizer.json"))
    return folder


def tiny_lm_cfg(data_path, tokenizer_dir, cache_dir, *, corpus="wikitext103", kind="dense", settings=None,
                **overrides) -> dict:
    """A plain-dict config of the "lm" task: 2-layer GPT-2, 128 wide, tiny windows, CPU."""
    cfg = {
        "seed": 1111,
        "device": "cpu",
        "model": {"size": "tiny", "kind": kind, "settings": settings or {}, "n_positions": 64, "dropout": 0.1},
        "data": {"corpus": corpus, "path": data_path if isinstance(data_path, dict) else str(data_path), "tokenizer": str(tokenizer_dir), "max_length": 32,
                 "global_batch_size": 8, "micro_batch_size": 4, "progress": False,
                 "cache_dir": str(cache_dir)},
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "trainer": {"accelerator": "cpu", "max_steps": 6, "val_every_n_steps": 0, "ckpt_every_n_steps": 0,
                    "eval_test": False, "progress_bar": False, "log_every_n_steps": 1, "save_model": False},
    }
    for group, values in overrides.items():
        cfg[group].update(values)
    return cfg


def lm_files(root: Path) -> dict:
    """A tiny tokenizer, a WikiText-layout corpus and an (empty) token-cache folder under ``root``."""
    return {"tok": make_tokenizer(root / "tok"), "wt": write_wikitext(root / "wt"), "cache": root / "cache"}


@pytest.fixture
def one_thread():
    """Tiny shapes: one thread is faster, and immune to a busy machine's oversubscription. Import it into a
    test module with ``pytestmark = pytest.mark.usefixtures("one_thread")`` beside the import."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
