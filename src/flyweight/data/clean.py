"""Cleaning: from each source format's markup to plain paragraphs of English.

Every cleaner returns text whose paragraphs are separated by one blank line. What is removed, and
why: markup (XML/OSIS tags, rst roles and directives, POD codes, dictionary braces) carries no
English; pronunciation marks (``\\Ab`di*ca"tion\\``) and source tags (``[1913 Webster]``) are
dictionary bookkeeping repeated hundreds of thousands of times, which a language model would
spend capacity memorising; code and tables in technical documents are not prose.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

PARAGRAPH_BREAK = "\n\n"

_SPACES = re.compile(r"[ \t\u00a0]+")
_MANY_BREAKS = re.compile(r"\n{3,}")


def normalize(text: str) -> str:
    """Unix newlines, no tabs or runs of spaces, stripped lines, at most one blank line in a row."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _MANY_BREAKS.sub("\n\n", "\n".join(lines)).strip()


def paragraphs(text: str) -> list[str]:
    return [p.strip() for p in normalize(text).split(PARAGRAPH_BREAK) if p.strip()]


def reflow(text: str) -> str:
    """Join hard-wrapped lines inside each paragraph (dictionary entries, wrapped prose)."""
    return PARAGRAPH_BREAK.join(" ".join(p.split("\n")) for p in paragraphs(text))


def mostly_text(paragraph: str, min_letters: float = 0.6) -> bool:
    """True when letters and spaces dominate: drops ASCII art, tables, hex dumps, code residue."""
    if not paragraph:
        return False
    good = sum(c.isalpha() or c == " " for c in paragraph)
    return good >= min_letters * len(paragraph) and any(c.isalpha() for c in paragraph)


def join_paragraphs(paras: list[str], min_letters: float = 0.6) -> str:
    """A document's text: the kept paragraphs, each ending in a blank line (the corpus convention)."""
    kept = [p for p in paras if mostly_text(p, min_letters)]
    return "".join(p + PARAGRAPH_BREAK for p in kept)


# ---- dictionaries (dictd: GCIDE, Jargon File, FOLDOC) ---------------------------------------------
_PRONUNCIATION = re.compile(r"\\[^\\\n]{1,80}\\")           # \Ab`di*ca"tion\
# ([a^]l"k[-o]*h[o^]l): GCIDE's other pronunciation form, a parenthesis holding accent codes or stress marks
_PAREN_PRONUNCIATION = re.compile(r"\((?=[^()\n]*(?:\[[a-z-]{1,4}[\^~`:.]?\]|\w[*\"`]\w))[^()\n]{1,80}\)")
_SOURCE_TAG = re.compile(r"\[(?:1913 Webster|PJC|Webster 1913 Suppl\.|Century Dict\.|WordNet 1\.5|"
                         r"Webster 1828|Chambers 1728|Websters 1913|RN|[A-Z][A-Za-z.]{0,20} \d{4})\]")
_BRACES = re.compile(r"\{([^{}\n]*)\}")                     # {cross-reference} -> cross-reference
_EMPTY_PAREN = re.compile(r"\(\s*\)|\[\s*\]")
_SPACE_BEFORE_PUNCT = re.compile(r" +([,;:.])")


_CATEGORY_TAG = re.compile(r"<[a-z][a-z ,/-]{0,60}>\s*")     # FOLDOC's <programming>, <language, humour>
_DATE_STAMP = re.compile(r"^\(\d{4}-\d{2}-\d{2}\)$", re.M)    # FOLDOC's (2003-10-25) revision dates
_DOUBLED_PUNCT = re.compile(r"([;,?])\1+")                    # GCIDE's and Brown's "date;;" / "blood"??"
_SPACE_RUN = re.compile(r" {2,}")


