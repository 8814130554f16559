"""SS1 (Sketch Structured Transform, NeurIPS 2024) as a drop-in nn.Linear; see SPEC-SS1.md.

The stored weight has in_features / R columns. Output block pn reads input r through weight
column k*BK + (s - h(pn, k, c)) mod BK, where r = (k*R + c)*BK + s: the R chunks of a supergroup
share one rotated BK-wide slice of the weight. Computing it means sketching the input (rotate the R
chunks, sum them) and one matmul of depth K/R; ``flyweight.kernels.ss1_linear`` does that.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from flyweight.kernels import ss1_linear
from flyweight.kernels.ss1 import use_triton
from flyweight.kernels.ss1_layout import SS1Layout, draw_hash_coeffs, valid_widths_near
from flyweight.kernels.ss1_torch import SS1Tables
from flyweight.linear.base import StructuredLinear, register_linear, uniform_


def _is_power_of_two(v: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1 and (v & (v - 1)) == 0


@register_linear("ss1")
class SS1Linear(StructuredLinear):
    """SS1 layer. ``compression`` R in {1, 2, 4, 8, 16, ...}; block sizes are model hyperparameters.

    ``pad=True`` accepts widths that are not a multiple of R * block_k by zero-padding the input.
    ``hash_coeffs`` (R0..R3) restores a saved layer exactly; otherwise they are drawn from ``seed``.
    ``backend`` (attribute, not part of the structure): "auto" (Triton kernels on CUDA, PyTorch
    elsewhere), "torch" or "triton"; see ``flyweight.kernels.ss1``.
    """

    backend: str = "auto"

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        compression: int = 4,
        seed: int = 1024,
        block_k: int = 32,
        block_n: int = 64,
        vec: int = 8,
        pad: bool = False,
        hash_coeffs: Sequence[int] | None = None,
        device=None,
        dtype=None,
    ):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        if not _is_power_of_two(compression):
            raise ValueError(
                f"compression must be a power of two (1, 2, 4, 8, 16, ...), got {compression!r}"
            )
        for name, value in (("block_k", block_k), ("block_n", block_n), ("vec", vec)):
            if not _is_power_of_two(value):
                raise ValueError(f"{name} must be a power of two, got {value!r}")
        if vec > block_k:
            raise ValueError(f"vec={vec} must not exceed block_k={block_k} (it divides it)")
        supergroup = compression * block_k
        if in_features % supergroup:
            below, above = valid_widths_near(in_features, supergroup)
            if not pad:
                nearest = " or ".join(str(w) for w in (below, above) if w > 0)
                raise ValueError(
                    f"in_features={in_features} is not a multiple of compression*block_k="
                    f"{compression}*{block_k}={supergroup}; nearest valid sizes: {nearest}. "
                    f"Pass pad=True to zero-pad the input to {above}."
                )
            padded_in = above
        else:
            padded_in = in_features
        if hash_coeffs is None:
            coeffs = draw_hash_coeffs(seed)
        else:
            coeffs = tuple(int(c) for c in hash_coeffs)
            if len(coeffs) != 4 or any(c < 1 or c % 2 == 0 for c in coeffs):
                raise ValueError(f"hash_coeffs must be four odd positive integers, got {hash_coeffs!r}")
        self.compression = compression
        self.seed = int(seed)
        self.block_k, self.block_n, self.vec = block_k, block_n, vec
        self.pad = bool(pad)
        self.hash_coeffs: tuple[int, int, int, int] = coeffs  # type: ignore[assignment]
        self.layout = SS1Layout(
            in_features, out_features, compression, block_k, block_n, vec, coeffs, padded_in
        )
        self.weight = nn.Parameter(
            torch.empty(out_features, self.layout.compressed_in, device=device, dtype=dtype)
        )
        self._tables: dict[torch.device, SS1Tables] = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        uniform_(self.weight, self.in_features)
        if self.bias is not None:
            uniform_(self.bias, self.in_features)

    def tables(self, device: torch.device) -> SS1Tables:
        if device not in self._tables:
            self._tables[device] = SS1Tables(self.layout, device)
        return self._tables[device]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if torch.is_autocast_enabled(x.device.type):
            # a custom op gets no autocast treatment: cast like F.linear would, so mixed precision
            # runs the bf16/fp16 kernels instead of fp32 ones
            x = x.to(torch.get_autocast_dtype(x.device.type))
        lead = x.shape[:-1]
        x2d = x.reshape(-1, self.in_features)
        extra = self.layout.padded_in - self.in_features
        if extra:
            x2d = F.pad(x2d, (0, extra))
        bias = None if self.bias is None else self._weight_like(self.bias, x)
        weight = self._weight_like(self.weight, x)
        if use_triton(x2d, self.backend):  # the kernels need no index tables of the PyTorch path
            y = ss1_linear(x2d, weight, bias, self.layout, backend=self.backend)
        else:
            y = ss1_linear(x2d, weight, bias, self.layout, self.tables(x.device), backend="torch")
        return y.view(*lead, self.out_features)

    def to_dense(self) -> torch.Tensor:
        idx = self.layout.dense_column_index().to(self.weight.device)
        return self.weight.detach().gather(1, idx)[:, : self.in_features]

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, **kwargs):
        """Least-squares projection: each weight slot is the mean of the real dense entries it serves."""
        layer = cls._empty_like_dense(weight, bias, kwargs)
        in_features, out_features = layer.in_features, layer.out_features
        lay = layer.layout
        work = torch.float64 if weight.dtype == torch.float64 else torch.float32
        dev = weight.device
        w = F.pad(weight.detach().to(work), (0, lay.padded_in - in_features))
        real = (torch.arange(lay.padded_in, device=dev) < in_features).to(work)
        wc = torch.zeros(out_features, lay.compressed_in, dtype=work, device=dev)
        shape = (lay.num_supergroups, lay.compression, lay.block_k)
        for phase in lay.used_phases:
            rows = lay.output_columns(phase).to(dev)
            gather = lay.sketch_gather_index(phase).to(dev)
            sums = w[rows][:, gather].view(rows.numel(), *shape).sum(2).view(rows.numel(), -1)
            counts = real[gather].view(*shape).sum(1).view(-1)
            wc[rows] = sums / counts.clamp(min=1)
        with torch.no_grad():
            layer.weight.copy_(wc)
        layer._copy_bias(bias)
        return layer

    def flops_per_token(self) -> int:
        """The matmul of depth K/R plus the sketch's additions (one sketch per phase)."""
        lay = self.layout
        sketch_adds = len(lay.used_phases) * (lay.padded_in - lay.compressed_in)
        return 2 * self.out_features * lay.compressed_in + sketch_adds

    def structure_config(self) -> dict:
        return {
            "compression": self.compression,
            "seed": self.seed,
            "block_k": self.block_k,
            "block_n": self.block_n,
            "vec": self.vec,
            "pad": self.pad,
            "hash_coeffs": list(self.hash_coeffs),
        }

    def _apply(self, fn, recurse=True):
        self._tables = {}  # index tables follow the module to its new device
        return super()._apply(fn, recurse)
