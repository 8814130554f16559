"""Resume picks the newest checkpoint that reads, says which and why, and the logs go on (issue 15, items 1,
2, 10, 11): an empty or truncated last.ckpt, a kill between step<N>.ckpt and last.ckpt, killed writers'
temporary files, and an explicitly named damaged checkpoint."""

import csv
import os
from pathlib import Path

import pytest

# the training / config stack: a kernels-only machine (torch, triton, transformers) skips this file
pytest.importorskip("lightning")

import torch
from _lm_helpers import lm_files, one_thread, tiny_lm_cfg  # noqa: F401  (one_thread: a fixture)

from flyweight.train.checkpoints import UnreadableCheckpointError, newest_loadable
from flyweight.train.lm import eval_lm, train_lm
from flyweight.utils.io import _host_tag


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    return lm_files(root)


def config(data, **trainer):
    return tiny_lm_cfg(data["wt"], data["tok"], data["cache"], model={"dropout": 0.1},
                       trainer={"max_steps": 8, "ckpt_every_n_steps": 2, "keep_checkpoints": -1,
                                "val_every_n_steps": 3, **trainer})


def rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def losses(run: Path) -> list[tuple[int, float]]:
    return [(int(r["step"]), float(r["loss"])) for r in rows(run / "steps.csv")]


def logged_losses(run: Path) -> list[tuple[int, float]]:
    """Lightning's metrics.csv: (step, train/loss) of every training row."""
    return [(int(r["step"]), float(r["train/loss"])) for r in rows(run / "logs" / "csv" / "metrics.csv")
            if r.get("train/loss")]


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests' runs (module fixtures are set up before the autouse one)
    try:
        result = train_lm(config(data), run)
    finally:
        torch.set_num_threads(n)
    return run, result


def killed_after_step_4(data, run: Path, last: bytes | None) -> None:
    """The state a kill leaves after step 4's checkpoint: later files gone, last.ckpt = ``last`` bytes."""
    train_lm(config(data), run)
    ckpts = run / "checkpoints"
    for name in ("step000006.ckpt", "step000008.ckpt"):
        (ckpts / name).unlink(missing_ok=True)  # the final step has only last.ckpt
    if last is None:
        (ckpts / "last.ckpt").unlink()
    else:
        (ckpts / "last.ckpt").write_bytes(last)