def clean_dictionary_entry(entry: str) -> str:
    # reflow first: a cross-reference or pronunciation may be wrapped over two lines ("{Had as\n lief}")
    text = reflow(entry)
    text = _PRONUNCIATION.sub("", text)
    text = _PAREN_PRONUNCIATION.sub("", text)
    text = _SOURCE_TAG.sub("", text)
    for _ in range(2):  # nested braces
        text = _BRACES.sub(r"\1", text)
    text = _CATEGORY_TAG.sub("", text)
    text = _DATE_STAMP.sub("", text)
    text = _EMPTY_PAREN.sub("", text)
    text = _DOUBLED_PUNCT.sub(r"\1", text)
    text = _SPACE_RUN.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text)
    return PARAGRAPH_BREAK.join(paragraphs(text))


# ---- XML (OSIS) -----------------------------------------------------------------------------------
_XML_DROP = re.compile(r"<(note|rdg|milestone|reference type=\"annotateRef\")\b[^>]*?(?:/>|>.*?</\1>)", re.S)
_XML_BREAK = re.compile(r"<(?:/?p\b|/?lg\b|/?list\b|/?table\b|/?row\b|/?item\b|title\b|/title|"
                        r"div\b[^>]*type=\"(?:x-p|paragraph|introduction|section|book|chapter)\")[^>]*>")
_XML_LINE = re.compile(r"<(?:lb\b|/l>|l\b)[^>]*>")
_XML_TAG = re.compile(r"<[^>]+>")


def strip_xml(text: str) -> str:
    """Plain text of an XML fragment: notes dropped, block tags as paragraph breaks, entities decoded."""
    text = _XML_DROP.sub(" ", text)
    text = _XML_BREAK.sub("\n\n", text)
    text = _XML_LINE.sub("\n", text)
    text = _XML_TAG.sub("", text)
    return normalize(html.unescape(text))


# ---- reStructuredText ------------------------------------------------------------------------------
_ADORNMENT = re.compile(r"^([=\-~^\"'`#*+_.:<>])\1{2,}\s*$")
_ROLE = re.compile(r":[\w:.+-]+:`([^`]*)`")
_TARGET_TEXT = re.compile(r"`([^`<]*?)\s*<[^>]*>`_{0,2}")
_LITERAL = re.compile(r"``([^`]*)``")
_INTERPRETED = re.compile(r"`([^`]*)`_{0,2}")
_EMPHASIS = re.compile(r"\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*")
_ROLE_TITLE = re.compile(r"^(.*?)\s*<.*>$")


def _rst_inline(line: str) -> str:
    def role(m):  # :ref:`title <target>` -> title; :func:`~a.b` -> a.b
        inner = m.group(1)
        t = _ROLE_TITLE.match(inner)
        return (t.group(1) if t else inner).lstrip("~!")
    line = _ROLE.sub(role, line)
    line = _TARGET_TEXT.sub(r"\1", line)
    line = _LITERAL.sub(r"\1", line)
    line = _INTERPRETED.sub(r"\1", line)
    line = _EMPHASIS.sub(lambda m: m.group(1) or m.group(2), line)
    return line.replace("\\", "")


_DIRECTIVE = re.compile(r"\.\.\s+(?:[\w-]+:)?([\w-]+)::")
_DIRECTIVE_OPTION = re.compile(r"^:[\w-]+:(?:\s+\S.*)?$")
# Directives whose body is prose (API descriptions, admonitions); every other directive's body
# (code, tables, toctrees, images, kernel-doc options, ...) is dropped with it.
RST_PROSE_DIRECTIVES = frozenset({
    "function", "method", "class", "attribute", "data", "exception", "decorator", "decoratormethod",
    "classmethod", "staticmethod", "property", "module", "describe", "option", "cmdoption", "envvar",
    "opcode", "pdbcommand", "macro", "member", "type", "var", "struct", "enum", "enumerator", "union",
    "note", "warning", "tip", "important", "attention", "caution", "danger", "error", "hint", "seealso",
    "admonition", "topic", "sidebar", "versionadded", "versionchanged", "deprecated", "deprecated-removed",
    "glossary", "only", "impl-detail", "rubric", "container"})


