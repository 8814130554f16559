"""torchao's ``quantize_`` on structured models: what it can quantize, and saying what it cannot.

torchao replaces a module's 2-D ``weight`` by a quantized tensor subclass and, by default, only
looks at ``nn.Linear``; every flyweight layer is a ``StructuredLinear``, so a bare ``quantize_``
silently skips them all. What works (tested with torchao 0.18, CPU, Int8WeightOnlyConfig and
Int8DynamicActivationInt8WeightConfig):

- ``DenseLinear`` and ``SS1Linear``: their weight is one (out, in') matrix used by a plain matmul
  (for SS1 after the sketch), so the quantized weight stands in for it; SS1 keeps its sketch in
  floating point and quantizes the compressed weight.
- NOT low-rank and Monarch: their factors (``A``/``B``, ``w1``/``w2``) are used transposed / in
  batched matmuls, which torchao's ``Int8Tensor`` does not implement (``aten.t``, ``aten.transpose``
  raise NotImplementedError); they stay in floating point, and ``quantize_`` here warns naming them.

    from torchao.quantization import Int8WeightOnlyConfig
    from flyweight.integrations.torchao import quantize_
    skipped = quantize_(model, Int8WeightOnlyConfig())   # nn.Linear + dense + SS1 layers; warns on the rest
"""

from __future__ import annotations

import warnings
from typing import Callable

from torch import nn

from flyweight.linear import StructuredLinear


def torchao_filter(module: nn.Module, fqn: str) -> bool:
    """torchao ``filter_fn``: True for ``nn.Linear`` and for structured kinds torchao can quantize."""
    if isinstance(module, StructuredLinear):
        return type(module).torchao_quantizable
    return isinstance(module, nn.Linear)


def quantize_(model: nn.Module, config, filter_fn: Callable[[nn.Module, str], bool] | None = None) -> list[str]:
    """torchao's ``quantize_`` with ``torchao_filter`` (and ``filter_fn``, both must accept a layer);
    returns, and warns about, the structured layers left in floating point because torchao cannot
    quantize their kind."""
    from torchao.quantization import quantize_ as _torchao_quantize_

    def accept(module: nn.Module, fqn: str) -> bool:
        return torchao_filter(module, fqn) and (filter_fn is None or filter_fn(module, fqn))

    left = [n for n, m in model.named_modules()
            if isinstance(m, StructuredLinear) and not type(m).torchao_quantizable
            and (filter_fn is None or filter_fn(m, n))]
    if left:
        kinds = sorted({model.get_submodule(n).kind for n in left})
        warnings.warn(
            f"torchao cannot quantize {len(left)} structured layer(s) of kind {', '.join(kinds)} (their "
            f"factors are not a plain linear weight), e.g. {left[0]}; they stay in floating point",
            stacklevel=2,
        )
    _torchao_quantize_(model, config, filter_fn=accept)
    return left
