"""Building a named corpus end to end from local packages in the real formats; fetch errors; the artifact."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import stat
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from _lm_helpers import synthetic_articles
from test_corpus_formats import OSIS_BLOCK, write_dictd, write_sword, write_wordnet

from flyweight.data import artifact, build, dedup, packages, sources, tokens
from flyweight.data.corpora import SPLITS, make_corpus
from flyweight.data.tokenizer import load_tokenizer

SHARED = ("The river carried the old boat past the city walls and into the green valley where the "
          "farmers were waiting for the spring rain to come.")


def _local(name, folder, parser, members, kind="prose"):
    return sources.Source(name, "local", str(folder), "1", "-", "0" * 64, "test licence", kind, parser,
                          tuple(members), f"test {name}")


def write_packages(root: Path) -> dict[str, sources.Source]:
    wiki = root / "wiki"
    wiki.mkdir(parents=True)
    arts = {t: {"title": t, "extract": "\n".join(p)} for t, p in synthetic_articles(30, seed=5)}
    arts["Shared"] = {"title": "Shared", "extract": SHARED}
    (wiki / "summaries.json").write_text(json.dumps(arts))
    dic = root / "dict"
    dic.mkdir()
    entries = [([f"Word{i}"], f"Word{i} \\Wo\"rd\\, n. The {i}th word of a list of many words that we keep. "
                              f"[1913 Webster]\n") for i in range(20)]
    entries.append((["Shared"], SHARED + "\n"))                                   # exact duplicate
    write_dictd(dic, "test", entries)
    sword = root / "sword"
    sword.mkdir()
    near = SHARED.replace("spring rain", "spring rains")                         # near duplicate
    blocks = [OSIS_BLOCK] + [f'<chapter n="{c}" sID="Ps.{c}"/><div type="x-p"/>Chapter {c} says that the '
                             f'{c} trees stood tall by the water and gave fruit in season number {c}.'
                             for c in range(3, 15)] + [f'<chapter n="99" sID="Ps.99"/><div type="x-p"/>{near}']
    write_sword(sword, blocks)
    wn = root / "wordnet"
    wn.mkdir()
    write_wordnet(wn)
    return {s.name: s for s in [
        _local("t_wiki", wiki, "wiki_json", ["summaries.json"]),
        _local("t_dict", dic, "dictd", ["*.dict.dz"]),
        _local("t_sword", sword, "sword_osis", ["*.czs"]),
        _local("t_wordnet", wn, "wordnet", ["data.*"], kind="technical"),
    ]}


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A recipe 'tiny' of four local sources, registered like the real ones."""
    table = write_packages(tmp_path / "pkgs")
    for s in table.values():
        monkeypatch.setitem(sources.SOURCES, s.name, s)
    rec = sources.Recipe("tiny", tuple(table), val_fraction=0.2, test_fraction=0.2, description="test")
    monkeypatch.setitem(sources.RECIPES, "tiny", rec)
    return rec, tmp_path / "cache"