def clean_rst(text: str) -> str:
    """Prose of an rst document: no directives, comments, literal blocks, tables or section adornments.

    A block is dropped when it follows ``::`` or a directive (``.. name::``) and is indented more
    than the line that opened it; indented prose elsewhere (list bodies, definitions) is kept.
    """
    out: list[str] = []
    skip_indent: int | None = None   # dropping lines indented more than this
    pending_literal, out_indent = False, 0
    option_indent: int | None = None   # just after a kept directive: its :option: lines are dropped
    for raw in text.replace("\t", "    ").split("\n"):
        line = raw.rstrip()
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if not line or indent > skip_indent:
                continue
            skip_indent = None
        if pending_literal and line:
            pending_literal = False
            if indent > out_indent:
                skip_indent = out_indent
                continue
        stripped = line.strip()
        if not stripped:
            out.append("")
            continue
        if stripped.startswith(".."):            # directive, comment, target, substitution
            m = _DIRECTIVE.match(stripped)
            if m and m.group(1) in RST_PROSE_DIRECTIVES:
                option_indent = indent           # keep the body, drop the directive line and its options
            else:
                skip_indent = indent
            continue
        if option_indent is not None:
            if indent > option_indent and _DIRECTIVE_OPTION.match(stripped):
                continue
            option_indent = None
        if _ADORNMENT.match(stripped) or stripped.startswith(("+--", "+==", "|")):
            out.append("")
            continue
        if stripped.endswith("::"):
            stripped = stripped[:-2].rstrip() + (":" if not stripped[:-2].rstrip().endswith(":") else "")
            pending_literal, out_indent = True, indent
            if stripped in ("", ":"):
                continue
        if stripped.startswith((">>>", "$ ", "# ")):
            continue
        stripped = re.sub(r"^(?:[-*+•]|\d+[.)]|#\.)\s+", "", stripped)  # list bullets
        out.append(stripped)
    # inline markup after reflow: a role or a literal is often wrapped over two lines
    return PARAGRAPH_BREAK.join(_rst_inline(p) for p in paragraphs(reflow("\n".join(out))))


# ---- POD (Perl documentation) -------------------------------------------------------------------------
_POD_CODE = re.compile(r"[A-Z]<<+\s+(.*?)\s+>>+|[A-Z]<([^<>]*)>")


def _pod_inline(text: str) -> str:
    for _ in range(3):  # nested codes
        def code(m):
            inner = m.group(1) if m.group(1) is not None else m.group(2)
            if "|" in inner:                     # L<text|link> -> text
                inner = inner.split("|", 1)[0]
            return inner
        text = _POD_CODE.sub(code, text)
    return text


def clean_pod(text: str) -> str:
    """Prose of a POD document: headings and =item texts kept, verbatim (indented) paragraphs dropped."""
    out: list[str] = []
    in_pod, skipping_begin = True, False
    text = re.sub(r"(?<!\n)\n(=[a-z])", r"\n\n\1", text.replace("\r\n", "\n"))  # a command opens a paragraph
    for para in text.split("\n\n"):
        para = para.strip("\n")
        if not para.strip():
            continue
        if para.startswith("="):
            word, _, rest = para.partition(" ")
            if word == "=cut":
                in_pod = False
            elif word in ("=pod", "=head1", "=head2", "=head3", "=head4"):
                in_pod = True
            if word == "=begin":
                skipping_begin = True
            elif word == "=end":
                skipping_begin = False
            if word.startswith("=head") or word == "=item":
                if rest.strip() and rest.strip() not in ("*", "-") and not rest.strip().isdigit():
                    out.append(_pod_inline(rest.strip()))
            continue
        if not in_pod or skipping_begin or para[:1] in (" ", "\t"):
            continue
        out.append(_pod_inline(para))
    return reflow("\n\n".join(out))


# ---- tagged and plain text ------------------------------------------------------------------------------
_BROWN_TOKEN = re.compile(r"(\S+)/[a-z0-9$*+\-.,:'()`]+(?:-(?:tl|hl|nc|fw))*(?=\s|$)", re.I)
_NO_SPACE_BEFORE = re.compile(r" ([,.;:?!)\]}%]|'s\b|n't\b|'re\b|'ll\b|'ve\b|'d\b|'m\b)")
_NO_SPACE_AFTER = re.compile(r"([(\[{$]) ")


