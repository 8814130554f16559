"""Parsers, cleaning and dedup of the English corpus sources, on small files written in each real format."""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from flyweight.data import clean, dedup, formats

SRC = str(Path(__file__).resolve().parents[1] / "src")


# ---- writers of the real formats ---------------------------------------------------------------------
def b64(n: int) -> str:
    """dictd's base64 number, written independently of the parser (most significant digit first)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    digits = ""
    while True:
        digits = alphabet[n % 64] + digits
        n //= 64
        if n == 0:
            return digits


def write_dictd(folder: Path, name: str, entries: list[tuple[list[str], str]]) -> Path:
    """A dictd database: NAME.dict.dz (gzip) and NAME.index (headword, offset, length; sorted by headword)."""
    body, index = b"", []
    for heads, text in entries:
        data = text.encode()
        for h in heads:
            index.append((h, len(body), len(data)))
        body += data
    dz = folder / f"{name}.dict.dz"
    dz.write_bytes(gzip.compress(body))
    (folder / f"{name}.index").write_text("".join(f"{h}\t{b64(o)}\t{b64(n)}\n" for h, o, n in sorted(index)))
    return dz


def write_sword(folder: Path, blocks: list[str], part: str = "ot", ext: str = "cz") -> Path:
    """A SWORD zCom/zText part: PART.EXTs index of (offset, size, usize) and PART.EXTz zlib blocks."""
    data, index = b"", b""
    for block in blocks:
        raw = block.encode()
        comp = zlib.compress(raw)
        index += struct.pack("<III", len(data), len(comp), len(raw))
        data += comp
    (folder / f"{part}.{ext}s").write_bytes(index)
    (folder / f"{part}.{ext}z").write_bytes(data)
    return folder / f"{part}.{ext}s"


WORDNET_HEADER = ("  1 This software and database is being provided to you, the LICENSEE, by  \n"
                  "  2 Princeton University under the following license.  \n")


def write_wordnet(folder: Path) -> Path:
    lines = [
        "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived or known or inferred "
        "to have its own distinct existence (living or nonliving)  \n",
        "00005930 03 n 02 dwarf 0 small_person 0 001 @ 00004475 n 0000 | a plant or animal that is atypically "
        "small; \"the dwarf stood by the door\"  \n",
        "00536655 00 s 02 cupular 0 cupulate(a) 0 001 & 00536235 a 0000 | shaped like a cupule  \n",
    ]
    path = folder / "data.noun"
    path.write_text(WORDNET_HEADER + "".join(lines))
    return path


# ---- dictd ---------------------------------------------------------------------------------------------
def test_dictd_numbers_are_big_endian_base64():
    for n in (0, 1, 63, 64, 65, 4095, 4096, 123456789):
        assert formats.dictd_number(b64(n)) == n
    with pytest.raises(ValueError):
        formats.dictd_number("a-b")


def test_dictd_entries_metadata_skipped_duplicates_read_once_and_cleaned(tmp_path):
    entries = [
        (["00-database-info"], "This file was converted from the original database on ...\n"),
        (["Abdication"], 'Abdication \\Ab`di*ca"tion\\, n. [L. abdicatio: cf. F.\n   abdication.]\n'
                         "   The act of abdicating; the renunciation of a high office,\n"
                         "   dignity, or trust, by its holder.\n   [1913 Webster]\n\n"
                         "   2. A {surrender} of power. --Bailey.\n   [PJC]\n"),
        (["Alcohol", "Alcool"], 'Alcohol ([a^]l"k[-o]*h[o^]l), n. The fluid essence obtained by distillation.\n'
                                "   [1913 Webster]\n"),
    ]
    dz = write_dictd(tmp_path, "test", entries)
    docs = list(formats.parse_dictd([dz], {}))
    assert [d[0].split(":")[1] for d in docs] == ["Abdication", "Alcohol"]   # metadata out, Alcool = Alcohol
    abd, alc = docs[0][1], docs[1][1]
    assert abd == ("Abdication, n. [L. abdicatio: cf. F. abdication.] The act of abdicating; the renunciation "
                   "of a high office, dignity, or trust, by its holder.\n\n2. A surrender of power. --Bailey.\n\n")
    assert alc == "Alcohol, n. The fluid essence obtained by distillation.\n\n"


def test_dictd_wrapped_cross_references_foldoc_tags_and_dates_are_cleaned(tmp_path):
    entries = [
        (["Lief"], "Lief, adv. Gladly. See {Had as\n   lief}, {Had\n   rather}, under Had;; also\n   \\Lief\n"
                   "   \"er\\ liefer.\n   [1913 Webster]\n"),
        (["documentation"], "documentation\n\n   <programming> The multiple kilograms of pressed\n   trees that "
                            "accompany most {software}.\n\n   See {drool-proof\n   paper}.\n\n   (2003-10-25)\n\n"),
        (["spam"], "spam\n\n   <messaging, abuse> Mail sent to many. See also: spam,\n   { spamvertize}.\n"),
    ]
    dz = write_dictd(tmp_path, "mixed", entries)
    docs = dict(formats.parse_dictd([dz], {}))
    assert docs["mixed.dict.dz:Lief"] == "Lief, adv. Gladly. See Had as lief, Had rather, under Had; also liefer.\n\n"
    assert docs["mixed.dict.dz:documentation"] == ("documentation\n\nThe multiple kilograms of pressed trees that "
                                                   "accompany most software.\n\nSee drool-proof paper.\n\n")
    assert docs["mixed.dict.dz:spam"] == "spam\n\nMail sent to many. See also: spam, spamvertize.\n\n"


def test_dictd_without_index_names_the_missing_file(tmp_path):
    dz = write_dictd(tmp_path, "x", [(["A"], "A letter.\n")])
    (tmp_path / "x.index").unlink()
    with pytest.raises(FileNotFoundError, match="x.index"):
        list(formats.parse_dictd([dz], {}))


# ---- SWORD / OSIS -------------------------------------------------------------------------------------------
OSIS_BLOCK = ('<div osisID="Ps" sID="g1" type="book"/><chapter n="1" osisID="Ps.1" sID="Ps.1"/>'
              '<title type="x-s">Psalm 1</title> <div sID="g2" type="x-p"/>'
              '<w lemma="strong:H835">Blessed</w> is the man &amp; his <hi type="italic">delight</hi>.'
              '<note placement="foot">1:1 a footnote that must go</note><div eID="g2" type="x-p"/>'
              '<div sID="g3" type="x-p"/>He shall be like a tree.<div eID="g3" type="x-p"/>'
              '<chapter eID="Ps.1"/><chapter n="2" osisID="Ps.2" sID="Ps.2"/>'
              '<div sID="g4" type="x-p"/>Why do the heathen rage?<lb/>And the people imagine?<div eID="g4" type="x-p"/>')


def test_sword_blocks_decompress_and_split_into_chapters(tmp_path):
    idx = write_sword(tmp_path, [OSIS_BLOCK, '<chapter n="3" sID="Ps.3"/><div type="x-p"/>Lord, how they increase.'])
    assert list(formats.sword_blocks(idx))[0] == OSIS_BLOCK
    docs = list(formats.parse_sword_osis([idx], {}))
    texts = [t for _, t in docs]
    assert texts == ["Psalm 1\n\nBlessed is the man & his delight.\n\nHe shall be like a tree.\n\n",
                     "Why do the heathen rage?\nAnd the people imagine?\n\n",
                     "Lord, how they increase.\n\n"]


def test_sword_empty_part_and_bad_index_are_reported(tmp_path):
    empty = tmp_path / "nt.czs"
    empty.write_bytes(b"")
    (tmp_path / "nt.czz").write_bytes(b"")
    assert list(formats.sword_blocks(empty)) == []
    idx = write_sword(tmp_path, [OSIS_BLOCK])
    (tmp_path / "ot.czs").write_bytes(idx.read_bytes()[:-1])          # truncated record
    with pytest.raises(ValueError, match="multiple of 12"):
        list(formats.sword_blocks(idx))
    offset, size, usize = struct.unpack("<III", write_sword(tmp_path, [OSIS_BLOCK]).read_bytes())
    (tmp_path / "ot.czs").write_bytes(struct.pack("<III", offset, size + 100, usize))
    with pytest.raises(ValueError, match="past the end"):
        list(formats.sword_blocks(idx))
    (tmp_path / "ot.czs").write_bytes(struct.pack("<III", offset, size, usize + 1))
    with pytest.raises(ValueError, match="index says"):
        list(formats.sword_blocks(idx))


def test_sword_index_without_its_data_file_names_it(tmp_path):
    idx = write_sword(tmp_path, [OSIS_BLOCK])
    (tmp_path / "ot.czz").unlink()
    with pytest.raises(FileNotFoundError, match="ot.czz"):
        list(formats.parse_sword_osis([idx], {}))


# ---- WordNet -------------------------------------------------------------------------------------------------
def test_wordnet_header_skipped_words_and_gloss(tmp_path):
    path = write_wordnet(tmp_path)
    synsets = list(formats.wordnet_synsets(path))
    assert [s[0] for s in synsets] == ["00001740", "00005930", "00536655"]
    assert synsets[1][1] == ["dwarf", "small person"]
    assert synsets[2][1] == ["cupular", "cupulate"]
    docs = dict(formats.parse_wordnet([path], {}))
    assert docs["data.noun:00005930"] == ('dwarf, small person: a plant or animal that is atypically small; '
                                          '"the dwarf stood by the door"\n\n')
    assert not any("LICENSEE" in t for t in docs.values())


# ---- JSON ------------------------------------------------------------------------------------------------------
def test_wiki_json_sorted_by_title_paragraphs_kept(tmp_path):
    path = tmp_path / "summaries.json"
    path.write_text(json.dumps({"Zebra": {"title": "Zebra", "extract": "Zebras are striped.\nThey live in Africa."},
                                "Apple": {"title": "Apple", "extract": "An apple is a fruit."},
                                "Empty": {"title": "Empty", "extract": "  "}}))
    assert list(formats.parse_wiki_json([path], {})) == [
        ("Apple", "An apple is a fruit.\n\n"), ("Zebra", "Zebras are striped.\n\nThey live in Africa.\n\n")]


def test_factbook_json_keeps_sentences_only(tmp_path):
    (tmp_path / "europe").mkdir()
    path = tmp_path / "europe" / "xx.json"
    path.write_text(json.dumps({"Introduction": {"Background": {
        "text": "The country was founded long ago and has been a republic ever since then."}},
        "Geography": {"Coordinates": {"text": "46 00 N, 2 00 E"},
                      "Notes": [{"text": "It is the largest country in the region by area and by people."}]}}))
    docs = list(formats.parse_factbook_json([path], {}))
    assert docs == [("europe/xx.json", "The country was founded long ago and has been a republic ever since then."
                                       "\n\nIt is the largest country in the region by area and by people.\n\n")]


# ---- rst and POD ------------------------------------------------------------------------------------------------
RST = """\
.. _howto:

