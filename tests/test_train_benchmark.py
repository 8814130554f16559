"""The GPU training benchmark (benchmarks/gpt2_train_gpu.py) run on CPU: a thin command over the one trainer.

Its rows come from steps trained by ``train_lm``'s Lightning ``LMModule`` (no loop of its own), on the
random-id corpus, without Hydra, OmegaConf or TensorBoard (the GPU machine has none of them)."""

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flyweight.data.datamodule import DataConfig, LMDataModule

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


def test_tiny_run_trains_through_the_lightning_trainer(tmp_path):
    blocker = ("import sys\nfor m in ('hydra', 'omegaconf', 'tensorboard', 'tensorboardX'): sys.modules[m] = None\n"
               f"sys.argv = {[str(SCRIPT)]!r} + sys.argv[1:]\n"
               f"import runpy; runpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n")
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", blocker, "--out", str(out), "--size", "tiny", "--device", "cpu", "--seq-len", "32",
         "--vocab", "1000", "--kinds", "dense,lowrank", "--pad-vocab", "64,0", "--dropout", "0.0",
         "--batch-sizes", "2", "--steps", "3", "--warmup-steps", "1", "--peak-tflops", "1"],
        check=False, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_rows(out / "throughput.csv")
    assert [(r["kind"], r["pad_vocab_to"]) for r in rows] == [("dense", "64"), ("dense", "0"),
                                                             ("lowrank", "64"), ("lowrank", "0")]
    assert all(r["error"] == "" and float(r["tokens_per_s"]) > 0 and float(r["mfu"]) > 0 for r in rows)
    # every step went through LMModule: the trainer's global step, the module class, its per-step log
    assert all(r["module"] == "LMModule" and r["steps"] == "4" and r["micro_batch"] == "2" for r in rows)
    assert [r["vocab_rows"] for r in rows] == ["1024", "1000"] * 2
    assert rows[0]["params"] != rows[2]["params"]  # the kind was built: low-rank has fewer parameters
    # padding changes neither the parameter nor the FLOP count (useful work only)
    assert rows[0]["fwd_flops_per_token"] == rows[1]["fwd_flops_per_token"] and rows[0]["params"] == rows[1]["params"]
    for r in rows:
        with open(out / r["run_dir"] / "steps.csv") as f:
            steps = list(csv.DictReader(f))
        assert [int(s["step"]) for s in steps] == [1, 2, 3, 4]
        assert all(math.isfinite(float(s["loss"])) for s in steps)
        # tokens/s of the 3 steps after the warm-up step, from the trainer's own step times
        seconds = float(steps[-1]["train_seconds"]) - float(steps[0]["train_seconds"])
        assert int(r["tokens_per_s"]) == round(3 * 2 * 32 / seconds)
        assert float(r["loss"]) == round(float(steps[-1]["loss"]), 3)
    assert rows[2]["vs_dense"] != "" and json.loads((out / "results.json").read_text())["throughput"]


def test_no_training_loop_of_its_own():
    source = SCRIPT.read_text()
    assert "train_lm(" in source
    for loop in (".backward(", "optimizer.step(", "opt.step(", "zero_grad("):
        assert loop not in source, loop


def test_removed_parts_name_their_replacement(bench, tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--out", str(tmp_path), "--part", "quality"])
    assert "experiment=compare" in capsys.readouterr().err
    args = bench.parse_args(["--out", str(tmp_path), "--sdpa-backend", "triton", "--batch-sizes", "auto,64",
                             "--device", "cpu"])
    assert args.attention == "triton" and args.batch_sizes == ["auto", 64] and args.compile is False
    cfg = bench.lm_config(args, "ss1", "auto", 64, 0.0, False)
    assert cfg["data"]["micro_batch_size"] == "auto" and cfg["data"]["global_batch_size"] == args.batch_max
    assert cfg["model"]["settings"] == {"compression": 4} and cfg["model"]["attention"] == "triton"


def test_random_corpus_is_seeded_windows_of_one_global_batch():
    def load(seed):
        return LMDataModule(DataConfig(corpus="random", tokenizer="ids:300", max_length=16, global_batch_size=4,
                                       split_seed=seed)).load()

    a, b = load(1), load(1)
    assert a.tokenizer.vocab_size == 300 and {s: len(w) for s, w in a.windows.items()} == {"train": 4, "val": 4, "test": 4}
    assert (a.windows["train"].tokens == b.windows["train"].tokens).all()
    assert (a.windows["train"].tokens != a.windows["val"].tokens).any()
    assert (a.windows["train"].tokens != load(2).windows["train"].tokens).any()
    assert int(a.windows["train"].tokens.max()) < 300
    with pytest.raises(ValueError, match="ids:N"):
        LMDataModule(DataConfig(corpus="random", tokenizer="bpe:100")).load()


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
