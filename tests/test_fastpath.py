"""The trainer's ``auto`` speed settings (flyweight.train.fastpath): what they resolve to on each accelerator,
and the micro-batch choice that gradient accumulation completes to the global batch."""

import pytest

# the training / config stack: a kernels-only machine (torch, triton, transformers) skips this file
pytest.importorskip("lightning")

from flyweight.data.datamodule import accumulation
from flyweight.train.fastpath import (micro_batch_candidates, resolve_attention, resolve_compile,
                                      resolve_micro_batch)


def test_compile_and_attention_auto_follow_the_accelerator():
    assert resolve_compile("auto", "gpu") is True and resolve_compile("auto", "cpu") is False
    assert resolve_compile(False, "gpu") is False and resolve_compile(True, "cpu") is True
    with pytest.raises(ValueError, match="trainer.compile must be true, false or auto"):
        resolve_compile("yes", "cpu")
    assert resolve_attention("auto", "gpu") == "triton" and resolve_attention("auto", "cpu") == "sdpa"
    assert resolve_attention("sdpa", "gpu") == "sdpa"


@pytest.mark.parametrize("per_device,cap", [(512, 128), (96, 128), (12, 5), (7, 128), (1, 1)])
def test_candidates_divide_the_batch_and_respect_the_cap(per_device, cap):
    brute = sorted((m for m in range(1, per_device + 1) if per_device % m == 0 and m <= cap), reverse=True)
    assert micro_batch_candidates(per_device, cap) == brute


def test_auto_micro_batch_probes_on_gpu_and_takes_the_largest_divisor_on_cpu():
    calls = []

    def probe():
        calls.append(1)
        return 32, "probed"

    assert resolve_micro_batch("auto", "gpu", 512, 128, probe) == (32, "probed") and calls == [1]
    mb, _ = resolve_micro_batch("auto", "cpu", 48, 32, probe)
    assert mb == 24 and calls == [1]  # no probe on the CPU
    assert accumulation(48, mb, 1) == 2  # accumulation makes up the global batch
    assert resolve_micro_batch(8, "gpu", 512, 128, probe)[0] == 8 and calls == [1]  # explicit: as given
    with pytest.raises(ValueError, match="data.micro_batch_size must be >= 1 or auto"):
        resolve_micro_batch(0, "cpu", 8, 8, probe)
