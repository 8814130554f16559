"""``kernels/_launch.CachedLaunch``: re-launching a compiled Triton kernel without the binder.

On CPU: Triton's integer specialization classes, and that under the interpreter every launch goes
through Triton itself (nothing cached; the SS1 interpreter tests run through this path). On CUDA
(``-m gpu``): the direct re-launch writes exactly what a launch through Triton writes, for every
specialization change a caller must key on (M, dtype, alignment, strides), and each one compiles
its own entry.
"""

import pytest
import torch

from flyweight.kernels import _launch
from flyweight.utils.optional import HAS_TRITON

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="needs Triton")


def test_int_spec_separates_what_triton_specializes_on():
    # == 1 (a constexpr), divisible by 16 (an alignment hint), beyond int32 (a wider type)
    classes = {v: _launch.int_spec(v) for v in (1, 2, 3, 16, 48, 17, 2**31, 2**31 + 1, -2**31 - 1)}
    assert classes[2] == classes[3] == classes[17] == 0
    assert classes[16] == classes[48] != classes[2]
    assert len({classes[1], classes[2], classes[16], classes[2**31], classes[2**31 + 1]}) == 5
    assert classes[2**31 + 1] == classes[-2**31 - 1]


@needs_triton
def test_interpreter_launches_through_triton_and_caches_nothing(monkeypatch):
    calls = []

    class FakeKernel:
        def __getitem__(self, grid):
            return lambda *args, **options: calls.append((grid, args, options["num_warps"]))

    monkeypatch.setattr(_launch, "INTERPRET", True)
    launch = _launch.CachedLaunch(FakeKernel())
    for _ in range(3):
        launch(("spec",), (2, 1), "a", 5, num_warps=4)
    assert calls == [((2, 1), ("a", 5), 4)] * 3 and launch.compiled == {}


@pytest.mark.gpu
@pytest.mark.skipif(not _launch.SUPPORTED, reason="Triton version outside the checked launcher range")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_direct_relaunch_matches_a_triton_launch(dtype):
    from flyweight.kernels.ss1 import op
    from flyweight.linear import SS1Linear

    torch.manual_seed(0)
    layer = SS1Linear(768, 256, compression=4, device="cuda")
    wide = torch.randn(4099, 768 + 16, device="cuda", dtype=dtype)
    cases = [wide[:3000, :768], wide[:3000, :768], wide[:17, :768], wide[1:2049, 1:769],
             wide[:1, :768], wide[:, :768].t().contiguous().t()[:300]]  # repeat, small M, misaligned, M=1, strided
    op._launch_sketch.compiled.clear()
    for x in cases:
        op._launch_sketch.enabled = False
        through_triton = op.sketch_triton(x, layer.sketch_args, dtype)
        op._launch_sketch.enabled = True
        op.sketch_triton(x, layer.sketch_args, dtype)  # first of its spec: through Triton, then cached
        direct = op.sketch_triton(x, layer.sketch_args, dtype)
        torch.testing.assert_close(direct, through_triton, rtol=0, atol=0)
        torch.testing.assert_close(direct, op.sketch_torch(x, layer.sketch_index, layer.sketch_args, dtype))
    assert len(op._launch_sketch.compiled) == 5  # the repeated case shares an entry


@pytest.mark.gpu
@pytest.mark.skipif(not _launch.SUPPORTED, reason="Triton version outside the checked launcher range")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_autotuned_relaunch_matches_the_autotuner_launch(dtype):
    """Monarch's six autotuned kernels (forward and backward), re-launched directly after their first
    call of each key, write exactly what launches through the autotuner write."""
    from flyweight.kernels.monarch import tuning
    from flyweight.linear import MonarchLinear

    if not tuning.AUTOTUNE:
        pytest.skip("FLYWEIGHT_MONARCH_AUTOTUNE=0: the fixed tiles launch through Triton")
    torch.manual_seed(0)
    layer = MonarchLinear(768, 1000, nblocks=4, device="cuda", dtype=dtype)

    def run(m):
        x = torch.randn(m, 768, device="cuda", dtype=dtype, generator=torch.Generator("cuda").manual_seed(m))
        x.requires_grad_()
        layer.zero_grad(set_to_none=True)
        y = layer(x)
        y.backward(torch.ones_like(y))
        return [y.detach(), x.grad, *(p.grad for p in layer.parameters())]

    for m in (1000, 33, 1000):  # a repeat, a second key, the first key again
        _launch.TunedLaunch.enabled = False
        through_autotuner = run(m)
        _launch.TunedLaunch.enabled = True
        run(m)  # the first call of its key through the autotuner, then cached
        direct = run(m)
        for got, want in zip(direct, through_autotuner):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    from flyweight.kernels.monarch import op
    assert op._direct and all(launch.entries for launch in op._direct.values())
