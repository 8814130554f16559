"""The Hydra entry point: configs compose, tasks dispatch, every run records its resolved config."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

# the training / config stack: a kernels-only machine (torch, triton, transformers) skips this file
pytest.importorskip("hydra")
pytest.importorskip("omegaconf")

from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from flyweight.runner import resolve_task, run_task

REPO = Path(__file__).resolve().parents[1]


def make_cfg(*overrides):
    with initialize_config_module(config_module="flyweight.configs", version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides), return_hydra_config=False)


def test_layers_task_writes_resolved_config_and_results(tmp_path):
    cfg = make_cfg("experiment=layers", "layers.shapes=[[128,64]]", "layers.tokens=[8]", "layers.budget_s=0.01")
    OmegaConf.set_struct(cfg, False)
    cfg.name = "layers"  # the ${hydra:...} interpolation only resolves inside a Hydra run
    run_task(cfg, tmp_path)
    saved = OmegaConf.load(tmp_path / "resolved_config.yaml")
    assert list(saved.layers.shapes[0]) == [128, 64] and saved.task == "layers"
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["kind"] for r in rows] == ["dense", "lowrank", "monarch", "ss1"]
    assert rows[0]["params"] == 128 * 64 + 64 and rows[0]["speedup"] == 1.0
    assert len(list(tmp_path.glob("layers_*.csv"))) == 1


def test_unknown_task_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown task 'nope'; valid tasks: .*layers"):
        resolve_task("nope")


def test_run_py_prints_resolved_job_config():
    out = subprocess.run([sys.executable, str(REPO / "run.py"), "experiment=layers", "layers.tokens=[3]", "--cfg", "job"],
                         capture_output=True, text=True, check=True, cwd=REPO)
    cfg = OmegaConf.create(out.stdout)
    assert cfg.task == "layers" and list(cfg.layers.tokens) == [3]


def test_cli_unknown_subcommand(capsys):
    from flyweight.cli import SUBCOMMANDS, main

    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "unknown subcommand 'frobnicate'" in err
    assert SUBCOMMANDS and all(name in err for name in SUBCOMMANDS), err  # the message names the valid ones


@pytest.mark.parametrize("override,named", [
    ("trainer.max_step=5", "max_step"),              # misspelt key of a typed group
    ("trainer.max_steps=abc", "max_steps"),          # wrong type
    ("data.global_batch_size=1.5", "global_batch_size"),
    ("model.dropuot=0.2", "dropuot"),
])
def test_typed_groups_reject_bad_overrides_before_any_work(override, named):
    with pytest.raises(Exception, match=named):
        make_cfg("experiment=tiny-lm", override)


def test_group_defaults_have_one_source_the_dataclasses():
    from dataclasses import fields

    from flyweight.configs.schema import GROUPS

    cfg = make_cfg("experiment=wt103/gpt2")
    for (group, _), cls in GROUPS.items():
        assert set(cfg[group]) == {f.name for f in fields(cls)}, group
        stray = REPO / "src" / "flyweight" / "configs" / group / f"{_}.yaml"
        assert not stray.exists(), f"{stray} duplicates the dataclass {cls.__name__}"


def test_flyweight_help_lists_the_subcommands(capsys):
    from flyweight.cli import SUBCOMMANDS, main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(f"  {name} " in out for name in SUBCOMMANDS) and "compare-gpu" in out
