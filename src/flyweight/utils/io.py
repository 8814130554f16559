"""Files that are either complete or absent: atomic writes, stale temporary files, sha256, the cache root.

A file a run produces (checkpoint, result, report, token cache, manifest) is written to a temporary
name *beside* its target (same directory, so same filesystem), flushed and fsynced, then moved over
the target with ``os.replace`` (atomic on POSIX and Windows). A kill at any point leaves either the
old target or the new one, never a truncated file with the target's name. Writing to ``$TMPDIR`` and
moving is not atomic when ``$TMPDIR`` is another filesystem: the move becomes a copy.

Temporary names are ``<target name>.<host>-<pid>.<random>.tmp``; :func:`remove_stale_temps` deletes
those left by processes of this machine that no longer run (a killed writer), so they do not pile up
across restarts; a name from another machine (a shared filesystem) is only judged by its age.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from flyweight.utils.env import env_path

TEMP_SUFFIX = ".tmp"
_TEMP_NAME = re.compile(r"^(?P<target>.+)\.(?P<host>[0-9a-f]{6})-(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def temp_path_for(target: str | Path) -> Path:
    """A fresh temporary name beside ``target`` that no other process, thread or machine will pick."""
    target = Path(target)
    return target.with_name(f"{target.name}.{_host_tag()}-{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def fsync_dir(folder: str | Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(target: str | Path, mode: str = "wb", encoding: str | None = None) -> Iterator[IO[Any]]:
    """Open a temporary file beside ``target``; on a clean exit it replaces ``target`` atomically.

    On an exception the temporary file is removed and ``target`` is left as it was.
    ``mode`` is ``"wb"`` or ``"w"`` (text, ``encoding`` defaulting to UTF-8).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(target)
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    f = open(tmp, "x" + mode[1:], encoding=encoding)
    try:
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """A temporary path beside ``target`` for writers that take a file name (``safetensors.save_file``,
    ``torch.save``); on a clean exit the file is fsynced and replaces ``target`` atomically."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(target)
    try:
        yield tmp
        if not tmp.is_file():
            raise FileNotFoundError(f"atomic_path: the writer did not create {tmp}")
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def atomic_write_bytes(target: str | Path, data: bytes) -> Path:
    with atomic_write(target, "wb") as f:
        f.write(data)
    return Path(target)


def atomic_write_text(target: str | Path, text: str, encoding: str = "utf-8") -> Path:
    with atomic_write(target, "w", encoding=encoding) as f:
        f.write(text)
    return Path(target)


def atomic_write_json(target: str | Path, obj: Any, **dumps_kwargs: Any) -> Path:
    dumps_kwargs.setdefault("indent", 1)
    return atomic_write_text(target, json.dumps(obj, **dumps_kwargs) + "\n")


def atomic_replace_dir(tmp_dir: str | Path, target: str | Path) -> Path:
    """Move a fully written directory ``tmp_dir`` to ``target``, replacing an old one.

    Directories cannot be swapped atomically with one rename when the target exists, so the old one
    is first renamed aside and removed after; a kill in between leaves a ``*.tmp`` directory that
    :func:`remove_stale_temps` cleans, and ``target`` either old or new.
    """
    tmp_dir, target = Path(tmp_dir), Path(target)
    old = None
    if target.exists():
        old = temp_path_for(target)
        os.replace(target, old)
    os.replace(tmp_dir, target)
    fsync_dir(target.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return target


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists but is not ours, or we cannot tell: keep its file
    return True


def remove_stale_temps(folder: str | Path, recursive: bool = False,
                       max_age_s: float = 24 * 3600) -> list[Path]:
    """Delete temporary files/directories in ``folder`` left by writers that are gone; return them.

    A name from :func:`temp_path_for` is stale when it was made on this machine by a process that no
    longer runs, or when it has not been touched for ``max_age_s``. Other names (another machine on
    a shared filesystem, older flyweight versions' fixed ``*.tmp`` names) are stale by age only.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    now, host = time.time(), _host_tag()
    candidates = folder.rglob(f"*{TEMP_SUFFIX}") if recursive else folder.glob(f"*{TEMP_SUFFIX}")
    for path in list(candidates):
        try:
            age = now - path.stat().st_mtime
        except FileNotFoundError:
            continue
        m = _TEMP_NAME.match(path.name)
        dead_writer = m is not None and m["host"] == host and not _pid_alive(int(m["pid"]))
        stale = age > max_age_s or dead_writer
        if not stale:
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def read_csv(path: str | Path) -> list[dict]:
    """The rows of a CSV file with a header, as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cache_root() -> Path:
    """Where flyweight keeps what it downloads and builds: ``$FLYWEIGHT_CACHE`` or ``~/.cache/flyweight``."""
    return env_path("FLYWEIGHT_CACHE")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in ``chunk``-byte blocks (constant memory for multi-GB files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
