"""The language-modelling jobs: ``train_lm`` (fit, then evaluate) and ``eval_lm`` (a checkpoint on val/test).

``run(cfg, out_dir)`` is the Hydra task "lm" and dispatches on ``cfg.mode`` (train | eval). Both take
the resolved config as a mapping (a DictConfig or plain dict) with the groups ``model`` (keyword
arguments of ``build_gpt2``), ``data`` (``DataConfig``), ``optim`` (``OptimConfig``) and ``trainer``
(``TrainerConfig`` below), and return the results dict the runner writes to ``results.json``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from flyweight.data.datamodule import DataConfig, LMDataModule, accumulation
from flyweight.train.checkpoints import AtomicCheckpointIO, open_checkpoint, resume_point
from flyweight.train.logs import quiet_lightning, trim_csv
from flyweight.train.fastpath import probe_micro_batch, resolve_attention, resolve_compile, resolve_micro_batch
from flyweight.train.metrics import peak_flops
from flyweight.train.progress import StepProgressBar
from flyweight.train.module import LMModule, build_model
from flyweight.train.optim import OptimConfig
from flyweight.train.validate import check_lm_config
from flyweight.utils.config_dict import plain_config
from flyweight.utils.io import atomic_write_text, remove_stale_temps
from flyweight.utils.rng import seed_all

MODES = ("train", "eval")


@dataclass
class TrainerConfig:
    accelerator: str = "auto"          # auto | cpu | gpu
    devices: Any = "auto"              # auto | N
    num_nodes: int = 1
    strategy: str = "auto"             # auto | ddp | ...
    precision: str = "auto"            # auto: bf16-mixed on bf16 GPUs, 16-mixed on others, 32-true on CPU
    max_epochs: float | None = 100     # schedule length in epochs of the train split (if max_steps is None)
    max_steps: int | None = None       # schedule length in optimizer steps
    stop_at_step: int | None = None    # stop early; the schedule still runs to max_steps
    val_every_n_steps: int | None = 500
    ckpt_every_n_steps: int | None = 1000
    keep_checkpoints: int = 2          # newest step checkpoints kept (-1: all), plus last.ckpt
    log_every_n_steps: int = 10
    grad_clip: float | None = 1.0
    compile: Any = "auto"              # torch.compile the model together with its loss; auto: on CUDA, not on CPU
    compile_mode: str | None = None    # torch.compile(mode=...): default | reduce-overhead | max-autotune | ...
    loss_chunk: int | None = None      # rows of logits at a time (chunked linear + cross-entropy); None: full logits
    fused_loss: Any = "auto"           # head GEMM + cross-entropy fused (logits turned into their gradient in the
                                       # forward); auto: on GPUs (unless loss_chunk is set), off on CPU
    max_time: float | None = None      # seconds of this command's training: stop at the next step boundary,
                                       # checkpoint, and report "incomplete" (re-run with resume=auto to go on)
    max_micro_batch: int = 128         # largest micro-batch data.micro_batch_size=auto may pick
    memory_fraction: float = 0.85      # micro_batch_size=auto on CUDA: the probe's share of GPU memory
    label: str | None = None           # the progress bar's name for this run (compare: the variant)
    resume: str | None = "auto"        # auto: the newest readable <out_dir>/checkpoints/*.ckpt (none: fresh);
                                       # never (or null): start fresh; or a .ckpt path
    eval_val: bool = True              # evaluate the val split after training (unless just done at the last step)
    eval_test: bool = True             # evaluate the test split after training as well
    peak_tflops: float | None = None   # MFU denominator; None: by GPU name (H100/H200: 989)
    record_indices: bool = False       # write the window indices each rank trained on (tests)
    deterministic: bool = False
    progress_bar: bool = True
    save_model: bool = True            # final weights as <out_dir>/model (save_structured)
    wandb: bool = False                # also log to Weights & Biases (needs `pip install wandb`)
    wandb_project: str = "flyweight"
    wandb_name: str | None = None      # run name; None: W&B's own
    wandb_offline: bool = False        # write the W&B run locally (wandb sync later)


def resolve_fused_loss(value, accelerator: str, loss_chunk) -> bool:
    """trainer.fused_loss: true/false, or "auto" = on for GPU training without loss_chunk (on the H200 it
    took GPT-2 small from 44.9% to 46.3% MFU; on CPU the plain loss is kept, so CPU results stay put)."""
    if isinstance(value, bool):
        return value
    if value == "auto":
        return accelerator == "gpu" and not loss_chunk
    raise ValueError(f"trainer.fused_loss must be true, false or auto, got {value!r}")


def _dataclass_from(cls, values: Mapping | None, group: str):
    values = dict(values or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{group}: unknown keys {unknown}; valid keys: {', '.join(sorted(names))}")
    return cls(**values)


def _accelerator(tcfg: TrainerConfig, device: str = "auto") -> str:
    acc = tcfg.accelerator
    if device == "cpu":
        return "cpu"
    if acc in ("auto", None):
        return "gpu" if torch.cuda.is_available() else "cpu"
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise RuntimeError("trainer.accelerator=gpu but no CUDA device is available; use trainer.accelerator=cpu")
    return "gpu" if acc == "cuda" else acc


def _devices(tcfg: TrainerConfig, accelerator: str) -> int:
    if tcfg.devices not in ("auto", None, -1):
        return int(tcfg.devices)
    if "LOCAL_WORLD_SIZE" in os.environ:  # launched by torchrun
        return int(os.environ["LOCAL_WORLD_SIZE"])
    return torch.cuda.device_count() if accelerator == "gpu" else 1


def _precision(tcfg: TrainerConfig, accelerator: str) -> str:
    if tcfg.precision != "auto":
        return tcfg.precision
    if accelerator == "gpu":
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def _strategy(tcfg: TrainerConfig, world: int, accelerator: str) -> str:
    if tcfg.strategy != "auto":
        return tcfg.strategy
    return "ddp" if world > 1 else "auto"


def params_sha(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().float().numpy().tobytes())
    return h.hexdigest()


def _model_cfg(model_cfg, accelerator: str) -> dict:
    """The model config with its ``auto`` speed settings resolved for this accelerator (fastpath.py)."""
    m = dict(model_cfg)
    m["attention"] = resolve_attention(m.get("attention"), accelerator)
    return m


def _cuda_device() -> torch.device:
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))


def _rank_zero() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def _say(msg: str) -> None:
    if _rank_zero():
        print(msg, flush=True)


def _setup(cfg: dict, out_dir: Path, splits: tuple[str, ...]):
    tcfg = _dataclass_from(TrainerConfig, cfg.get("trainer"), "trainer")
    dcfg = _dataclass_from(DataConfig, cfg.get("data"), "data")
    accelerator = _accelerator(tcfg, cfg.get("device", "auto"))
    devices = _devices(tcfg, accelerator)
    world = devices * int(tcfg.num_nodes)
    seed = int(cfg.get("seed", 1111))
    dm = LMDataModule(dcfg, seed=seed).load(splits + (("test",) if tcfg.eval_test else ()))
    for split, windows in dm.windows.items():  # an evaluation of no window used to report "val": null
        if len(windows) == 0:
            raise ValueError(
                f"the {split} split of data.corpus={dcfg.corpus} has {len(windows.tokens)} tokens, fewer than one "
                f"window of data.max_length={dcfg.max_length}; lower data.max_length or give the split more text"
                + (" (data.val_fraction / data.test_fraction)" if split != "train" else ""))
    return tcfg, dcfg, accelerator, devices, world, seed, dm


def _results_common(cfg: dict, model, dm: LMDataModule, dcfg: DataConfig, flops: int) -> dict:
    from flyweight.models.gpt2 import num_parameters

    return {
        "corpus": dcfg.corpus, "tokenizer": dm.tokenizer.name, "max_length": dcfg.max_length,
        "model": cfg.get("model"), "params": num_parameters(model), "flops_per_token_fwd": flops,
        "splits": dm.describe(),
        # a named corpus's manifest (sources, versions, licences, sha256, tokens per split); None for the others
        "corpus_manifest": dm.manifest(),
    }


def _require_wandb() -> None:
    import importlib.util

    if importlib.util.find_spec("wandb") is None:
        raise ImportError("trainer.wandb=true needs the wandb package, which is not installed: "
                          "`pip install wandb` (then `wandb login`, or trainer.wandb_offline=true), "
                          "or leave trainer.wandb=false (CSV and TensorBoard logs are always written)")


def _loggers(out_dir: Path, tcfg: TrainerConfig | None = None, cfg: dict | None = None, resume_step: int = 0):
    import importlib.util

    from lightning.pytorch.loggers import TensorBoardLogger

    from flyweight.train.logs import ResumableCSVLogger

    # Lightning's CSV step column counts from 0: a run resumed at step S logs S next
    loggers = [ResumableCSVLogger(str(out_dir), name="logs", version="csv", keep_below=resume_step)]
    # TensorBoard needs tensorboard or tensorboardX (a flyweight dependency, but a bare GPU machine with
    # torch + lightning only may lack both): without them the run keeps its CSV logs and says so
    if any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        loggers.append(TensorBoardLogger(str(out_dir), name="logs", version="tb", default_hp_metric=False))
    else:
        _say("[flyweight] no TensorBoard logs: neither tensorboard nor tensorboardX is installed")
    if tcfg is not None and tcfg.wandb:
        _require_wandb()
        from lightning.pytorch.loggers import WandbLogger

        # config=: the resolved config becomes the W&B run's config
        loggers.append(WandbLogger(project=tcfg.wandb_project, name=tcfg.wandb_name, save_dir=str(out_dir),
                                   offline=tcfg.wandb_offline, config=cfg))
    return loggers


def resume_command(out: Path) -> str | None:
    """Under Hydra, when ``out`` is the run's own folder: the command line that continues this run
    (Hydra picks a new timestamped folder per command, so a plain re-run would start over elsewhere)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            return None
        hc = HydraConfig.get()
        if Path(hc.runtime.output_dir).resolve() != Path(out).resolve():
            return None
        overrides = [o for o in hc.overrides.task if not o.startswith(("hydra.run.dir=", "trainer.resume="))]
    except Exception:  # no Hydra run: nothing to print
        return None
    import shlex
    import sys

    prog = Path(sys.argv[0]).name
    prog = f"python {prog}" if prog.endswith(".py") else prog
    return " ".join([prog, *map(shlex.quote, overrides), shlex.quote(f"hydra.run.dir={Path(out).resolve()}")])


