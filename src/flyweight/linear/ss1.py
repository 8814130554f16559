"""SS1 (Sketch Structured Transform, NeurIPS 2024) as a drop-in nn.Linear; the operator: docs/ss1-kernels.md.

The spec's weight Wc has in_features / R columns: output block pn reads input r = (k*R + c)*BK + s
through column k*BK + (s - h(pn, k, c)) mod BK, so the R chunks of a supergroup share one rotated
BK-wide slice. The layer stores the same numbers in the layout its fast path reads, Wr (each row's
slices rotated by its block's phase shift, ``flyweight.kernels.ss1.layout``): then the whole layer is
one sketch of the input and one dense GEMM of depth K/R, y = sketch0(x) @ Wr^T + b.

``layer.weight`` is Wr, the tensor the optimizer updates (Adam and weight decay are elementwise, so
training is the same as with Wc). The state dict holds Wc under ``weight``, exactly as a layer that
stored Wc would: checkpoints written by either load into the other bit for bit.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch
from torch import nn

from flyweight.kernels.ss1 import SS1Layout, draw_hash_coeffs, ss1_linear, valid_widths_near
from flyweight.kernels.ss1.op import sketch_torch
from flyweight.linear.base import StructuredLinear, register_linear, uniform_


def _is_power_of_two(v: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1 and (v & (v - 1)) == 0


@register_linear("ss1")
class SS1Linear(StructuredLinear):
    """SS1 layer. ``compression`` R in {1, 2, 4, 8, 16, ...}; block sizes are model hyperparameters.

    ``pad=True`` accepts widths that are not a multiple of R * block_k by zero-padding the input.
    ``hash_coeffs`` (R0..R3) restores a saved layer exactly; otherwise they are drawn from ``seed``.
    ``backend`` (attribute, not part of the structure): "auto" (Triton sketch kernel on CUDA,
    PyTorch ops elsewhere and under torch.compile), "torch" or "triton"; see
    ``flyweight.kernels.ss1.backend``.
    """

    backend: str = "auto"
    torchao_quantizable = True  # the GEMM after the sketch is F.linear-like on ``weight`` (tested)

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
        self.sketch_args = self.layout.sketch_args()  # the integers every call passes to the op
        self.weight = nn.Parameter(
            torch.empty(out_features, self.layout.compressed_in, device=device, dtype=dtype)
        )
        # index tables on the weight's device; not in the state dict (the structure config rebuilds them)
        self.register_buffer("sketch_index", torch.empty(0, dtype=torch.int64), persistent=False)
        self.register_buffer("unsketch_index", torch.empty(0, dtype=torch.int64), persistent=False)
        self.register_state_dict_post_hook(_weight_to_spec_layout)
        self.register_load_state_dict_pre_hook(_weight_from_spec_layout)
        self.reset_parameters()

    def build_index_tables(self, device: torch.device | str | None = None) -> None:
        """(Re)compute the index buffers, e.g. after ``to_empty()`` left them uninitialised."""
        device = torch.device(self.weight.device if device is None else device)
        tables = {"sketch_index": self.layout.sketch_index(),
                  "unsketch_index": self.layout.unsketch_index()[: self.in_features].contiguous()}
        for name, table in tables.items():
            current = getattr(self, name)
            if current.shape == table.shape and current.device == device and device.type != "meta":
                current.copy_(table)  # in place: the tensor a compiled graph holds stays valid
            else:
                setattr(self, name, table.to(device))

    def reset_parameters(self) -> None:
        """U(-1/sqrt(K), 1/sqrt(K)) drawn in the spec's order, so a seed gives the same Wc as ever."""
        self.build_index_tables()
        with torch.no_grad():
            wc = uniform_(torch.empty_like(self.weight), self.in_features)
            self.weight.copy_(self.layout.stored_from_spec(wc) if wc.device.type != "meta" else wc)
        if self.bias is not None:
            uniform_(self.bias, self.in_features)

    @property
    def spec_weight(self) -> torch.Tensor:
        """The spec's Wc (out_features, padded_in / R), detached: what the state dict stores."""
        return self.layout.spec_from_stored(self.weight.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 0 or x.shape[-1] != self.in_features or not x.is_floating_point() or x.is_meta:
            self._check_input(x)  # the common case pays only these attribute reads
        if x.dim() == 2:
            return ss1_linear(x, self.weight, self.bias, self.sketch_index, self.unsketch_index,
                              self.sketch_args, self.backend)
        y = ss1_linear(x.reshape(-1, self.in_features), self.weight, self.bias, self.sketch_index,
                       self.unsketch_index, self.sketch_args, self.backend)
        return y.view(*x.shape[:-1], self.out_features)

    def to_dense(self) -> torch.Tensor:
        """W = Wr[:, unsketch]: every input column reads one column of the stored weight."""
        return self.weight.detach().index_select(1, self.unsketch_index.to(self.weight.device))

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, **kwargs):
        """Least-squares projection: each weight slot is the mean of the real dense entries it serves.

        In the stored layout that is the sketch of W's rows divided by the count of real entries.
        """
        layer = cls._empty_like_dense(weight, bias, kwargs)
        work = torch.float64 if weight.dtype == torch.float64 else torch.float32
        gather = layer.layout.sketch_index().to(weight.device)
        sums = sketch_torch(weight.detach().to(work), gather, layer.sketch_args, work)
        # the same sketch of a row of ones counts the real (unpadded) entries each slot serves
        counts = sketch_torch(torch.ones(1, layer.in_features, dtype=work, device=weight.device), gather,
                              layer.sketch_args, work)
        with torch.no_grad():
            layer.weight.copy_(sums / counts.clamp(min=1))
        layer._copy_bias(bias)
        return layer

    def flops_per_token(self) -> int:
        """The matmul of depth K/R plus the sketch's additions (one sketch)."""
        lay = self.layout
        return 2 * self.out_features * lay.compressed_in + (lay.padded_in - lay.compressed_in)

    @torch.no_grad()
    def normal_init_(self, std: float, generator: torch.Generator | None = None) -> "SS1Linear":
        """Each entry of to_dense() is a copy of one stored weight, so the stored weight ~ N(0, std)."""
        self.weight.normal_(0.0, std, generator=generator)
        self._zero_bias()
        return self

    @classmethod
    def settings_for(cls, in_features: int, out_features: int, settings: dict) -> dict:
        """``pad=True`` (unless given) where ``in_features`` is not a multiple of compression * block_k."""
        settings = dict(settings)
        defaults = inspect.signature(cls.__init__).parameters
        block = settings.get("compression", defaults["compression"].default) * settings.get(
            "block_k", defaults["block_k"].default)
        settings.setdefault("pad", in_features % block != 0)
        return settings

    def settings(self) -> dict:
        return {
            "compression": self.compression,
            "seed": self.seed,
            "block_k": self.block_k,
            "block_n": self.block_n,
            "vec": self.vec,
            "pad": self.pad,
            "hash_coeffs": list(self.hash_coeffs),
        }


def _weight_to_spec_layout(module: SS1Linear, state_dict: dict, prefix: str, local_metadata) -> None:
    """state_dict hook: the stored Wr leaves as the spec's Wc, under the same key."""
    key = prefix + "weight"
    if key in state_dict and not state_dict[key].is_meta:  # a meta weight has no values to reorder
        state_dict[key] = module.layout.spec_from_stored(state_dict[key].detach())


def _weight_from_spec_layout(module: SS1Linear, state_dict: dict, prefix: str, local_metadata, strict,
                             missing_keys, unexpected_keys, error_msgs) -> None:
    """load_state_dict hook: a Wc from any checkpoint becomes the stored Wr before it is copied."""
    key = prefix + "weight"
    wc = state_dict.get(key)
    if isinstance(wc, torch.Tensor) and tuple(wc.shape) == tuple(module.weight.shape):
        state_dict[key] = module.layout.stored_from_spec(wc)
    if module.sketch_index.is_meta and isinstance(wc, torch.Tensor) and not wc.is_meta:
        module.build_index_tables(wc.device)  # a layer built on "meta" gets real tables with real weights
    elif not module.sketch_index.is_meta:
        module.build_index_tables(module.sketch_index.device)  # after to_empty() they may be garbage