HOWTO do things
===============

This is the *first* paragraph, with a :func:`~os.path.join` role, ``literal``
text and a `link <https://example.org>`_ in it.

.. code-block:: python

   a_code_body = "that must go"

.. function:: double(x)
   :noindex:

   Return *x* twice; an API description that stays.

Example::

    $ make all
    code that must go

- A list item that stays.

+-----+-----+
| a   | b   |
+-----+-----+

Last words.
"""


def test_rst_keeps_prose_drops_markup_code_tables_directives(tmp_path):
    path = tmp_path / "howto.rst.gz"
    path.write_bytes(gzip.compress(RST.encode()))
    (doc_id, text), = formats.parse_rst([path], {})
    assert text == ("HOWTO do things\n\nThis is the first paragraph, with a os.path.join role, literal text and a "
                    "link in it.\n\nReturn x twice; an API description that stays.\n\nExample:\n\nA list item that stays.\n\n"
                    "Last words.\n\n")


def test_rst_roles_and_literals_wrapped_over_two_lines_are_resolved(tmp_path):
    path = tmp_path / "c-api.rst.txt"
    path.write_text("This format does not accept :term:`bytes-like\nobjects <bytes-like object>`; use\n"
                    "``PyUnicode_\nFSConverter`` or :func:`os.fspath` instead.\n\nSecond `paragraph`.\n")
    (_, text), = formats.parse_rst([path], {})
    assert text == ("This format does not accept bytes-like objects; use PyUnicode_ FSConverter or os.fspath "
                    "instead.\n\nSecond paragraph.\n\n")


POD = """\
=head1 NAME

