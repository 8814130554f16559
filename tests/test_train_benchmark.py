"""The GPU training benchmark's plan and rows (benchmarks/gpt2_train_gpu.py), run on CPU: the micro-batch
search doubles until out of memory, the padding/dropout variants and the other kinds run at dense's best
setting, and a real tiny run writes rows whose FLOPs count the real vocabulary, without Hydra or Lightning."""

import csv
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpt2_train_gpu.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("gpt2_train_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def read_rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_search_plan_doubles_until_oom_then_compares_at_the_best(bench, tmp_path, monkeypatch):
    limit = {"dense": 128, "ss1": 32, "monarch": 128, "lowrank": 128}  # largest micro-batch that fits
    speed = {16: 100, 32: 130, 64: 150, 128: 140}  # dense tokens/s: fastest at 64, not at the largest
    calls = []

    def fake_measure(kind, bs, pad, dropout, compile, args, device, stage=""):
        calls.append((stage, kind, bs, pad, dropout))
        row = {"stage": stage, "kind": kind, "micro_batch": bs, "pad_vocab_to": pad, "dropout": dropout}
        if bs > limit[kind]:
            return {**row, **bench.EMPTY, "error": "OOM"}
        tps = speed[bs] * (1.1 if pad else 1.0) * (0.9 if dropout else 1.0) * (0.5 if kind != "dense" else 1.0)
        return {**row, **bench.EMPTY, "tokens_per_s": round(tps), "error": ""}

    monkeypatch.setattr(bench, "measure", fake_measure)
    bench.main(["--out", str(tmp_path), "--part", "search", "--device", "cpu", "--pad-vocab", "64,0",
                "--dropout", "0.0,0.1", "--batch-start", "16"])
    assert calls == [
        ("dense-batch", "dense", 16, 64, 0.0), ("dense-batch", "dense", 32, 64, 0.0),
        ("dense-batch", "dense", 64, 64, 0.0), ("dense-batch", "dense", 128, 64, 0.0),
        ("dense-batch", "dense", 256, 64, 0.0),  # out of memory: the doubling stops
        ("dense-padding", "dense", 64, 0, 0.0), ("dense-dropout", "dense", 64, 64, 0.1),
        ("kinds", "ss1", 64, 64, 0.0), ("kinds", "ss1", 32, 64, 0.0),  # halved after its OOM
        ("kinds", "monarch", 64, 64, 0.0), ("kinds", "lowrank", 64, 64, 0.0)]
    rows = read_rows(tmp_path / "throughput.csv")
    assert [r["error"] for r in rows].count("OOM") == 2
    by = {(r["kind"], r["micro_batch"], r["pad_vocab_to"], r["dropout"]): r for r in rows}
    def ratio(kind, bs):  # against dense at the same padding, dropout and micro-batch
        return str(round(int(by[(kind, bs, "64", "0.0")]["tokens_per_s"])
                         / int(by[("dense", bs, "64", "0.0")]["tokens_per_s"]), 3))

    assert by[("monarch", "64", "64", "0.0")]["vs_dense"] == ratio("monarch", "64") == "0.497"
    assert by[("ss1", "32", "64", "0.0")]["vs_dense"] == ratio("ss1", "32")
    assert by[("dense", "64", "0", "0.0")]["vs_dense"] == ""
    (tmp_path / "throughput.csv").unlink()

    calls.clear()  # --full-search: every kind doubles its own micro-batch
    bench.main(["--out", str(tmp_path), "--part", "search", "--device", "cpu", "--kinds", "dense,ss1",
                "--batch-start", "16", "--batch-max", "64", "--full-search"])
    assert [c[2] for c in calls if c[1] == "ss1"] == [16, 32, 64] and calls[-1][0] == "ss1-batch"
    assert max(c[2] for c in calls if c[1] == "dense") == 64  # --batch-max caps the doubling


def test_tiny_run_end_to_end_without_hydra_or_lightning(tmp_path):
    blocker = ("import sys\nfor m in ('lightning', 'pytorch_lightning', 'hydra', 'omegaconf'): sys.modules[m] = None\n"
               f"sys.argv = {[str(SCRIPT)]!r} + sys.argv[1:]\n"
               f"import runpy; runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", blocker, "--out", str(out), "--part", "throughput", "--size", "tiny", "--device", "cpu",
         "--seq-len", "32", "--no-compile", "--kinds", "dense,lowrank", "--pad-vocab", "64,0", "--dropout", "0.0",
         "--batch-sizes", "2", "--steps", "1", "--warmup-steps", "1"],
        check=False, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = read_rows(out / "throughput.csv")
    assert [(r["kind"], r["pad_vocab_to"]) for r in rows] == [("dense", "64"), ("dense", "0"),
                                                             ("lowrank", "64"), ("lowrank", "0")]
    assert all(r["error"] == "" and float(r["tokens_per_s"]) > 0 for r in rows)
    assert [r["vocab_rows"] for r in rows] == ["50304", "50257"] * 2
    # padding changes neither the parameter nor the FLOP count (useful work only)
    assert rows[0]["fwd_flops_per_token"] == rows[1]["fwd_flops_per_token"]
    assert rows[0]["params"] == rows[1]["params"]
    assert rows[2]["vs_dense"] != "" and (out / "results.json").exists()


def test_profile_kernel_classes(bench):
    """Kernel names from a real H200 profile land in the class the profile table reports them under."""
    cases = {
        "nvjet_sm90_tst_192x192_64x4_2x1_v_bz_coopB_TNN": "GEMMs",
        "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x64": "attention",
        "triton_red_fused__log_softmax__to_copy__unsafe_view_fill_lift_fresh_prepare_softmax_online_slice_21": "fused",
        "_ss1_sketch_kernel": "ss1",
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor>": "optimizer",
        "Memcpy HtoD (Pageable -> Device)": "other",
    }
    for name, expected in cases.items():
        assert bench.kernel_class(name).lower().startswith(expected.lower()), (name, bench.kernel_class(name))
