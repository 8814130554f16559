"""Tokenize a split once into a flat uint16 memmap, cached by (corpus, split, tokenizer, version).

Files: ``<cache>/tokens/<corpus>/<split>.<tokenizer>.<key>.bin`` (the token ids, native-endian
uint16, or uint32 when the vocabulary does not fit) and a ``.json`` beside it with the token count,
dtype and the sha256 of the ``.bin``. A cache whose metadata, size or hash does not match is
reported and rebuilt; files are written to a temporary name beside the target and renamed
(``flyweight.utils.io``), so a killed run never leaves a half-written cache that looks valid, and the
temporary files a killed run left are deleted on the next start.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

from flyweight.data.corpora import Corpus
from flyweight.data.tokenizer import Tokenizer
from flyweight.utils.io import atomic_write, atomic_write_json, cache_root, remove_stale_temps, sha256_file

# Bump when the tokenize-and-concatenate recipe changes: old caches then stop matching.
CACHE_VERSION = 1
BATCH_DOCS = 2048


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)


def cache_paths(corpus: Corpus, split: str, tokenizer: Tokenizer, cache_dir: str | Path | None = None):
    key = hashlib.sha256(
        json.dumps([corpus.fingerprint, split, tokenizer.fingerprint, CACHE_VERSION]).encode()
    ).hexdigest()[:16]
    folder = Path(cache_dir).expanduser() if cache_dir else cache_root() / "tokens"
    stem = f"{split}.{tokenizer.name}.{key}"
    return folder / corpus.name / f"{stem}.bin", folder / corpus.name / f"{stem}.json"


def _valid(bin_path: Path, meta_path: Path, dtype: np.dtype) -> tuple[bool, str]:
    if not bin_path.exists() or not meta_path.exists():
        return False, "missing"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError):
        return False, "unreadable metadata"
    if not isinstance(meta, dict) or meta.get("version") != CACHE_VERSION or meta.get("dtype") != dtype.name:
        return False, "metadata of another version"
    if not isinstance(meta.get("n_tokens"), int) or not isinstance(meta.get("sha256"), str):
        return False, "metadata lacks n_tokens or sha256"
    if bin_path.stat().st_size != meta["n_tokens"] * dtype.itemsize:
        return False, f"size {bin_path.stat().st_size} B, expected {meta['n_tokens'] * dtype.itemsize} B"
    if sha256_file(bin_path) != meta["sha256"]:
        return False, "sha256 mismatch"
    return True, ""


def tokenize_split(corpus: Corpus, split: str, tokenizer: Tokenizer, cache_dir: str | Path | None = None,
                   progress: bool = True) -> np.memmap:
    """The split's token stream as a read-only memmap, tokenizing (with a progress bar) only once."""
    dtype = token_dtype(tokenizer.vocab_size)
    bin_path, meta_path = cache_paths(corpus, split, tokenizer, cache_dir)
    remove_stale_temps(bin_path.parent)  # partial caches of killed runs
    ok, why = _valid(bin_path, meta_path, dtype)
    if not ok:
        if why != "missing":
            print(f"[flyweight] token cache {bin_path} is invalid ({why}); rebuilding", file=sys.stderr)
        _build(corpus, split, tokenizer, bin_path, meta_path, dtype, progress)
    if bin_path.stat().st_size == 0:  # np.memmap refuses an empty file with a message naming nothing
        raise ValueError(
            f"split {split!r} of corpus {corpus.name!r} has no tokens: nothing to train on or evaluate. "
            "Fix: check that data.path holds non-blank text; for corpora without splits (wiki_offline, text) "
            "data.val_fraction and data.test_fraction must be > 0, e.g. data.val_fraction=0.05"
        )
    return np.memmap(bin_path, dtype=dtype, mode="r")


def write_token_ids(f, h, encoded: list[list[int]], dtype: np.dtype) -> int:
    """Append a batch of encoded documents to the cache file ``f`` in ``dtype`` and to its running
    sha256 ``h``; the number of tokens written. An id that does not fit ``dtype`` is an error."""
    arr = np.asarray([i for ids in encoded for i in ids], dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > np.iinfo(dtype).max):
        raise ValueError(f"token id {arr.max()} does not fit {dtype.name}")
    data = arr.astype(dtype).tobytes()
    f.write(data)
    h.update(data)
    return int(arr.size)


def _build(corpus, split, tokenizer, bin_path: Path, meta_path: Path, dtype: np.dtype, progress: bool) -> None:
    from tqdm.auto import tqdm

    docs = corpus.documents(split)
    h = hashlib.sha256()
    n_tokens = 0
    # per-process temporary names: DDP ranks may build the same cache at once (same content);
    # the .bin is renamed into place before the .json, so a valid .json always has its .bin
    bar = tqdm(total=len(docs), desc=f"tokenizing {corpus.name}/{split}", unit="doc", disable=not progress,
               file=sys.stderr)
    with atomic_write(bin_path) as f, bar:
        for start in range(0, len(docs), BATCH_DOCS):
            batch = docs[start:start + BATCH_DOCS]
            n_tokens += write_token_ids(f, h, tokenizer.encode_batch(batch), dtype)
            bar.update(len(batch))
    meta = {"version": CACHE_VERSION, "dtype": dtype.name, "n_tokens": n_tokens, "sha256": h.hexdigest(),
            "corpus": corpus.name, "corpus_fingerprint": corpus.fingerprint, "split": split,
            "tokenizer": tokenizer.name, "tokenizer_fingerprint": tokenizer.fingerprint,
            "documents": len(docs)}
    atomic_write_json(meta_path, meta)
