"""The trainer's fast path: which speed settings ``auto`` means on this machine.

Every job that trains (``compare``, ``wt103/*``, ``tiny-lm``, the GPU benchmark) goes through
``flyweight.train.lm.train_lm``, which resolves its ``auto`` settings here, so the fast path measured in
benchmarks is the path users get:

* ``trainer.compile=auto``: torch.compile of model + loss on CUDA (the H200 MFU runs), eager on CPU
  (compilation costs minutes there and the tiny CPU models gain nothing).
* ``model.attention=auto``: flyweight's Triton flash attention on CUDA (the fastest measured,
  BENCHMARKS.md), PyTorch SDPA on CPU. Calls with attention dropout fall back to SDPA by themselves.
* ``data.micro_batch_size=auto``: on CUDA the largest micro-batch (a divisor of the per-device global
  batch, at most ``trainer.max_micro_batch``) whose eager forward + backward plus AdamW state fits in
  ``trainer.memory_fraction`` of the GPU, found by a quick probe; gradient accumulation makes up the
  rest of the global batch. On CPU: the whole per-device global batch, up to ``max_micro_batch``.
"""

from __future__ import annotations

import torch

from flyweight.utils.optional import HAS_TRITON


def resolve_compile(value, accelerator: str) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("auto", None):
        return accelerator == "gpu"
    raise ValueError(f"trainer.compile must be true, false or auto, got {value!r}")


def resolve_attention(value, accelerator: str) -> str:
    if value in ("auto", None):
        return "triton" if accelerator == "gpu" and HAS_TRITON else "sdpa"
    return str(value)


def micro_batch_candidates(per_device_batch: int, cap: int) -> list[int]:
    """Divisors of the per-device batch that are at most ``cap``, largest first."""
    if per_device_batch < 1:
        raise ValueError(f"the per-device global batch must be >= 1, got {per_device_batch}")
    return [m for m in range(min(per_device_batch, max(1, cap)), 0, -1) if per_device_batch % m == 0]


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def probe_micro_batch(model: torch.nn.Module, seq_len: int, per_device_batch: int, cap: int,
                      memory_fraction: float = 0.85, device: torch.device | None = None,
                      dtype: torch.dtype = torch.bfloat16, loss_kwargs: dict | None = None) -> tuple[int, str]:
    """(micro-batch, why): the largest candidate whose eager bf16 step fits on this CUDA device.

    Eager memory is an upper bound of the compiled step's (compilation fuses and frees activations), so
    the pick is safe under compile. The probe leaves the model on the CPU and its gradients empty, and
    does not touch the global RNG streams (a resumed run draws the same dropout masks).
    """
    from flyweight.train.metrics import NextTokenNLL

    device = device or torch.device("cuda")
    candidates = micro_batch_candidates(per_device_batch, cap)
    total = torch.cuda.get_device_properties(device).total_memory
    n_params = sum(p.numel() for p in model.parameters())
    optimizer_bytes = 2 * 4 * n_params  # AdamW's exp_avg and exp_avg_sq in fp32
    vocab = model.get_input_embeddings().num_embeddings
    home = next(model.parameters()).device
    nll = NextTokenNLL(model, **(loss_kwargs or {}))
    tried = []
    with torch.random.fork_rng(devices=[device]):
        model.to(device)
        try:
            for mb in candidates:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                try:
                    ids = torch.randint(0, vocab, (mb, seq_len), device=device)
                    with torch.autocast("cuda", dtype=dtype):
                        loss = nll(ids)
                    loss.backward()
                    torch.cuda.synchronize(device)
                    peak = torch.cuda.max_memory_allocated(device) + optimizer_bytes
                except Exception as err:  # noqa: BLE001 - only out-of-memory is expected; others re-raised
                    if not _is_oom(err):
                        raise
                    peak = None
                finally:
                    model.zero_grad(set_to_none=True)
                    loss = ids = None
                if peak is not None and peak <= memory_fraction * total:
                    why = (f"micro-batch {mb}: probe peak {peak / 2**30:.1f} GiB of {total / 2**30:.0f} GiB "
                           f"(limit {memory_fraction:.0%}); tried {tried + [mb]}")
                    return mb, why
                tried.append(mb)
        finally:
            model.to(home)
            torch.cuda.empty_cache()
    raise RuntimeError(f"no micro-batch of {candidates} fits in {memory_fraction:.0%} of the GPU's "
                       f"{total / 2**30:.0f} GiB for a {n_params / 1e6:.0f}M-parameter model at {seq_len} tokens; "
                       "use a smaller model or data.max_length, or set data.micro_batch_size=N explicitly")


def resolve_micro_batch(value, accelerator: str, per_device_batch: int, cap: int, probe) -> tuple[int, str]:
    """data.micro_batch_size: an int is taken as given; ``auto`` probes on CUDA (``probe()``), else the
    largest candidate (CPU memory is not the limit at the sizes the CPU runs)."""
    if value not in ("auto", None):
        mb = int(value)
        if mb < 1:
            raise ValueError(f"data.micro_batch_size must be >= 1 or auto, got {value!r} (e.g. data.micro_batch_size=8)")
        return mb, f"micro-batch {mb} (data.micro_batch_size)"
    if accelerator == "gpu":
        return probe()
    mb = micro_batch_candidates(per_device_batch, cap)[0]
    return mb, f"micro-batch {mb} (auto on CPU: the per-device batch, capped at trainer.max_micro_batch={cap})"
