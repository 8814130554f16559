"""AdamW with weight decay on matrices only, and the warmup + decay learning-rate schedule.

Decay applies to every parameter with two or more dimensions that is not an embedding: dense
weights and the factors of structured layers alike (low-rank A/B, Monarch blocks, the SS1 weight).
Biases, norm gains and embedding tables (and the lm_head tied to the token embedding) get none.
The rule looks only at shapes and module types, so it never needs to know which layer kind it sees;
a model may name further parameters to exclude (``no_decay``, e.g. a vision transformer's ``cls_token``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class OptimConfig:
    lr: float = 6e-4
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str = "linear"      # linear | cosine | constant (after warmup)
    warmup_steps: int | None = None
    warmup_epochs: float | None = 1.0   # used when warmup_steps is None
    min_lr_ratio: float = 0.0     # final lr = lr * min_lr_ratio
    fused: bool | None = None     # None: make_optimizer uses foreach AdamW; the Lightning module picks fused
                                  # on CUDA without an fp16 GradScaler (and clips the gradients itself)


def param_groups(model: nn.Module, weight_decay: float, no_decay: tuple[str, ...] = ()) -> list[dict]:
    """Two AdamW groups: {matrices: weight_decay} and {biases, norms, embeddings, ``no_decay`` names: 0}."""
    embedding_params = {id(p) for m in model.modules() if isinstance(m, nn.Embedding) for p in m.parameters()}
    seen: set[int] = set()
    decay, other = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue  # tied weights appear once
        seen.add(id(p))
        (decay if p.ndim >= 2 and id(p) not in embedding_params and name not in no_decay else other).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": other, "weight_decay": 0.0}]


def make_optimizer(model: nn.Module, cfg: OptimConfig, no_decay: tuple[str, ...] = ()) -> torch.optim.AdamW:
    fused = bool(cfg.fused)
    return torch.optim.AdamW(param_groups(model, cfg.weight_decay, no_decay), lr=cfg.lr, betas=tuple(cfg.betas),
                             eps=cfg.eps, fused=fused or None)


SCHEDULES = ("linear", "cosine", "constant")


def lr_factor(step: int, warmup: int, total: int, schedule: str = "linear", min_ratio: float = 0.0) -> float:
    """Multiplier of the peak lr at optimizer step ``step`` (0-based): linear warmup over ``warmup``
    steps to 1, then linear or cosine decay to ``min_ratio`` at ``total``."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; valid schedules: {', '.join(SCHEDULES)}")
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "constant" or total <= warmup:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    if schedule == "linear":
        shape = 1.0 - progress
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_ratio + (1.0 - min_ratio) * shape


def make_scheduler(optimizer, warmup: int, total: int, schedule: str = "linear", min_ratio: float = 0.0):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, warmup, total, schedule, min_ratio))