perlfoo - Perl foo things

=head1 DESCRIPTION

This is B<bold> and L<the manual|perlfunc> and C<< $x->y >>.

    my $code = "dropped";

=over 4

=item Basics
=item L<perldata> - Perl data types

=back

=cut

sub not_documentation { }
"""


def test_pod_keeps_headings_items_text_drops_verbatim_and_code(tmp_path):
    path = tmp_path / "perlfoo.pod"
    path.write_text(POD)
    (_, text), = formats.parse_pod([path], {})
    assert text == ("NAME\n\nperlfoo - Perl foo things\n\nDESCRIPTION\n\nThis is bold and the manual and $x->y.\n\n"
                    "Basics\n\nperldata - Perl data types\n\n")


# ---- plain, tagged and Gutenberg text ---------------------------------------------------------------------
def test_brown_tags_stripped_and_spacing_restored():
    tagged = ("\n\n\tThe/at Fulton/np-tl County/nn-tl said/vbd ``/`` no/at evidence/nn ''/'' ,/, that/cs "
              "it's/pps+bez over/rp ./.\n")
    assert clean.detag_brown(tagged) == 'The Fulton County said "no evidence", that it\'s over.'
    doubled = "They/ppss came/vbd to/in Fred/np ;/. ;/.\nWhy/wrb can't/md* I/ppss ?/. ?/.\n"
    assert clean.detag_brown(doubled) == "They came to Fred;\nWhy can't I?"


def test_gutenberg_markers_and_fortunes(tmp_path):
    text = ("Header line\n*** START OF THE PROJECT GUTENBERG EBOOK HAMLET ***\nTo be, or not to be.\n"
            "*** END OF THE PROJECT GUTENBERG EBOOK HAMLET ***\nLicence text\n")
    assert clean.strip_gutenberg(text) == "To be, or not to be."
    assert clean.strip_gutenberg("No markers here.") == "No markers here."
    f = tmp_path / "wisdom"
    f.write_text("A clash of doctrine is not a disaster.\n%\n   ___\n  /___\\\n  |   |\n%\nA dream will triumph.\n"
                 "\t\t-- Stanislaw Lem\n%\n")
    docs = [t for _, t in formats.parse_fortune([f], {})]
    assert docs == ["A clash of doctrine is not a disaster.\n\n", "A dream will triumph.\n-- Stanislaw Lem\n\n"]


def test_source_files_skip_links_and_excluded(tmp_path):
    (tmp_path / "a").write_text("x")
    (tmp_path / "b.dat").write_text("x")
    os.symlink(tmp_path / "a", tmp_path / "c")
    assert [p.name for p in formats.source_files(tmp_path, ("*",), ("*.dat",))] == ["a"]
    with pytest.raises(FileNotFoundError, match="no files matching"):
        list(formats.parse_source(tmp_path, "plain_text", ("*.txt",)))


# ---- dedup -------------------------------------------------------------------------------------------------
def _paragraph(rng, n=60, vocab=3000):
    return " ".join(f"w{int(i)}" for i in rng.integers(0, vocab, n))


def test_exact_duplicates_ignore_case_punctuation_and_spacing_keep_first():
    a = "The quick brown fox jumps over the lazy dog near the river bank today."
    paras = [a, a.upper().replace(" ", "  ").replace(".", "!"), "Exit.", "Exit.",
             a + " Then a long second sentence follows with many other words that the first one never had."]
    stats = dedup.DedupStats()
    mask = dedup.duplicate_mask(paras, stats=stats)
    assert mask.tolist() == [False, True, False, False, False]   # short lines never marked
    assert stats.exact == 1


def test_near_duplicates_found_when_jaccard_is_high_and_not_when_low():
    rng = np.random.default_rng(0)
    base = [_paragraph(rng) for _ in range(300)]
    edited = []
    for p in base[:100]:
        w = p.split()
        w[30] = "EDITED"
        edited.append(" ".join(w))
    unrelated = [_paragraph(rng) for _ in range(300)]
    mask = dedup.duplicate_mask(base + edited + unrelated)
    assert all(dedup.jaccard(b, e) > 0.8 for b, e in zip(base, edited, strict=False))
    assert not mask[:300].any()
    assert mask[300:400].mean() > 0.9
    assert not mask[400:].any()                              # random paragraphs: no false positives


def test_minhash_estimates_jaccard():
    rng = np.random.default_rng(1)
    hasher = dedup.MinHasher(num_perm=128)
    for keep in (20, 40, 60):
        a = _paragraph(rng, 80)
        w = a.split()
        b = " ".join(w[:keep] + [f"x{i}" for i in range(80 - keep)])
        sig = hasher.signatures([dedup.normalized_words(a), dedup.normalized_words(b)])
        est = float(np.mean(sig[0] == sig[1]))
        assert abs(est - dedup.jaccard(a, b)) < 0.15


def test_dedup_is_the_same_in_every_process():
    code = ("import numpy as np; from flyweight.data.dedup import MinHasher, duplicate_mask;"
            "s = MinHasher().signatures([['alpha','beta','gamma','delta','eps','zeta']]);"
            "print(int(s.sum() % 1000003))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONPATH": SRC, "PYTHONHASHSEED": seed}).stdout for seed in "12"}
    assert len(outs) == 1 and outs.pop().strip().isdigit()


def test_mostly_text_drops_ascii_art_and_tables():
    assert clean.mostly_text("A plain sentence of English words.")
    assert not clean.mostly_text("|---+---|\n| 1 | 2 |")
    assert not clean.mostly_text("0x1f 0x2e 0x3d 0x4c")


# ---- HTML ----------------------------------------------------------------------------------------------------
PAGE = """<html><head><title>T</title><script>var x = 1;</script><style>p {}</style></head><body>
<div class="navheader"><a href="a.html">Prev</a> <a href="b.html">Next</a></div>
<h1>21.11. RADIUS&nbsp;Authentication</h1>
<div class="para">This method operates
similarly to <code>password</code> &amp; uses RADIUS.<br>Second line.</div>
<pre class="programlisting">SELECT * FROM code_that_must_go;</pre>
<div class="SCodeFlow"><div><span>(define x 1)</span></div></div>
<ul><li>First item.</li><li>Second item.</li></ul>
<div class="navfooter">Home | Up</div></body></html>"""


def test_html_text_drops_scripts_code_navigation_keeps_blocks(tmp_path):
    f = tmp_path / "html" / "auth.html"
    f.parent.mkdir()
    f.write_text(PAGE)
    (doc_id, text), = formats.parse_html([f], {"skip": ("navheader", "navfooter", "SCodeFlow")})
    assert doc_id == "html/auth.html"
    assert text == ("21.11. RADIUS Authentication\n\nThis method operates similarly to password & uses RADIUS.\n\n"
                    "Second line.\n\nFirst item.\n\nSecond item.\n\n")


def test_html_with_crlf_line_ends_joins_wrapped_lines(tmp_path):
    f = tmp_path / "git-doc" / "git-config.html"
    f.parent.mkdir()
    f.write_bytes(b'<?xml version="1.0" encoding="UTF-8"?>\r\n<html><body><div id="header">git-config(1)</div>\r\n'
                  b'<dd>\r\n<p>\r\n        Maximum size in bytes of the buffer used by smart HTTP\r\n'
                  b'        transports.\r\n</p>\r\n</dd>\r\n<div class="listingblock"><div>$ git config x'
                  b'</div></div>\r\n<div id="footer">Last updated</div></body></html>\r\n')
    (doc_id, text), = formats.parse_html([f], {"skip": ("header", "footer", "listingblock")})
    assert doc_id == "git-doc/git-config.html"
    assert text == "Maximum size in bytes of the buffer used by smart HTTP transports.\n\n"


def test_repeated_boilerplate_paragraphs_are_dropped_per_source():
    from flyweight.data.build import drop_repeated_paragraphs

    items = [(f"d{i}", f"Download the ebook\n\nPage {i} has its own words.\n\n") for i in range(6)]
    items.append(("last", "Download the ebook\n\n"))
    out = drop_repeated_paragraphs(items, 5)
    assert out == [(f"d{i}", f"Page {i} has its own words.\n\n") for i in range(6)]   # emptied doc dropped


# ---- R lazy-load database (janeaustenr) ----------------------------------------------------------------------
def _r_int(n: int) -> bytes:
    return struct.pack(">i", n)


def _r_chars(s: str) -> bytes:
    data = s.encode()
    return _r_int(9 | (64 << 12)) + _r_int(len(data)) + data


def _r_strings(values: list[str], names: list[str] | None = None) -> bytes:
    return _r_int(16) + _r_int(len(values)) + b"".join(_r_chars(v) for v in values)


def _r_named_list(items: list[bytes], names: list[str]) -> bytes:
    """VECSXP with a names attribute: data first, then the attribute pairlist (tag 'names')."""
    attr = _r_int(2 | (1 << 10)) + _r_int(1) + _r_chars("names") + _r_strings(names) + _r_int(254)
    return _r_int(19 | (1 << 9)) + _r_int(len(items)) + b"".join(items) + attr


def _r_serialize(body: bytes) -> bytes:
    return b"X\n" + _r_int(3) + _r_int(0x040201) + _r_int(0x030500) + _r_int(5) + b"UTF-8" + body


def write_r_lazyload(folder: Path, objects: dict[str, list[str]]) -> Path:
    rdb, offsets = b"", {}
    for name, lines in objects.items():
        raw = _r_serialize(_r_strings(lines))
        blob = struct.pack(">I", len(raw)) + zlib.compress(raw)
        offsets[name] = (len(rdb), len(blob))
        rdb += blob
    ints = [_r_int(13) + _r_int(2) + _r_int(o) + _r_int(n) for o, n in offsets.values()]
    index = _r_named_list([_r_named_list(ints, list(offsets)), _r_int(19) + _r_int(0),
                           _r_int(10) + _r_int(1) + _r_int(1)], ["variables", "references", "compressed"])
    (folder / "Rdata.rdx").write_bytes(gzip.compress(_r_serialize(index)))
    (folder / "Rdata.rdb").write_bytes(rdb)
    return folder / "Rdata.rdb"


def test_r_lazyload_novels_one_document_per_chapter(tmp_path):
    emma = ["EMMA", "", "CHAPTER I", "", "Emma Woodhouse, handsome, clever,", "and rich.", "",
            "She was the youngest.", "", "CHAPTER II", "", "Mr. Weston was a native", "of Highbury."]
    rdb = write_r_lazyload(tmp_path, {"emma": emma, "persuasion": ["Sir Walter Elliot, of Kellynch Hall."]})
    objects = formats.r_lazyload(rdb)
    assert objects == {"emma": emma, "persuasion": ["Sir Walter Elliot, of Kellynch Hall."]}
    docs = list(formats.parse_r_text([rdb], {}))
    assert docs == [("emma:0", "EMMA\n\n"),
                    ("emma:1", "CHAPTER I\n\nEmma Woodhouse, handsome, clever, and rich.\n\nShe was the youngest.\n\n"),
                    ("emma:2", "CHAPTER II\n\nMr. Weston was a native of Highbury.\n\n"),
                    ("persuasion:0", "Sir Walter Elliot, of Kellynch Hall.\n\n")]
    (tmp_path / "Rdata.rdb").write_bytes(b"\x00\x00\x00\x09" + zlib.compress(b"X\n" + b"\x00" * 40))
    with pytest.raises(ValueError, match="header says 9"):
        formats.r_lazyload(rdb)
