"""The comparison report from a tiny real run: files, table/CSV agreement, plots, and resume."""

import csv
import json
import struct

from _lm_helpers import make_tokenizer, write_wikitext
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from flyweight.runner import run_task


def tiny_compare_cfg(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    wt = write_wikitext(tmp_path / "wt", sizes=(10, 3, 2))
    overrides = [
        "experiment=compare", "data.corpus=wikitext103", f"data.path={wt}", f"data.tokenizer={tok}",
        f"data.cache_dir={tmp_path / 'cache'}", "data.max_length=32", "data.global_batch_size=4",
        "data.micro_batch_size=4", "data.progress=false", "model.n_positions=32", "trainer.max_steps=3",
        "trainer.ckpt_every_n_steps=1", "trainer.progress_bar=false", "optim.warmup_steps=1",
        f"compare.dir={tmp_path / 'cmp'}", "compare.progress_bar=false", "compare.inference.batch=1",
        "compare.inference.seq_len=16", "compare.inference.prompt_len=4", "compare.inference.decode_tokens=2",
        "compare.inference.budget_s=0.01",
        "compare.variants=[{name: dense, kind: dense}, {name: ss1-r2, kind: ss1, linear: {compression: 2}}]",
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
    for name in ("report.md", "results.csv", "resolved_config.yaml", "ppl_vs_throughput.png", "ppl_vs_params.png",
                 "loss_curves.png"):
        assert (root / name).exists(), name
    assert all(is_png(root / p) for p in ("ppl_vs_throughput.png", "ppl_vs_params.png", "loss_curves.png"))
    assert result["plot_series"] == {"ppl_vs_throughput": 2, "ppl_vs_params": 2, "loss_curves": 2}

    with open(root / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["dense", "ss1-r2"]
    table = [line for line in (root / "report.md").read_text().splitlines() if line.startswith("| ")][1:]
    assert len(table) == 2
    for line, row in zip(table, rows):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[0] == row["variant"] and cells[1] == row["kind"]
        assert float(cells[5].replace(",", "")) == round(float(row["val_ppl"]), 2)
    assert float(rows[0]["speedup_vs_dense"]) == 1.0
    assert int(rows[1]["params"]) < int(rows[0]["params"])  # SS1 halves the block matrices
    assert all(int(r["train_steps"]) == 3 and float(r["val_ppl"]) > 1 for r in rows)

    # Interrupt: ss1 had trained but its result was not written. Re-running the same command reuses
    # dense untouched and lets ss1 resume from its last checkpoint, reaching the same perplexity.
    dense_result = root / "variants" / "dense" / "result.json"
    stamp = dense_result.stat().st_mtime_ns
    ss1_before = json.loads((root / "variants" / "ss1-r2" / "result.json").read_text())
    (root / "variants" / "ss1-r2" / "result.json").unlink()
    (root / "report.md").unlink()
    again = run_task(tiny_compare_cfg(tmp_path), tmp_path / "out2")
    assert dense_result.stat().st_mtime_ns == stamp
    assert (root / "report.md").exists()
    ss1_after = next(r for r in again["rows"] if r["variant"] == "ss1-r2")
    assert ss1_after["val_ppl"] == ss1_before["val_ppl"] and ss1_after["train_steps"] == 3
