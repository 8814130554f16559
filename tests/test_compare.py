"""The comparison report from a tiny real run: files, table/CSV agreement, plots, and resume."""

import csv
import json
import re
import struct

import pytest

# the training / config stack: a kernels-only machine (torch, triton, transformers) skips this file
pytest.importorskip("hydra")
pytest.importorskip("omegaconf")

from _lm_helpers import make_tokenizer, write_wikitext
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from flyweight.runner import run_task


def tiny_compare_cfg(tmp_path, *extra):
    tok = make_tokenizer(tmp_path / "tok")
    wt = write_wikitext(tmp_path / "wt", sizes=(10, 3, 2))
    overrides = [
        "experiment=compare", "data.corpus=wikitext103", f"data.path={wt}", f"data.tokenizer={tok}",
        f"data.cache_dir={tmp_path / 'cache'}", "data.max_length=32", "data.global_batch_size=4",
        "data.micro_batch_size=4", "data.progress=false", "model.n_positions=32", "trainer.max_steps=3",
        "trainer.ckpt_every_n_steps=1", "trainer.progress_bar=false", "optim.warmup_steps=1",
        f"compare.dir={tmp_path / 'cmp'}", "compare.progress_bar=false", "compare.inference.batch=1",
        "compare.inference.seq_len=16", "compare.inference.prompt_len=4", "compare.inference.decode_tokens=2",
        "compare.inference.budget_s=0.01", "compare.inference.repeats=2", "compare.evals=3",
        "compare.variants=[{name: dense, kind: dense}, {name: ss1-r2, kind: ss1, settings: {compression: 2}}]",
        *extra,
    ]
    with initialize_config_module(config_module="flyweight.configs", version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    OmegaConf.set_struct(cfg, False)
    cfg.name = "compare"  # ${hydra:...} only resolves inside a Hydra run
    return cfg


def is_png(path):
    data = path.read_bytes()
    width, height = struct.unpack(">II", data[16:24])
    return data[:8] == b"\x89PNG\r\n\x1a\n" and width > 100 and height > 100


def test_compare_report_and_resume(tmp_path):
    cfg = tiny_compare_cfg(tmp_path)
    result = run_task(cfg, tmp_path / "out")
    root = tmp_path / "cmp"
    plots = ("ppl_vs_time.png", "ppl_vs_tokens.png", "ppl_vs_throughput.png", "ppl_vs_params.png", "loss_curves.png")
    for name in ("report.md", "results.csv", "resolved_config.yaml", "speeds.json", *plots):
        assert (root / name).exists(), name
    assert all(is_png(root / p) for p in plots)
    assert result["plot_series"] == {"ppl_vs_time": 2, "ppl_vs_tokens": 2, "ppl_vs_throughput": 2,
                                     "ppl_vs_params": 2, "loss_curves": 2}

    with open(root / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["dense", "ss1-r2"]
    report = (root / "report.md").read_text()
    table = [line for line in report.splitlines() if line.startswith("| ")][1:]
    assert len(table) == 2
    for line, row in zip(table, rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == row["variant"] and cells[1] == row["kind"]
        assert float(cells[6].replace(",", "")) == round(float(row["val_ppl"]), 2)
    assert float(rows[0]["train_vs_dense"]) == 1.0 and float(rows[0]["infer_vs_dense"]) == 1.0
    assert int(rows[1]["block_params"]) < int(rows[0]["block_params"])  # SS1 halves the block matrices
    assert all(int(r["train_steps"]) == 3 and float(r["val_ppl"]) > 1 for r in rows)
    # one sentence per kind, the columns defined, the provenance recorded
    assert "**ss1-r2** (SS1 compression=2):" in report and "x fewer block parameters" in report
    assert "- **train tok/s**:" in report and "Commit:" in report and "Load average" in report
    # only what the report reads stays on disk (no checkpoints, model, logs)
    for name in ("dense", "ss1-r2"):
        assert sorted(p.name for p in (root / "variants" / name).iterdir()) == ["evals.csv", "result.json", "steps.csv"]
    ss1 = json.loads((root / "variants" / "ss1-r2" / "result.json").read_text())
    assert [e["step"] for e in ss1["evals"]] == [1, 2, 3] and ss1["evals"][-1]["ppl"] == ss1["val_ppl"]

    # Interrupt: ss1's result was lost. Re-running the same command reuses dense untouched and runs
    # ss1 again, reaching the same perplexity (seeded); a truncated result.json is run again too.
    dense_result = root / "variants" / "dense" / "result.json"
    stamp = dense_result.stat().st_mtime_ns
    (root / "variants" / "ss1-r2" / "result.json").write_text('{"variant": "ss1-r2", "val')
    (root / "report.md").unlink()
    again = run_task(tiny_compare_cfg(tmp_path), tmp_path / "out2")
    assert dense_result.stat().st_mtime_ns == stamp
    assert (root / "report.md").exists()
    ss1_after = next(r for r in again["rows"] if r["variant"] == "ss1-r2")
    assert ss1_after["val_ppl"] == ss1["val_ppl"] and ss1_after["train_steps"] == 3


def test_time_budget_splits_the_comparison_across_commands(tmp_path):
    """compare.budget_s: the first command stops inside a variant; re-running continues it and the report
    merges all variants, with the same perplexities as one uninterrupted command."""
    whole = run_task(tiny_compare_cfg(tmp_path), tmp_path / "out")
    cfg = tiny_compare_cfg(tmp_path)
    cfg.compare.dir = str(tmp_path / "chunked")
    cfg.compare.budget_s = 1e-6  # spent at once: the first variant stops after its first step
    first = run_task(cfg, tmp_path / "o1")
    assert first["complete"] is False and first["pending"] == ["dense", "ss1-r2"]
    assert (tmp_path / "chunked" / "variants" / "dense" / "checkpoints" / "last.ckpt").exists()
    assert not (tmp_path / "chunked" / "report.md").exists()
    cfg.compare.budget_s = None
    done = run_task(cfg, tmp_path / "o2")
    assert done["complete"] is True
    assert [r["val_ppl"] for r in done["rows"]] == [r["val_ppl"] for r in whole["rows"]]


@pytest.mark.parametrize("override,message", [
    ("model.kind=foo", "valid kinds: dense, lowrank, monarch, ss1"),
    ("model.kind=ss1", "compare.only"),
    ("compare.only=[dense,ss9]", "valid keys: dense, ss1-r2"),
    ("compare.variants.1.kind=sss1", "valid kinds"),
    ("+compare.variants.1.settings.compresion=2", "valid: compression"),
    ("+compare.budgte=3", "valid keys: dir, variants"),
])
def test_bad_compare_settings_fail_before_any_work(tmp_path, override, message):
    cfg = tiny_compare_cfg(tmp_path, override)
    with pytest.raises(ValueError, match=re.escape(message)):
        run_task(cfg, tmp_path / "out")
    assert not (tmp_path / "cmp").exists() and not (tmp_path / "cache").exists()  # nothing trained or tokenized


def test_every_setting_that_changes_a_result_is_in_the_folder_hash(tmp_path):
    """issue 15 item 7: a re-run with another compare.inference reused the old timings under the new labels."""
    from flyweight.bench.compare import compare_dir

    cfg = OmegaConf.to_container(tiny_compare_cfg(tmp_path, "compare.dir=null"), resolve=True)
    base = compare_dir(cfg)

    def changed(path, value):
        c = json.loads(json.dumps(cfg))
        *parents, key = path.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[key] = value
        return compare_dir(c)

    for path, value in [("compare.inference.batch", 2), ("compare.inference.dtype", "bfloat16"),
                        ("compare.inference.seq_len", 32), ("compare.timing", "log"), ("compare.evals", 5),
                        ("trainer.precision", "bf16-mixed"), ("data.max_length", 16), ("seed", 7),
                        ("optim.lr", 1e-3), ("model.n_positions", 64)]:
        assert changed(path, value) != base, path
    for path, value in [("compare.progress_bar", True), ("compare.budget_s", 60), ("compare.keep_checkpoints", True),
                        ("trainer.progress_bar", True), ("trainer.max_time", 5.0)]:
        assert changed(path, value) == base, path  # how the command runs, not what it measures
