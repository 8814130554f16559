"""SIGKILL a tiny training run, with $TMPDIR on another filesystem, and re-run the same command: it must
continue the same loss curve and logs (issue 15, "What to build" 5).

One kill lands inside a checkpoint write (the write is held half-done until the kill), the others at
seeded random moments of the run. Every outcome (before the first checkpoint, between a step file and
last.ckpt, during a log append, after the end) must resume to the uninterrupted run's numbers.
"""

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# the training / config stack: a kernels-only machine (torch, triton, transformers) skips this file
pytest.importorskip("lightning")

import torch
from _lm_helpers import lm_files, one_thread, tiny_lm_cfg  # noqa: F401  (one_thread: a fixture)

from flyweight.train.lm import train_lm

SRC = Path(__file__).resolve().parents[1] / "src"
OTHER_FS_TMP = "/dev/shm"  # a tmpfs: a move from $TMPDIR to the run folder is a copy there

# train_lm in a child; "hold:<step>" makes the write of last.ckpt at that step stop half-written (a kill
# mid-write), printing "holding" once it does
_CHILD = """
import json, os, sys, time, torch
torch.set_num_threads(1)
cfg, out, mode = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
if mode.startswith("hold:"):
    step, real = int(mode[5:]), torch.save
    def held_save(obj, f, *args, **kwargs):
        real(obj, f, *args, **kwargs)
        if isinstance(obj, dict) and obj.get("global_step") == step and "last.ckpt" in os.path.basename(str(f)):
            with open(f, "r+b") as h:
                h.truncate(os.path.getsize(f) // 2)
            print("holding", f, flush=True)
            time.sleep(600)
    torch.save = held_save
from flyweight.train.lm import train_lm
train_lm(cfg, out)
"""


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    data = lm_files(root)
    cfg = tiny_lm_cfg(data["wt"], data["tok"], data["cache"], model={"dropout": 0.1},
                      trainer={"max_steps": 24, "ckpt_every_n_steps": 2, "keep_checkpoints": 2,
                               "val_every_n_steps": 5})
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = train_lm(cfg, root / "ref")  # also builds the token cache the children read
    finally:
        torch.set_num_threads(n)
    return cfg, root / "ref", ref


def _child(cfg, run: Path, mode: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(SRC), OMP_NUM_THREADS="1")
    if Path(OTHER_FS_TMP).is_dir():
        env["TMPDIR"] = OTHER_FS_TMP
    run.mkdir(parents=True)
    stderr = open(run.parent / "child.err", "w")  # a file, not a pipe nobody reads (which would block the child)
    return subprocess.Popen([sys.executable, "-c", _CHILD, json.dumps(cfg), str(run), mode], env=env,
                            stdout=subprocess.PIPE, stderr=stderr, text=True)


def _child_err(run: Path) -> str:
    return (run.parent / "child.err").read_text()[-3000:]


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _curves(run: Path):
    steps = [(r["step"], r["loss"], r["lr"]) for r in _rows(run / "steps.csv")]
    logged = [(r["step"], r["train/loss"]) for r in _rows(run / "logs" / "csv" / "metrics.csv") if r["train/loss"]]
    evals = [(r["step"], r["ppl"]) for r in _rows(run / "evals.csv")]
    return steps, logged, evals


def _same_as_reference(run: Path, result: dict, ref_run: Path, ref: dict) -> None:
    assert _curves(run) == _curves(ref_run)
    assert result["val"]["ppl"] == ref["val"]["ppl"] and result["steps"] == ref["steps"]
    assert not list(run.rglob("*.tmp"))


def test_kill_during_a_checkpoint_write_resumes_from_the_newest_complete_one(setup, tmp_path, capsys):
    cfg, ref_run, ref = setup
    run = tmp_path / "run"
    child = _child(cfg, run, "hold:4")
    try:
        line = child.stdout.readline()
        while line and not line.startswith("holding"):  # the child's own [flyweight] lines come first
            line = child.stdout.readline()
        assert line.startswith("holding"), _child_err(run)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    ckpts = run / "checkpoints"
    # the half-written file sits beside its target under a temporary name; last.ckpt is step 2's, whole
    assert len(list(ckpts.glob("last.ckpt.*.tmp"))) == 1
    assert torch.load(ckpts / "last.ckpt", weights_only=True, mmap=True)["global_step"] == 2
    assert (ckpts / "step000004.ckpt").exists()

    capsys.readouterr()
    result = train_lm(cfg, run)  # the same command again
    said = capsys.readouterr().out
    assert "left by an interrupted write" in said
    assert f"resuming from {ckpts / 'step000004.ckpt'} (step 4" in said  # not last.ckpt's step 2
    _same_as_reference(run, result, ref_run, ref)


@pytest.mark.parametrize("seed", [0, 1])
def test_kill_at_a_random_moment_then_rerun_gives_the_same_curve(setup, tmp_path, seed):
    cfg, ref_run, ref = setup
    run = tmp_path / "run"
    child = _child(cfg, run, "run")
    try:
        deadline = time.time() + 120
        while not (run / "steps.csv").exists():  # training has started (imports and set-up take most of a run)
            assert child.poll() is None, _child_err(run)
            assert time.time() < deadline, "the child did not start training within 120 s"
            time.sleep(0.02)
        time.sleep(random.Random(seed).uniform(0.0, 1.5))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    result = train_lm(cfg, run)
    _same_as_reference(run, result, ref_run, ref)
