"""Training and evaluation of language models (Lightning): ``train_lm``, ``eval_lm``, the task ``run``."""

from flyweight.train.metrics import lm_nll_sum, mfu, peak_flops, perplexity
from flyweight.train.optim import OptimConfig, lr_factor, make_optimizer, make_scheduler, param_groups

__all__ = [
    "OptimConfig",
    "lm_nll_sum",
    "lr_factor",
    "make_optimizer",
    "make_scheduler",
    "mfu",
    "param_groups",
    "peak_flops",
    "perplexity",
]
