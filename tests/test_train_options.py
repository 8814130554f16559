"""Training options around the Lightning module: the model and its loss compiled as one graph, fused AdamW
with clipping under bf16 autocast, checkpoints loading across vocabulary padding, and the opt-in W&B logger
(its config wiring and the error without the package; nothing here touches the network)."""

import csv
import importlib.util

import pytest

# the training / config stack: a kernels-only machine (torch, triton, transformers) skips this file
pytest.importorskip("lightning")

import torch
from _lm_helpers import make_tokenizer, synthetic_articles, tiny_lm_cfg
from _numerics import TOLERANCE

from flyweight.models.gpt2 import PaddedVocabHead, build_gpt2
from flyweight.train import lm as lm_mod
from flyweight.train.lm import TrainerConfig, _dataclass_from, _loggers, load_checkpoint_model, train_lm
from flyweight.train.metrics import NextTokenNLL, lm_nll_sum
from flyweight.train.module import LMModule
from flyweight.train.optim import OptimConfig

V = 101


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("opts")
    tok = make_tokenizer(root / "tok")
    (root / "small.txt").write_text("\n\n".join(" ".join(p) for _, p in synthetic_articles(9, seed=11)))
    return {"tok": tok, "split": {"train": str(root / "small.txt"), "val": str(root / "small.txt")}}


def tiny_model(pad=None, seed=0):
    return build_gpt2("tiny", n_layer=1, vocab_size=V, n_positions=16, dropout=0.0, seed=seed, pad_vocab_to=pad)


# ---- the compiled module is the model plus its loss ---------------------------------------------------
def test_compile_wraps_model_and_loss_and_keeps_checkpoint_names(monkeypatch):
    real_compile, seen = torch.compile, []

    def fast_compile(fn, **kw):  # aot_eager: the same tracing, no C++ build in a unit test
        seen.append((fn, kw))
        return real_compile(fn, backend="aot_eager")

    monkeypatch.setattr(torch, "compile", fast_compile)
    model = tiny_model(pad=64)
    module = LMModule(model, OptimConfig(), 0, 1, compile=True, compile_mode="max-autotune")
    module.configure_model()
    (target, kw), = seen
    assert isinstance(target, NextTokenNLL) and target.model is model and kw == {"mode": "max-autotune"}
    ids = torch.randint(0, V, (2, 16), generator=torch.Generator().manual_seed(0))
    nll, n = module.nll_sum(ids)
    ref, m = lm_nll_sum(model(input_ids=ids).logits, ids)
    assert n == m == 30
    torch.testing.assert_close(nll, ref, **TOLERANCE[torch.float32].close())
    assert sorted(module.state_dict()) == sorted(f"model.{k}" for k in model.state_dict())


# ---- fused AdamW: Lightning refuses to clip it under mixed precision; the module clips it itself ----------
class _Plugin:
    def __init__(self, scaler=None):
        self.scaler = scaler


class _Trainer:
    def __init__(self, scaler=None):
        self.precision_plugin = _Plugin(scaler)


def test_fused_adamw_clipped_by_the_module_without_a_grad_scaler(monkeypatch):
    model = tiny_model()
    module = LMModule(model, OptimConfig(fused=True), 0, 1)
    module._trainer = _Trainer()
    opt = module.configure_optimizers()["optimizer"]
    assert opt.defaults["fused"]
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.1)
    module.configure_gradient_clipping(opt, 0.5, "norm")
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in model.parameters()]))
    assert total.item() == pytest.approx(0.5, rel=1e-4)
    # a foreach optimizer, or fp16 with its GradScaler: Lightning's own clipping path
    calls = []
    monkeypatch.setattr(module, "clip_gradients", lambda *a, **kw: calls.append(kw))
    module.configure_gradient_clipping(torch.optim.AdamW(model.parameters()), 0.5, "norm")
    module._trainer = _Trainer(scaler=object())
    module.configure_gradient_clipping(opt, 0.5, "norm")
    assert len(calls) == 2


