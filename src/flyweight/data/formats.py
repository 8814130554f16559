"""Parsers of the source formats: each turns files of an unpacked package into cleaned documents.

``PARSERS[name](files, options)`` yields ``(doc_id, text)``; ``text`` is the document's cleaned
paragraphs, each ending in a blank line (empty documents are dropped). Formats:

* ``dictd``: a dictd database, ``NAME.dict.dz`` (dictzip: gzip-readable) with ``NAME.index``
  beside it (``headword<TAB>offset<TAB>length``, offsets in dictd's base64); one entry per document,
  the ``00-database-*`` metadata entries skipped, entries listed under several headwords read once.
* ``sword_osis``: a SWORD zText/zCom module: ``ot.bzs`` / ``ot.czs`` index files of 12-byte
  little-endian ``(offset, size, uncompressed size)`` records pointing into zlib blocks in
  ``ot.bzz`` / ``ot.czz``; the blocks hold OSIS XML; one chapter per document.
* ``wordnet``: WordNet ``data.*`` files: the licence header lines start with two spaces; each
  synset line has its words and, after ``|``, the gloss with example sentences; one synset per document.
* ``wiki_json`` (``{title: {title, extract}}``), ``factbook_json`` (every ``text`` value that is a
  sentence), ``plain_text``, ``gutenberg_text``, ``brown_tagged``, ``fortune``, ``rst``, ``pod``.
"""

from __future__ import annotations

import gzip
import json
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from flyweight.data import clean

Document = tuple[str, str]


def read_text(path: Path) -> str:
    """A file's text, gunzipped when it ends in .gz/.dz; undecodable bytes replaced, not fatal."""
    data = path.read_bytes()
    if path.suffix in (".gz", ".dz"):
        data = gzip.decompress(data)
    return data.decode("utf-8", errors="replace")


def _doc(paras: list[str], min_letters: float = 0.6) -> str:
    return clean.join_paragraphs(paras, min_letters)


# ---- dictd ----------------------------------------------------------------------------------------
DICTD_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_B64_VALUE = {c: i for i, c in enumerate(DICTD_B64)}


def dictd_number(code: str) -> int:
    """A dictd index number: big-endian base 64 with the alphabet A-Z a-z 0-9 + /."""
    value = 0
    for c in code:
        if c not in _B64_VALUE:
            raise ValueError(f"{code!r} is not a dictd base64 number")
        value = value * 64 + _B64_VALUE[c]
    return value


def dictd_entries(dict_path: Path) -> Iterator[tuple[str, str]]:
    """(headword, raw entry text) of a dictd database, in the order of the dictionary file."""
    name = dict_path.name.removesuffix(".dz").removesuffix(".dict")
    index = dict_path.with_name(name + ".index")
    if not index.exists():
        raise FileNotFoundError(f"dictd database {dict_path} has no index {index.name} beside it")
    data = gzip.decompress(dict_path.read_bytes()) if dict_path.suffix == ".dz" else dict_path.read_bytes()
    seen: dict[tuple[int, int], str] = {}
    for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
            continue
        span = (dictd_number(parts[1]), dictd_number(parts[2]))
        seen.setdefault(span, parts[0])
    for (offset, length), head in sorted(seen.items()):
        yield head, data[offset:offset + length].decode("utf-8", errors="replace")


def parse_dictd(files: list[Path], options: dict) -> Iterator[Document]:
    for f in files:
        for head, entry in dictd_entries(f):
            text = _doc(clean.paragraphs(clean.clean_dictionary_entry(entry)))
            if text:
                yield f"{f.name}:{head}", text


# ---- SWORD / OSIS ---------------------------------------------------------------------------------
SWORD_RECORD = struct.Struct("<III")  # offset, compressed size, uncompressed size
_CHAPTER = re.compile(r"(?=<chapter\b[^>]*\bsID=)")


def sword_blocks(index_path: Path) -> Iterator[str]:
    """The decompressed text blocks of a SWORD module part (``ot``/``nt``) from its block index."""
    data_path = index_path.with_suffix(index_path.suffix[:-1] + "z")
    raw = index_path.read_bytes()
    if len(raw) % SWORD_RECORD.size:
        raise ValueError(f"{index_path}: size {len(raw)} is not a multiple of {SWORD_RECORD.size}-byte records")
    if not raw:
        return
    blob = data_path.read_bytes()
    for i, (offset, size, usize) in enumerate(SWORD_RECORD.iter_unpack(raw)):
        if size == 0:
            continue
        if offset + size > len(blob):
            raise ValueError(f"{index_path}: block {i} points past the end of {data_path.name}")
        text = zlib.decompress(blob[offset:offset + size])
        if usize and len(text) != usize:
            raise ValueError(f"{index_path}: block {i} decompressed to {len(text)} bytes, index says {usize}")
        yield text.decode("utf-8", errors="replace")


def parse_sword_osis(files: list[Path], options: dict) -> Iterator[Document]:
    for f in files:
        for b, block in enumerate(sword_blocks(f)):
            for c, chapter in enumerate(_CHAPTER.split(block)):
                text = _doc(clean.paragraphs(clean.strip_xml(chapter)))
                if text:
                    yield f"{f.stem}:{b}:{c}", text


