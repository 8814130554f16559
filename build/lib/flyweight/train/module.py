"""The LightningModule of causal language modelling: any GPT-2 built by ``build_gpt2``.

It trains whatever model the config describes through the model's own forward; which linear kind
sits in the blocks matters only to the model builder and to the FLOP count the model reports.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import random
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from flyweight.train.metrics import NextTokenNLL, mfu, perplexity
from flyweight.train.optim import OptimConfig, make_optimizer, make_scheduler


def build_model(model_cfg: dict, vocab_size: int, seed: int | None = None):
    """The GPT-2 of ``model_cfg`` (the keyword arguments of ``build_gpt2``) for this vocabulary."""
    from flyweight.models.gpt2 import build_gpt2

    kwargs = {k: v for k, v in dict(model_cfg).items() if v is not None}
    kwargs.setdefault("vocab_size", vocab_size)  # the real vocabulary; pad_vocab_to pads the rows beyond it
    if kwargs["vocab_size"] < vocab_size:
        raise ValueError(f"model.vocab_size={kwargs['vocab_size']} is smaller than the tokenizer's {vocab_size}")
    if seed is not None:
        kwargs.setdefault("seed", seed)
    return build_gpt2(**kwargs)


# ---- RNG state, so a resumed run draws the same dropout masks as an uninterrupted one -------------
def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng() -> dict:
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class LMModule(L.LightningModule):
    def __init__(self, model: torch.nn.Module, optim: OptimConfig, warmup_steps: int, schedule_steps: int,
                 flops_per_token: int | None = None, peak_flops: float | None = None, compile: bool = False,
                 steps_csv: str | Path | None = None, record_indices: bool = False, compile_mode: str | None = None,
                 loss_chunk: int | None = None, fused_loss: bool = False):
        super().__init__()
        self.model = model
        self.optim_cfg = optim
        self.warmup_steps, self.schedule_steps = int(warmup_steps), int(schedule_steps)
        self.flops_per_token, self.peak = flops_per_token, peak_flops
        self.compile, self.compile_mode = compile, compile_mode
        self.steps_csv = Path(steps_csv) if steps_csv else None
        self.record_indices = record_indices
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

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
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
        tokens = self._step_tokens * self.trainer.world_size
        now = time.perf_counter()
        tps = tokens / (now - self._last_step_time) if self._last_step_time is not None else float("nan")
        self._last_step_time = now
        if math.isfinite(tps):
            self._tps_ema = tps if self._tps_ema is None else 0.9 * self._tps_ema + 0.1 * tps
        util = mfu(self.flops_per_token, tps, self.peak, self.trainer.world_size) if self.flops_per_token else None
        lr = optimizer.param_groups[0]["lr"]
        self.log("loss", loss, prog_bar=True, logger=False)
        self.log("train/loss", loss, logger=True)
        self.log("train/lr", lr, logger=True)
        if self._tps_ema is not None:
            self.log("tok/s", self._tps_ema, prog_bar=True, logger=False)
            self.log("train/tokens_per_s", tps, logger=True)
        if util is not None and math.isfinite(util):
            self.log("mfu", util, prog_bar=True, logger=True)
        if self.steps_csv is not None and self.trainer.is_global_zero:
            new = not self.steps_csv.exists()
            with open(self.steps_csv, "a", newline="") as f:
                w = csv.writer(f)
                if new:
                    w.writerow(["step", "loss", "lr", "tokens_per_s", "mfu"])
                w.writerow([step, repr(loss), lr, tps, util if util is not None else ""])
        self._reset_step_stats()

    def on_train_epoch_start(self) -> None:
        self._last_step_time = None

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
        self.log(f"{stage}/ppl", ppl, prog_bar=True, rank_zero_only=True)
        self.log(f"{stage}/loss", nll_f / max(count_i, 1), rank_zero_only=True)

    def on_validation_epoch_start(self) -> None:
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

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self._pending_rng = checkpoint.get("rng")
