"""Training and evaluation of the GPT-2 language model: optimizer groups, schedule, overfitting for every
linear kind, perplexity from sums, evaluation of checkpoints, exact resume after kill -9, and the
wt103/* experiment configs."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

# the training / config stack: a kernels-only machine (torch, triton, transformers) skips this file
pytest.importorskip("hydra")
pytest.importorskip("lightning")

import torch
from _lm_helpers import one_thread  # noqa: F401  (a fixture, used through pytestmark)
from _lm_helpers import make_tokenizer, synthetic_articles, tiny_lm_cfg, write_wikitext
from hydra import compose, initialize_config_module
from safetensors.torch import load_file

from flyweight.linear import LINEAR_KINDS, StructuredLinear
from flyweight.models.gpt2 import build_gpt2
from flyweight.train import lm_nll_sum, lr_factor, param_groups, perplexity
from flyweight.train.lm import eval_lm, train_lm
from flyweight.train.model_config import gpt2_kwargs

REPO = Path(__file__).resolve().parents[1]
KINDS = {"dense": {}, "ss1": {"compression": 4}, "monarch": {"nblocks": 4}, "lowrank": {"compression": 8}}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    tok = make_tokenizer(root / "tok")
    text = "\n\n".join(" ".join(p) for _, p in synthetic_articles(9, seed=11))  # ~2k tokens
    (root / "small.txt").write_text(text)
    return {"root": root, "tok": tok, "small": root / "small.txt", "wt": write_wikitext(root / "wt")}


def steps_csv(run_dir: Path) -> list[dict]:
    with open(run_dir / "steps.csv") as f:
        return list(csv.DictReader(f))


# ---- optimizer ---------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(KINDS))
def test_weight_decay_only_on_matrices(kind):
    model = build_gpt2("tiny", kind=kind, vocab_size=300, n_positions=32, seed=0)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    decay_ids = {id(p) for p in decay["params"]}
    no_decay_ids = {id(p) for p in no_decay["params"]}
    unique = {id(p): (n, p) for n, p in model.named_parameters()}
    assert decay_ids | no_decay_ids == set(unique) and not decay_ids & no_decay_ids
    for name, p in unique.values():
        expected = p.ndim >= 2 and not name.startswith(("transformer.wte", "transformer.wpe"))
        assert (id(p) in decay_ids) == expected, name
    structured = [m for m in model.modules() if isinstance(m, StructuredLinear)]
    if kind != "dense":  # every factor of every structured layer decays; its bias does not
        assert structured and all(id(p) in decay_ids for m in structured for n, p in m.named_parameters()
                                  if n != "bias")
        assert all(id(m.bias) in no_decay_ids for m in structured if m.bias is not None)


def test_lr_schedule_warmup_then_decay():
    assert [lr_factor(s, 4, 12) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(8, 4, 12) == pytest.approx(0.5) and lr_factor(12, 4, 12) == 0.0
    assert lr_factor(8, 4, 12, "cosine") == pytest.approx(0.5)
    assert lr_factor(6, 4, 12, "cosine", 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(ValueError, match="valid schedules"):
        lr_factor(0, 1, 2, "step")


# ---- training ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(KINDS))
def test_two_layer_gpt2_overfits_2k_tokens(kind, files, tmp_path):
    split = {"train": str(files["small"]), "val": str(files["small"])}  # val = the training text
    cfg = tiny_lm_cfg(split, files["tok"], tmp_path / "cache", corpus="text", kind=kind, settings=KINDS[kind],
                      model={"dropout": 0.0}, data={"global_batch_size": 16, "micro_batch_size": 16},
                      optim={"lr": 5e-3, "warmup_steps": 5, "weight_decay": 0.0}, trainer={"max_steps": 100})
    res = train_lm(cfg, tmp_path / "run")
    losses = [float(r["loss"]) for r in steps_csv(tmp_path / "run")]
    assert len(losses) == 100 and losses[0] > 5.0  # starts near ln(320) = 5.77
    assert losses[-1] < 1.6, losses[::10]
    assert res["val"]["ppl"] < 5.0 and res["val"]["tokens"] == res["splits"]["val"]["windows"] * 31


def test_perplexity_from_sums_over_unequal_shards():
    torch.manual_seed(0)
    model = build_gpt2("tiny", vocab_size=97, n_positions=16, dropout=0.0, seed=1).eval()
    ids = torch.randint(0, 97, (7, 16))
    shards = [ids[:1], ids[1:5], ids[5:]]  # 1, 4 and 2 windows
    with torch.no_grad():
        sums = [lm_nll_sum(model(input_ids=s).logits, s) for s in shards]
        logp = torch.log_softmax(model(input_ids=ids).logits.double(), -1)
    hand = -logp[:, :-1].gather(-1, ids[:, 1:, None]).sum().item()  # float64, every token of the split
    n = 7 * 15
    assert sum(c for _, c in sums) == n
    total = perplexity(sum(float(s) for s, _ in sums), n)
    assert total == pytest.approx(math.exp(hand / n), rel=1e-5)
    mean_of_shards = sum(perplexity(float(s), c) for s, c in sums) / 3
    assert abs(mean_of_shards - total) > 1e-3 * total  # the wrong aggregation would be caught


def test_eval_mode_reproduces_training_eval(files, tmp_path):
    cfg = tiny_lm_cfg(files["wt"], files["tok"], tmp_path / "cache",
                      trainer={"max_steps": 4, "ckpt_every_n_steps": 2, "save_model": True, "eval_test": True})
    trained = train_lm(cfg, tmp_path / "train")
    assert {p.name for p in (tmp_path / "train" / "checkpoints").iterdir()} >= {"step000002.ckpt", "last.ckpt"}
    assert (tmp_path / "train" / "logs" / "csv" / "metrics.csv").exists()
    assert list((tmp_path / "train" / "logs" / "tb").glob("events.out.tfevents.*"))
    for ckpt in (tmp_path / "train" / "checkpoints" / "last.ckpt", tmp_path / "train" / "model"):
        ev = eval_lm({**cfg, "mode": "eval", "ckpt": str(ckpt)}, tmp_path / "eval")
        for split in ("val", "test"):
            assert ev[split]["tokens"] == trained[split]["tokens"]
            assert ev[split]["ppl"] == pytest.approx(trained[split]["ppl"], rel=1e-6)
    with pytest.raises(FileNotFoundError, match="ckpt=.*does not exist"):
        eval_lm({**cfg, "mode": "eval", "ckpt": str(tmp_path / "nope.ckpt")}, tmp_path / "eval")


def test_resume_after_kill_continues_the_same_loss_curve(files, tmp_path):
    base = tiny_lm_cfg(files["wt"], files["tok"], tmp_path / "cache",
                       model={"dropout": 0.1},  # dropout on: the RNG stream must continue too
                       trainer={"max_steps": 400, "ckpt_every_n_steps": 4, "keep_checkpoints": -1})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    script = ("import json, sys, torch; torch.set_num_threads(1); from flyweight.train.lm import train_lm; "
              "train_lm(json.loads(sys.argv[1]), sys.argv[2])")
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-c", script, json.dumps(base), str(killed_dir)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpts = killed_dir / "checkpoints"
    deadline = time.time() + 120
    while not (ckpts / "step000008.ckpt").exists():  # step 4's file is complete once step 8's exists
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.05)
    assert proc.poll() is None  # mid-run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "model").exists()  # it never finished

    stop = {"stop_at_step": 12, "save_model": True}
    ref = train_lm({**base, "trainer": {**base["trainer"], **stop}}, tmp_path / "ref")
    resumed = train_lm({**base, "trainer": {**base["trainer"], **stop, "resume": str(ckpts / "step000004.ckpt")}},
                       tmp_path / "resumed")
    ref_rows, res_rows = steps_csv(tmp_path / "ref"), steps_csv(tmp_path / "resumed")
    assert [int(r["step"]) for r in res_rows] == list(range(5, 13))
    assert [float(r["loss"]) for r in res_rows] == [float(r["loss"]) for r in ref_rows[4:]]
    assert [float(r["lr"]) for r in res_rows] == [float(r["lr"]) for r in ref_rows[4:]]
    a, b = load_file(tmp_path / "ref" / "model" / "model.safetensors"), \
        load_file(tmp_path / "resumed" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["val"]["ppl"] == ref["val"]["ppl"]


def test_time_budget_stops_at_a_step_and_the_rerun_continues_the_same_curve(files, tmp_path):
    base = tiny_lm_cfg(files["wt"], files["tok"], tmp_path / "cache", model={"dropout": 0.1},
                       trainer={"max_steps": 8, "val_every_n_steps": 3, "save_model": False})
    ref = train_lm(base, tmp_path / "ref")
    chunked = {**base["trainer"], "resume": "auto"}
    first = train_lm({**base, "trainer": {**chunked, "max_time": 1e-9}}, tmp_path / "chunks")
    assert first["complete"] is False and first["steps"] == 1  # the budget ends at the first step boundary
    assert (tmp_path / "chunks" / "checkpoints" / "last.ckpt").exists()
    done = train_lm({**base, "trainer": chunked}, tmp_path / "chunks")
    assert done["complete"] is True and done["steps"] == 8
    ref_rows, rows = steps_csv(tmp_path / "ref"), steps_csv(tmp_path / "chunks")
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    assert [float(r["loss"]) for r in rows] == [float(r["loss"]) for r in ref_rows]
    assert done["val"]["ppl"] == ref["val"]["ppl"]
    # training seconds only grow, across the restart too, and the evaluations carry them
    seconds = [float(r["train_seconds"]) for r in rows]
    assert all(b >= a for a, b in zip(seconds, seconds[1:])) and seconds[-1] > 0
    with open(tmp_path / "chunks" / "evals.csv") as f:
        evals = list(csv.DictReader(f))
    # every 3 steps, and where the budget stopped the first command (Lightning validates when it stops)
    assert [int(e["step"]) for e in evals] == [1, 3, 6]
    assert [int(e["tokens"]) for e in evals] == [8 * 32, 3 * 8 * 32, 6 * 8 * 32]
    assert 0 < float(evals[0]["train_seconds"]) <= float(evals[1]["train_seconds"]) <= float(evals[2]["train_seconds"])


# ---- the wt103/* experiments --------------------------------------------------------------------------
EXPERIMENTS = {
    f"wt103/{prefix}{suffix}": (size, kind)
    for prefix, size in (("gpt2", "small"), ("gpt2m", "medium"), ("gpt2l", "large"))
    for suffix, kind in (("", "dense"), ("-ss1", "ss1"), ("-ssl", "ss1"), ("-monarch", "monarch"),
                         ("-lowrank", "lowrank"))
}


def compose_experiment(name, *overrides):
    with initialize_config_module(config_module="flyweight.configs", version_base="1.3"):
        return compose(config_name="config", overrides=[f"experiment={name}", *overrides])


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_seed_experiment_resolves_with_expected_layers(name):
    size, kind = EXPERIMENTS[name]
    cfg = compose_experiment(name)
    assert cfg.task == "lm" and cfg.mode == "train" and cfg.seed == 1111
    assert (cfg.model.size, cfg.model.kind) == (size, kind)
    assert cfg.data.corpus == "wikitext103" and cfg.data.max_length == 1024 and cfg.data.global_batch_size == 512
    assert (cfg.optim.lr, cfg.optim.weight_decay) == ((6e-4 if size == "small" else 1.5e-4), 0.1)
    assert (cfg.trainer.max_epochs, cfg.optim.warmup_epochs, cfg.trainer.grad_clip) == (100, 1.0, 1.0)
    model = build_gpt2(**gpt2_kwargs(cfg.model), device="meta")
    block = model.transformer.h[0]
    layers = [block.mlp.c_fc, block.mlp.c_proj, block.attn.c_attn, block.attn.c_proj]
    if kind == "dense":
        assert not any(isinstance(m, StructuredLinear) for m in model.modules())
    else:
        assert all(type(m) is LINEAR_KINDS[kind] for m in layers)
        assert not isinstance(model.lm_head, StructuredLinear)


def test_compression_override_reaches_the_layers():
    cfg = compose_experiment("wt103/gpt2-lowrank", "model.settings.compression=4", "trainer.devices=2")
    model = build_gpt2(**gpt2_kwargs(cfg.model), device="meta")
    fc = model.transformer.h[0].mlp.c_fc
    assert fc.rank == 768 * 3072 // ((768 + 3072) * 4) and cfg.trainer.devices == 2


def test_the_old_model_linear_key_still_overrides_with_a_warning():
    from flyweight.configs.schema import renamed_overrides

    with pytest.warns(FutureWarning, match="model.linear is deprecated: it is model.settings"):
        args = renamed_overrides(["model.linear.compression=4", "+model.linear.rank=2", "trainer.devices=2"])
    assert args == ["model.settings.compression=4", "+model.settings.rank=2", "trainer.devices=2"]
    with pytest.warns(FutureWarning, match="model.linear is deprecated: it is model.settings"):  # a YAML file's key
        kwargs = gpt2_kwargs({"kind": "lowrank", "settings": {"compression": 8}, "linear": {"compression": 4}})
    assert kwargs["settings"] == {"compression": 4} and "linear" not in kwargs


def test_run_py_cfg_job_prints_seed_experiment():
    out = subprocess.run([sys.executable, str(REPO / "run.py"), "experiment=wt103/gpt2-ssl",
                          "model.linear.compression=8", "mode=eval", "ckpt=x.ckpt", "--cfg", "job"],
                         capture_output=True, text=True, check=True, cwd=REPO)
    assert "kind: ss1" in out.stdout and "compression: 8" in out.stdout and "mode: eval" in out.stdout


def test_tiny_lm_experiment_is_the_small_cpu_run():
    cfg = compose_experiment("tiny-lm")
    assert cfg.task == "lm" and cfg.data.corpus == "wiki_offline" and cfg.data.tokenizer == "gpt2"
    assert cfg.model.size == "tiny" and cfg.trainer.max_steps <= 1000


def test_default_experiment_is_the_cpu_sized_comparison_of_all_kinds():
    cfg = compose_experiment("default")
    assert cfg.task == "compare" and cfg.model.size == "tiny" and cfg.data.corpus == "wiki_offline"
    assert sorted(v.kind for v in cfg.compare.variants) == ["dense", "lowrank", "monarch", "ss1"]
    assert cfg.compare.budget.steps <= 200
