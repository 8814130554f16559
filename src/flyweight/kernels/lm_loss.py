"""The language-model head and its cross-entropy as one operation, with the logits' gradient
computed in the forward pass by a Triton kernel.

    nll_sum = fused_linear_nll(hidden, weight, target, vocab)    # hidden (N, d), weight (V, d)

Why: in GPT-2 small training the (tokens x 50304) logits are the largest tensor of the step (6.6
GB in bf16 at 64 x 1024 tokens), and a plain loss walks over them four times: the GEMM writes them,
the log-softmax reads them, the backward reads them again and writes their gradient. Here one
kernel per row reads the logits, finds the row's log-sum-exp (online softmax), then reads the row
again from the end backwards (the blocks it read last are the likeliest to still be in L2) and
overwrites it in place with the gradient ``softmax - onehot(target)``. The backward is then just
the two GEMMs of the head, scaled by the incoming gradient (a training loss is differentiated
once). The gradient buffer is the logits' buffer, so memory stays that of the plain loss.

Conventions: ``target`` < 0 marks an ignored row (no loss, zero gradient). Only the first ``vocab``
columns are real classes: columns ``vocab..V-1`` (a vocabulary padded to a multiple of 64) get zero
probability and zero gradient, exactly as -inf logits would. The softmax runs in float32 whatever
the logits' dtype (bf16 under autocast).

Paths: the Triton kernel on CUDA (and under ``TRITON_INTERPRET=1`` on CPU tensors, which is how the
tests check it); elsewhere, and for float64 logits, a plain PyTorch computation of the same
quantities, chunked over rows. ``flyweight.train.metrics.chunked_lm_nll_sum`` uses the same per-row
function on its chunks of logits.
"""

from __future__ import annotations


import torch

from flyweight.kernels._triton_env import INTERPRET
from flyweight.utils.env import env_int

__all__ = ["fused_linear_nll", "nll_and_grad_"]


try:  # Triton is optional: CPU-only installs use the PyTorch path
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without Triton
    triton = None

