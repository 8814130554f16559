"""The LightningModule of causal language modelling: any GPT-2 built by ``build_gpt2``.

It trains whatever model the config describes through the model's own forward; which linear kind
sits in the blocks matters only to the model builder and to the FLOP count the model reports.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from flyweight.train.finite import check_finite_loss
from flyweight.train.metrics import NextTokenNLL, mfu, perplexity
from flyweight.train.model_config import gpt2_kwargs
from flyweight.train.optim import OptimConfig, make_optimizer, make_scheduler
from flyweight.utils.rng import capture_rng, restore_rng


def build_model(model_cfg: dict, vocab_size: int, seed: int | None = None):
    """The GPT-2 of ``model_cfg`` (the keyword arguments of ``build_gpt2``) for this vocabulary."""
    from flyweight.models.gpt2 import build_gpt2

    kwargs = gpt2_kwargs(model_cfg)
    kwargs.setdefault("vocab_size", vocab_size)  # the real vocabulary; pad_vocab_to pads the rows beyond it
    if kwargs["vocab_size"] < vocab_size:
        raise ValueError(f"model.vocab_size={kwargs['vocab_size']} is smaller than the tokenizer's {vocab_size}")
    if seed is not None:
        kwargs.setdefault("seed", seed)
    return build_gpt2(**kwargs)


class LMModule(L.LightningModule):
    def __init__(self, model: torch.nn.Module, optim: OptimConfig, warmup_steps: int, schedule_steps: int,
                 flops_per_token: int | None = None, peak_flops: float | None = None, compile: bool = False,
                 steps_csv: str | Path | None = None, record_indices: bool = False, compile_mode: str | None = None,
                 loss_chunk: int | None = None, fused_loss: bool = False, tokens_per_step: int | None = None,
                 evals_csv: str | Path | None = None, deadline: float | None = None, label: str | None = None,
                 deadline_ckpt: str | Path | None = None, precision: str | None = None,
                 ckpt_dir: str | Path | None = None):
        super().__init__()
        self.model = model
        self.optim_cfg = optim
        self.warmup_steps, self.schedule_steps = int(warmup_steps), int(schedule_steps)
        self.flops_per_token, self.peak = flops_per_token, peak_flops
        self.compile, self.compile_mode = compile, compile_mode
        self.steps_csv = Path(steps_csv) if steps_csv else None
        self.record_indices = record_indices
        # held-out evaluations during training, with the training time spent so far (perplexity vs time)
        self.evals_csv = Path(evals_csv) if evals_csv else None
        self.tokens_per_step = tokens_per_step
        # time.monotonic() after which training stops at the next step boundary (a command's time budget)
        self.deadline = deadline
        self.deadline_ckpt = Path(deadline_ckpt) if deadline_ckpt else None
        self.label = label  # the progress bar's name for this run (e.g. the comparison variant)
        # for the message when the loss stops being finite (finite.py)
        self.precision_name = precision
        self.ckpt_dir = Path(ckpt_dir) if ckpt_dir else None
        self.stopped_by_deadline = False
        # training seconds so far (steps only: no validation, no compilation), carried across resumes
        self.train_seconds = 0.0
        self._first_step_pending = True
        self._first_dt: float | None = None
        self._batch_start: float | None = None
        self.compile_seconds = 0.0
        self.seen_indices: list[int] = []
        self.eval_results: dict[str, dict] = {}
        # model + loss as one module (compiled together; see NextTokenNLL), kept off the module tree so
        # checkpoints hold the plain model's parameter names
        object.__setattr__(self, "_nll", NextTokenNLL(model, loss_chunk=loss_chunk, fused_loss=fused_loss))
        self._compiled = None
        self._pending_rng: dict | None = None
        self._reset_step_stats()
        self._last_step_time: float | None = None
        self._tps_ema: float | None = None

    # ---- forward ----------------------------------------------------------------------------------
    def configure_model(self) -> None:
        if self.compile and self._compiled is None:
            object.__setattr__(self, "_compiled", torch.compile(self._nll, mode=self.compile_mode))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits

    def nll_sum(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Summed next-token NLL of the batch (compiled with the model when compile=True), and its token count."""
        fn = self._compiled if self._compiled is not None else self._nll
        b, t = input_ids.shape
        return fn(input_ids), b * (t - 1)

    # ---- training ---------------------------------------------------------------------------------
    def _reset_step_stats(self) -> None:
        self._loss_sum, self._loss_batches, self._step_tokens = None, 0, 0

    def _restore_pending_rng(self) -> None:
        if self._pending_rng is not None:  # first batch after a resume: continue the saved RNG stream
            restore_rng(self._pending_rng)
            self._pending_rng = None

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        ids = batch["input_ids"]
        nll, n = self.nll_sum(ids)
        loss = nll / n
        d = loss.detach()
        self._loss_sum = d if self._loss_sum is None else self._loss_sum + d
        self._loss_batches += 1
        self._step_tokens += ids.numel()
        if self.record_indices:
            self.seen_indices.extend(int(i) for i in batch["index"])
        return loss

    def on_before_optimizer_step(self, optimizer) -> None:
        # one optimizer step = all micro-batches of the accumulation: report their mean loss
        step = self.global_step + 1
        loss = (self._loss_sum / max(1, self._loss_batches)).item()
        bad = not math.isfinite(loss)
        if self.trainer.world_size > 1:  # every rank stops together (one rank raising alone would hang the rest)
            bad = self.trainer.strategy.reduce_boolean_decision(bad, all=False)
        if bad:
            check_finite_loss(loss if not math.isfinite(loss) else float("nan"), step, self.precision_name,
                              self.ckpt_dir, optimizer.param_groups[0]["lr"])
        tokens = self._step_tokens * self.trainer.world_size
        now = time.perf_counter()
        if self._last_step_time is not None:
            dt = now - self._last_step_time
            tps = tokens / dt
            if self._first_step_pending:
                # the first step of a (re)start includes compilation and warm-up: count it at the second
                # step's duration, and report the difference as compile time
                self.compile_seconds += max(0.0, self._first_dt - dt)
                self.train_seconds += dt
                self._first_step_pending = False
            self.train_seconds += dt
        else:
            tps = float("nan")
            start_dt = now - self._batch_start if self._batch_start is not None else 0.0
            if self._first_step_pending:
                self._first_dt = start_dt  # counted once the next step's duration is known
            else:
                self.train_seconds += start_dt  # the first step after an evaluation
                tps = tokens / start_dt if start_dt > 0 else float("nan")
        self._last_step_time = now
        if math.isfinite(tps):
            self._tps_ema = tps if self._tps_ema is None else 0.9 * self._tps_ema + 0.1 * tps
        util = mfu(self.flops_per_token, tps, self.peak, self.trainer.world_size) if self.flops_per_token else None
        lr = optimizer.param_groups[0]["lr"]
        self.log("loss", loss, prog_bar=True, logger=False)
        metrics = {"train/loss": loss, "train/lr": lr}
        if self._tps_ema is not None:
            self.log("tok/s", self._tps_ema, prog_bar=True, logger=False)
            metrics["train/tokens_per_s"] = tps
        if util is not None and math.isfinite(util):
            self.log("mfu", util, prog_bar=True, logger=False)
            metrics["mfu"] = util
        # to the loggers now, not through self.log: Lightning hands logged values to the loggers only after
        # the step's callbacks, i.e. after ModelCheckpoint has saved this step, so a kill in between lost the
        # step's row for good (the resumed run starts after it). Step column as Lightning's: from 0.
        if self.trainer.loggers and step % max(1, self.trainer.log_every_n_steps) == 0:
            for logger in self.trainer.loggers:
                logger.log_metrics(metrics, step=step - 1)
        if self.steps_csv is not None and self.trainer.is_global_zero:
            new = not self.steps_csv.exists()
            with open(self.steps_csv, "a", newline="") as f:
                w = csv.writer(f)
                if new:
                    w.writerow(["step", "loss", "lr", "tokens_per_s", "mfu", "train_seconds"])
                w.writerow([step, repr(loss), lr, tps, util if util is not None else "", self.train_seconds])
        self._reset_step_stats()

    def on_train_batch_end(self, outputs, batch: Any, batch_idx: int) -> None:
        # a time budget ends training only at an optimizer-step boundary (no half-accumulated step is lost
        # mid-way: the resumed run starts at exactly the saved step)
        if self.deadline is None or self._loss_batches != 0 or self.trainer.should_stop:
            return
        # every rank decides together (one rank's clock must not leave the others waiting in a collective)
        late = self.trainer.strategy.reduce_boolean_decision(time.monotonic() >= self.deadline, all=False)
        if late and self.global_step < self.trainer.max_steps:
            # saved here, mid-epoch like ModelCheckpoint's step files, so that a resume continues the epoch
            # (a checkpoint taken after fit() returns would mark the run's only epoch as finished)
            self._flush_first_step()
            if self.deadline_ckpt is not None:
                self.trainer.save_checkpoint(str(self.deadline_ckpt), weights_only=False)
            self.stopped_by_deadline = True
            self.trainer.should_stop = True

    def on_train_epoch_start(self) -> None:
        self._last_step_time = None
        self._batch_start = None
        self._first_step_pending = True

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._restore_pending_rng()
        if self._last_step_time is None and self._batch_start is None:
            self._batch_start = time.perf_counter()

    def _flush_first_step(self) -> None:
        # the first step's time is held back until the second step's is known (see on_before_optimizer_step);
        # when no second step comes before an evaluation, a checkpoint or the end, count it as it was
        if self._first_step_pending and self._first_dt is not None:
            self.train_seconds += self._first_dt
            self._first_dt = None
            self._first_step_pending = False

    def on_train_end(self) -> None:
        self._flush_first_step()

    def on_validation_model_train(self) -> None:
        # training resumes after an evaluation: the next step's interval would include the evaluation
        super().on_validation_model_train()
        self._last_step_time = None
        self._batch_start = None

    # ---- evaluation: sums per rank, reduced across ranks, perplexity at the end ------------------
    def _eval_start(self) -> None:
        self._nll_total = torch.zeros((), dtype=torch.float64, device=self.device)
        self._count = torch.zeros((), dtype=torch.float64, device=self.device)

    def _eval_step(self, batch: dict) -> None:
        ids = batch["input_ids"]
        nll, n = self.nll_sum(ids)
        self._nll_total += nll.double()
        self._count += n

    def _eval_end(self, stage: str) -> None:
        nll = self.trainer.strategy.reduce(self._nll_total, reduce_op="sum")
        count = self.trainer.strategy.reduce(self._count, reduce_op="sum")
        nll_f, count_i = float(nll), round(float(count))
        ppl = perplexity(nll_f, count_i) if count_i else float("nan")
        self.eval_results[stage] = {"ppl": ppl, "loss": nll_f / max(count_i, 1), "tokens": count_i,
                                    "step": int(self.global_step)}
        if (stage == "val" and self.evals_csv is not None and self.trainer.is_global_zero
                and self.trainer.state.fn == "fit"):
            new = not self.evals_csv.exists()
            with open(self.evals_csv, "a", newline="") as f:
                w = csv.writer(f)
                if new:
                    w.writerow(["step", "tokens", "train_seconds", "ppl", "loss"])
                w.writerow([int(self.global_step), int(self.global_step) * int(self.tokens_per_step or 0),
                            self.train_seconds, ppl, nll_f / max(count_i, 1)])
        self.log(f"{stage}/ppl", ppl, prog_bar=True, rank_zero_only=True)
        self.log(f"{stage}/loss", nll_f / max(count_i, 1), rank_zero_only=True)

    def on_validation_epoch_start(self) -> None:
        self._flush_first_step()
        self._eval_start()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_start(self) -> None:
        self._eval_start()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    # ---- optimizer, checkpoints ---------------------------------------------------------------------
    def _grad_scaler(self):
        trainer = self._trainer
        return getattr(trainer.precision_plugin, "scaler", None) if trainer is not None else None

    def configure_optimizers(self):
        cfg = self.optim_cfg
        if cfg.fused is None:
            # fused AdamW wherever it is exact and clippable here: CUDA parameters, no fp16 GradScaler
            on_cuda = all(p.is_cuda for p in self.model.parameters())
            cfg = dataclasses.replace(cfg, fused=on_cuda and self._grad_scaler() is None)
        opt = make_optimizer(self.model, cfg)
        sched = make_scheduler(opt, self.warmup_steps, self.schedule_steps, self.optim_cfg.schedule,
                               self.optim_cfg.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step", "frequency": 1}}

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning refuses to clip for a fused optimizer under any mixed precision, because under fp16
        # the fused step unscales the gradients itself (here they would still be scaled). Without a
        # GradScaler (bf16, fp32) the gradients are the true ones, so clip them here ourselves.
        fused = getattr(optimizer, "_step_supports_amp_scaling", False)
        if gradient_clip_val and fused and self._grad_scaler() is None:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["rng"] = capture_rng()
        checkpoint["flyweight_time"] = {"train_seconds": self.train_seconds, "compile_seconds": self.compile_seconds}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._pending_rng = checkpoint.get("rng")
        t = checkpoint.get("flyweight_time") or {}
        self.train_seconds = float(t.get("train_seconds", 0.0))
        self.compile_seconds = float(t.get("compile_seconds", 0.0))