# ---- WordNet --------------------------------------------------------------------------------------
_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")


def wordnet_synsets(path: Path) -> Iterator[tuple[str, list[str], str]]:
    """(synset offset, words, gloss) of a WordNet ``data.*`` file."""
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("  ") or "|" not in line:
            continue  # licence header
        head, _, gloss = line.partition(" | ")
        fields = head.split()
        n_words = int(fields[3], 16)
        words = [_ADJ_MARKER.sub("", w).replace("_", " ") for w in fields[4:4 + 2 * n_words:2]]
        yield fields[0], words, gloss.strip()


def parse_wordnet(files: list[Path], options: dict) -> Iterator[Document]:
    for f in files:
        for offset, words, gloss in wordnet_synsets(f):
            text = _doc([f"{', '.join(words)}: {gloss}"])
            if text:
                yield f"{f.name}:{offset}", text


# ---- JSON -----------------------------------------------------------------------------------------
def parse_wiki_json(files: list[Path], options: dict) -> Iterator[Document]:
    for f in files:
        data = json.loads(read_text(f))
        for title in sorted(data):  # sorted: the order does not depend on the JSON's key order
            text = _doc(clean.paragraphs(data[title].get("extract", "").replace("\n", "\n\n")))
            if text:
                yield title, text


def json_strings(obj, key: str) -> Iterator[str]:
    """Every string value stored under ``key`` anywhere in a JSON document, in document order."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k == key and isinstance(v, str):
                yield v
            else:
                yield from json_strings(v, key)
    elif isinstance(obj, list):
        for v in obj:
            yield from json_strings(v, key)


def _is_sentence(s: str, min_words: int = 8) -> bool:
    return len(s.split()) >= min_words and s.rstrip()[-1:] in ".!?\"')"


def parse_factbook_json(files: list[Path], options: dict) -> Iterator[Document]:
    for f in files:
        paras = [clean.normalize(s) for s in json_strings(json.loads(read_text(f)), "text")]
        text = _doc([p for p in paras if _is_sentence(p)])
        if text:
            yield f"{f.parent.name}/{f.name}", text


# ---- plain and tagged text -------------------------------------------------------------------------
def parse_plain_text(files: list[Path], options: dict) -> Iterator[Document]:
    for f in files:
        text = _doc(clean.paragraphs(read_text(f)))
        if text:
            yield f.name, text


def parse_gutenberg_text(files: list[Path], options: dict) -> Iterator[Document]:
    for f in files:
        text = _doc(clean.paragraphs(clean.strip_gutenberg(read_text(f))), min_letters=0.5)
        if text:
            yield f.name, text


def parse_brown_tagged(files: list[Path], options: dict) -> Iterator[Document]:
    for f in files:
        text = _doc(clean.paragraphs(clean.detag_brown(read_text(f))))
        if text:
            yield f.name, text


def parse_fortune(files: list[Path], options: dict) -> Iterator[Document]:
    """fortune(6) files: cookies separated by lines holding a single ``%``."""
    for f in files:
        for i, cookie in enumerate(re.split(r"^%\s*$", read_text(f), flags=re.M)):
            text = _doc(clean.paragraphs(cookie), min_letters=0.6)
            if text:
                yield f"{f.name}:{i}", text


def parse_rst(files: list[Path], options: dict) -> Iterator[Document]:
    for f in files:
        text = _doc(clean.paragraphs(clean.clean_rst(read_text(f))))
        if text:
            yield f.name, text


def parse_pod(files: list[Path], options: dict) -> Iterator[Document]:
    for f in files:
        text = _doc(clean.paragraphs(clean.clean_pod(read_text(f))))
        if text:
            yield f.name, text


PARSERS: dict[str, Callable[[list[Path], dict], Iterator[Document]]] = {
    "dictd": parse_dictd, "sword_osis": parse_sword_osis, "wordnet": parse_wordnet,
    "wiki_json": parse_wiki_json, "factbook_json": parse_factbook_json, "plain_text": parse_plain_text,
    "gutenberg_text": parse_gutenberg_text, "brown_tagged": parse_brown_tagged, "fortune": parse_fortune,
    "rst": parse_rst, "pod": parse_pod,
}


def source_files(root: Path, members: tuple[str, ...], exclude: tuple[str, ...] = ()) -> list[Path]:
    """Regular files (not links: packages link duplicates) matching the member globs, sorted."""
    files: set[Path] = set()
    for pattern in members:
        for p in root.glob(pattern):
            if p.is_file() and not p.is_symlink() and not any(p.match(x) for x in exclude):
                files.add(p)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def parse_source(root: Path, parser: str, members: tuple[str, ...], options: dict | None = None
                 ) -> Iterator[Document]:
    options = dict(options or {})
    if parser not in PARSERS:
        raise ValueError(f"unknown parser {parser!r}; known: {', '.join(PARSERS)}")
    files = source_files(root, members, tuple(options.get("exclude", ())))
    if not files:
        raise FileNotFoundError(f"{root} has no files matching {', '.join(members)}")
    yield from PARSERS[parser](files, options)
