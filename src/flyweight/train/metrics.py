"""Perplexity from summed token log-likelihoods, and model FLOP utilisation.

Perplexity is exp(total NLL / total predicted tokens) over a whole split. Ranks (and batches)
contribute sums, never means: a mean of per-rank perplexities or losses is wrong when shards differ
in size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# Dense bf16 tensor-core peaks (FLOP/s), by a substring of torch.cuda.get_device_name().
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
                   "L4": 121e12, "4090": 165e12}


def lm_nll_sum(logits: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL (float32 softmax) of a batch of windows, and how many tokens it covers.

    Position t predicts token t+1, so a window of L tokens contributes L-1 predictions (as the
    model's own ``labels=`` loss does).
    """
    # Shift the targets, not the logits: slicing logits[:, :-1] would copy the (B, T, vocab) tensor
    # (and its gradient), the largest buffers of a small model's step. The last position is ignored.
    b, t, v = logits.shape
    target = torch.full_like(input_ids, -100)
    target[:, :-1] = input_ids[:, 1:]
    nll = F.cross_entropy(logits.reshape(b * t, v).float(), target.reshape(-1), reduction="sum", ignore_index=-100)
    return nll, b * (t - 1)


class NextTokenNLL(nn.Module):
    """A causal LM and its summed next-token NLL (``lm_nll_sum``) as one module: ``forward(ids)`` -> NLL sum.

    Compile this, not the bare model: with the loss inside the compiled graph, inductor fuses the
    float32 cast and the log-softmax of the (B, T, vocab) logits into one reduction over the bf16
    logits, instead of materialising an fp32 copy (6.6 GB for GPT-2 at 32 x 1024 tokens) and its
    gradient in eager code after the model's graph ends.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        logits = self.model(input_ids=input_ids, use_cache=False).logits
        return lm_nll_sum(logits, input_ids)[0]


def perplexity(nll_sum: float, n_tokens: int) -> float:
    if n_tokens <= 0:
        raise ValueError("perplexity of an empty split")
    return math.exp(nll_sum / n_tokens)


def peak_flops(device: torch.device | str | None = None) -> float | None:
    """bf16 peak of the CUDA device, or None where unknown (CPU): then MFU is not reported."""
    if not torch.cuda.is_available():
        return None
    dev = torch.device(device) if device is not None else torch.device("cuda")
    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    for key, value in PEAK_BF16_FLOPS.items():
        if key in name:
            return value
    return None


def mfu(flops_per_token_fwd: int, tokens_per_s: float, peak: float | None, n_devices: int = 1) -> float | None:
    """Model FLOP utilisation of training: 3 x forward FLOPs (forward + backward) per token."""
    if peak is None or peak <= 0:
        return None
    return 3 * flops_per_token_fwd * tokens_per_s / (peak * n_devices)
