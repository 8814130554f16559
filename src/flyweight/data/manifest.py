"""The manifest of a named corpus: what it is made of, per source and per split, for every report.

``corpus_manifest(name)`` returns the manifest of the local build when there is one (the cache),
else the one committed with the package (``flyweight/data/manifests/<name>.json``, written by the
build that produced the published artifact). ``manifest_rows(manifest)`` gives one row per source
(source, registry, package, version, licence, sha256, kind, and documents / characters / tokens
per split) and ``format_manifest`` a Markdown table of them for reports.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from flyweight.data.corpora import SPLITS
from flyweight.data.sources import RECIPE_VERSION

COMMITTED = "flyweight.data.manifests"


def make_manifest(rec, table, splits, tokens, dropped, stats, missing, fingerprint, tokenizer, files) -> dict:
    sources = []
    for name in rec.sources:
        src = table[name]
        row = {"source": name, "registry": src.registry, "package": src.package, "version": src.version,
               "licence": src.licence, "sha256": src.sha256, "kind": src.kind, "description": src.description}
        if name in missing:
            row["missing"] = missing[name]
        else:
            for what in ("documents", "characters", "tokens"):
                row[what] = {}
            for split in SPLITS:
                docs = [t for s, _, t in splits[split] if s == name]
                row["documents"][split] = len(docs)
                row["characters"][split] = sum(len(t) for t in docs)
                row["tokens"][split] = tokens[split].get(name, 0)
            row["duplicate_paragraphs_removed"] = dropped.get(name, {}).get("paragraphs", 0)
        sources.append(row)
    totals = {split: {"documents": len(splits[split]),
                      "characters": sum(len(t) for _, _, t in splits[split]),
                      "tokens": files[split]["n_tokens"]} for split in SPLITS}
    prose = sum(r["tokens"]["train"] for r in sources if "tokens" in r and r["kind"] == "prose")
    return {
        "name": rec.name, "description": rec.description, "fingerprint": fingerprint,
        "recipe_fingerprint": rec.fingerprint(table), "recipe_version": RECIPE_VERSION,
        "split": {"by": "document", "val_fraction": rec.val_fraction, "test_fraction": rec.test_fraction,
                  "seed": rec.seed, "dedup_order": ["val", "test", "train"]},
        "tokenizer": {"name": tokenizer.name, "fingerprint": tokenizer.fingerprint},
        "splits": totals,
        "prose_fraction_of_train_tokens": round(prose / max(totals["train"]["tokens"], 1), 4),
        "dedup": {"paragraphs": stats.paragraphs, "exact": stats.exact, "near": stats.near},
        "missing": sorted(missing),
        "token_files": {split: {k: files[split][k] for k in ("file", "n_tokens", "sha256", "dtype")}
                        for split in SPLITS},
        "sources": sources,
    }


def committed_manifest(name: str) -> dict | None:
    try:
        text = resources.files(COMMITTED).joinpath(f"{name}.json").read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError):
        return None
    return json.loads(text)


def corpus_manifest(name: str, root: Path | str | None = None) -> dict:
    """The manifest of corpus ``name``: the local build's, else the committed one."""
    from flyweight.data.build import built_manifest

    manifest = built_manifest(name, Path(root).expanduser() if root else None) or committed_manifest(name)
    if manifest is None:
        raise FileNotFoundError(f"corpus {name!r} has no manifest: not built here and none committed. "
                                f"Fix: flyweight data fetch corpus={name}")
    return manifest


def manifest_rows(manifest: dict) -> list[dict]:
    """One flat row per source (and a total row), ready for a CSV or a report table."""
    rows = []
    for src in manifest["sources"]:
        row = {k: src[k] for k in ("source", "registry", "package", "version", "licence", "sha256", "kind")}
        for what in ("documents", "characters", "tokens"):
            for split in SPLITS:
                row[f"{what}_{split}"] = src.get(what, {}).get(split, 0)
        row["missing"] = src.get("missing", "")
        rows.append(row)
    total = {"source": "total", "registry": "", "package": f"{manifest['name']} ({manifest['fingerprint']})",
             "version": "", "licence": "", "sha256": "", "kind": ""}
    for what in ("documents", "characters", "tokens"):
        for split in SPLITS:
            total[f"{what}_{split}"] = manifest["splits"][split][what]
    total["missing"] = ", ".join(manifest.get("missing", []))
    rows.append(total)
    return rows


def format_manifest(manifest: dict) -> str:
    """A Markdown table: source, package, licence, tokens per split (M), documents."""
    lines = [f"corpus {manifest['name']} (fingerprint {manifest['fingerprint']}, tokenizer "
             f"{manifest['tokenizer']['name']}; split by document; prose "
             f"{100 * manifest['prose_fraction_of_train_tokens']:.0f}% of train tokens)", "",
             "| source | package | version | licence | kind | train tokens | val tokens | test tokens | documents |",
             "|---|---|---|---|---|---:|---:|---:|---:|"]
    for r in manifest_rows(manifest):
        docs = r["documents_train"] + r["documents_val"] + r["documents_test"]
        note = f" (missing: {r['missing']})" if r["missing"] and r["source"] != "total" else ""
        lines.append(f"| {r['source']}{note} | {r['registry']} {r['package']} | {r['version']} | {r['licence']} | "
                     f"{r['kind']} | {r['tokens_train'] / 1e6:.2f}M | {r['tokens_val'] / 1e6:.3f}M | "
                     f"{r['tokens_test'] / 1e6:.3f}M | {docs} |")
    if manifest.get("missing"):
        lines.append(f"\nPARTIAL corpus: missing sources {', '.join(manifest['missing'])}")
    return "\n".join(lines)
