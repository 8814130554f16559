"""Data-parallel training through Lightning DDP: 2 CPU processes (gloo), launched by `python run.py`."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

# the training / config stack: a kernels-only machine (torch, triton, transformers) skips this file
pytest.importorskip("lightning")

import torch
from _lm_helpers import make_tokenizer, write_wikitext

from flyweight.data import DataConfig, LMDataModule
from flyweight.models.gpt2 import load_structured

REPO = Path(__file__).resolve().parents[1]


def test_two_process_ddp_disjoint_data_identical_weights_summed_perplexity(tmp_path):
    tok = make_tokenizer(tmp_path / "tok")
    wt = write_wikitext(tmp_path / "wt", sizes=(12, 3, 2))
    data = DataConfig(corpus="wikitext103", path=str(wt), tokenizer=str(tok), max_length=32,
                      cache_dir=str(tmp_path / "cache"), progress=False)
    dm = LMDataModule(data).load(("train", "val"))
    n_val = len(dm.windows["val"])
    assert n_val % 2 == 1  # odd: the two ranks evaluate shards of different sizes
    steps, global_batch = 4, 8
    run_dir = tmp_path / "run"
    overrides = [
        "experiment=tiny-lm",
        "data.corpus=wikitext103", f"data.path={wt}", f"data.tokenizer={tok}", f"data.cache_dir={tmp_path / 'cache'}",
        "data.max_length=32", f"data.global_batch_size={global_batch}", "data.micro_batch_size=2",
        "data.progress=false", "model.n_positions=32", "model.dropout=0.1", f"trainer.max_steps={steps}",
        "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "trainer.record_indices=true",
        "trainer.progress_bar=false", "trainer.ckpt_every_n_steps=0", "trainer.eval_test=false",
        "optim.warmup_steps=1", f"hydra.run.dir={run_dir}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "run.py"), *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]

    ranks = [json.loads((run_dir / f"seen_indices_rank{r}.json").read_text()) for r in range(2)]
    seen = [set(r["indices"]) for r in ranks]
    # each rank: micro 2 x accumulation 2 per step; together one global batch of distinct windows per step
    assert [len(r["indices"]) for r in ranks] == [steps * global_batch // 2] * 2
    assert not seen[0] & seen[1]
    assert ranks[0]["params_sha256"] == ranks[1]["params_sha256"]  # gradients were all-reduced

    results = json.loads((run_dir / "results.json").read_text())
    assert results["world_size"] == 2 and results["accumulation"] == 2 and results["steps"] == steps
    # hand computation: one process, float64 log-softmax over every val window of the final model
    model = load_structured(run_dir / "model").eval()
    nll, count = 0.0, 0
    with torch.no_grad():
        for i in range(n_val):
            ids = dm.windows["val"][i]["input_ids"][None]
            logp = torch.log_softmax(model(input_ids=ids).logits.double(), -1)
            nll -= logp[:, :-1].gather(-1, ids[:, 1:, None]).sum().item()
            count += ids.shape[1] - 1
    assert results["val"]["tokens"] == count
    assert math.isclose(results["val"]["ppl"], math.exp(nll / count), rel_tol=1e-5)
