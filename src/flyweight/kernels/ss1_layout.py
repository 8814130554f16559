"""The SS1 operator's fixed structure: hash coefficients, rotations and index tables.

Everything here follows ``SPEC-SS1.md``. The layout is pure integer arithmetic on Python ints
and CPU tensors, so a layer built from the same seed computes the same function on every device.

The key identity used by the fast paths: with ``D = block_k // vec`` distinct rotations,

    h(pn, k, c) = vec * ((R3 + R2*pn + R1*(k+1) + R0*(c+1)) mod D)

so the rotation depends on the output block ``pn`` only through its *phase*
``(R3 + R2*pn) mod D``. Output blocks with the same phase share one sketch of the input, and a
whole layer needs at most ``D`` sketches (four at the defaults), however wide it is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

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

    # ---- index tables (CPU int64 tensors, cached) -----------------------------------------
    @cached_property
    def block_phases(self) -> torch.Tensor:
        """(num_out_blocks,) phase of every output block."""
        return torch.tensor([self.phase(pn) for pn in range(self.num_out_blocks)], dtype=torch.int64, device="cpu")

    @cached_property
    def rotations(self) -> torch.Tensor:
        """(D, num_supergroups, compression) rotation h for every phase, slice k and chunk c."""
        d, g, r = self.num_rotations, self.num_supergroups, self.compression
        ph = torch.arange(d, device="cpu").view(d, 1, 1)
        k = torch.arange(g, device="cpu").view(1, g, 1)
        c = torch.arange(r, device="cpu").view(1, 1, r)
        r0, r1, _, _ = self.hash_coeffs
        # Reduce the large odd coefficients mod D first so int64 never overflows.
        r0m, r1m = r0 % d, r1 % d
        return self.vec * ((ph + r1m * (k + 1) + r0m * (c + 1)) % d)

    @cached_property
    def used_phases(self) -> tuple[int, ...]:
        return tuple(sorted(set(self.block_phases.tolist())))

    def sketch_gather_index(self, phase: int) -> torch.Tensor:
        """(padded_in,) index so that ``x[:, idx].view(M, G, R, BK).sum(2)`` is the sketch.

        Entry (k*R + c)*BK + t holds (k*R + c)*BK + (t + h) mod BK.
        """
        bk = self.block_k
        rot = self.rotations[phase]  # (G, R)
        t = torch.arange(bk, device="cpu").view(1, 1, bk)
        base = torch.arange(self.num_supergroups * self.compression, device="cpu").view(
            self.num_supergroups, self.compression, 1
        ) * bk
        return (base + (t + rot.unsqueeze(-1)) % bk).reshape(-1)

    def output_columns(self, phase: int) -> torch.Tensor:
        """Output features whose block has this phase, in increasing order."""
        cols = torch.arange(self.out_features, device="cpu")
        return cols[self.block_phases[cols // self.block_n] == phase]

    def dense_column_index(self) -> torch.Tensor:
        """(out_features, padded_in) index into the weight's columns: W = weight.gather(1, idx)."""
        bk, r = self.block_k, self.compression
        rows = torch.arange(self.padded_in, device="cpu")
        blk, s = rows // bk, rows % bk
        k, c = blk // r, blk % r
        phase_of_row = self.block_phases[torch.arange(self.out_features, device="cpu") // self.block_n]  # (N,)
        rot = self.rotations[phase_of_row][:, k, c]  # (N, padded_in)
        return k * bk + (s - rot) % bk
