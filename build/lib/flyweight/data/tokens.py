"""Tokenize a split once into a flat uint16 memmap, cached by (corpus, split, tokenizer, version).

Files: ``<cache>/tokens/<corpus>/<split>.<tokenizer>.<key>.bin`` (the token ids, native-endian
uint16, or uint32 when the vocabulary does not fit) and a ``.json`` beside it with the token count,
dtype and the sha256 of the ``.bin``. A cache whose metadata, size or hash does not match is
reported and rebuilt; files are written to a temporary name and renamed, so a killed run never
leaves a half-written cache that looks valid.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from flyweight.data.corpora import Corpus
from flyweight.data.fetch import cache_root, sha256_file
from flyweight.data.tokenizer import Tokenizer

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
    if meta.get("version") != CACHE_VERSION or meta.get("dtype") != dtype.name:
        return False, "metadata of another version"
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
    ok, why = _valid(bin_path, meta_path, dtype)
    if not ok:
        if why != "missing":
            print(f"[flyweight] token cache {bin_path} is invalid ({why}); rebuilding", file=sys.stderr)
        _build(corpus, split, tokenizer, bin_path, meta_path, dtype, progress)
    return np.memmap(bin_path, dtype=dtype, mode="r")


def _build(corpus, split, tokenizer, bin_path: Path, meta_path: Path, dtype: np.dtype, progress: bool) -> None:
    from tqdm.auto import tqdm

    docs = corpus.documents(split)
    bin_path.parent.mkdir(parents=True, exist_ok=True)
    # per-process temporary names: DDP ranks may build the same cache at once (same content)
    tmp = bin_path.with_name(f"{bin_path.name}.{os.getpid()}.tmp")
    h = hashlib.sha256()
    n_tokens = 0
    limit = np.iinfo(dtype).max
    with open(tmp, "wb") as f, tqdm(total=len(docs), desc=f"tokenizing {corpus.name}/{split}", unit="doc",
                                    disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(docs), BATCH_DOCS):
            batch = docs[start:start + BATCH_DOCS]
            ids = [i for seq in tokenizer.encode_batch(batch) for i in seq]
            arr = np.asarray(ids, dtype=np.int64)
            if arr.size and (arr.min() < 0 or arr.max() > limit):
                raise ValueError(f"token id {arr.max()} does not fit {dtype.name}")
            data = arr.astype(dtype).tobytes()
            f.write(data)
            h.update(data)
            n_tokens += arr.size
            bar.update(len(batch))
    meta = {"version": CACHE_VERSION, "dtype": dtype.name, "n_tokens": n_tokens, "sha256": h.hexdigest(),
            "corpus": corpus.name, "corpus_fingerprint": corpus.fingerprint, "split": split,
            "tokenizer": tokenizer.name, "tokenizer_fingerprint": tokenizer.fingerprint,
            "documents": len(docs)}
    tmp.replace(bin_path)
    meta_tmp = meta_path.with_name(f"{meta_path.name}.{os.getpid()}.tmp")
    meta_tmp.write_text(json.dumps(meta, indent=1))
    meta_tmp.replace(meta_path)
