"""Tile choice for the approximate-attention kernels: autotuned on CUDA, fixed under the interpreter.

``TiledKernel(kernel, tiles, interpret_tile, key)`` launches ``kernel`` with tile meta-parameters
(BLOCK_* constexprs, num_warps, num_stages): on CUDA through ``triton.autotune`` over ``tiles`` (keyed by
``key``, e.g. the sequence length and the padded dims), under ``TRITON_INTERPRET=1`` with the small
fixed ``interpret_tile``. ``FLYWEIGHT_APPROX_AUTOTUNE=0`` (or ``set_autotune(False)`` at run time, e.g.
for correctness checks that should not pay for compiling every tile) uses ``tiles[0]`` without tuning.
"""

from __future__ import annotations


import triton

from flyweight.kernels._triton_env import INTERPRET
from flyweight.utils.env import env_flag

AUTOTUNE = not INTERPRET and env_flag("FLYWEIGHT_APPROX_AUTOTUNE")
REGISTRY: dict[str, "TiledKernel"] = {}
_TUNE = {"on": AUTOTUNE}


def set_autotune(on: bool) -> None:
    """Tune (CUDA, when AUTOTUNE) or launch every kernel with its first tile from now on."""
    _TUNE["on"] = bool(on) and AUTOTUNE


def _meta(tile: dict) -> dict:
    return {k: v for k, v in tile.items() if k.startswith("BLOCK")}


class TiledKernel:
    def __init__(self, name, kernel, tiles: list[dict], interpret_tile: dict, key: list[str]):
        self.name, self.kernel, self.tiles, self.interpret_tile = name, kernel, tiles, interpret_tile
        configs = [triton.Config(_meta(t), num_warps=t["num_warps"], num_stages=t["num_stages"])
                   for t in tiles]
        self.tuned = triton.autotune(configs, key=key)(kernel) if AUTOTUNE else None
        REGISTRY[name] = self

    def __call__(self, grid, *args, **meta):
        """grid: a function of the tile's meta-parameters (a dict with the BLOCK_* entries)."""
        if self.tuned is not None and _TUNE["on"]:
            self.tuned[grid](*args, **meta)
            return
        tile = self.interpret_tile if INTERPRET else self.tiles[0]
        self.kernel[grid(tile)](*args, **meta, **tile)


def tile(block_m=None, block_n=None, warps=4, stages=2) -> dict:
    t = {"num_warps": warps, "num_stages": stages}
    if block_m is not None:
        t["BLOCK_M"] = block_m
    if block_n is not None:
        t["BLOCK_N"] = block_n
    return t


def chosen_configs() -> dict:
    """The autotuner's choice per kernel and key so far (for benchmark logs)."""
    return {name: {str(k): str(v) for k, v in getattr(tk.tuned, "cache", {}).items()}
            for name, tk in REGISTRY.items() if tk.tuned is not None}
