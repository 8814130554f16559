"""Host time of one eager SS1 sketch launch, direct and through Triton's binder, beside its neighbours.

    PYTHONUNBUFFERED=1 PYTHONPATH=src python3 benchmarks/ss1_launch_host.py

No ``torch.compile`` in the process (its worker processes share the host's CPU and swing the
``ss1_gpu.py --parts host`` rows between runs): every call below is timed by ``gpu_harness.host_us``
(the GPU kept busy, so the clock sees only the CPU) in 5 interleaved rounds, median and all rounds
printed. 768 x 768, R = 4, M = 16, bf16, no grad.
"""

import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gpu_harness import host_us  # noqa: E402

from flyweight.kernels.ss1 import op  # noqa: E402
from flyweight.linear import SS1Linear  # noqa: E402


def main() -> None:
    torch.manual_seed(0)
    dense = torch.nn.Linear(768, 768, device="cuda", dtype=torch.bfloat16)
    layer = SS1Linear(768, 768, compression=4, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(16, 768, device="cuda", dtype=torch.bfloat16)
    args = layer.sketch_args

    def direct(fn):
        return lambda: (setattr(op._launch_sketch, "enabled", True), fn())

    def binder(fn):
        return lambda: (setattr(op._launch_sketch, "enabled", False), fn())

    sketch = lambda: op.sketch_triton(x, args, torch.bfloat16)  # noqa: E731
    calls = {"nn.Linear forward": lambda: dense(x),
             "F.linear": lambda: torch.nn.functional.linear(x, dense.weight, dense.bias),
             "torch.empty (the sketch's output)": lambda: torch.empty((16, 192), device="cuda", dtype=torch.bfloat16),
             "sketch launch, direct": direct(sketch), "sketch launch, through the binder": binder(sketch),
             "SS1Linear forward, direct": direct(lambda: layer(x)),
             "SS1Linear forward, through the binder": binder(lambda: layer(x))}
    rounds = {name: [] for name in calls}
    with torch.no_grad():
        for _ in range(5):
            for name, fn in calls.items():
                rounds[name].append(host_us(fn, n=300, rounds=1))
    op._launch_sketch.enabled = True
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    for name, us in rounds.items():
        print(f"{name:40s} {statistics.median(us):6.1f} us   rounds {[round(u, 1) for u in us]}")


if __name__ == "__main__":
    main()
