"""The attention interface, its registry, and the block-windowed helpers the local variants share.

Every variant is an ``nn.Module`` called as ``attn(q, k, v, softmax_temp=None, key_padding_mask=None)``
with q, k, v of shape (B, H, T, E); it returns (B, H, T, E). ``softmax_temp`` defaults to E^-1/2.
``key_padding_mask`` is a bool (B, T) tensor, True where a key is padding and must be ignored
(the ``nn.MultiheadAttention`` convention).

``cost(T, head_dim)`` reports the variant's attention memory (elements of the attention-specific
intermediates per batch element and head: the score matrix for full, the window scores for local,
the q/k features for the low-rank variants; the accounting behind the spec's "1/32 of full attention
memory" budgets) and FLOPs (multiply-add = 2) per batch element and head.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from flyweight.utils.optional import HAS_TRITON, require_triton
from flyweight.utils.registry import Registry

ATTENTION_KINDS: Registry[type["Attention"]] = Registry("attention")


def register_attention(name: str) -> Callable[[type], type]:
    """Class decorator: ``make_attention(name, ...)`` builds this class (a name is registered once)."""
    return ATTENTION_KINDS.register(name)


def unregister_attention(name: str) -> None:
    ATTENTION_KINDS.unregister(name)


def make_attention(name: str, **kwargs) -> "Attention":
    """Build an attention variant by registry name (``window_size``, ``nb_features``, ``seed`` where used)."""
    cls = ATTENTION_KINDS.get_or_raise(name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise TypeError(f"attention {name!r}: {err} (accepted: {cls.ACCEPTS})") from None


@dataclass(frozen=True)
class AttentionCost:
    memory: int  # elements of attention intermediates, per batch element and head
    flops: int  # per batch element and head

    def memory_bytes(self, batch: int = 1, heads: int = 1, bytes_per_element: int = 4) -> int:
        return self.memory * batch * heads * bytes_per_element


class Attention(nn.Module):
    kind = "?"
    ACCEPTS: tuple[str, ...] = ()

    def forward(
        self, q, k, v, softmax_temp: float | None = None, key_padding_mask: torch.Tensor | None = None
    ):
        raise NotImplementedError

    def cost(self, T: int, head_dim: int) -> AttentionCost:
        raise NotImplementedError

    @staticmethod
    def _temp(softmax_temp, head_dim: int) -> float:
        return head_dim**-0.5 if softmax_temp is None else float(softmax_temp)

    @staticmethod
    def _check(q, k, v, key_padding_mask):
        if q.dim() != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
            raise ValueError(
                f"attention expects q, k, v of shape (B, H, T, E); got {tuple(q.shape)}, "
                f"{tuple(k.shape)}, {tuple(v.shape)}"
            )
        for name, t in (("q", q), ("k", k), ("v", v)):
            if not t.is_floating_point():  # integer scores would be truncated silently
                raise TypeError(f"attention: {name} must be a floating-point tensor (as for SDPA), got dtype "
                                f"{t.dtype}; convert it first, e.g. {name}.float()")
        if key_padding_mask is not None:
            B, _, T, _ = q.shape
            if key_padding_mask.shape != (B, T) or key_padding_mask.dtype != torch.bool:
                raise ValueError(
                    f"key_padding_mask must be a bool (B, T) = ({B}, {T}) tensor, True at padding; "
                    f"got {key_padding_mask.dtype} {tuple(key_padding_mask.shape)}"
                )


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """fp16/bf16 inputs are computed in fp32 (exp and q.k overflow there); fp32/fp64 stay as they are."""
    return torch.promote_types(x.dtype, torch.float32)


# ---- block-windowed layout shared by local and sblocal --------------------------------------------------
# Queries are cut into blocks of `block` rows; block n sees keys n*block - left .. (n+1)*block - 1 + right:
# a span of block + w - 1 keys. Scores are (B, H, nblocks, block, span): O(T * (block + w)) memory.


def check_window_size(window_size) -> int:
    if isinstance(window_size, bool) or not isinstance(window_size, numbers.Integral) or window_size < 1:
        raise ValueError(
            f"window_size must be an integer >= 1 (keys per query), got {window_size!r}; e.g. 256"
        )
    return int(window_size)


def no_queries(q: torch.Tensor, v: torch.Tensor) -> torch.Tensor | None:
    """The (empty) output for a sequence of length 0, as full attention gives it; None otherwise."""
    return v.new_empty(v.shape) if q.shape[2] == 0 else None


def window_bounds(window_size: int, causal: bool = False) -> tuple[int, int]:
    """Query i sees keys j with -left <= j - i <= right; left + right + 1 == window_size.

    Centred (left = floor(w/2)) by default; causal: the w keys up to and including the query."""
    window_size = check_window_size(window_size)
    left = window_size - 1 if causal else window_size // 2
    return left, window_size - left - 1


def block_size_for(window_size: int, T: int) -> int:
    # blocks about as long as the window keep the span <= 2w; never below 16 rows (tiny matmuls are slow)
    return max(1, min(T, max(window_size, 16)))


def blocked_queries(x: torch.Tensor, block: int) -> torch.Tensor:
    """(B, H, T, D) -> (B, H, nb, block, D), zero-padded at the end."""
    B, H, T, D = x.shape
    nb = math.ceil(T / block)
    x = nn.functional.pad(x, (0, 0, 0, nb * block - T))
    return x.view(B, H, nb, block, D)


def windowed_keys(x: torch.Tensor, window_size: int, block: int, causal: bool = False) -> torch.Tensor:
    """(B, H, T, D) -> (B, H, nb, span, D): the keys each query block can see (a strided view)."""
    left, right = window_bounds(window_size, causal)
    B, H, T, D = x.shape
    nb = math.ceil(T / block)
    x = nn.functional.pad(x, (0, 0, left, nb * block - T + right))
    return x.unfold(2, block + left + right, block).transpose(-1, -2)


def window_mask(T: int, window_size: int, block: int, device, key_padding_mask=None,
                causal: bool = False) -> torch.Tensor:
    """Bool (B or 1, 1, nb, block, span): True where query row r of block n may attend key c of its span."""
    left, right = window_bounds(window_size, causal)
    nb = math.ceil(T / block)
    span = block + left + right
    r = torch.arange(block, device=device)[:, None]
    c = torch.arange(span, device=device)[None, :]
    band = (c - r >= 0) & (c - r <= left + right)  # -left <= j - i <= right
    key_pos = torch.arange(nb, device=device)[:, None] * block - left + c[None, 0]  # (nb, span)
    inside = (key_pos >= 0) & (key_pos < T)
    mask = band[None] & inside[:, None, :]  # (nb, block, span)
    mask = mask[None, None]
    if key_padding_mask is not None:
        keep = ~key_padding_mask  # (B, T)
        keep = windowed_keys(keep[:, None, :, None].to(torch.uint8), window_size, block, causal)[
            ..., 0
        ].bool()  # (B,1,nb,span)
        mask = mask & keep[:, :, :, None, :]
    return mask


def unblock(x: torch.Tensor, T: int) -> torch.Tensor:
    """(B, H, nb, block, D) -> (B, H, T, D)."""
    B, H, nb, block, D = x.shape
    return x.reshape(B, H, nb * block, D)[:, :, :T]


# ---- implementation choice: the PyTorch path or the Triton kernels -----------------------------------------
IMPLS = ("auto", "torch", "triton")
KERNEL_DTYPES = (torch.float16, torch.bfloat16)


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ValueError(
            f"impl must be one of {IMPLS} (auto: Triton kernels on CUDA fp16/bf16), got {impl!r}"
        )
    return impl


# Backward kernels are used by impl='auto' only in the dtypes where they passed the GPU check
# (benchmarks/approx_attention_gpu.py --parts numerics: kernel error <= 2x the PyTorch path's against
# float64). Each kind states its own as the class attribute ``backward_kernel_dtypes``; this is the default.
# On the H200 (Triton 3.6) fp16 passes everywhere measured; bf16 passes for local attention and for the
# non-causal Performer / Scatterbrain kernels; their causal bf16 backward was 2.3-2.8x the PyTorch path's
# error at 3x logits before the output was saved in fp32, and has not been re-checked on the GPU since.
BACKWARD_CHECKED_DTYPES = (torch.float16,)


def auto_picks_kernel(on_cuda: bool, dtype: torch.dtype, same_dtypes: bool, head_dim: int,
                      needs_grad: bool, backward_dtypes: tuple = BACKWARD_CHECKED_DTYPES) -> bool:
    """impl='auto': the Triton kernels for CUDA fp16/bf16 inputs with head dims <= 256, except where a
    backward is needed in a dtype outside ``backward_dtypes`` (the dtypes whose backward kernels passed
    the GPU check; then the PyTorch path, whose autograd is the reference)."""
    if not (on_cuda and dtype in KERNEL_DTYPES and same_dtypes and head_dim <= 256):
        return False
    return not needs_grad or dtype in backward_dtypes


def use_kernel(impl: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               backward_dtypes: tuple = BACKWARD_CHECKED_DTYPES) -> bool:
    """impl 'triton': always (the kernel reports what it cannot take); 'auto': ``auto_picks_kernel``
    where Triton is installed; 'torch': never."""
    if impl == "torch":
        return False
    if impl == "triton":
        require_triton("attention impl='triton'")
        return True
    if not HAS_TRITON:
        return False
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v))
    return auto_picks_kernel(q.is_cuda, q.dtype, k.dtype == q.dtype and v.dtype == q.dtype,
                             max(q.shape[-1], v.shape[-1]), needs_grad, backward_dtypes)
