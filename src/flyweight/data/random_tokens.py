"""``data.corpus=random``: uniformly random token ids, the throughput benchmark's data.

No text, no tokenizer files and no cache: every split is ``data.global_batch_size`` windows of
``data.max_length`` seeded random ids, so training repeats one global batch (in a new order each step)
and data loading costs nothing measurable. The vocabulary comes from ``data.tokenizer``: ``gpt2``
(the default) is GPT-2's 50257 ids, ``ids:N`` is N ids. Perplexities on it mean nothing; speeds do.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from flyweight.data.tokens import token_dtype
from flyweight.data.windows import TokenWindows

RANDOM_CORPUS = "random"
GPT2_VOCAB_SIZE = 50257
SPLIT_OFFSETS = {"train": 0, "val": 1, "test": 2}  # a different stream per split


@dataclass
class RandomVocabulary:
    """What the trainer reads of a tokenizer (``vocab_size``, ``name``, ``fingerprint``), for random ids."""

    vocab_size: int
    name: str = "random"

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"random:{self.vocab_size}".encode()).hexdigest()


def random_vocabulary(spec: str) -> RandomVocabulary:
    spec = str(spec)
    if spec == "gpt2":
        return RandomVocabulary(GPT2_VOCAB_SIZE)
    if spec.startswith("ids:") and spec[4:].isdigit() and int(spec[4:]) >= 2:
        return RandomVocabulary(int(spec[4:]))
    raise ValueError(f"data.tokenizer={spec!r}: data.corpus=random takes gpt2 ({GPT2_VOCAB_SIZE} ids) or ids:N "
                     "(N >= 2 ids); for example data.tokenizer=ids:1000")


def random_windows(vocab: RandomVocabulary, split: str, windows: int, max_length: int, seed: int) -> TokenWindows:
    """``windows`` windows of ``max_length`` ids drawn uniformly from the vocabulary (seeded per split)."""
    rng = np.random.default_rng([seed, SPLIT_OFFSETS[split]])
    tokens = rng.integers(0, vocab.vocab_size, size=windows * max_length).astype(token_dtype(vocab.vocab_size))
    return TokenWindows(tokens, max_length)