def test_fused_is_picked_on_cuda_only_and_never_with_fp16():
    module = LMModule(tiny_model(), OptimConfig(), 0, 1)  # fused=None: decided here
    module._trainer = _Trainer()
    assert not module.configure_optimizers()["optimizer"].defaults["fused"]  # CPU parameters


def test_fused_adamw_with_clipping_trains_under_bf16_like_foreach(files, tmp_path):
    runs = {}
    for fused in (False, True):
        cfg = tiny_lm_cfg(files["split"], files["tok"], tmp_path / "cache", corpus="text",
                          optim={"lr": 3e-3, "warmup_steps": 2, "fused": fused},
                          trainer={"max_steps": 4, "precision": "bf16-mixed", "grad_clip": 0.05})
        train_lm(cfg, tmp_path / f"fused{fused}")
        with open(tmp_path / f"fused{fused}" / "steps.csv") as f:
            runs[fused] = [float(r["loss"]) for r in csv.DictReader(f)]
    assert len(runs[True]) == 4
    assert runs[True] == pytest.approx(runs[False], rel=2e-3)


# ---- checkpoints load whether or not the config pads the vocabulary -----------------------------------
@pytest.mark.parametrize("saved_pad,config_pad", [(None, 64), (64, None)])
def test_checkpoint_loads_across_padding(tmp_path, saved_pad, config_pad):
    saved = tiny_model(pad=saved_pad, seed=5).eval()
    path = tmp_path / "step.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in saved.state_dict().items()}, "global_step": 7}, path)
    cfg = {"size": "tiny", "n_layer": 1, "n_positions": 16, "dropout": 0.0, "pad_vocab_to": config_pad}
    model, step = load_checkpoint_model(path, cfg, V)
    assert step == 7 and model.config.vocab_size == saved.config.vocab_size
    assert isinstance(model.lm_head, PaddedVocabHead) == (saved_pad is not None)
    ids = torch.randint(0, V, (2, 12))
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).logits, saved(ids).logits)


# ---- Weights & Biases: opt-in, wired from the config, a clear error without the package ---------------
def test_wandb_config_wiring(monkeypatch, tmp_path):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="flyweight.configs", version_base="1.3"):
        off = compose(config_name="config", overrides=["experiment=tiny-lm"])
        on = compose(config_name="config", overrides=[
            "experiment=tiny-lm", "trainer.wandb=true", "trainer.wandb_project=proj", "trainer.wandb_name=run1",
            "trainer.wandb_offline=true"])
    assert off.trainer.wandb is False
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    plain = _loggers(tmp_path, _dataclass_from(TrainerConfig, off.trainer, "trainer"))
    assert len(plain) == 2 and isinstance(plain[0], CSVLogger) and isinstance(plain[1], TensorBoardLogger)

    made = []

    class FakeWandbLogger:
        def __init__(self, **kw):
            made.append(kw)

    from lightning.pytorch import loggers

    monkeypatch.setattr(loggers, "WandbLogger", FakeWandbLogger)
    monkeypatch.setattr(lm_mod, "_require_wandb", lambda: None)
    tcfg = _dataclass_from(TrainerConfig, on.trainer, "trainer")
    out = _loggers(tmp_path, tcfg, {"seed": 1111})
    assert isinstance(out[-1], FakeWandbLogger) and len(out) == 3
    assert made == [{"project": "proj", "name": "run1", "save_dir": str(tmp_path), "offline": True,
                     "config": {"seed": 1111}}]


def test_wandb_without_the_package_fails_before_training(monkeypatch, files, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    cfg = tiny_lm_cfg(files["split"], files["tok"], tmp_path / "cache", corpus="text", trainer={"wandb": True})
    with pytest.raises(ImportError, match=r"pip install wandb.*trainer.wandb=false"):
        train_lm(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "steps.csv").exists()
