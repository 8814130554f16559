"""The SS1 operator's fixed structure: hash coefficients, rotations and the index tables of one layer.

Everything here follows the operator of ``docs/ss1-kernels.md`` and is integer arithmetic on Python ints
and CPU tensors, so a layer built from the same seed computes the same function on every device.

Two identities shape the implementation. With ``D = block_k // vec`` distinct rotations,

    h(pn, k, c) = vec * ((R3 + R2*pn + R1*(k+1) + R0*(c+1)) mod D) = (h0(k, c) + shift(pn)) mod block_k

where ``h0`` is the rotation of phase 0 and ``shift(pn) = vec * ((R3 + R2*pn) mod D)`` is the only
part that depends on the output block. So:

* the sketch every output block needs is the phase-0 sketch ``S0 = sketch0(X)`` (M x K/R) with each
  block_k-wide slice rotated by ``shift(pn)``, and moving that rotation onto the weight rows gives

      y = S0 @ Wr^T + b,   Wr[n, k*BK + u] = Wc[n, k*BK + (u - shift(n // BN)) mod BK]

  one dense GEMM of depth K/R. ``Wr`` ("the stored layout") is a permutation of the spec's ``Wc``;
  the layer keeps it as its parameter and converts to and from ``Wc`` only at save and load.
* every input column r = (k*R + c)*BK + s feeds exactly one column of ``S0``,
  ``unsketch(r) = k*BK + (s - h0(k, c)) mod BK``, so the dense equivalent is ``Wr[:, unsketch]``,
  the input gradient is ``dS0[:, unsketch]`` (a gather) and the projection of a dense weight onto
  SS1 is ``sketch0`` applied to its rows, divided by the number of real entries per slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

HASH_PRIME = 45007


def draw_hash_coeffs(seed: int) -> tuple[int, int, int, int]:
    """(R0, R1, R2, R3): four odd integers drawn from ``seed`` on a CPU generator."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    draws = torch.randint(1, HASH_PRIME // 2 - 1, (4,), generator=gen, dtype=torch.int64, device="cpu")
    return tuple(2 * int(v) + 1 for v in draws)  # type: ignore[return-value]