def read_split(root: Path, name: str, split: str) -> list[dict]:
    with open(build.corpus_dir(name, root) / f"{split}.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_build_splits_by_document_dedups_across_sources_and_counts(tiny, tok_dir):
    rec, root = tiny
    manifest = build.build_corpus("tiny", root, tokenizer=str(tok_dir), progress=False)
    docs = {s: read_split(root, "tiny", s) for s in SPLITS}
    ids = {s: {(d["source"], d["id"]) for d in docs[s]} for s in SPLITS}
    assert not ids["train"] & ids["val"] and not ids["train"] & ids["test"] and not ids["val"] & ids["test"]
    assert all(docs[s] for s in SPLITS)
    # the shared paragraph survives exactly once, its near copy is gone, in whichever split it came first
    all_paras = [p for s in SPLITS for d in docs[s] for p in d["text"].split("\n\n") if p]
    assert sum(p == SHARED for p in all_paras) == 1
    assert not any("spring rains" in p for p in all_paras)
    assert manifest["dedup"]["exact"] >= 1 and manifest["dedup"]["near"] >= 1
    # no paragraph of an evaluation split is (nearly) repeated in train
    train = [p for d in docs["train"] for p in d["text"].split("\n\n") if len(p.split()) >= 8]
    for s in ("val", "test"):
        for d in docs[s]:
            for p in d["text"].split("\n\n"):
                if len(p.split()) >= 8:
                    assert all(dedup.jaccard(p, q) < 0.7 for q in train)
    # manifest: per-source rows add up to the split totals, and the token counts are the real ones
    tok = load_tokenizer(str(tok_dir))
    for s in SPLITS:
        rows = [r for r in manifest["sources"] if "tokens" in r]
        assert sum(r["documents"][s] for r in rows) == manifest["splits"][s]["documents"] == len(docs[s])
        assert sum(r["characters"][s] for r in rows) == manifest["splits"][s]["characters"]
        expected = [i for d in docs[s] for i in tok.encode(d["text"])]
        assert sum(r["tokens"][s] for r in rows) == manifest["splits"][s]["tokens"] == len(expected)
        corpus = make_corpus("tiny", str(root))
        stream = tokens.tokenize_split(corpus, s, tok, root / "tokens", progress=False)
        np.testing.assert_array_equal(np.asarray(stream), np.asarray(expected, dtype=np.uint16))
    assert {r["licence"] for r in manifest["sources"]} == {"test licence"}
    assert (root / "tokens" / "tiny" / "manifest.json").exists()


def test_build_is_deterministic(tiny, tok_dir, tmp_path):
    rec, root = tiny
    a = build.build_corpus("tiny", root, tokenizer=str(tok_dir), progress=False)
    b = build.build_corpus("tiny", tmp_path / "other", tokenizer=str(tok_dir), progress=False)
    assert a["token_files"] == b["token_files"] and a["fingerprint"] == b["fingerprint"]


def test_token_cache_tampering_is_detected_and_rebuilt(tiny, tok_dir, capsys):
    rec, root = tiny
    manifest = build.build_corpus("tiny", root, tokenizer=str(tok_dir), progress=False)
    tok = load_tokenizer(str(tok_dir))
    corpus = make_corpus("tiny", str(root))
    bin_path, _ = tokens.cache_paths(corpus, "train", tok, root / "tokens")
    good = bin_path.read_bytes()
    bad = bytearray(good)
    bad[10] ^= 0xFF
    bin_path.write_bytes(bytes(bad))
    stream = tokens.tokenize_split(corpus, "train", tok, root / "tokens", progress=False)
    assert "sha256 mismatch" in capsys.readouterr().err
    assert np.asarray(stream).tobytes() == good
    assert tokens.sha256_file(bin_path) == manifest["token_files"]["train"]["sha256"]


def test_missing_source_gives_a_partial_corpus_that_says_so(tiny, tok_dir, monkeypatch):
    rec, root = tiny
    missing = sources.Source("t_deb", "deb", "no-such-package", "1.0", "no-such-package_1.0_all.deb", "ab" * 32,
                             "x", "prose", "plain_text", ("*.txt",))
    monkeypatch.setitem(sources.SOURCES, "t_deb", missing)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    partial = sources.Recipe("tiny2", ("t_deb", *rec.sources), 0.2, 0.2)
    monkeypatch.setitem(sources.RECIPES, "tiny2", partial)
    with pytest.raises(packages.PackageError, match=r"t_deb .*`apt-get` client is not installed.*apt-get download"):
        build.build_corpus("tiny2", root, tokenizer=str(tok_dir), strict=True, progress=False)
    manifest = build.build_corpus("tiny2", root, tokenizer=str(tok_dir), progress=False)
    assert manifest["missing"] == ["t_deb"]
    assert "missing" in manifest["sources"][0] and manifest["splits"]["train"]["tokens"] > 0
    full = build.build_corpus("tiny", root, tokenizer=str(tok_dir), progress=False)
    assert full["splits"]["train"] == manifest["splits"]["train"]
    assert full["fingerprint"] != manifest["fingerprint"]
    from flyweight.data.manifest import format_manifest, manifest_rows
    assert "PARTIAL corpus: missing sources t_deb" in format_manifest(manifest)
    assert manifest_rows(manifest)[-1]["tokens_train"] == manifest["splits"]["train"]["tokens"]


# ---- packages: the registry clients --------------------------------------------------------------------
def _fake_client(folder: Path, name: str, script: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!{sys.executable}\n{script}")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _deb_bytes(files: dict[str, bytes]) -> bytes:
    """A Debian package: an ar archive of debian-binary, control.tar.gz and data.tar.xz."""
    def tar(members, mode):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=mode) as tf:
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        return buf.getvalue()
    parts = [("debian-binary", b"2.0\n"), ("control.tar.gz", tar({"./control": b"Package: x\n"}, "w:gz")),
             ("data.tar.xz", tar({f"./{k}": v for k, v in files.items()}, "w:xz"))]
    out = b"!<arch>\n"
    for name, data in parts:
        out += f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data
        if len(data) % 2:
            out += b"\n"
    return out


def test_fetch_with_the_client_verifies_the_pin_and_unpacks_a_deb(tmp_path, monkeypatch):
    deb = _deb_bytes({"usr/share/doc/x/words.txt": b"Some words of English.\n"})
    digest = __import__("hashlib").sha256(deb).hexdigest()
    (tmp_path / "payload.deb").write_bytes(deb)
    # a fake apt-get that "downloads" the package into its working directory
    _fake_client(tmp_path / "bin", "apt-get", f"import shutil, sys\nshutil.copy({str(tmp_path / 'payload.deb')!r}, "
                                              f"'x_1.0_all.deb')\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    src = sources.Source("x", "deb", "x", "1.0", "x_1.0_all.deb", digest, "x", "prose", "plain_text", ("**/*.txt",))
    folder = packages.fetch_package(src, tmp_path / "cache")
    assert (folder / "usr/share/doc/x/words.txt").read_text() == "Some words of English.\n"
    # a changed package on the registry: the pin catches it
    wrong = sources.Source("y", "deb", "x", "1.0", "x_1.0_all.deb", "0" * 64, "x", "prose", "plain_text", ("*",))
    (tmp_path / "cache" / "packages" / "x_1.0_all.deb").unlink()
    with pytest.raises(packages.PackageError, match="pinned 0000"):
        packages.fetch_package(wrong, tmp_path / "cache")


def test_a_hanging_client_times_out_with_the_fix(tmp_path, monkeypatch):
    _fake_client(tmp_path / "bin", "npm", "import time\ntime.sleep(30)\n")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    src = sources.Source("n", "npm", "some-pkg", "1.0.0", "some-pkg-1.0.0.tgz", "0" * 64, "x", "prose",
                         "plain_text", ("*",))
    with pytest.raises(packages.PackageError, match=r"did not finish in 1 s.*npm pack some-pkg@1.0.0"):
        packages.download(src, tmp_path / "cache", timeout_s=1)


def test_a_tampered_cached_archive_is_set_aside_and_fetched_again(tmp_path, monkeypatch):
    data = gzip.compress(b"x")
    digest = __import__("hashlib").sha256(data).hexdigest()
    cache = tmp_path / "cache" / "packages"
    cache.mkdir(parents=True)
    (cache / "p-1.0.tgz").write_bytes(b"tampered")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    src = sources.Source("p", "npm", "p", "1.0", "p-1.0.tgz", digest, "x", "prose", "plain_text", ("*",))
    with pytest.raises(packages.PackageError, match="`npm` client is not installed"):
        packages.download(src, tmp_path / "cache")
    assert (cache / "p-1.0.tgz.bad").read_bytes() == b"tampered"
    (cache / "p-1.0.tgz").write_bytes(data)                   # copied by hand: no client needed
    assert packages.download(src, tmp_path / "cache") == cache / "p-1.0.tgz"


# ---- the artifact for the GPU machine ---------------------------------------------------------------------
def test_artifact_round_trip_into_a_fresh_cache(tiny, tok_dir, tmp_path):
    rec, root = tiny
    manifest = build.build_corpus("tiny", root, tokenizer=str(tok_dir), progress=False)
    tar = artifact.pack("tiny", tmp_path / "gpu", root)
    digest = (tmp_path / "gpu" / "tiny.tar.sha256").read_text().split()[0]
    fresh = tmp_path / "fresh"
    got = artifact.unpack(tar, fresh, sha256=digest)
    assert got["fingerprint"] == manifest["fingerprint"]
    assert not (build.corpus_dir("tiny", fresh) / "train.jsonl").exists()   # documents do not travel
    # the data module's path: the named corpus from the fresh cache, tokens from the unpacked cache
    corpus = make_corpus("tiny", str(fresh))
    tok = load_tokenizer(str(fresh / "tokenizers" / tok_dir.name))
    for s in SPLITS:
        stream = tokens.tokenize_split(corpus, s, tok, fresh / "tokens", progress=False)
        assert tokens.sha256_file(stream.filename) == manifest["token_files"][s]["sha256"]
    with pytest.raises(FileNotFoundError, match="only the token cache"):
        corpus.documents("train")


def test_artifact_tampered_or_missing_is_refused(tiny, tok_dir, tmp_path):
    rec, root = tiny
    build.build_corpus("tiny", root, tokenizer=str(tok_dir), progress=False)
    tar = artifact.pack("tiny", tmp_path / "gpu", root)
    with pytest.raises(artifact.ArtifactError, match="does not exist"):
        artifact.unpack(tmp_path / "nope.tar", tmp_path / "c1")
    with pytest.raises(artifact.ArtifactError, match="is not the expected"):
        artifact.unpack(tar, tmp_path / "c1", sha256="0" * 64)
    # rewrite one member with other content, as a corrupted copy would carry it
    bad = tmp_path / "bad.tar"
    with tarfile.open(tar) as src, tarfile.open(bad, "w") as dst:
        for m in src.getmembers():
            data = src.extractfile(m).read()
            if m.name == "tokens/val.bin.xz":
                data = data[:-8] + bytes(8)
            m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    with pytest.raises(artifact.ArtifactError, match="tokens/val.bin.xz has sha256 .*tampered"):
        artifact.unpack(bad, tmp_path / "c2")


def test_an_artifact_of_another_recipe_is_refused_on_arrival_and_never_rebuilt(tiny, tok_dir, tmp_path,
                                                                               monkeypatch):
    rec, root = tiny
    build.build_corpus("tiny", root, tokenizer=str(tok_dir), progress=False)
    tar = artifact.pack("tiny", tmp_path / "gpu", root)
    fresh = tmp_path / "fresh"
    artifact.unpack(tar, fresh)
    # this checkout's recipe changes (another source, other cleaning, ...): the carried tokens are not its corpus
    monkeypatch.setitem(sources.RECIPES, "tiny", sources.Recipe("tiny", rec.sources, 0.25, 0.2))
    monkeypatch.setattr(build, "build_corpus", lambda *a, **k: pytest.fail("tried to rebuild from the registries"))
    with pytest.raises(ValueError, match=r"artifact was built by recipe .* Fix: .*flyweight data fetch corpus=tiny"):
        make_corpus("tiny", str(fresh))
    with pytest.raises(artifact.ArtifactError, match="this checkout's recipe is"):
        artifact.unpack(tar, tmp_path / "again")
    monkeypatch.delitem(sources.RECIPES, "tiny")
    with pytest.raises(artifact.ArtifactError, match="does not know"):
        artifact.unpack(tar, tmp_path / "again")


def test_an_artifact_over_the_carry_limit_is_refused_and_not_left_behind(tiny, tok_dir, tmp_path, monkeypatch):
    rec, root = tiny
    build.build_corpus("tiny", root, tokenizer=str(tok_dir), progress=False)
    monkeypatch.setattr(artifact, "MAX_ARTIFACT_MIB", 0.001)
    with pytest.raises(artifact.ArtifactError, match="over the 0.001 MiB.*max_chars"):
        artifact.pack("tiny", tmp_path / "gpu", root)
    assert list((tmp_path / "gpu").iterdir()) == []


def test_cli_data_fetch_arguments(capsys):
    from flyweight.cli import main

    assert main(["data"]) == 2
    assert "named corpora: english" in capsys.readouterr().err
    assert main(["data", "fetch", "corpus=nope"]) == 2
    assert main(["data", "fetch", "corpus=english", "bogus=1"]) == 2


def test_experiments_accept_the_named_corpora():
    from hydra import compose, initialize_config_module

    for name in ("english", "english_small"):
        with initialize_config_module(config_module="flyweight.configs", version_base="1.3"):
            cfg = compose(config_name="config", overrides=["experiment=tiny-lm", f"data={name}"])
        assert cfg.data.corpus == name and cfg.data.tokenizer == "gpt2" and cfg.data.max_length == 128


def test_the_data_module_reads_a_named_corpus_and_its_manifest(tiny, tok_dir):
    from flyweight.data.datamodule import DataConfig, LMDataModule

    rec, root = tiny
    manifest = build.build_corpus("tiny", root, tokenizer=str(tok_dir), progress=False)
    dm = LMDataModule(DataConfig(corpus="tiny", path=str(root), tokenizer=str(tok_dir), max_length=8,
                                 cache_dir=str(root / "tokens"), progress=False)).load()
    assert len(dm.windows["train"].tokens) == manifest["splits"]["train"]["tokens"]
    assert dm.manifest()["fingerprint"] == manifest["fingerprint"]



def test_a_named_corpus_given_as_a_cache_root_reads_that_roots_token_cache(tiny, tok_dir):
    from flyweight.data.datamodule import DataConfig, LMDataModule

    rec, root = tiny
    manifest = build.build_corpus("tiny", root, tokenizer=str(tok_dir), progress=False)
    for split in SPLITS:   # as on the GPU machine: only the token cache, no documents to tokenize again
        (build.corpus_dir("tiny", root) / f"{split}.jsonl").unlink()
    dm = LMDataModule(DataConfig(corpus="tiny", path=str(root), tokenizer=str(tok_dir), max_length=8,
                                 progress=False)).load()
    assert dm.token_cache_dir() == str(root / "tokens")
    for split in SPLITS:
        assert tokens.sha256_file(dm.windows[split].tokens.filename) == manifest["token_files"][split]["sha256"]


def test_a_training_run_on_a_named_corpus_reports_its_manifest(tiny, tok_dir, tmp_path):
    import json as _json

    from _lm_helpers import tiny_lm_cfg

    from flyweight.train.lm import train_lm

    rec, root = tiny
    manifest = build.build_corpus("tiny", root, tokenizer=str(tok_dir), progress=False)
    cfg = tiny_lm_cfg(root, tok_dir, root / "tokens", corpus="tiny", data={"max_length": 8},
                      trainer={"max_steps": 2})
    res = train_lm(cfg, tmp_path / "run")
    assert res["corpus_manifest"]["fingerprint"] == manifest["fingerprint"]
    assert [r["source"] for r in res["corpus_manifest"]["sources"]] == list(rec.sources)
    assert _json.loads(_json.dumps(res, default=str))["corpus_manifest"]["splits"] == manifest["splits"]


def test_committed_manifests_describe_the_recipes():
    from flyweight.data.manifest import committed_manifest, manifest_rows

    for name, rec in sources.RECIPES.items():
        if name not in ("english", "english_small"):
            continue
        m = committed_manifest(name)
        assert m is not None, f"flyweight/data/manifests/{name}.json is missing: flyweight data fetch corpus={name}"
        assert m["recipe_fingerprint"] == rec.fingerprint(), f"{name}.json is stale: rebuild and commit it"
        assert m["recipe_version"] == sources.RECIPE_VERSION and not m["missing"]
        assert [r["source"] for r in m["sources"]] == list(rec.sources)
        rows = manifest_rows(m)
        for split in SPLITS:
            assert sum(r[f"tokens_{split}"] for r in rows[:-1]) == m["splits"][split]["tokens"] == \
                m["token_files"][split]["n_tokens"]
        assert all(r["licence"] and len(r["sha256"]) == 64 for r in m["sources"])
