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

from flyweight.attention.hf_backends import CAUSAL_BATCH, IMPLEMENTATIONS
from flyweight.convert.vocab import real_vocab_size
from flyweight.kernels.lm_loss import fused_linear_nll, nll_and_grad_

# Dense bf16 tensor-core peaks (FLOP/s), by a substring of torch.cuda.get_device_name().
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12,
                   "L4": 121e12, "4090": 165e12}


IGNORE_TARGET = -100  # F.cross_entropy's default ignore_index; the fused loss ignores any negative target


def next_token_targets(input_ids: torch.Tensor) -> torch.Tensor:
    """(B, T) targets of (B, T) windows: position t predicts token t+1, the last position is ignored.

    The losses shift the targets, not the logits: slicing logits[:, :-1] would copy the (B, T, vocab)
    tensor (and its gradient), the largest buffers of a small model's step."""
    target = torch.full_like(input_ids, IGNORE_TARGET)
    target[:, :-1] = input_ids[:, 1:]
    return target


def lm_nll_sum(logits: torch.Tensor, input_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed next-token NLL (float32 softmax) of a batch of windows, and how many tokens it covers.

    Position t predicts token t+1, so a window of L tokens contributes L-1 predictions (as the
    model's own ``labels=`` loss does).
    """
    b, t, v = logits.shape
    target = next_token_targets(input_ids)
    nll = F.cross_entropy(logits.reshape(b * t, v).float(), target.reshape(-1), reduction="sum",
                          ignore_index=IGNORE_TARGET)
    return nll, b * (t - 1)


class _ChunkedLinearNLL(torch.autograd.Function):
    """Summed NLL of ``hidden @ weight^T`` against ``target`` (negative: ignored), never holding more than
    ``chunk`` rows of logits: each chunk's softmax gradient is turned into its share of d(hidden) and
    d(weight) right away, in the forward, and the backward only scales them by the incoming gradient.
    (The loss must be a scalar that is differentiated once, as a training loss is.)"""

    @staticmethod
    def forward(ctx, hidden, weight, target, chunk, with_grad):
        n = hidden.shape[0]
        acc = torch.promote_types(hidden.dtype, torch.float32)  # float32 softmax, float64 stays float64
        total = torch.zeros((), dtype=acc, device=hidden.device)
        d_hidden = torch.empty_like(hidden)
        d_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        w_grad_dtype = weight.to(hidden.dtype)  # cast once, not per chunk
        for start in range(0, n, chunk):
            h = hidden[start:start + chunk]
            t = target[start:start + chunk]
            logits = (h @ weight.t()).to(acc)
            # per-row NLL; with_grad: the chunk's logits become softmax - onehot in place
            total = total + nll_and_grad_(logits, t, weight.shape[0], write_grad=with_grad).sum()
            if not with_grad:  # evaluation: the gradient GEMMs would be wasted
                continue
            grad = logits.to(hidden.dtype)
            d_hidden[start:start + chunk] = grad @ w_grad_dtype
            d_weight += (grad.t() @ h).to(acc)
        ctx.save_for_backward(d_hidden, d_weight.to(weight.dtype))
        return total

    @staticmethod
    def backward(ctx, grad_out):
        d_hidden, d_weight = ctx.saved_tensors
        return d_hidden * grad_out.to(d_hidden.dtype), d_weight * grad_out.to(d_weight.dtype), None, None, None


def chunked_lm_nll_sum(hidden: torch.Tensor, weight: torch.Tensor, input_ids: torch.Tensor,
                       chunk: int = 8192) -> tuple[torch.Tensor, int]:
    """``lm_nll_sum`` computed from the last hidden states (B, T, d) and the output embedding
    (vocab, d) chunk by chunk: the (B*T, vocab) logits and their gradient never exist whole (6.6 GB
    each for GPT-2 at 64 x 1024 tokens in bf16). Same value and gradients as the plain loss."""
    if chunk < 1:
        raise ValueError(f"loss chunk must be a positive number of rows, got {chunk}")
    b, t, d = hidden.shape
    target = next_token_targets(input_ids)
    with_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    nll = _ChunkedLinearNLL.apply(hidden.reshape(b * t, d), weight, target.reshape(-1), int(chunk), with_grad)
    return nll, b * (t - 1)


class NextTokenNLL(nn.Module):
    """A causal LM and its summed next-token NLL (``lm_nll_sum``) as one module: ``forward(ids)`` -> NLL sum.

    Compile this, not the bare model: with the loss inside the compiled graph, inductor fuses the
    float32 cast and the log-softmax of the (B, T, vocab) logits into one reduction over the bf16
    logits, instead of materialising an fp32 copy (6.6 GB for GPT-2 at 32 x 1024 tokens) and its
    gradient in eager code after the model's graph ends.

    ``loss_chunk`` (rows): compute the loss from the last hidden states with ``chunked_lm_nll_sum``
    instead of from full logits; needs a plain (tied or untied) output embedding without a bias, and
    uses only its first ``vocab`` rows (a padded vocabulary's extra rows take no probability, exactly
    as their -inf logits do).

    ``fused_loss``: the head GEMM and the cross-entropy as one operation
    (``flyweight.kernels.lm_loss.fused_linear_nll``): a Triton kernel turns the logits into their
    gradient in place during the forward, so the logits are read twice instead of four times. Same
    head requirements as ``loss_chunk``; the two are alternatives.
    """

    def __init__(self, model: nn.Module, loss_chunk: int | None = None, fused_loss: bool = False):
        super().__init__()
        self.model = model
        self.loss_chunk = loss_chunk
        self.fused_loss = bool(fused_loss)
        # every window is an unpadded causal sequence: flyweight's attention implementations then drop
        # the mask transformers materialises under torch.compile (flyweight.attention.hf_backends)
        impl = getattr(getattr(model, "config", None), "_attn_implementation", None)
        self._causal = {CAUSAL_BATCH: True} if impl in IMPLEMENTATIONS.values() else {}
        if loss_chunk and fused_loss:
            raise ValueError("loss_chunk and fused_loss are alternative ways to compute the loss: set one of them")
        if loss_chunk or fused_loss:
            head = model.get_output_embeddings()
            option = "loss_chunk" if loss_chunk else "fused_loss"
            if not isinstance(head, nn.Linear) or head.bias is not None:
                raise ValueError(f"{option} needs a bias-free nn.Linear output embedding, got {type(head).__name__}; "
                                 f"turn {option} off")
            self.vocab = real_vocab_size(model)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not (self.loss_chunk or self.fused_loss):
            logits = self.model(input_ids=input_ids, use_cache=False, **self._causal).logits
            return lm_nll_sum(logits, input_ids)[0]
        base = getattr(self.model, self.model.base_model_prefix)
        hidden = base(input_ids=input_ids, use_cache=False, **self._causal).last_hidden_state
        weight = self.model.get_output_embeddings().weight
        if self.fused_loss:
            target = next_token_targets(input_ids)
            # the whole (padded) weight: the GEMM keeps its aligned width, the kernel ignores the padding
            return fused_linear_nll(hidden.reshape(-1, hidden.shape[-1]), weight, target.reshape(-1), self.vocab)
        return chunked_lm_nll_sum(hidden, weight[: self.vocab], input_ids, self.loss_chunk)[0]


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
