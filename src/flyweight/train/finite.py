"""Training stops at the first non-finite loss, with the step, the last good checkpoint and the likely cause.

Without this a diverged run (e.g. ``trainer.precision=16-true``: float16 weights and activations with no
loss scaling overflow at step 2) trains on NaN to the end, reports ``val perplexity nan`` and exits 0
(issue 15). The loss is already read on the host once per optimizer step for the log
(``LMModule.on_before_optimizer_step``), so the check costs nothing more there. Lightning's own
``detect_anomaly`` only helps in the backward pass, is slow, and names no checkpoint or cause.
"""

from __future__ import annotations

import math
from pathlib import Path

from flyweight.utils.errors import UserFacingError


class NonFiniteLossError(UserFacingError, ArithmeticError):
    pass


def likely_cause(precision: str | None, lr: float | None) -> str:
    p = str(precision or "")
    if p in ("16-true", "16", "half"):
        return ("trainer.precision=16-true keeps weights, activations and gradients in float16 without loss "
                "scaling, which overflows; use trainer.precision=16-mixed (loss scaling), bf16-mixed or 32-true")
    if p in ("bf16-true", "bf16"):
        return ("trainer.precision=bf16-true keeps the weights in bfloat16 (8 bits of mantissa); use "
                "trainer.precision=bf16-mixed or 32-true")
    return (f"the learning rate (optim.lr, now {lr}) is likely too high for this model and batch; lower it, "
            "lengthen optim.warmup_steps or set trainer.grad_clip")


def check_finite_loss(loss: float, step: int, precision: str | None, ckpt_dir: str | Path | None,
                      lr: float | None = None, last_good: Path | None = None) -> None:
    """Raise :class:`NonFiniteLossError` when ``loss`` (the mean of optimizer step ``step``) is NaN/inf."""
    if math.isfinite(loss):
        return
    if last_good is None and ckpt_dir is not None:
        from flyweight.train.checkpoints import newest_loadable

        # a checkpoint of step k holds the weights that gave step k+1's loss: good while k+1 < step
        last_good, _, _ = newest_loadable(ckpt_dir, max_step=step - 2)
    where = (f"The last good checkpoint is {last_good}" if last_good is not None
             else "No checkpoint was saved before it")
    raise NonFiniteLossError(f"training loss is {loss} at step {step} (trainer.precision={precision}); stopped "
                             f"instead of training on. {where}. Likely cause: {likely_cause(precision, lr)}")
