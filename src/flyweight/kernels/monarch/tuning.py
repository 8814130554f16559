"""Tile configurations of the Monarch kernels and their (persistent) autotuning.

Every kernel is a GEMM tile loop with three tile sizes: BM rows (M, or the weight rows for dW),
BN output columns and BK reduction depth. On CUDA each kernel is wrapped in ``triton.autotune`` over
``CANDIDATES`` with key (M bucket, sizes): the M bucket is M rounded up to a power of two, so a training
run tunes once per shape and never again. With ``cache_results`` (Triton >= 3.3; on by default,
``FLYWEIGHT_MONARCH_TUNE_CACHE=0`` turns it off) the timings are written to Triton's cache directory
and later processes reuse them without re-timing. ``FLYWEIGHT_MONARCH_AUTOTUNE=0`` skips tuning and
uses the first candidate (the default tile).

Under ``TRITON_INTERPRET=1`` the kernels run untuned with the small ``INTERPRET_TILE`` so the CPU
tests stay fast and still cross tile edges.
"""

from __future__ import annotations

import inspect
from typing import NamedTuple

import triton

from flyweight.kernels._triton_env import INTERPRET
from flyweight.kernels.monarch import joined_kernels as J
from flyweight.kernels.monarch import kernels as K
from flyweight.utils.env import env_choice, env_flag


class Tile(NamedTuple):
    BM: int
    BN: int
    BK: int
    num_warps: int
    num_stages: int


# Hopper GEMM tiles for bf16/fp16 with reduction depths of 48..4096 (r = p_in/p_out = 192..3584 at the
# benchmark widths); the first is the untuned default.
CANDIDATES = (
    Tile(128, 128, 64, 8, 3),
    Tile(128, 64, 64, 4, 4),
    Tile(64, 128, 64, 4, 4),
    Tile(128, 256, 64, 8, 3),
    Tile(64, 64, 64, 4, 4),
)
# the weight-gradient kernels reduce over M (BK rows per step) into a (BM x BN) weight tile
DW_CANDIDATES = (
    Tile(128, 128, 64, 8, 3),
    Tile(128, 64, 64, 4, 4),
    Tile(64, 128, 64, 4, 4),
    Tile(64, 64, 128, 4, 3),
)
# second_joined: BN is the whole output tile (BN // b per block), so wider tiles than the others
JOINED_CANDIDATES = (
    Tile(128, 128, 64, 8, 3),
    Tile(128, 256, 64, 8, 3),
    Tile(64, 256, 64, 4, 3),
    Tile(64, 128, 64, 4, 4),
)
INTERPRET_TILE = Tile(16, 16, 16, 1, 1)
# the backward's dY readers with contiguous dY tiles split into the b blocks in registers: BK (dmid) and
# BM (dw2) hold b blocks of >= 16 columns each; b accumulators per program, hence the smaller tiles
DMID_JOINED_CANDIDATES = (
    Tile(64, 64, 64, 4, 3),
    Tile(128, 64, 64, 8, 3),
    Tile(64, 128, 64, 8, 3),
    Tile(64, 64, 128, 4, 3),
)
# dw2_joined loads b H tiles per step: deep pipelines run out of shared memory (240 KiB at 128x128x3)
DW2_JOINED_CANDIDATES = (
    Tile(128, 64, 64, 4, 3),
    Tile(128, 128, 64, 8, 2),
    Tile(256, 64, 64, 8, 3),
    Tile(64, 128, 64, 4, 3),
)
# the fused forward: BN outputs s of one block per program, RBP (r/b padded) middle columns on chip
FUSED_CANDIDATES = (
    Tile(64, 256, 64, 8, 3),
    Tile(128, 128, 64, 8, 3),
    Tile(64, 128, 64, 4, 3),
    Tile(128, 256, 64, 8, 2),
)
# "never" (default until measured), "inference" (the fused kernel for forwards without grad where b | r)
FUSED = env_choice("FLYWEIGHT_MONARCH_FUSED")
JOINED_BLOCKS = (2, 4, 8)  # the b second_joined is written for
BWD_JOINED_BLOCKS = (2, 4)  # the b dmid_joined / dw2_joined are written for
# "joined" or "strided" dY reads in the backward for b in BWD_JOINED_BLOCKS; read at every call
BACKWARD = env_choice("FLYWEIGHT_MONARCH_BWD")
# which second-product kernel the forward uses for b in JOINED_BLOCKS: "joined" (contiguous stores) or
# "strided" (one block per program, stride-b stores); read at every call, so benchmarks can switch it
SECOND = env_choice("FLYWEIGHT_MONARCH_SECOND")
MAX_DW_TILE = 128  # largest BM / BN among DW_CANDIDATES: the host sizes the splits with it

