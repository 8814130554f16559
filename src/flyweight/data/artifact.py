"""Carry a built corpus's token cache to a machine without registry access (the GPU machine).

``python -m flyweight.data.artifact pack english --out .gpu`` writes ``.gpu/english.tar`` (and
``english.tar.sha256``): the manifest, the token stream of each split compressed with xz, the GPT-2
tokenizer files and an index (``artifact.json``) with the sha256 of every member. The documents
themselves do not travel: only tokens.

``python -m flyweight.data.artifact unpack .gpu/english.tar --cache DIR`` verifies every member's
sha256, checks that this machine's tokenizer (built from the carried files) encodes the carried
check sentences to the same ids, decompresses each split, checks its sha256 against the manifest,
and writes it where ``tokens.tokenize_split`` looks for it (``DIR/tokens``), the tokenizer files
where ``fetch`` looks for them (``DIR/registry``) and the manifest where ``named_corpus`` looks
(``DIR/corpora/<name>``). With ``FLYWEIGHT_CACHE=DIR``, ``data=english`` then trains from it.
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import os
import sys
import tarfile
from pathlib import Path
from unittest import mock

from flyweight.data.build import built_manifest, corpus_dir
from flyweight.data.corpora import SPLITS, Corpus
from flyweight.data.fetch import GPT2_MERGES, GPT2_VOCAB, fetch
from flyweight.utils.archives import tar_member
from flyweight.utils.io import (
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    cache_root,
    sha256_bytes,
    sha256_file,
)

FORMAT = 1
# At most 64 MiB of files travel to the GPU machine, the repository's working tree (~7 MiB) included;
# 40 MiB leaves room for the tree, a second small artifact and carried wheels.
MAX_ARTIFACT_MIB = 40
# LZMA2 at preset 6 with 2-byte alignment (lp=1, pb=1: tokens are uint16): ~2.3x on GPT-2 token streams;
# higher presets gain < 0.1% and take far longer on a busy 2-core machine.
XZ_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 6, "lc": 0, "lp": 1, "pb": 1}]
CHECK_TEXTS = ("hello world",
               "The quick brown fox jumps over the lazy dog; \u201cquoted\u201d text, caf\u00e9s and 1,234.5 numbers.",
               "    def f(x):\n        return x ** 2  # indented code\n\n<|endoftext|>")


GPT2_SPECS = ("gpt2", "registry:gpt2")


def _tokenizer_files(spec: str) -> dict[str, Path]:
    """The files that make the tokenizer ``spec`` (GPT-2 from the registry cache, or a local folder)."""
    if spec in GPT2_SPECS:
        return {"vocab.json": fetch(GPT2_VOCAB), "merges.txt": fetch(GPT2_MERGES)}
    path = Path(spec).expanduser()
    if path.is_file():
        return {"tokenizer.json": path}
    for names in (("tokenizer.json",), ("vocab.json", "merges.txt")):
        if all((path / n).exists() for n in names):
            return {n: path / n for n in names}
    raise ArtifactError(f"tokenizer {spec!r}: cannot tell which files to carry (a hub tokenizer?). "
                        f"Fix: build the corpus with data.tokenizer=gpt2 or a local folder")


class ArtifactError(RuntimeError):
    """An artifact that is missing, tampered with or made for another tokenizer; the message names the fix."""


def _cache_env(root: Path):
    """``FLYWEIGHT_CACHE`` pointed at ``root`` for the duration of a ``with`` block (the corpus and
    tokenizer lookups below read the cache root from it), the previous value restored after."""
    return mock.patch.dict(os.environ, {"FLYWEIGHT_CACHE": str(root)})


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes, index: dict) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # reproducible archive
    tf.addfile(info, io.BytesIO(data))
    index[name] = {"sha256": sha256_bytes(data), "bytes": len(data)}


def pack(name: str, out: Path | str, root: Path | str | None = None) -> Path:
    """Write ``<out>/<name>.tar`` from the local build of corpus ``name``; returns its path."""
    from flyweight.data.tokenizer import load_tokenizer
    from flyweight.data.tokens import cache_paths

    root = Path(root).expanduser() if root else None
    manifest = built_manifest(name, root)
    if manifest is None:
        raise ArtifactError(f"corpus {name} is not built here (or its build is stale). "
                            f"Fix: flyweight data fetch corpus={name}, then pack again")
    spec = manifest["tokenizer"].get("spec", "gpt2")
    with _cache_env(root or cache_root()):
        tok = load_tokenizer(spec)
        tok_files = _tokenizer_files(spec)
    if tok.fingerprint != manifest["tokenizer"]["fingerprint"]:
        raise ArtifactError(f"corpus {name} was tokenized with tokenizer {manifest['tokenizer']['fingerprint']}, "
                            f"this machine's is {tok.fingerprint}. Fix: rebuild (flyweight data fetch corpus={name})")
    corpus = Corpus(name=name, fingerprint=manifest["fingerprint"], loader=lambda split: [])
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{name}.tar"
    index: dict[str, dict] = {}
    with atomic_path(target) as tmp:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            _add_bytes(tf, "manifest.json", json.dumps(manifest, indent=1, ensure_ascii=False).encode(), index)
            for fname, path in tok_files.items():
                _add_bytes(tf, f"tokenizer/{fname}", path.read_bytes(), index)
            for split in SPLITS:
                bin_path, _ = cache_paths(corpus, split, tok, (root / "tokens") if root else None)
                expected = manifest["token_files"][split]["sha256"]
                if not bin_path.exists() or sha256_file(bin_path) != expected:
                    raise ArtifactError(f"{bin_path}: missing or not the manifest's token stream. "
                                        f"Fix: flyweight data fetch corpus={name}")
                print(f"[flyweight] compressing {name}/{split} ({bin_path.stat().st_size / 2**20:.1f} MiB)",
                      file=sys.stderr, flush=True)
                _add_bytes(tf, f"tokens/{split}.bin.xz", lzma.compress(bin_path.read_bytes(), filters=XZ_FILTERS), index)
            header = {"format": FORMAT, "corpus": name, "fingerprint": manifest["fingerprint"],
                      "tokenizer": {**manifest["tokenizer"], "registry_gpt2": spec in GPT2_SPECS,
                                    "files": sorted(tok_files), "check": [[t, tok.encode(t)] for t in CHECK_TEXTS]},
                      "members": index}
            data = json.dumps(header, indent=1).encode()
            info = tarfile.TarInfo("artifact.json")
            info.size, info.mtime = len(data), 0
            tf.addfile(info, io.BytesIO(data))
        size_mib = tmp.stat().st_size / 2**20
        if size_mib > MAX_ARTIFACT_MIB:  # raising inside atomic_path removes the temporary file
            raise ArtifactError(f"the artifact of corpus {name} would be {size_mib:.1f} MiB, over the {MAX_ARTIFACT_MIB} "
                                f"MiB that can travel to the GPU machine with the working tree. Fix: cap the largest "
                                f"technical sources with the recipe's max_chars (flyweight/data/sources.py) and rebuild")
    digest = sha256_file(target)
    atomic_write_text(out / f"{name}.tar.sha256", f"{digest}  {target.name}\n")
    print(f"[flyweight] wrote {target} ({target.stat().st_size / 2**20:.2f} MiB, sha256 {digest})", file=sys.stderr)
    return target


def _member(tf: tarfile.TarFile, name: str, index: dict | None, file: Path) -> bytes:
    data = tar_member(tf, name)
    if data is None:
        raise ArtifactError(f"{file} has no member {name}: not a flyweight corpus artifact, or truncated. "
                            f"Fix: copy the artifact again (python -m flyweight.data.artifact pack ...)")
    if index is not None:
        want = index.get(name, {}).get("sha256")
        got = sha256_bytes(data)
        if got != want:
            raise ArtifactError(f"{file}: member {name} has sha256 {got}, its index says {want} (tampered or "
                                f"corrupted in transfer). Fix: copy the artifact again and compare its .sha256")
    return data


def unpack(file: Path | str, cache: Path | str | None = None, sha256: str | None = None) -> dict:
    """Verify ``file`` and install its token cache under ``cache`` (default: the cache root); its manifest."""
    from flyweight.data.tokenizer import load_tokenizer
    from flyweight.data.tokens import CACHE_VERSION, cache_paths, token_dtype

    file = Path(file).expanduser()
    if not file.exists():
        raise ArtifactError(f"artifact {file} does not exist. Fix: make it where the corpus is built "
                            f"(python -m flyweight.data.artifact pack english --out .gpu) and copy it here")
    if sha256 is not None and (got := sha256_file(file)) != sha256:
        raise ArtifactError(f"{file}: sha256 {got} is not the expected {sha256}. Fix: copy it again")
    root = Path(cache).expanduser() if cache else cache_root()
    try:
        tf = tarfile.open(file, "r:")
    except tarfile.TarError as err:
        raise ArtifactError(f"{file} is not a readable tar archive ({err}). Fix: copy the artifact again") from err
    with tf:
        header = json.loads(_member(tf, "artifact.json", None, file))
        if header.get("format") != FORMAT:
            raise ArtifactError(f"{file}: artifact format {header.get('format')}, this flyweight reads {FORMAT}")
        index = header["members"]
        manifest = json.loads(_member(tf, "manifest.json", index, file))
        name = manifest["name"]
        from flyweight.data.build import stale_artifact_message
        from flyweight.data.sources import RECIPES

        if name not in RECIPES:
            raise ArtifactError(f"{file} holds corpus {name!r}, which this checkout does not know (named corpora: "
                                f"{', '.join(RECIPES)}). Fix: use the commit the artifact was made from")
        if stale := stale_artifact_message(name, manifest):
            raise ArtifactError(stale)
        info = header["tokenizer"]
        if info["registry_gpt2"]:   # where fetch() finds the GPT-2 files, so data.tokenizer=gpt2 works offline
            targets = {"vocab.json": GPT2_VOCAB.path(root), "merges.txt": GPT2_MERGES.path(root)}
            spec = "gpt2"
        else:                       # a folder named like the original (the token cache key uses the name)
            folder = root / "tokenizers" / info["name"]
            targets = {f: folder / f for f in info["files"]}
            spec = str(folder)
        for fname, target in targets.items():
            data = _member(tf, f"tokenizer/{fname}", index, file)
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, data)
        with _cache_env(root):
            tok = load_tokenizer(spec)
        for text, ids in header["tokenizer"]["check"]:
            if tok.encode(text) != ids:
                raise ArtifactError(f"this machine's tokenizer encodes {text!r} as {tok.encode(text)}, the artifact "
                                    f"was tokenized as {ids}: the token cache would not match. Fix: use the same "
                                    f"`tokenizers` version, or rebuild the corpus here")
        corpus = Corpus(name=name, fingerprint=manifest["fingerprint"], loader=lambda split: [])
        dtype = token_dtype(tok.vocab_size)
        for split in SPLITS:
            data = lzma.decompress(_member(tf, f"tokens/{split}.bin.xz", index, file))
            info = manifest["token_files"][split]
            got = sha256_bytes(data)
            if got != info["sha256"] or len(data) != info["n_tokens"] * dtype.itemsize:
                raise ArtifactError(f"{file}: split {split} decompressed to sha256 {got}, the manifest says "
                                    f"{info['sha256']}. Fix: copy the artifact again")
            bin_path, meta_path = cache_paths(corpus, split, tok, root / "tokens")
            bin_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(bin_path, data)
            meta = {"version": CACHE_VERSION, "dtype": dtype.name, "n_tokens": info["n_tokens"], "sha256": got,
                    "corpus": name, "corpus_fingerprint": manifest["fingerprint"], "split": split,
                    "tokenizer": tok.name, "tokenizer_fingerprint": tok.fingerprint,
                    "documents": manifest["splits"][split]["documents"], "from_artifact": file.name}
            atomic_write_json(meta_path, meta)
        text = json.dumps(manifest, indent=1, ensure_ascii=False)
        folder = corpus_dir(name, root)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "manifest.json", text)
        atomic_write_text(bin_path.parent / "manifest.json", text)
    print(f"[flyweight] unpacked corpus {name} ({manifest['fingerprint']}) into {root}: "
          + ", ".join(f"{s} {manifest['splits'][s]['tokens']:,} tokens" for s in SPLITS)
          + f". Use it with FLYWEIGHT_CACHE={root} ... data={name}", file=sys.stderr)
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m flyweight.data.artifact", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pk = sub.add_parser("pack", help="write <out>/<name>.tar from the local build")
    pk.add_argument("name")
    pk.add_argument("--out", default=".gpu")
    pk.add_argument("--cache", default=None, help="cache root of the build (default: $FLYWEIGHT_CACHE or ~/.cache/flyweight)")
    up = sub.add_parser("unpack", help="verify an artifact and install its token cache")
    up.add_argument("file")
    up.add_argument("--cache", default=None, help="cache root to install into (then run with FLYWEIGHT_CACHE=it)")
    up.add_argument("--sha256", default=None, help="expected sha256 of the artifact file")
    args = p.parse_args(argv)
    try:
        if args.cmd == "pack":
            print(pack(args.name, args.out, args.cache))
        else:
            unpack(args.file, args.cache, args.sha256)
    except ArtifactError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
