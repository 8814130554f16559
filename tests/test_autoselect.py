"""convert(..., auto=...): measured speed tables keep slow layers dense; where the table comes from."""

import logging

import pytest

# the benchmark tables: a kernels-only machine (torch, triton, transformers) skips this file
pytest.importorskip("rich")

import flyweight
from flyweight.convert.autoselect import AutoSelect, SpeedTable, find_table, shipped_table_path, user_table_path
from flyweight.bench.layers import LAYER_COLUMNS, write_csv
from flyweight.models.gpt2 import build_gpt2


def rows(speedups: dict, compiled: bool = True, pass_: str = "fwd+bwd") -> list[dict]:
    return [{"kind": "ss1", "settings": "compression=4", "in_features": k, "out_features": n, "tokens": 4096,
             "dtype": "bfloat16", "pass": pass_, "compile": compiled, "speedup": s}
            for (k, n), s in speedups.items()]


TINY = {(128, 512): 1.8, (512, 128): 0.6, (128, 384): 1.2, (128, 128): 0.5}  # build_gpt2("tiny") shapes


def test_auto_converts_only_layers_measured_faster(tmp_path):
    table = write_csv(rows(TINY) + rows({s: 5.0 for s in TINY}, compiled=False), tmp_path / "t.csv", LAYER_COLUMNS)
    model = build_gpt2("tiny", kind="dense", seed=0)
    report = flyweight.convert(model, "ss1", auto=AutoSelect(table=table))  # compression: the layer default, 4
    assert {c.name.split(".", 3)[-1] for c in report.converted} == {"mlp.c_fc", "attn.c_attn"}
    assert all("kept dense" in c.skipped and "compiled" in c.skipped for c in report.skipped)
    # the eager rows (all 5x) answer an eager workload; a user filter still applies on top
    eager = flyweight.convert(build_gpt2("tiny", kind="dense", seed=0), "ss1", compression=4,
                              auto=AutoSelect(table=table, compiled=False),
                              filter_fn=lambda name, i, o: "mine" if name.endswith("c_fc") else None)
    assert len(eager.converted) == 6 and {c.skipped for c in eager.skipped} == {"mine"}
    # settings the table never measured: nothing is a measurement, everything stays dense
    none = flyweight.convert(build_gpt2("tiny", kind="dense", seed=0), "ss1", compression=8,
                             auto=AutoSelect(table=table))
    assert none.converted == [] and all("no measurement" in c.skipped for c in none.skipped)


def test_table_lookup_order(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("FLYWEIGHT_SPEED_TABLE", raising=False)
    with caplog.at_level(logging.WARNING):
        assert find_table(AutoSelect()).source == str(shipped_table_path())  # nothing measured here
    assert "measured on an H200" in caplog.text
    mine = write_csv(rows(TINY), user_table_path(), LAYER_COLUMNS)
    assert "cache" in str(mine) and find_table(AutoSelect()).source == str(mine)
    other = write_csv(rows(TINY), tmp_path / "env.csv", LAYER_COLUMNS)
    monkeypatch.setenv("FLYWEIGHT_SPEED_TABLE", str(other))
    assert find_table(AutoSelect()).source == str(other)
    with pytest.raises(FileNotFoundError, match="ss1_gpu.py"):
        find_table(AutoSelect(table=tmp_path / "missing.csv"))


def test_shipped_table_reads_and_decides_by_its_rows():
    table = SpeedTable.from_csv(shipped_table_path())
    from flyweight.utils.io import read_csv

    ss1 = [r for r in read_csv(shipped_table_path()) if r["kind"] == "ss1"]
    assert ss1
    for r in ss1:
        d = table.decide("ss1", {"compression": 4}, int(r["in_features"]), int(r["out_features"]), int(r["tokens"]),
                         r["dtype"], r["pass"], compiled=r["compile"] == "True")
        assert d.use_structured == (float(r["speedup"]) > 1.0)