@pytest.mark.parametrize("damage", ["empty", "truncated", "older"])
def test_resume_auto_takes_the_newest_readable_checkpoint_and_the_curve_goes_on(data, reference, tmp_path,
                                                                                  capsys, damage):
    ref_run, ref = reference
    run = tmp_path / "run"
    step2 = None
    if damage == "older":  # killed between step000004.ckpt and last.ckpt: last.ckpt still holds step 2
        train_lm(config(data, max_steps=8, stop_at_step=None), tmp_path / "two")
    if damage == "older":
        step2 = (tmp_path / "two" / "checkpoints" / "step000002.ckpt").read_bytes()
    full = None
    if damage == "truncated":
        train_lm(config(data), tmp_path / "whole")
        full = (tmp_path / "whole" / "checkpoints" / "last.ckpt").read_bytes()
    last = {"empty": b"", "truncated": full[: len(full) // 2] if full else None, "older": step2}[damage]
    killed_after_step_4(data, run, last)
    capsys.readouterr()

    result = train_lm(config(data), run)  # the same command again (trainer.resume=auto is the default)
    said = capsys.readouterr().out
    assert f"resuming from {run / 'checkpoints' / 'step000004.ckpt'} (step 4" in said
    if damage == "empty":
        assert f"skipped {run / 'checkpoints' / 'last.ckpt'} because it is empty (0 bytes" in said
    if damage == "truncated":
        assert f"skipped {run / 'checkpoints' / 'last.ckpt'} because it is not a complete checkpoint" in said
    # the loss curve, the per-step log and Lightning's CSV log are those of the uninterrupted run
    assert losses(run) == losses(ref_run)
    assert logged_losses(run) == logged_losses(ref_run)
    evals = [(r["step"], r["ppl"]) for r in rows(run / "evals.csv")]
    assert evals == [(r["step"], r["ppl"]) for r in rows(ref_run / "evals.csv")] and [s for s, _ in evals] == ["3", "6"]
    assert result["val"]["ppl"] == ref["val"]["ppl"]


def test_trainer_resume_never_starts_fresh_and_its_logs_too(data, reference, tmp_path):
    ref_run, ref = reference
    run = tmp_path / "run"
    killed_after_step_4(data, run, last=None)
    result = train_lm(config(data, resume="never"), run)
    assert losses(run) == losses(ref_run) and logged_losses(run) == logged_losses(ref_run)
    assert result["val"]["ppl"] == ref["val"]["ppl"]


def test_killed_writers_temp_files_are_removed_at_start(data, tmp_path, capsys):
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    ckpts.mkdir(parents=True)
    dead = 2**22 + 12345  # above the default pid_max: no process has it
    stale = ckpts / f"last.ckpt.{_host_tag()}-{dead}.0123abcd.tmp"
    stale.write_bytes(b"\0" * 1000)
    train_lm(config(data, max_steps=2), run)
    assert not stale.exists() and f"removed {stale}" in capsys.readouterr().out
    assert not list(ckpts.glob("*.tmp"))


def test_a_named_damaged_checkpoint_is_an_error_naming_it_and_a_readable_one(data, tmp_path):
    run = tmp_path / "run"
    killed_after_step_4(data, run, last=b"")
    bad = run / "checkpoints" / "last.ckpt"
    good = run / "checkpoints" / "step000004.ckpt"
    with pytest.raises(UnreadableCheckpointError, match=rf"checkpoint {bad} cannot be read: it is empty \(0 bytes"
                                                        rf".*newest readable checkpoint beside it is {good} \(step 4\)"):
        train_lm(config(data, resume=str(bad)), tmp_path / "other")
    with pytest.raises(UnreadableCheckpointError, match=rf"{bad} cannot be read.*{good}"):
        eval_lm({**config(data), "mode": "eval", "ckpt": str(bad)}, tmp_path / "eval")
    half = run / "checkpoints" / "half.ckpt"
    half.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(UnreadableCheckpointError, match=rf"{half} cannot be read: it is not a complete checkpoint "
                                                        r"\(5000 bytes"):
        eval_lm({**config(data), "mode": "eval", "ckpt": str(half)}, tmp_path / "eval")
    path, step, skipped = newest_loadable(run / "checkpoints")
    assert (path, step) == (good, 4) and sorted(p.name for p, _ in skipped) == ["half.ckpt", "last.ckpt"]


def test_resume_from_a_checkpoint_taken_just_before_an_evaluation_draws_the_same_dropout(data, reference, tmp_path):
    """Step 6 is checkpointed and then evaluated; the resumed run does not repeat that evaluation, so the
    evaluation must not move the training's RNG (its DataLoader drew a seed from the global RNG)."""
    ref_run, ref = reference
    run = tmp_path / "run"
    train_lm(config(data), run)
    (run / "checkpoints" / "last.ckpt").unlink()  # killed after step 6's checkpoint and evaluation
    result = train_lm(config(data), run)
    assert losses(run) == losses(ref_run) and result["val"]["ppl"] == ref["val"]["ppl"]


def test_under_hydra_the_command_that_continues_the_run_is_printed(tmp_path, monkeypatch):
    """issue 15 item 10: a plain `python run.py experiment=tiny-lm`, killed and re-run, started over in a new
    folder with no hint; the run now prints the command that continues it (resume=auto is the default)."""
    from hydra import compose, initialize_config_module
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from flyweight.train.lm import resume_command

    with initialize_config_module(config_module="flyweight.configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=tiny-lm", "trainer.max_steps=5"],
                      return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "outputs" / "run1")
    monkeypatch.setattr("sys.argv", ["run.py", "experiment=tiny-lm", "trainer.max_steps=5"])
    HydraConfig.instance().set_config(cfg)
    try:
        said = resume_command(tmp_path / "outputs" / "run1")
        assert resume_command(tmp_path / "elsewhere") is None  # a compare variant's folder: the report says
    finally:
        HydraConfig.instance().cfg = None
    assert said == f"python run.py experiment=tiny-lm trainer.max_steps=5 hydra.run.dir={tmp_path / 'outputs' / 'run1'}"
    assert resume_command(tmp_path) is None  # no Hydra run
