"""The numerical comparison every kernel test uses, and the one tolerance table.

FlashAttention's rule: a kernel runs next to a plain PyTorch baseline of the same math, both in the
same (low) precision, and both are measured against that math in float64. For the output and every
gradient, with errors the largest absolute difference from the float64 reference,

    kernel_error <= 2 * baseline_error + atol + rtol * max|reference|     (atol, rtol: TOLERANCE[precision])

The kernel may round differently from PyTorch, but not more than twice as badly; atol + rtol * scale
is the slack for values PyTorch happens to get exactly right (and where the reference itself is
exact, as in float64 or with no baseline, the whole bound). The baseline must itself be within
``TOLERANCE[precision].baseline`` (relative) of float64: a bound built on a wrong baseline would say
nothing.

The inputs are rounded to the low precision first and the reference is computed from the rounded
values, so the comparison measures the computation, not the rounding of its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class Tolerance:
    rtol: float  # slack relative to the reference's largest magnitude; also torch.testing's rtol
    atol: float  # absolute slack (values near zero); also torch.testing's atol
    baseline: float  # the most a plain PyTorch implementation in this precision may be off (relative)

    def close(self) -> dict:
        """The keyword arguments of torch.testing.assert_close."""
        return {"rtol": self.rtol, "atol": self.atol}


TOLERANCE = {  # atol = rtol: a value near zero is judged on the scale of a value of order one
    torch.float64: Tolerance(rtol=1e-12, atol=1e-12, baseline=1e-10),
    torch.float32: Tolerance(rtol=1e-5, atol=1e-5, baseline=1e-4),
    torch.float16: Tolerance(rtol=1e-3, atol=1e-3, baseline=5e-2),  # one ulp at 1 is 2^-10 = 9.8e-4
    torch.bfloat16: Tolerance(rtol=8e-3, atol=8e-3, baseline=2e-1),  # one ulp at 1 is 2^-7 = 7.8e-3
}


def max_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    """max |got - reference| (float64, on CPU)."""
    return (got.detach().cpu().double() - reference.detach().cpu().double()).abs().max().item()


def assert_within_baseline(got: dict, reference: dict, precision, baseline: dict | None = None) -> None:
    """Every tensor of ``got`` (output and gradients by name) against the float64 ``reference`` of the
    same name: its error at most twice that of ``baseline`` plus the precision's atol + rtol * scale.
    Without a baseline (a computation exact to rounding) the error is at most atol + rtol * scale."""
    tol = TOLERANCE[precision]
    assert set(got) == set(reference), (sorted(got), sorted(reference))
    assert baseline is None or set(baseline) == set(reference), (sorted(baseline), sorted(reference))
    for name, ref in reference.items():
        assert got[name] is not None and tuple(got[name].shape) == tuple(ref.shape), name
        assert torch.isfinite(got[name]).all(), f"{name}: not finite"
        scale = ref.abs().max().item()
        base = 0.0 if baseline is None else max_error(baseline[name], ref)
        limit = tol.baseline * scale + tol.atol
        assert base <= limit, f"{name}: the baseline is {base:.2e} from float64 (> {limit:.2e}): broken"
        err = max_error(got[name], ref)
        bound = 2 * base + tol.atol + tol.rtol * scale
        assert err <= bound, (f"{name}: error {err:.2e} > 2 x baseline {base:.2e} + {tol.atol:.0e} + "
                              f"{tol.rtol:.0e} x {scale:.2e} ({precision})")


def outputs_and_grads(fn: Callable, inputs: dict, dtype: torch.dtype, grad_out: torch.Tensor | None) -> dict:
    """``fn(**inputs)`` with each input a fresh leaf in ``dtype`` (on the input's device): the output as
    "out" and, given ``grad_out``, the gradient of every input as "d<name>"."""
    grad = grad_out is not None
    leaves = {n: x.detach().to(dtype, copy=True).requires_grad_(grad) for n, x in inputs.items()}
    out = fn(**leaves)
    if grad_out is None:
        return {"out": out.detach()}
    out.backward(grad_out.to(out.dtype))
    return {"out": out.detach(), **{f"d{n}": x.grad for n, x in leaves.items()}}


def upstream_gradient(shape, dtype: torch.dtype, device, seed: int = 0) -> torch.Tensor:
    """The random upstream gradient ``check_kernel`` pushes back (standard normal, in ``dtype``)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).to(device, dtype)


def check_kernel(kernel: Callable, baseline: Callable, inputs: dict, dtype: torch.dtype, *,
                 backward: bool = True, precision=None, seed: int = 0, plain: Callable | None = None) -> dict:
    """Run ``kernel`` and ``baseline`` (functions of the named floating-point ``inputs``, returning one
    tensor) in ``dtype``, and ``baseline`` in float64 on the same rounded inputs; with ``backward``
    also push one random upstream gradient (rounded to ``dtype``) through all three. Assert the rule
    of this module for the output and every input's gradient (``precision`` names the tolerance,
    default ``dtype``) and return the kernel's results by name.

    ``plain``: the low-precision baseline when it is not ``baseline`` itself -- the library's own
    PyTorch path where the float64 reference is a textbook formula that is no computation anyone
    would run in ``dtype`` (a T x T sum of exponentials overflows float16)."""
    rounded = {n: x.detach().to(dtype).double() for n, x in inputs.items()}
    grad_out = None
    if backward:
        with torch.no_grad():
            out = baseline(**rounded)
        grad_out = upstream_gradient(out.shape, dtype, out.device, seed).double()
    reference = outputs_and_grads(baseline, rounded, torch.float64, grad_out)
    plain = outputs_and_grads(baseline if plain is None else plain, rounded, dtype, grad_out)
    got = outputs_and_grads(kernel, rounded, dtype, grad_out)
    assert_within_baseline(got, reference, dtype if precision is None else precision, plain)
    return got