def detag_brown(text: str) -> str:
    """Brown corpus word/TAG tokens -> ordinary text: tags dropped, quotes and spacing restored."""
    out = []
    for line in text.split("\n"):
        words = [m.group(1) for m in _BROWN_TOKEN.finditer(line)]
        if not words:
            out.append("")
            continue
        s = " ".join(words).replace("``", '"').replace("''", '"')
        s = _NO_SPACE_BEFORE.sub(r"\1", s)
        s = _NO_SPACE_AFTER.sub(r"\1", s)
        s = re.sub(r'" (.*?) "', r'"\1"', s)
        out.append(_DOUBLED_PUNCT.sub(r"\1", s))   # the corpus writes some ; and ? twice ("Fred ;/. ;/.")
    return normalize("\n".join(out))


GUTENBERG_START = re.compile(r"^\*\*\* ?START OF (?:THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)
GUTENBERG_END = re.compile(r"^\*\*\* ?END OF (?:THE|THIS) PROJECT GUTENBERG.*$", re.M | re.I)


def strip_gutenberg(text: str) -> str:
    """The text between Project Gutenberg's START and END markers (all of it when they are absent)."""
    start = GUTENBERG_START.search(text)
    if start:
        text = text[start.end():]
    end = GUTENBERG_END.search(text)
    if end:
        text = text[:end.start()]
    return normalize(text)


# ---- HTML ------------------------------------------------------------------------------------------------
HTML_SKIP_TAGS = frozenset({"script", "style", "pre", "head", "nav", "header", "footer", "noscript", "svg",
                            "math", "form", "button", "select", "textarea"})
HTML_BLOCK_TAGS = frozenset({"p", "div", "br", "li", "dt", "dd", "tr", "h1", "h2", "h3", "h4", "h5", "h6",
                             "blockquote", "table", "ul", "ol", "dl", "section", "article", "td", "th",
                             "figcaption", "caption", "hr"})
HTML_VOID_TAGS = frozenset({"br", "img", "wbr", "hr", "meta", "link", "input", "area", "base", "col", "embed",
                            "source", "track", "param"})


class _HTMLText(HTMLParser):
    def __init__(self, skip_classes: frozenset[str]):
        super().__init__(convert_charrefs=True)
        self.skip_classes = skip_classes
        self.parts: list[str] = []
        self.skip_tag: str | None = None   # tag of the outermost skipped element
        self.skip_depth = 0                # its nesting depth (same tag inside it)

    def _skipped(self, tag: str, attrs) -> bool:
        if tag in HTML_SKIP_TAGS:
            return True
        a = dict(attrs)
        names = set((a.get("class") or "").split()) | {a.get("id") or "", a.get("role") or ""}
        return bool(names & self.skip_classes)

    def handle_starttag(self, tag, attrs):
        if tag in HTML_VOID_TAGS:
            if self.skip_tag is None and tag in HTML_BLOCK_TAGS:
                self.parts.append("\n\n")
            return
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth += 1
            return
        if self._skipped(tag, attrs):
            self.skip_tag, self.skip_depth = tag, 1
            return
        if tag in HTML_BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag):
        if self.skip_tag is not None:
            if tag == self.skip_tag:
                self.skip_depth -= 1
                if self.skip_depth == 0:
                    self.skip_tag = None
            return
        if tag in HTML_BLOCK_TAGS:
            self.parts.append("\n\n")

    def handle_data(self, data):
        if self.skip_tag is None:  # a line break in the source is a space (CRLF pages too: git's manuals)
            self.parts.append(data.replace("\r", " ").replace("\n", " "))


def html_text(text: str, skip_classes=()) -> str:
    """Readable text of an HTML page: scripts, styles, code blocks, navigation and the elements whose
    class, id or role is in ``skip_classes`` dropped; block elements become paragraph breaks."""
    parser = _HTMLText(frozenset(skip_classes))
    parser.feed(text)
    parser.close()
    return normalize("".join(parser.parts))
