"""Benchmark utilities: sane timings and memory on CPU, and a stable CSV schema."""

import time

import pytest

# the benchmark tables: a kernels-only machine (torch, triton, transformers) skips this file
pytest.importorskip("rich")

import torch

from flyweight.bench.layers import LAYER_COLUMNS, bench_layer, parse_shapes, run_layer_grid, write_csv
from flyweight.bench.timing import env_tag, peak_memory_bytes, time_us
from flyweight.utils.device import resolve_device
from flyweight.utils.io import read_csv

CPU = torch.device("cpu")


def test_time_us_is_positive_and_orders_work():
    """Microseconds, and the order of two calls whose latencies differ by far more than any load on the
    machine moves them: a 2 ms sleep cannot take less than 2 ms, and does not burn CPU."""
    calls = []
    nothing = time_us(lambda: calls.append(1), CPU, budget_s=0.02)
    slept = time_us(lambda: time.sleep(2e-3), CPU, budget_s=0.05)
    assert len(calls) > 1  # warm-up and the timed runs
    assert 0 < nothing < slept / 50
    assert 2000 <= slept < 20_000  # microseconds: not seconds, not milliseconds


def test_peak_memory_counts_live_tensors():
    def work():
        x = torch.empty(1024, 1024)  # 4 MiB
        y = torch.empty(512, 1024)  # 2 MiB, both alive at once
        return x.sum() + y.sum()

    peak = peak_memory_bytes(work, CPU)
    assert 6 * 2**20 <= peak < 7 * 2**20

    def sequential():
        for _ in range(3):
            torch.empty(1024, 1024).fill_(1.0)  # freed each iteration

    assert 4 * 2**20 <= peak_memory_bytes(sequential, CPU) < 9 * 2**20


def test_layer_row_schema_is_fixed(tmp_path):
    row = bench_layer("ss1", {"compression": 2}, 128, 64, 4, "float32", "fwd+bwd", False, CPU, budget_s=0.01)
    assert list(row) == LAYER_COLUMNS
    assert row["params"] == 64 * 64 + 64 and row["latency_us"] > 0 and row["tflops"] > 0
    path = write_csv([row], tmp_path / "x.csv", LAYER_COLUMNS)
    back = read_csv(path)
    assert list(back[0]) == LAYER_COLUMNS and back[0]["kind"] == "ss1"


def test_grid_adds_dense_baseline_and_speedups():
    rows = run_layer_grid({"lowrank": [{"rank": 4}]}, [(64, 32)], [2], ["float32"], ["fwd"], [False], CPU, 0.01)
    assert [r["kind"] for r in rows] == ["dense", "lowrank"]
    assert rows[1]["speedup"] == rows[0]["latency_us"] / rows[1]["latency_us"]


def test_shapes_and_env():
    assert parse_shapes(["gpt2-small", [10, 20]])[-1] == (10, 20) and len(parse_shapes(["llama-8b"])) == 3
    assert resolve_device("auto").type in ("cpu", "cuda")
    assert "_torch" in env_tag(CPU) and "/" not in env_tag(CPU)


def test_autoselect_keeps_dense_where_slower_or_unmeasured(tmp_path):
    from flyweight.convert.autoselect import SpeedTable

    def row(kind, tokens, speedup, shape=(768, 3072)):
        return {"kind": kind, "settings": "compression=4" if kind == "ss1" else "-", "in_features": shape[0],
                "out_features": shape[1], "tokens": tokens, "dtype": "bfloat16", "pass": "fwd", "speedup": speedup}

    table = SpeedTable([row("dense", 16, 1.0), row("ss1", 16, 0.7), row("ss1", 2048, 2.5),
                        row("ss1", 2048, 0.9, shape=(768, 768))])
    fast = table.decide("ss1", {"compression": 4}, 768, 3072, tokens=4096)
    assert fast.use_structured and fast.speedup == 2.5  # nearest measured M is 2048
    slow = table.decide("ss1", {"compression": 4}, 768, 3072, tokens=8)
    assert not slow.use_structured and "0.70x" in slow.reason
    assert not table.decide("ss1", {"compression": 4}, 768, 768, tokens=2048).use_structured
    unknown = table.decide("ss1", {"compression": 4}, 1024, 4096, tokens=2048)
    assert not unknown.use_structured and "no measurement" in unknown.reason


def test_pareto_front():
    """The report's own files are covered by tests/test_compare.py (the trainer's compare report)."""
    from flyweight.bench.report import pareto_front

    assert pareto_front([1.0, 2.0, 3.0, 2.5], [10.0, 12.0, 20.0, 11.0]) == [0, 3, 2]


def test_convert_with_measured_auto_selection_keeps_slow_layers_dense():
    import flyweight
    from flyweight.convert.autoselect import SpeedTable
    from flyweight.models.gpt2 import build_gpt2

    model = build_gpt2("tiny", kind="dense", seed=0, dropout=0.0)  # 128 wide: fc 128->512, proj 512->128
    rows = [{"kind": "ss1", "settings": "compression=4", "in_features": k, "out_features": n, "tokens": 2048,
             "dtype": "bfloat16", "pass": "fwd", "speedup": s}
            for (k, n), s in [((128, 512), 1.8), ((512, 128), 0.6), ((128, 384), 0.9), ((128, 128), 0.5)]]
    keep = SpeedTable(rows).keep_dense("ss1", {"compression": 4}, tokens=4096)
    report = flyweight.convert(model, "ss1", compression=4, filter_fn=keep)
    converted = {c.name for c in report.converted}
    assert converted == {f"transformer.h.{i}.mlp.c_fc" for i in range(2)}
    assert all("kept dense" in c.skipped for c in report.skipped)
    assert type(model.transformer.h[0].mlp.c_proj).__name__ == "Conv1D"  # untouched
    # every layer measured slower: nothing converted, and that is not an error
    none = SpeedTable([]).keep_dense("ss1", {"compression": 4}, tokens=4096)
    assert flyweight.convert(build_gpt2("tiny", seed=0), "ss1", compression=4, filter_fn=none).converted == []
