"""The stored weight layout (Wr) against the spec's Wc: permutations, state dicts, old checkpoints."""

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from flyweight.linear import SS1Linear

F64 = torch.float64
ASSET = Path(__file__).parent / "assets" / "ss1_spec_checkpoint.safetensors"
CONFIGS = [
    dict(in_features=64, out_features=40, compression=4, block_k=8, block_n=16, vec=2),
    dict(in_features=100, out_features=24, compression=4, block_k=8, block_n=8, vec=2, pad=True),
    dict(in_features=256, out_features=200, compression=8),  # default blocks, partial last block
    dict(in_features=32, out_features=24, compression=1, block_k=8, block_n=8, vec=2),
]


def asset_cases() -> tuple[dict, dict]:
    """{name: SS1Linear kwargs}, {name: the torch.manual_seed before its initialisation}."""
    with safe_open(str(ASSET), framework="pt") as f:
        meta = f.metadata()
    return json.loads(meta["cases"]), json.loads(meta["init_seeds"])


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: f"{c['in_features']}x{c['out_features']}R{c['compression']}")
def test_stored_layout_is_a_permutation_of_the_spec_weight(cfg):
    layer = SS1Linear(**cfg, dtype=F64)
    lay = layer.layout
    wc = torch.randn(cfg["out_features"], lay.compressed_in, dtype=F64)
    wr = lay.stored_from_spec(wc)
    assert torch.equal(lay.spec_from_stored(wr), wc) and torch.equal(lay.stored_from_spec(lay.spec_from_stored(wc)), wc)
    # row by row a permutation: the same multiset of values
    assert torch.equal(wr.sort(dim=1).values, wc.sort(dim=1).values)
    # row n is rotated inside each block_k-wide slice by its block's phase shift
    shifts = lay.row_shifts()
    for n in (0, cfg["out_features"] - 1):
        s = int(shifts[n])
        rows = wc[n].view(-1, lay.block_k)
        assert torch.equal(wr[n].view(-1, lay.block_k), torch.cat([rows[:, lay.block_k - s:], rows[:, :lay.block_k - s]], 1))


def test_state_dict_holds_the_spec_weight_under_the_same_keys():
    torch.manual_seed(0)
    layer = SS1Linear(64, 40, compression=4, block_k=8, block_n=16, vec=2, dtype=F64)
    sd = layer.state_dict()
    assert set(sd) == {"weight", "bias"}  # the index buffers are not saved
    assert torch.equal(sd["weight"], layer.spec_weight) and not torch.equal(sd["weight"], layer.weight.detach())
    assert sd["weight"].shape == layer.weight.shape
    other = SS1Linear(64, 40, compression=4, block_k=8, block_n=16, vec=2, seed=1024, dtype=F64)
    other.load_state_dict(sd)
    assert torch.equal(other.weight, layer.weight) and torch.equal(other.state_dict()["weight"], sd["weight"])
    assert torch.equal(sd["weight"], layer.state_dict()["weight"])  # loading did not touch the caller's dict


def test_checkpoint_of_the_spec_layout_loads_bit_identically():
    """A checkpoint written by the layer that stored Wc as its parameter (tests/assets): its tensors,
    its dense equivalent, its initialisation and its projection come back bit for bit."""
    tensors = load_file(str(ASSET))
    cases, seeds = asset_cases()
    for name, kw in cases.items():
        layer = SS1Linear(**kw, dtype=F64)
        saved = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(name + ".")}
        params = {k: saved[k] for k in ("weight", "bias") if k in saved}
        layer.load_state_dict(params)
        for key, value in layer.state_dict().items():
            assert torch.equal(value, params[key]), f"{name}.{key}"
        assert torch.equal(layer.to_dense(), saved["dense"]), name
        torch.testing.assert_close(layer(saved["x"]), saved["y"], rtol=1e-14, atol=1e-14)
        torch.manual_seed(seeds[name])
        fresh = SS1Linear(**kw, dtype=F64)
        assert all(torch.equal(v, params[k]) for k, v in fresh.state_dict().items()), f"{name}: init"
        settings = {k: v for k, v in kw.items() if k not in ("in_features", "out_features", "bias")}
        proj = SS1Linear.from_dense(saved["proj_source"], **settings)
        assert torch.equal(proj.state_dict()["weight"], saved["proj_weight"]), f"{name}: projection"


def test_meta_device_build_then_to_empty_and_load():
    torch.manual_seed(1)
    ref = SS1Linear(100, 24, compression=4, block_k=8, block_n=8, vec=2, pad=True)
    with torch.device("meta"):
        layer = SS1Linear(100, 24, compression=4, block_k=8, block_n=8, vec=2, pad=True)
    assert layer.sketch_index.is_meta
    layer.to_empty(device="cpu")  # uninitialised parameters and buffers
    layer.load_state_dict(ref.state_dict())  # the load rebuilds the index tables
    x = torch.randn(3, 100)
    torch.testing.assert_close(layer(x), ref(x), rtol=0, atol=0)
    again = SS1Linear(100, 24, compression=4, block_k=8, block_n=8, vec=2, pad=True, device="meta")
    again.to_empty(device="cpu")
    again.reset_parameters()  # or a fresh initialisation
    assert torch.equal(again.sketch_index, ref.sketch_index) and torch.equal(again.unsketch_index, ref.unsketch_index)


def test_dtype_moves_keep_index_tables_integer():
    layer = SS1Linear(128, 64, compression=2)
    layer.to(torch.bfloat16)
    assert layer.weight.dtype == torch.bfloat16 and layer.sketch_index.dtype == torch.int64
    assert layer.unsketch_index.shape == (128,) and layer.sketch_index.shape == (128,)
