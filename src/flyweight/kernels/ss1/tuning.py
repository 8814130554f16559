"""Tile configurations of the sketch kernel, chosen by the row count M.

The sketch is one memory-bound pass (read M x K, write M x K/R), so a tile config only shapes the
memory access: rows per program (BM), sketch columns per program (BJ) and warps. ``CANDIDATES`` are
the six configs that won at least one (shape, M) of the recorded H200 tuning of the phase-0 sketch
(165 keys, ``benchmarks/NOTES-ss1.md``); ``config_for`` picks, per M, the config that won most often
there, and ``benchmarks/ss1_gpu.py --parts tuning`` re-measures how far that pick is from the best.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

from flyweight.utils.env import env_choice


class SketchConfig(NamedTuple):
    BM: int
    BJ: int
    num_warps: int


CANDIDATES = (
    SketchConfig(16, 256, 4),  # 68 of 165 wins (M >= 128)
    SketchConfig(64, 128, 8),  # 29 wins (most at M <= 64)
    SketchConfig(128, 128, 8),  # 21
    SketchConfig(32, 128, 4),  # 20
    SketchConfig(64, 128, 4),  # 14
    SketchConfig(32, 256, 4),  # 13
)

SMALL_M = 64  # at or below: decode-sized calls


def config_for(m: int) -> SketchConfig:
    """The sketch tiles for M rows: the most frequent H200 winner of M's size class."""
    return CANDIDATES[1] if m <= SMALL_M else CANDIDATES[0]


def pow2_at_least(v: int, lo: int = 16) -> int:
    """The smallest power of two >= max(v, lo): tile sizes never exceed the problem by more than 2x."""
    p = lo
    while p < v:
        p *= 2
    return p


def clamp(cfg: SketchConfig, m: int, kc: int) -> SketchConfig:
    """Shrink tiles that exceed the (power-of-two rounded) problem."""
    return SketchConfig(min(cfg.BM, pow2_at_least(m)), min(cfg.BJ, pow2_at_least(kc)), cfg.num_warps)


def tiles_with(cfg: SketchConfig, m: int, kc: int) -> tuple[SketchConfig, tuple[int, int]]:
    """``cfg`` clamped to an (M, KC) sketch, and the launch grid of those tiles."""
    cfg = clamp(cfg, m, kc)
    return cfg, (-(-m // cfg.BM), -(-kc // cfg.BJ))


@functools.lru_cache(maxsize=4096)
def tiles_for(m: int, kc: int) -> tuple[SketchConfig, tuple[int, int]]:
    """The tiles ``config_for`` picks for an (M, KC) sketch, clamped, and their grid; memoised, since
    the eager launch path asks on every call and this is pure host time."""
    return tiles_with(config_for(m), m, kc)


class FusedConfig(NamedTuple):
    BM: int
    BN: int
    BJ: int
    num_warps: int
    num_stages: int


# The fused sketch+GEMM kernel (``kernels.ss1_fused_kernel``): small row tiles for decode-sized calls,
# GEMM-sized tiles otherwise. Not yet tuned on a GPU: ``benchmarks/ss1_gpu.py --parts fused`` times them
# against the two-launch path and dense, and until it shows where the fused kernel wins, ``FUSED``
# stays "never".
FUSED_CANDIDATES = (
    FusedConfig(16, 64, 64, 4, 3),  # M <= SMALL_M
    FusedConfig(64, 128, 64, 4, 3),
    FusedConfig(128, 128, 64, 8, 3),
)
# "never" (the sketch kernel + F.linear everywhere) or "inference" (the fused kernel for CUDA forwards
# without grad, eager or compiled, inputs in the weight's dtype, no autocast); read at every call
FUSED = env_choice("FLYWEIGHT_SS1_FUSED")


def fused_tiles_with(cfg: FusedConfig, m: int, n: int) -> tuple[FusedConfig, tuple[int, int]]:
    """``cfg`` clamped to an (M, N) output, and the launch grid of those tiles."""
    cfg = cfg._replace(BM=min(cfg.BM, pow2_at_least(m)), BN=min(cfg.BN, pow2_at_least(n)))
    return cfg, (-(-m // cfg.BM), -(-n // cfg.BN))


@functools.lru_cache(maxsize=4096)
def fused_tiles_for(m: int, n: int) -> tuple[FusedConfig, tuple[int, int]]:
    """The fused kernel's tiles for an (M, N) output and their grid (memoised: pure host time)."""
    return fused_tiles_with(FUSED_CANDIDATES[0] if m <= SMALL_M else FUSED_CANDIDATES[1], m, n)
