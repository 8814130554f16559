"""Exact and near-duplicate paragraphs, across sources, deterministically.

``duplicate_mask(paragraphs)`` marks each paragraph that repeats an earlier one: exactly (after
lower-casing and dropping punctuation and spacing), or nearly (MinHash of word 5-shingles, banded
LSH for candidates, kept as a duplicate when the estimated Jaccard similarity of the two
shingle sets is at least ``threshold``). The first occurrence in the given order is kept, so the
caller orders paragraphs by priority (evaluation splits first, preferred sources first).

Everything is seeded by constants (no Python ``hash``, which changes per process), so the same
input gives the same mask on every machine. Paragraphs shorter than ``min_words`` are never
marked: short lines ("Exit.", "Amen.") repeat legitimately in plays and verse.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"[^\W_]+")
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def normalized_words(paragraph: str) -> list[str]:
    return _WORD.findall(paragraph.lower())


def _word_hash(word: str) -> int:
    return int.from_bytes(hashlib.blake2b(word.encode(), digest_size=8).digest(), "little")


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that scatters nearby inputs."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@dataclass
class DedupStats:
    paragraphs: int = 0
    exact: int = 0
    near: int = 0


class MinHasher:
    """MinHash signatures of many paragraphs at once (numpy over the concatenated shingles)."""

    def __init__(self, num_perm: int = 32, shingle: int = 5):
        self.num_perm, self.shingle = num_perm, shingle
        self._seeds = _mix(np.arange(1, num_perm + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15))
        self._vocab: dict[str, int] = {}

    def _ids(self, words: list[str]) -> list[int]:
        vocab = self._vocab
        out = []
        for w in words:
            h = vocab.get(w)
            if h is None:
                h = vocab[w] = _word_hash(w)
            out.append(h)
        return out

    def signatures(self, word_lists: list[list[str]]) -> np.ndarray:
        """(len(word_lists), num_perm) uint64; every list must hold at least one word."""
        k = self.shingle
        lengths = np.array([len(w) for w in word_lists], dtype=np.int64)
        if lengths.size == 0:
            return np.zeros((0, self.num_perm), dtype=np.uint64)
        if lengths.min() < 1:
            raise ValueError("every paragraph needs at least one word for a MinHash signature")
        flat = np.array([h for words in word_lists for h in self._ids(words)], dtype=np.uint64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
        # shingle j of a paragraph combines words j..j+k-1; a paragraph shorter than k is one shingle
        n_shingles = np.maximum(lengths - k + 1, 1)
        sh_par = np.repeat(np.arange(len(lengths)), n_shingles)
        sh_pos = np.arange(n_shingles.sum()) - np.repeat(np.cumsum(n_shingles) - n_shingles, n_shingles)
        first = starts[sh_par] + sh_pos
        end = starts[sh_par] + lengths[sh_par]
        shingles = np.zeros(first.shape, dtype=np.uint64)
        for j in range(k):
            pos = first + j
            ok = pos < end
            term = _mix(flat[np.minimum(pos, len(flat) - 1)] + np.uint64(j + 1))
            shingles = np.where(ok, (shingles * np.uint64(0x100000001B3)) ^ term, shingles)
        bounds = np.concatenate([[0], np.cumsum(n_shingles)[:-1]])
        sig = np.empty((len(lengths), self.num_perm), dtype=np.uint64)
        for p, seed in enumerate(self._seeds):
            sig[:, p] = np.minimum.reduceat(_mix(shingles ^ seed), bounds)
        return sig


def duplicate_mask(paragraphs: list[str], threshold: float = 0.7, min_words: int = 8, num_perm: int = 32,
                   bands: int = 8, stats: DedupStats | None = None, batch: int = 20000) -> np.ndarray:
    """Boolean array: True where a paragraph duplicates (exactly or nearly) an earlier one."""
    if num_perm % bands:
        raise ValueError(f"num_perm={num_perm} must be a multiple of bands={bands}")
    rows = num_perm // bands
    stats = stats if stats is not None else DedupStats()
    hasher = MinHasher(num_perm)
    dup = np.zeros(len(paragraphs), dtype=bool)
    exact_seen: set[bytes] = set()
    band_seen: list[dict[bytes, int]] = [{} for _ in range(bands)]
    kept_sigs = np.zeros((len(paragraphs), num_perm), dtype=np.uint64)  # rows of kept paragraphs
    for lo in range(0, len(paragraphs), batch):
        chunk = paragraphs[lo:lo + batch]
        words = [normalized_words(p) for p in chunk]
        eligible = [i for i, w in enumerate(words) if len(w) >= min_words]
        sigs = hasher.signatures([words[i] for i in eligible])
        for row, i in enumerate(eligible):
            g = lo + i
            key = hashlib.blake2b(" ".join(words[i]).encode(), digest_size=12).digest()
            if key in exact_seen:
                dup[g] = True
                stats.exact += 1
                continue
            exact_seen.add(key)
            sig = sigs[row]
            band_keys = [sig[b * rows:(b + 1) * rows].tobytes() for b in range(bands)]
            near = False
            for b, bk in enumerate(band_keys):
                other = band_seen[b].get(bk)
                if other is not None and np.mean(kept_sigs[other] == sig) >= threshold:
                    near = True
                    break
            if near:
                dup[g] = True
                stats.near += 1
                continue
            kept_sigs[g] = sig
            for b, bk in enumerate(band_keys):
                band_seen[b].setdefault(bk, g)
    stats.paragraphs += len(paragraphs)
    return dup


def jaccard(a: str, b: str, shingle: int = 5) -> float:
    """Exact Jaccard similarity of two paragraphs' word shingle sets (the reference for tests)."""
    def shingles(p):
        w = normalized_words(p)
        return {tuple(w[i:i + shingle]) for i in range(max(len(w) - shingle + 1, 1))}
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0