def valid_widths_near(width: int, multiple: int) -> tuple[int, int]:
    """The closest multiples of ``multiple`` at or below and above ``width``."""
    below = (width // multiple) * multiple
    above = below if below == width else below + multiple
    return below, above


class SketchArgs(NamedTuple):
    """The integers one sketch call needs: a tuple, so torch.compile treats it as a constant."""

    in_features: int
    padded_in: int
    num_supergroups: int  # G
    compression: int  # R
    block_k: int
    vec: int
    num_rotations: int  # D
    r0m: int  # R0 mod D
    r1m: int  # R1 mod D

    @property
    def compressed_in(self) -> int:
        return self.num_supergroups * self.block_k


@dataclass(frozen=True)
class SS1Layout:
    """Sizes, block sizes and hash coefficients of one SS1 layer (the function it computes)."""

    in_features: int
    out_features: int
    compression: int
    block_k: int
    block_n: int
    vec: int
    hash_coeffs: tuple[int, int, int, int]
    padded_in: int

    # ---- derived sizes -------------------------------------------------------------------
    @property
    def supergroup(self) -> int:
        """Inputs that share one block_k-wide slice of the weight: compression * block_k."""
        return self.compression * self.block_k

    @property
    def num_supergroups(self) -> int:
        return self.padded_in // self.supergroup

    @property
    def compressed_in(self) -> int:
        """Columns of the stored weight: padded_in // compression."""
        return self.padded_in // self.compression

    @property
    def num_out_blocks(self) -> int:
        return math.ceil(self.out_features / self.block_n)

    @property
    def num_rotations(self) -> int:
        """D = block_k // vec: the number of distinct rotations (and of phases)."""
        return self.block_k // self.vec

    def sketch_args(self) -> SketchArgs:
        d = self.num_rotations
        r0, r1, _, _ = self.hash_coeffs
        return SketchArgs(self.in_features, self.padded_in, self.num_supergroups, self.compression,
                          self.block_k, self.vec, d, r0 % d, r1 % d)

    # ---- the hash ------------------------------------------------------------------------
    def hash(self, pn: int, k: int, c: int) -> int:
        """h(pn, k, c) exactly as the spec writes it."""
        r0, r1, r2, r3 = self.hash_coeffs
        return ((r3 + r2 * pn + r1 * (k + 1) + r0 * (c + 1)) * self.vec) % self.block_k

    def phase(self, pn: int) -> int:
        """The part of the hash that depends on the output block: (R3 + R2*pn) mod D."""
        _, _, r2, r3 = self.hash_coeffs
        return (r3 + r2 * pn) % self.num_rotations

    def rotation(self, phase: int, k: int, c: int) -> int:
        """h for any output block of the given phase (equal to ``hash`` by the identity above)."""
        r0, r1, _, _ = self.hash_coeffs
        return self.vec * ((phase + r1 * (k + 1) + r0 * (c + 1)) % self.num_rotations)

    # ---- index tables (CPU int64 tensors; the layer keeps copies as buffers) ----------------
    def phase0_rotations(self) -> torch.Tensor:
        """(num_supergroups, compression) rotation h0(k, c) of phase 0."""
        d = self.num_rotations
        r0, r1, _, _ = self.hash_coeffs
        k = torch.arange(self.num_supergroups, device="cpu").view(-1, 1)
        c = torch.arange(self.compression, device="cpu").view(1, -1)
        return self.vec * (((r1 % d) * (k + 1) + (r0 % d) * (c + 1)) % d)  # reduced mod D: no overflow

    def sketch_index(self) -> torch.Tensor:
        """(padded_in,) so that ``x[:, idx].view(M, G, R, BK).sum(2)`` is the phase-0 sketch S0.

        Entry (k*R + c)*BK + t holds (k*R + c)*BK + (t + h0(k, c)) mod BK.
        """
        bk = self.block_k
        t = torch.arange(bk, device="cpu").view(1, 1, bk)
        base = torch.arange(self.num_supergroups * self.compression, device="cpu").view(
            self.num_supergroups, self.compression, 1) * bk
        return (base + (t + self.phase0_rotations().unsqueeze(-1)) % bk).reshape(-1)

    def unsketch_index(self) -> torch.Tensor:
        """(padded_in,) the column of S0 that input column r feeds: k*BK + (s - h0(k, c)) mod BK."""
        bk, r = self.block_k, self.compression
        rows = torch.arange(self.padded_in, device="cpu")
        blk, s = rows // bk, rows % bk
        k, c = blk // r, blk % r
        return k * bk + (s - self.phase0_rotations()[k, c]) % bk

    def row_shifts(self) -> torch.Tensor:
        """(out_features,) shift(n // block_n) = vec * phase: how far row n of Wr is rotated from Wc."""
        blocks = torch.arange(self.out_features, device="cpu") // self.block_n
        _, _, r2, r3 = self.hash_coeffs
        d = self.num_rotations
        return self.vec * ((r3 % d + (r2 % d) * blocks) % d)

    # ---- the stored layout <-> the spec's weight ----------------------------------------------
    def stored_from_spec(self, wc: torch.Tensor) -> torch.Tensor:
        """Wr from the spec's Wc (same shape): each row's block_k-wide slices rotated by its shift."""
        return self._rotate_rows(wc, 1)

    def spec_from_stored(self, wr: torch.Tensor) -> torch.Tensor:
        """The spec's Wc from the stored Wr: the inverse permutation of ``stored_from_spec``."""
        return self._rotate_rows(wr, -1)

    def _rotate_rows(self, w: torch.Tensor, sign: int) -> torch.Tensor:
        """out[n, k*BK + u] = w[n, k*BK + (u - sign*shift[n]) mod BK], one torch.roll per distinct shift."""
        if tuple(w.shape) != (self.out_features, self.compressed_in):
            raise ValueError(f"SS1 weight must have shape ({self.out_features}, {self.compressed_in}), "
                             f"got {tuple(w.shape)}")
        shifts = self.row_shifts().to(w.device)
        out = torch.empty_like(w)
        slices = (-1, self.num_supergroups, self.block_k)
        for value in torch.unique(shifts).tolist():
            rows = (shifts == value).nonzero().flatten()
            rolled = w.index_select(0, rows).reshape(slices).roll(sign * value, dims=2)
            out.index_copy_(0, rows, rolled.reshape(-1, self.compressed_in))
        return out
