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
  sentence), ``plain_text``, ``gutenberg_text``, ``brown_tagged``, ``fortune``, ``rst``, ``pod``, ``html``.
"""

from __future__ import annotations

import gzip
import json
import re
import struct
import zlib
from collections.abc import Callable, Iterator
from fnmatch import fnmatch
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
def _one_document_per_file(clean_text: Callable[[str], str]) -> Callable:
    """A parser whose documents are whole files, each cleaned by ``clean_text`` and split into paragraphs."""
    def parse(files: list[Path], options: dict) -> Iterator[Document]:
        for f in files:
            text = _doc(clean.paragraphs(clean_text(read_text(f))))
            if text:
                yield f.name, text
    return parse


parse_plain_text = _one_document_per_file(lambda text: text)


_ACT_HEADING = re.compile(r"^(?=ACT [IVX]+\b)", re.M)


def parse_gutenberg_text(files: list[Path], options: dict) -> Iterator[Document]:
    """Project Gutenberg texts; a play is one document per act (a whole play would weigh on val/test)."""
    for f in files:
        for a, act in enumerate(_ACT_HEADING.split(clean.strip_gutenberg(read_text(f)))):
            text = _doc(clean.paragraphs(act), min_letters=0.5)
            if text:
                yield f"{f.name}:{a}", text


parse_brown_tagged = _one_document_per_file(clean.detag_brown)


def parse_fortune(files: list[Path], options: dict) -> Iterator[Document]:
    """fortune(6) files: cookies separated by lines holding a single ``%``."""
    for f in files:
        for i, cookie in enumerate(re.split(r"^%\s*$", read_text(f), flags=re.M)):
            text = _doc(clean.paragraphs(cookie), min_letters=0.6)
            if text:
                yield f"{f.name}:{i}", text


parse_rst = _one_document_per_file(clean.clean_rst)
parse_pod = _one_document_per_file(clean.clean_pod)


# ---- R lazy-load databases (Rdata.rdb / Rdata.rdx) ----------------------------------------------------
class RReader:
    """Just enough of R's XDR serialization (format 2 and 3) to read character vectors and lists."""

    def __init__(self, data: bytes):
        if data[:2] != b"X\n":
            raise ValueError("not an R XDR serialization (expected 'X\\n')")
        self.data, self.pos, self.refs = data, 2, []
        version = self._int()
        self._int(), self._int()              # writer's and minimal reader's R versions
        if version == 3:
            n = self._int()                   # native encoding name: skipped
            self.pos += n

    def _int(self) -> int:
        (v,) = struct.unpack_from(">i", self.data, self.pos)
        self.pos += 4
        return v

    def _attributes_names(self, attrs) -> list[str] | None:
        return attrs.get("names") if isinstance(attrs, dict) else None

    def item(self):
        flags = self._int()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind in (254, 242, 253, 241, 251):     # NULL, empty/global/base env, missing arg
            return None
        if kind == 255:                           # reference to an earlier symbol
            index = flags >> 8 or self._int()
            return self.refs[index - 1]
        if kind == 1:                             # symbol
            name = self.item()
            self.refs.append(name)
            return name
        if kind == 9:                             # CHARSXP
            n = self._int()
            if n == -1:
                return None
            text = self.data[self.pos:self.pos + n].decode("utf-8", errors="replace")
            self.pos += n
            return text
        if kind == 2:                             # pairlist: attributes, tag, car, cdr
            attrs = self.item() if has_attr else None
            del attrs
            out = {}
            tag = self.item() if has_tag else None
            out[tag] = self.item()
            rest = self.item()
            if isinstance(rest, dict):
                out.update(rest)
            return out
        if kind in (10, 13):                      # logical, integer
            n = self._int()
            values = list(struct.unpack_from(f">{n}i", self.data, self.pos))
            self.pos += 4 * n
        elif kind == 14:                          # double
            n = self._int()
            values = list(struct.unpack_from(f">{n}d", self.data, self.pos))
            self.pos += 8 * n
        elif kind in (16, 19, 20):                # character vector, list, expression
            values = [self.item() for _ in range(self._int())]
        else:
            raise ValueError(f"R serialization type {kind} is not supported by this reader")
        if has_attr:
            names = self._attributes_names(self.item())
            if names is not None and len(names) == len(values):
                return dict(zip(names, values, strict=True))
        return values


def _r_blob(data: bytes) -> bytes:
    """One lazy-load record: 4-byte big-endian uncompressed length, then zlib (type 1) data."""
    (n,) = struct.unpack_from(">I", data, 0)
    out = zlib.decompress(data[4:])
    if len(out) != n:
        raise ValueError(f"R lazy-load record decompressed to {len(out)} bytes, header says {n}")
    return out


def r_lazyload(rdb: Path) -> dict[str, object]:
    """The objects of an R package's ``data/Rdata.rdb`` (index: ``Rdata.rdx`` beside it), by name."""
    index = RReader(gzip.decompress(rdb.with_suffix(".rdx").read_bytes())).item()
    variables = index["variables"] if isinstance(index, dict) else index[0]
    blob = rdb.read_bytes()
    return {name: RReader(_r_blob(blob[off:off + length])).item()
            for name, (off, length) in sorted(variables.items())}


_CHAPTER_HEADING = re.compile(r"^(?=(?:CHAPTER|Chapter) [0-9IVXLC]+\.?\s*$)", re.M)


def parse_r_text(files: list[Path], options: dict) -> Iterator[Document]:
    """Character vectors of lines in an R lazy-load database (e.g. janeaustenr's novels); one per document."""
    for f in files:
        for name, value in r_lazyload(f).items():
            if not (isinstance(value, list) and value and all(isinstance(v, str) or v is None for v in value)):
                continue
            # one document per chapter: a whole novel in one split would make it a large part of val/test
            for c, chapter in enumerate(_CHAPTER_HEADING.split("\n".join(v or "" for v in value))):
                text = _doc(clean.paragraphs(clean.reflow(chapter)))
                if text:
                    yield f"{name}:{c}", text


def parse_html(files: list[Path], options: dict) -> Iterator[Document]:
    """HTML pages; ``options['skip']``: classes/ids/roles of navigation and code elements to drop."""
    skip = tuple(options.get("skip", ()))
    for f in files:
        text = _doc(clean.paragraphs(clean.html_text(read_text(f), skip)))
        if text:
            yield f.as_posix().rsplit("/", 2)[-2] + "/" + f.name, text


PARSERS: dict[str, Callable[[list[Path], dict], Iterator[Document]]] = {
    "dictd": parse_dictd, "sword_osis": parse_sword_osis, "wordnet": parse_wordnet,
    "wiki_json": parse_wiki_json, "factbook_json": parse_factbook_json, "plain_text": parse_plain_text,
    "gutenberg_text": parse_gutenberg_text, "brown_tagged": parse_brown_tagged, "fortune": parse_fortune,
    "rst": parse_rst, "pod": parse_pod, "html": parse_html,
    "r_text": parse_r_text,
}


def source_files(root: Path, members: tuple[str, ...], exclude: tuple[str, ...] = ()) -> list[Path]:
    """Regular files (not links: packages link duplicates) matching the member globs, sorted.

    ``exclude``: shell patterns matched against the path relative to ``root`` and against the name.
    """
    files: set[Path] = set()
    for pattern in members:
        for p in root.glob(pattern):
            rel = p.relative_to(root).as_posix()
            if p.is_file() and not p.is_symlink() and not any(fnmatch(rel, x) or fnmatch(p.name, x)
                                                               for x in exclude):
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
