"""A padded vocabulary: the tied embedding and lm_head of a Hugging Face model grown to a multiple of rows.

``pad_vocabulary_(model, 64)`` (``build_gpt2(pad_vocab_to=64)``) pads GPT-2's 50257 rows to 50304 so the
logits GEMM has tensor-core-friendly shapes; the head becomes a ``PaddedVocabHead`` whose padded logits
are -inf. The real vocabulary size is saved in the config (``REAL_VOCAB_KEY``), so loading a checkpoint
(``checkpoint.load_structured``, transformers' loader hook) puts the -inf head back with
``install_padded_head``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from flyweight.convert.surgery import mark_flyweight_checkpoint

REAL_VOCAB_KEY = "flyweight_real_vocab_size"  # HF config attribute: saved in config.json with the model


class PaddedVocabHead(nn.Linear):
    """The tied lm_head of a vocabulary padded from ``vocab_size`` to ``out_features`` rows.

    The padding exists only so the logits GEMM (and its two backward GEMMs) see a width that is a
    multiple of 64; 50257 is odd, so every row of the logits is misaligned for the tensor cores
    (what it buys on a GPU is measured by ``benchmarks/gpt2_train_gpu.py --pad-vocab 64,0``). The padded rows'
    logits are overwritten with -inf, so the softmax gives them exactly zero probability: the loss,
    perplexity and ``generate()`` are those of the real vocabulary, and the padded rows never receive
    a gradient. (-inf rather than slicing the logits: the model's logits keep the width
    ``config.vocab_size`` that Hugging Face's own ``labels=`` loss reshapes them by. A loss that
    spreads mass over every column, e.g. label smoothing, must use the first ``vocab_size`` only.)
    """

    def __init__(self, in_features: int, out_features: int, vocab_size: int, device=None, dtype=None):
        if not 0 < vocab_size <= out_features:
            raise ValueError(f"vocab_size={vocab_size} must be in 1..out_features={out_features}")
        super().__init__(in_features, out_features, bias=False, device=device, dtype=dtype)
        self.vocab_size = vocab_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = F.linear(x, self.weight)
        # in place on a (B, T, padding) slice: no copy of the logits; the matmul saved its inputs,
        # not its output, so autograd allows it (the filled entries get a zero gradient)
        logits[..., self.vocab_size:] = float("-inf")
        return logits

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, vocab_size={self.vocab_size} (rows {self.vocab_size}.. padding, logits -inf)"


def real_vocab_size(model: nn.Module) -> int:
    """The vocabulary the model predicts: ``config.vocab_size`` less any padding rows."""
    config = model.config
    return int(getattr(config, REAL_VOCAB_KEY, None) or config.vocab_size)


def install_padded_head(model: nn.Module, vocab_size: int) -> None:
    """Replace the tied nn.Linear lm_head by a ``PaddedVocabHead`` sharing the embedding's weight."""
    head = model.get_output_embeddings()
    if isinstance(head, PaddedVocabHead):
        return
    if type(head) is not nn.Linear or head.bias is not None:
        raise ValueError(f"vocabulary padding needs GPT-2's tied nn.Linear lm_head, found {type(head).__name__}")
    rows, width = head.weight.shape  # the weight's, not the attributes: they may predate the padding
    new = PaddedVocabHead(width, rows, vocab_size, device="meta")
    new.weight = head.weight  # the same Parameter: the tie to the embedding is kept
    model.set_output_embeddings(new)


def pad_vocabulary_(model: nn.Module, multiple: int) -> None:
    """Pad the tied embedding / lm_head to a multiple of ``multiple`` rows (zeros), the head a ``PaddedVocabHead``."""
    config = model.config
    real = int(config.vocab_size)
    rows = -(-real // multiple) * multiple
    if rows == real:
        return  # already aligned: nothing to pad, an ordinary model
    old = model.get_input_embeddings()
    emb = nn.Embedding(rows, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        emb.weight[:real].copy_(old.weight)
        emb.weight[real:].zero_()  # never looked up (token ids < real) and never updated
    model.set_input_embeddings(emb)
    model.lm_head.weight = emb.weight
    config.vocab_size = rows
    setattr(config, REAL_VOCAB_KEY, real)
    mark_flyweight_checkpoint(config)  # a plain from_pretrained must restore the -inf head too
    install_padded_head(model, real)
