"""Atomic writes: a kill or an exception never leaves a truncated file under the target's name."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import flyweight.utils.io as io_mod

from flyweight.utils.io import (
    atomic_path,
    atomic_replace_dir,
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    remove_stale_temps,
    sha256_file,
    temp_path_for,
)


def test_write_replaces_target_and_leaves_no_temp(tmp_path):
    target = tmp_path / "sub" / "result.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert target.read_text().strip().replace(" ", "").replace("\n", "") == '{"a":2}'
    assert sorted(p.name for p in target.parent.iterdir()) == ["result.json"]


def test_exception_keeps_old_target_and_removes_temp(tmp_path):
    target = tmp_path / "x.txt"
    atomic_write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_write(target, "w") as f:
            f.write("half of the new")
            raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["x.txt"]


def test_bad_mode_is_refused(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with atomic_write(tmp_path / "x", "a"):
            pass


_SLOW_WRITER = """
import sys, time
from flyweight.utils.io import atomic_write
with atomic_write(sys.argv[1]) as f:
    f.write(b"x" * 1000)
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


def test_sigkill_mid_write_keeps_old_target_and_stale_temp_is_cleaned(tmp_path):
    target = tmp_path / "big.bin"
    target.write_bytes(b"old")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1] / "src"))
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_WRITER, str(target)], stdout=subprocess.PIPE, env=env)
    assert proc.stdout.readline().strip() == b"writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert target.read_bytes() == b"old"
    temps = list(tmp_path.glob("big.bin.*.tmp"))
    assert len(temps) == 1 and temps[0].stat().st_size == 1000
    assert remove_stale_temps(tmp_path) == temps
    assert [p.name for p in tmp_path.iterdir()] == ["big.bin"]


def test_temp_of_a_live_process_is_kept_unless_old(tmp_path):
    mine = temp_path_for(tmp_path / "a.bin")
    mine.write_bytes(b"in progress")
    legacy = tmp_path / "b.json.tmp"  # an older flyweight's fixed temp name: only age tells
    legacy.write_text("{")
    assert remove_stale_temps(tmp_path) == []
    old = time.time() - 2 * 24 * 3600
    os.utime(legacy, (old, old))
    assert remove_stale_temps(tmp_path) == [legacy]
    assert mine.exists()


def test_replace_dir_swaps_contents(tmp_path):
    target = tmp_path / "pkg"
    target.mkdir()
    (target / "old.txt").write_text("old")
    tmp = temp_path_for(target)
    tmp.mkdir()
    (tmp / "new.txt").write_text("new")
    atomic_replace_dir(tmp, target)
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]
    assert [p.name for p in target.iterdir()] == ["new.txt"]


def test_sha256_file_matches_hashlib_across_chunks(tmp_path):
    data = os.urandom(10_000)
    path = tmp_path / "d"
    path.write_bytes(data)
    assert sha256_file(path, chunk=999) == hashlib.sha256(data).hexdigest()


def test_temp_of_another_machine_is_judged_by_age_only(tmp_path):
    other_host = "000000" if io_mod._host_tag() != "000000" else "111111"
    dead_pid = 999_999_999  # above any pid_max: not running here, but maybe there
    foreign = tmp_path / f"a.bin.{other_host}-{dead_pid}.0123abcd.tmp"
    foreign.write_bytes(b"x")
    local = tmp_path / f"a.bin.{io_mod._host_tag()}-{dead_pid}.0123abcd.tmp"
    local.write_bytes(b"x")
    assert remove_stale_temps(tmp_path) == [local]
    assert foreign.exists()


def test_atomic_path_for_writers_that_take_a_file_name(tmp_path):
    import torch

    target = tmp_path / "w.pt"
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        torch.save({"x": torch.arange(3)}, tmp)
    assert torch.equal(torch.load(target)["x"], torch.arange(3))
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"trunc")
            raise KeyboardInterrupt
    assert torch.equal(torch.load(target)["x"], torch.arange(3))
    assert [p.name for p in tmp_path.iterdir()] == ["w.pt"]
