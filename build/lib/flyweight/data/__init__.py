"""Corpora, tokenizers and datasets.

Language modelling: ``make_corpus`` (documents per split) -> ``load_tokenizer`` -> ``tokenize_split``
(a cached uint16 memmap) -> ``TokenWindows`` (non-overlapping max_length windows) -> ``LMDataModule``
(Lightning). Names are imported on first use, so ``flyweight.data.images`` does not pull in Lightning.
"""

from __future__ import annotations

import importlib

_LAZY = {
    "CORPORA": "corpora", "Corpus": "corpora", "make_corpus": "corpora", "split_indices": "corpora",
    "DataConfig": "datamodule", "LMDataModule": "datamodule", "accumulation": "datamodule",
    "Tokenizer": "tokenizer", "load_tokenizer": "tokenizer",
    "tokenize_split": "tokens",
    "TokenWindows": "windows", "TrainBatchSampler": "windows", "eval_batches": "windows",
}

__all__ = [  # noqa: RUF022 - grouped by module, as in _LAZY
    "CORPORA", "Corpus", "make_corpus", "split_indices", "DataConfig", "LMDataModule", "accumulation",
    "Tokenizer", "load_tokenizer", "tokenize_split", "TokenWindows", "TrainBatchSampler", "eval_batches",
]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f"flyweight.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'flyweight.data' has no attribute {name!r}")