AUTOTUNE = env_flag("FLYWEIGHT_MONARCH_AUTOTUNE") and not INTERPRET
CACHE_RESULTS = env_flag("FLYWEIGHT_MONARCH_TUNE_CACHE")

KERNELS = {
    "first": K.monarch_first_kernel,
    "second": K.monarch_second_kernel,
    "second_joined": J.monarch_second_joined_kernel,
    "dmid": K.monarch_dmid_kernel,
    "dinput": K.monarch_dinput_kernel,
    "dw1": K.monarch_dw1_kernel,
    "dw2": K.monarch_dw2_kernel,
    "dmid_joined": J.monarch_dmid_joined_kernel,
    "dw2_joined": J.monarch_dw2_joined_kernel,
    "fused": J.monarch_fused_kernel,
}
_KEYS = ["M_BUCKET", "R"]  # plus NB: an argument of every kernel (a constexpr of second_joined)
_SIZE_KEYS = {"first": ["P_IN"], "second": ["P_OUT"], "second_joined": ["P_OUT"], "dmid": ["P_OUT"],
              "dinput": ["P_IN"],
              "dw1": ["P_IN", "M_PER_SPLIT"], "dw2": ["P_OUT", "M_PER_SPLIT"],
              "dmid_joined": ["P_OUT"], "dw2_joined": ["P_OUT", "M_PER_SPLIT"], "fused": ["P_IN", "P_OUT"]}


def _configs(tiles) -> list:
    return [triton.Config({"BM": t.BM, "BN": t.BN, "BK": t.BK}, num_warps=t.num_warps,
                          num_stages=t.num_stages) for t in tiles]


def _tiles(name: str):
    special = {"second_joined": JOINED_CANDIDATES, "dmid_joined": DMID_JOINED_CANDIDATES,
               "dw2_joined": DW2_JOINED_CANDIDATES, "fused": FUSED_CANDIDATES}
    return special.get(name, DW_CANDIDATES if name.startswith("dw") else CANDIDATES)


INTERPRET_TILES = {"second_joined": Tile(16, 128, 16, 1, 1),  # BN // b >= 16 for every b in JOINED_BLOCKS
                   "dmid_joined": Tile(16, 16, 64, 1, 1), "dw2_joined": Tile(64, 16, 16, 1, 1),
                   "fused": Tile(16, 16, 16, 1, 1)}


def _autotuned(name, kernel):
    tiles = _tiles(name)
    kwargs = {}
    if CACHE_RESULTS and "cache_results" in inspect.signature(triton.autotune).parameters:
        kwargs["cache_results"] = True
    if name == "second_joined":
        kwargs["prune_configs_by"] = {"early_config_prune": _joined_fits}
    return triton.autotune(_configs(tiles), key=_KEYS + ["NB"] + _SIZE_KEYS[name], warmup=5, rep=20,
                           **kwargs)(kernel)


def _joined_fits(configs, named_args, **kwargs):
    """second_joined splits BN over the b blocks: each block's share must be a whole dot (>= 16)."""
    nb = kwargs.get("NB", named_args.get("NB", 1))
    fits = [c for c in configs if c.kwargs["BN"] // nb >= 16]
    return fits or list(configs)[-1:]


TUNED = {name: _autotuned(name, kern) for name, kern in KERNELS.items()} if AUTOTUNE else {}


def launcher(name: str):
    """(kernel, fixed tile kwargs or None): the autotuned kernel picks its own tile (None).
    ``AUTOTUNE`` is read here, at every call: setting it False later uses the default tiles."""
    if AUTOTUNE and name in TUNED:
        return TUNED[name], None
    t = INTERPRET_TILES.get(name, INTERPRET_TILE) if INTERPRET else _tiles(name)[0]
    return KERNELS[name], {"BM": t.BM, "BN": t.BN, "BK": t.BK, "num_warps": t.num_warps,
                           "num_stages": t.num_stages}


def chosen_configs() -> dict:
    """The autotuner's pick per kernel and key so far (for benchmark reports)."""
    return {name: {str(k): str(v) for k, v in getattr(kern, "cache", {}).items()}
            for name, kern in TUNED.items()}


def m_bucket(m: int) -> int:
    p = 16
    while p < m:
        p *= 2
    return p