if triton is not None:
    LOG2E = tl.constexpr(1.4426950408889634)  # a plain float global does not compile (the interpreter accepts it)

    @triton.jit
    def _nll_grad_rows(logits_ptr, stride_row, target_ptr, nll_ptr, n_valid, n_cols,
                       WRITE_GRAD: tl.constexpr, BLOCK: tl.constexpr):
        """One row per program: nll = lse - x[target]; with WRITE_GRAD the row becomes softmax - onehot."""
        row = tl.program_id(0).to(tl.int64)
        ptr = logits_ptr + row * stride_row
        target = tl.load(target_ptr + row).to(tl.int32)
        offs = tl.arange(0, BLOCK)
        # pass 1: running max and sum of exp, one rescale per block (not per element)
        m = -float("inf")
        s = 0.0
        for start in range(0, n_valid, BLOCK):
            cols = start + offs
            x = tl.load(ptr + cols, mask=cols < n_valid, other=-float("inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, axis=0))
            s = s * tl.exp2((m - m_new) * LOG2E) + tl.sum(tl.exp2((x - m_new) * LOG2E), axis=0)
            m = m_new
        lse = m + tl.log(s)
        valid = target >= 0
        x_target = tl.load(ptr + tl.maximum(target, 0)).to(tl.float32)
        tl.store(nll_ptr + row, tl.where(valid, lse - x_target, 0.0))
        if WRITE_GRAD:
            keep = tl.where(valid, 1.0, 0.0)
            # pass 2, last block first; the padded columns (n_valid..n_cols) are written as zeros
            n_blocks = tl.cdiv(n_cols, BLOCK)
            for i in range(0, n_blocks):
                cols = (n_blocks - 1 - i) * BLOCK + offs
                x = tl.load(ptr + cols, mask=cols < n_valid, other=-float("inf")).to(tl.float32)
                p = tl.exp2((x - lse) * LOG2E)
                p = tl.where(cols == target, p - 1.0, p) * keep
                tl.store(ptr + cols, p.to(logits_ptr.dtype.element_ty), mask=cols < n_cols)


def _launch_config(n_cols: int) -> tuple[int, int]:
    """(BLOCK, num_warps): small blocks under the interpreter (speed of the tests), else a block of
    4096 columns for 8 warps (16 bf16 values per thread per load). FLYWEIGHT_CE_BLOCK /
    FLYWEIGHT_CE_WARPS override it for the GPU benchmark's sweep."""
    if INTERPRET:
        return min(256, triton.next_power_of_2(max(n_cols, 16))), 4
    block = env_int("FLYWEIGHT_CE_BLOCK")
    warps = env_int("FLYWEIGHT_CE_WARPS")
    return min(block, triton.next_power_of_2(max(n_cols, 16))), warps


def _use_triton(t: torch.Tensor) -> bool:
    # float64 logits take the PyTorch path: the kernel's softmax is float32
    return triton is not None and (t.device.type == "cuda" or INTERPRET) and t.dtype != torch.float64


def nll_and_grad_(logits: torch.Tensor, target: torch.Tensor, vocab: int, *, write_grad: bool = True) -> torch.Tensor:
    """Per-row NLL (float32, float64 for float64 logits; 0 for ignored rows) of ``logits`` (N, V) against ``target`` (N,), using
    the first ``vocab`` columns; with ``write_grad`` the logits are overwritten in place by the
    gradient of the summed NLL with respect to them (softmax - onehot, zero on ignored rows and on
    columns >= vocab)."""
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(f"logits must be (N, V) and target (N,), got {tuple(logits.shape)} and {tuple(target.shape)}")
    if not 0 < vocab <= logits.shape[1]:
        raise ValueError(f"vocab={vocab} must be in 1..{logits.shape[1]} (the logits' width)")
    n, width = logits.shape
    if logits.stride(1) != 1:
        raise ValueError("logits must be contiguous along the vocabulary (stride 1 in the last dimension)")
    nll = torch.empty(n, dtype=torch.promote_types(logits.dtype, torch.float32), device=logits.device)
    if n == 0:
        return nll
    if _use_triton(logits):
        block, warps = _launch_config(width)
        _nll_grad_rows[(n,)](logits, logits.stride(0), target.contiguous(), nll, vocab, width,
                             WRITE_GRAD=write_grad, BLOCK=block, num_warps=warps)
        return nll
    return _nll_and_grad_torch_(logits, target, vocab, nll, write_grad)


def _nll_and_grad_torch_(logits, target, vocab, nll, write_grad, chunk: int = 4096):
    """The same computation in PyTorch, ``chunk`` rows at a time (bounded float32 temporaries)."""
    acc = torch.promote_types(logits.dtype, torch.float32)
    for start in range(0, logits.shape[0], chunk):
        rows = logits[start:start + chunk]
        t = target[start:start + chunk]
        x = rows[:, :vocab].to(acc)
        lse = torch.logsumexp(x, dim=-1)
        valid = t >= 0
        safe = t.clamp_min(0)
        picked = x.gather(1, safe[:, None]).squeeze(1)
        nll[start:start + chunk] = torch.where(valid, lse - picked, torch.zeros_like(lse)).to(nll.dtype)
        if write_grad:
            grad = torch.exp(x - lse[:, None])
            grad[torch.arange(len(t), device=t.device), safe] -= 1.0
            grad *= valid[:, None]
            rows[:, :vocab] = grad.to(rows.dtype)
            rows[:, vocab:] = 0
    return nll


class _FusedLinearNLL(torch.autograd.Function):
    """sum_i NLL(hidden_i @ weight^T, target_i); the forward leaves d(sum)/d(logits) in the logits' buffer."""

    @staticmethod
    def forward(ctx, hidden, weight, target, vocab, with_grad):
        # the head GEMM in the autocast dtype when autocast is on (as an nn.Linear would run)
        logits = torch.matmul(hidden, weight.t())
        nll = nll_and_grad_(logits, target, vocab, write_grad=with_grad)
        ctx.save_for_backward(logits if with_grad else None, hidden, weight)
        return nll.sum()

    @staticmethod
    def backward(ctx, grad_out):
        grad_logits, hidden, weight = ctx.saved_tensors
        if grad_logits is None:
            raise RuntimeError("fused_linear_nll was run without gradients (no_grad or inputs not requiring grad)")
        d_hidden = d_weight = None
        if ctx.needs_input_grad[0]:
            d_hidden = torch.matmul(grad_logits, weight.to(grad_logits.dtype))
            d_hidden = (d_hidden * grad_out.to(d_hidden.dtype)).to(hidden.dtype)
        if ctx.needs_input_grad[1]:
            d_weight = torch.matmul(grad_logits.t(), hidden.to(grad_logits.dtype))
            d_weight = (d_weight.to(weight.dtype) * grad_out.to(weight.dtype))
        return d_hidden, d_weight, None, None, None


@torch.compiler.disable  # eager on purpose: three cuBLAS GEMMs and one kernel, nothing for inductor to fuse
def fused_linear_nll(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, vocab: int | None = None) -> torch.Tensor:
    """Summed NLL of the logits ``hidden @ weight[:vocab]^T`` (columns >= vocab ignored) against
    ``target`` (-1 or any negative: ignored row). hidden (N, d), weight (V, d), target (N,) integer.

    Same value and gradients as ``F.cross_entropy(hidden @ weight[:vocab].T, target, reduction="sum",
    ignore_index=...)`` with a float32 softmax; the gradient is computed in the forward, so the
    returned loss must be differentiated once (as a training loss is)."""
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"hidden must be (N, d) and weight (V, d), got {tuple(hidden.shape)} and {tuple(weight.shape)}")
    if target.shape != hidden.shape[:1] or target.dtype.is_floating_point:
        raise ValueError(f"target must be an integer tensor of shape ({hidden.shape[0]},), got {target.dtype} {tuple(target.shape)}")
    vocab = weight.shape[0] if vocab is None else int(vocab)
    with_grad = torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)
    return _FusedLinearNLL.apply(hidden, weight, target, vocab, with_grad)
