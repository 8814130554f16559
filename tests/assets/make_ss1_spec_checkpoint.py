"""Write ss1_spec_checkpoint.safetensors: SS1 layers as a layer storing the spec's Wc saves them.

Uses only flyweight's public API (SS1Linear, state_dict, to_dense, from_dense, forward), so the
same script run with any version must reproduce the file: ``tests/test_ss1_layout.py`` loads it and
checks that today's layer reads the checkpoint, its dense equivalent, its output and its projection
bit for bit. The committed file was written by flyweight 0.1.0 at commit 698d1a9, whose parameter
was Wc itself:

    PYTHONPATH=src python tests/assets/make_ss1_spec_checkpoint.py tests/assets/ss1_spec_checkpoint.safetensors
"""

import json
import sys

import torch
from safetensors.torch import save_file

from flyweight.linear import SS1Linear

CASES = {  # name -> SS1Linear keyword arguments (float64)
    "r1": dict(in_features=32, out_features=24, compression=1, block_k=8, block_n=8, vec=2, seed=3),
    "r2": dict(in_features=64, out_features=40, compression=2, block_k=8, block_n=8, vec=2, seed=4),
    "r4": dict(in_features=64, out_features=40, compression=4, block_k=8, block_n=16, vec=2, seed=5),
    "r8_nobias": dict(in_features=64, out_features=20, compression=8, block_k=8, block_n=8, vec=1, seed=6,
                      bias=False),
    "default_blocks": dict(in_features=128, out_features=72, compression=4, seed=7),
    "padded": dict(in_features=100, out_features=24, compression=4, block_k=8, block_n=8, vec=2, pad=True, seed=8),
}


def main(path: str) -> None:
    tensors, configs, seeds = {}, {}, {}
    for i, (name, kw) in enumerate(CASES.items()):
        seeds[name] = 100 + i
        torch.manual_seed(seeds[name])
        layer = SS1Linear(**kw, dtype=torch.float64)  # fresh init from a known RNG state
        for key, value in layer.state_dict().items():
            tensors[f"{name}.{key}"] = value.contiguous()
        x = torch.randn(3, kw["in_features"], dtype=torch.float64)
        tensors[f"{name}.x"] = x
        tensors[f"{name}.y"] = layer(x).detach()
        tensors[f"{name}.dense"] = layer.to_dense().contiguous()
        w = torch.randn(kw["out_features"], kw["in_features"], dtype=torch.float64)
        tensors[f"{name}.proj_source"] = w
        proj = SS1Linear.from_dense(w, **{k: v for k, v in kw.items() if k not in ("in_features", "out_features", "bias")})
        tensors[f"{name}.proj_weight"] = proj.state_dict()["weight"].contiguous()
        configs[name] = kw
    save_file(tensors, path, metadata={"cases": json.dumps(configs, sort_keys=True),
                                          "init_seeds": json.dumps(seeds, sort_keys=True)})


if __name__ == "__main__":
    main(sys.argv[1])