def train_lm(cfg, out_dir: str | Path, callbacks: tuple = ()) -> dict | None:
    """Fit the config's model on its data, then evaluate it; ``callbacks``: further Lightning callbacks
    (the GPU benchmark's profiler, tests)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from flyweight.models.gpt2 import model_flops_per_token, save_structured

    cfg = plain_config(cfg)
    check_lm_config(cfg, "train")  # the whole config, before any data is read or model built
    quiet_lightning()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tcfg, dcfg, accelerator, devices, world, seed, dm = _setup(cfg, out, ("train", "val"))
    ocfg = _dataclass_from(OptimConfig, cfg.get("optim"), "optim")
    if tcfg.wandb:
        _require_wandb()  # before any training, not after it
    seed_all(seed)  # the same dropout stream whether called from the runner or directly

    model = build_model(_model_cfg(cfg["model"], accelerator), dm.tokenizer.vocab_size, seed=seed)
    fused_loss = resolve_fused_loss(tcfg.fused_loss, accelerator, tcfg.loss_chunk)
    per_device = dcfg.global_batch_size // world if dcfg.global_batch_size % world == 0 else dcfg.global_batch_size
    micro, micro_why = resolve_micro_batch(
        dcfg.micro_batch_size, accelerator, per_device, int(tcfg.max_micro_batch),
        lambda: probe_micro_batch(model, dcfg.max_length, per_device, int(tcfg.max_micro_batch),
                                  float(tcfg.memory_fraction), _cuda_device(),
                                  loss_kwargs={"loss_chunk": tcfg.loss_chunk, "fused_loss": fused_loss}))
    dcfg.micro_batch_size = micro  # the loaders read it from here
    accum = accumulation(dcfg.global_batch_size, dcfg.micro_batch_size, world)
    steps_per_epoch = len(dm.windows["train"]) // dcfg.global_batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"the train split has {len(dm.windows['train'])} windows of {dcfg.max_length} tokens, "
                         f"fewer than data.global_batch_size={dcfg.global_batch_size}")
    if tcfg.max_steps is not None:
        total = int(tcfg.max_steps)
    elif tcfg.max_epochs is not None:
        total = max(1, round(float(tcfg.max_epochs) * steps_per_epoch))
    else:
        raise ValueError("set trainer.max_steps or trainer.max_epochs")
    warmup = int(ocfg.warmup_steps) if ocfg.warmup_steps is not None else \
        round(float(ocfg.warmup_epochs or 0) * steps_per_epoch)
    stop = min(total, int(tcfg.stop_at_step)) if tcfg.stop_at_step else total
    dm.accumulate = accum
    dm.total_micro_batches = stop * accum

    flops = model_flops_per_token(model, dcfg.max_length)
    peak = float(tcfg.peak_tflops) * 1e12 if tcfg.peak_tflops else (peak_flops() if accelerator == "gpu" else None)
    compile_on = resolve_compile(tcfg.compile, accelerator)
    deadline = time.monotonic() + float(tcfg.max_time) if tcfg.max_time else None
    ckpt_dir = out / "checkpoints"
    # what killed writers left beside their targets (checkpoint temps can be GBs); then the resume point
    for folder in (out, ckpt_dir, out / "model"):
        for stale in remove_stale_temps(folder):
            _say(f"[flyweight] removed {stale}, left by an interrupted write")
    resume, resume_step, resume_why = resume_point(tcfg.resume, ckpt_dir)
    if _rank_zero():  # the per-step logs keep the steps before the resume point; the resumed run appends
        trim_csv(out / "steps.csv", resume_step + 1)
        trim_csv(out / "evals.csv", resume_step + 1)
    module = LMModule(model, ocfg, warmup, total, flops_per_token=flops, peak_flops=peak, compile=compile_on,
                      compile_mode=tcfg.compile_mode, loss_chunk=tcfg.loss_chunk, fused_loss=fused_loss,
                      steps_csv=out / "steps.csv", evals_csv=out / "evals.csv",
                      tokens_per_step=dcfg.global_batch_size * dcfg.max_length, deadline=deadline,
                      record_indices=tcfg.record_indices, label=tcfg.label,
                      deadline_ckpt=ckpt_dir / "last.ckpt", precision=_precision(tcfg, accelerator),
                      ckpt_dir=ckpt_dir if tcfg.ckpt_every_n_steps else None)

    ckpt_callbacks = []
    if tcfg.ckpt_every_n_steps:
        ckpt_callbacks.append(ModelCheckpoint(
            dirpath=str(ckpt_dir), filename="step{step:06d}", auto_insert_metric_name=False,
            every_n_train_steps=int(tcfg.ckpt_every_n_steps), save_top_k=int(tcfg.keep_checkpoints),
            monitor="step", mode="max", save_last=True, save_on_train_epoch_end=False,
            enable_version_counter=False))  # one run per folder: last.ckpt is replaced, never last-v1.ckpt
    val_every = int(tcfg.val_every_n_steps or 0)
    trainer = L.Trainer(
        accelerator=accelerator, devices=devices, num_nodes=int(tcfg.num_nodes),
        strategy=_strategy(tcfg, world, accelerator), precision=_precision(tcfg, accelerator),
        max_steps=stop, max_epochs=1,  # one loader epoch spans the whole run (see TrainBatchSampler)
        accumulate_grad_batches=accum,
        gradient_clip_val=tcfg.grad_clip or None, gradient_clip_algorithm="norm",
        # validation every val_every optimizer steps (counted in micro-batches); never when 0
        check_val_every_n_epoch=None, val_check_interval=(val_every * accum) if val_every else stop * accum + 1,
        num_sanity_val_steps=0, logger=_loggers(out, tcfg, cfg, resume_step),
        plugins=[AtomicCheckpointIO()],  # checkpoints written beside their target and renamed (checkpoints.py)
        callbacks=ckpt_callbacks + list(callbacks) + ([StepProgressBar(tcfg.label)] if tcfg.progress_bar else []),
        enable_checkpointing=bool(ckpt_callbacks), log_every_n_steps=max(1, int(tcfg.log_every_n_steps)),
        use_distributed_sampler=False, enable_progress_bar=tcfg.progress_bar, enable_model_summary=False,
        default_root_dir=str(out), deterministic=tcfg.deterministic,
    )
    if resume is not None:
        resume = str(resume)
    _say(f"[flyweight] {dcfg.corpus}: {len(dm.windows['train'])} train windows of {dcfg.max_length} tokens; "
         f"{total} steps of {dcfg.global_batch_size} sequences ({devices}x{int(tcfg.num_nodes)} devices x micro "
         f"{dcfg.micro_batch_size} x accumulation {accum}), warmup {warmup}; {micro_why}; "
         f"compile {'on' if compile_on else 'off'}, fused loss {'on' if fused_loss else 'off'}, attention "
         f"{module.model.config._attn_implementation}, precision {_precision(tcfg, accelerator)}"
         + (f", stopping at step {stop}" if stop < total else "") + f"; {resume_why}")
    hint = resume_command(out)
    if hint:
        _say(f"[flyweight] if this run is interrupted, the same run folder continues it: {hint}")

    if accelerator == "gpu":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=resume)
    train_time = time.perf_counter() - t0
    if module.stopped_by_deadline:  # last.ckpt was written at the step boundary where the budget ended
        _say(f"[flyweight] trainer.max_time={tcfg.max_time}s reached at step {trainer.global_step} of {stop}; "
             f"saved {ckpt_dir / 'last.ckpt'}. Run the same command again (trainer.resume=auto) to continue.")
        if not trainer.is_global_zero:
            return None
        return {"mode": "train", "complete": False, "steps": trainer.global_step, "schedule_steps": total,
                "train_seconds": module.train_seconds}
    if tcfg.ckpt_every_n_steps:
        trainer.save_checkpoint(str(ckpt_dir / "last.ckpt"), weights_only=False)

    rank = trainer.global_rank
    if tcfg.record_indices:
        atomic_write_text(out / f"seen_indices_rank{rank}.json", json.dumps(
            {"rank": rank, "indices": module.seen_indices, "params_sha256": params_sha(module.model)}))
    peak_memory = torch.cuda.max_memory_allocated() if accelerator == "gpu" else None
    if tcfg.eval_val and module.eval_results.get("val", {}).get("step") != trainer.global_step:
        trainer.validate(module, datamodule=dm, verbose=False)  # not evaluated at the last step yet
    if tcfg.eval_test:
        trainer.test(module, datamodule=dm, verbose=False)
    if tcfg.save_model and trainer.is_global_zero:
        save_structured(module.model, out / "model")
    if not trainer.is_global_zero:
        return None

    steps_done = trainer.global_step
    results = _results_common(cfg, module.model, dm, dcfg, flops)
    results.update({
        "mode": "train", "complete": True, "steps": steps_done, "schedule_steps": total, "warmup_steps": warmup,
        "accumulation": accum, "micro_batch_size": dcfg.micro_batch_size, "world_size": world,
        "train_time_s": train_time, "train_seconds": module.train_seconds,
        "compile_seconds": module.compile_seconds, "compile": compile_on, "peak_train_memory_bytes": peak_memory, "fused_loss": fused_loss,
        "attention": module.model.config._attn_implementation, "precision": _precision(tcfg, accelerator),
        "tokens_trained": steps_done * dcfg.global_batch_size * dcfg.max_length,
        **{split: module.eval_results[split] for split in ("val", "test") if split in module.eval_results},
    })
    _print_eval(results, dcfg)
    return results


def _print_eval(results: dict, dcfg: DataConfig) -> None:
    for split in ("val", "test"):
        if split in results:
            r = results[split]
            _say(f"[flyweight] {split} perplexity on {dcfg.corpus} ({split} split, {r['tokens']} predicted "
                 f"tokens): {r['ppl']:.3f}")


def _match_vocab_rows(model_cfg: dict, weights: dict, vocab_size: int) -> dict:
    """The model config with ``pad_vocab_to`` set so the embedding has the checkpoint's row count.

    Padding is a speed setting, not part of the model: a checkpoint trained without it still loads
    under a config that pads (and vice versa); the real-vocabulary logits are the same either way.
    """
    emb = weights.get("transformer.wte.weight")
    cfg = dict(model_cfg)
    real = int(cfg.get("vocab_size") or vocab_size)
    if emb is None:
        return cfg
    rows = int(emb.shape[0])
    if rows == real:
        cfg["pad_vocab_to"] = None
    elif rows > real:
        cfg["pad_vocab_to"] = rows  # the one multiple of rows that covers real: rows itself
    return cfg  # rows < real: load_state_dict reports the mismatch


def load_checkpoint_model(ckpt: str | Path, model_cfg: dict, vocab_size: int, seed: int | None = None):
    """(model, training step or None) from a Lightning ``.ckpt`` of ``train_lm`` (rebuilt from
    ``model_cfg``) or a ``save_structured`` folder (rebuilt from its own config)."""
    from flyweight.models.gpt2 import load_structured

    path = Path(ckpt).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"ckpt={path} does not exist (give a run's checkpoints/*.ckpt or its model/ folder)")
    if path.is_dir():
        return load_structured(path), None
    state = open_checkpoint(path, mmap=False)  # an empty/truncated file: an error naming it (and a readable one)
    weights = state.get("state_dict", state)
    weights = {k.removeprefix("model."): v for k, v in weights.items()}
    model = build_model(_match_vocab_rows(model_cfg, weights, vocab_size), vocab_size, seed=seed)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith("attn.bias") and not k.endswith("masked_bias")]
    if missing or unexpected:
        raise RuntimeError(f"{path} does not match model={model_cfg}: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]} (pass the experiment the checkpoint was trained with)")
    return model, state.get("global_step")


def eval_lm(cfg, out_dir: str | Path) -> dict | None:
    import lightning as L

    from flyweight.models.gpt2 import model_flops_per_token

    cfg = plain_config(cfg)
    quiet_lightning()
    out = Path(out_dir)
    if not cfg.get("ckpt"):
        raise ValueError("mode=eval needs ckpt=PATH (a run's checkpoints/*.ckpt or its model/ folder)")
    check_lm_config(cfg, "eval")
    tcfg, dcfg, accelerator, devices, world, seed, dm = _setup(cfg, out, ("val",))
    if dcfg.micro_batch_size in ("auto", None) and not dcfg.eval_batch_size:
        dcfg.eval_batch_size = 16  # evaluation holds no gradients: no probe needed for a safe batch
    model, ckpt_step = load_checkpoint_model(cfg["ckpt"], cfg["model"], dm.tokenizer.vocab_size, seed)
    flops = model_flops_per_token(model, dcfg.max_length)
    module = LMModule(model, OptimConfig(), 0, 1)
    trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=int(tcfg.num_nodes),
                        strategy=_strategy(tcfg, world, accelerator), precision=_precision(tcfg, accelerator),
                        logger=False, enable_checkpointing=False, use_distributed_sampler=False,
                        enable_progress_bar=tcfg.progress_bar, enable_model_summary=False)
    t0 = time.perf_counter()
    trainer.validate(module, datamodule=dm, verbose=False)
    if tcfg.eval_test:
        trainer.test(module, datamodule=dm, verbose=False)
    if not trainer.is_global_zero:
        return None
    results = _results_common(cfg, model, dm, dcfg, flops)
    for r in module.eval_results.values():
        r.pop("step", None)  # the evaluating module never trained; the checkpoint's step is below
    results.update({"mode": "eval", "ckpt": str(cfg["ckpt"]), "ckpt_step": ckpt_step,
                    "eval_time_s": time.perf_counter() - t0, **module.eval_results})
    _print_eval(results, dcfg)
    return results


def run(cfg, out_dir: str | Path) -> dict | None:
    """Hydra task "lm": ``mode=train`` (default) or ``mode=eval ckpt=...``."""
    mode = (cfg.get("mode") if hasattr(cfg, "get") else None) or "train"
    if mode == "train":
        return train_lm(cfg, out_dir)
    if mode == "eval":
        return eval_lm(cfg, out_dir)
    raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
