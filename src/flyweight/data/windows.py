"""Fixed-length windows over a token stream, and the samplers that hand them to ranks.

``TokenWindows``: window i is tokens[i*L : (i+1)*L]; the last partial window is dropped, so no
token is seen twice and none is lost between windows.

``TrainBatchSampler`` fixes the data order by the global batch alone: epoch e is a permutation of
the windows drawn from (seed, e); optimizer step s of that epoch uses the next G = world x accum x
micro windows, and rank r's a-th micro-batch is the slice (a*world + r)*micro of them. So the windows
of every optimizer step are the same whether it runs on 1 GPU with accumulation or on 8 without,
ranks never share a window, and resuming is a matter of starting at micro-batch ``start``.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class TokenWindows(Dataset):
    def __init__(self, tokens: np.ndarray, max_length: int):
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        self.tokens = tokens
        self.max_length = int(max_length)
        self.n = len(tokens) // self.max_length

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if not 0 <= i < self.n:
            raise IndexError(f"window {i} out of range [0, {self.n})")
        L = self.max_length
        ids = torch.from_numpy(np.asarray(self.tokens[i * L:(i + 1) * L], dtype=np.int64))
        return {"input_ids": ids, "index": i}


class TrainBatchSampler(Sampler[list[int]]):
    """Micro-batches of window indices for one rank; ``len`` is the whole run, epochs included."""

    def __init__(self, n_windows: int, micro_batch_size: int, accumulate: int = 1, world_size: int = 1,
                 rank: int = 0, seed: int = 1111, total_micro_batches: int | None = None):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.n_windows, self.micro, self.accum = int(n_windows), int(micro_batch_size), int(accumulate)
        self.world, self.rank, self.seed = int(world_size), int(rank), int(seed)
        self.global_batch = self.micro * self.accum * self.world
        self.steps_per_epoch = self.n_windows // self.global_batch
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"the training split has {self.n_windows} windows, fewer than one global batch of "
                f"{self.global_batch} (= micro_batch_size {self.micro} x accumulation {self.accum} x world "
                f"size {self.world}); lower data.global_batch_size or data.max_length, or use more data"
            )
        per_epoch = self.steps_per_epoch * self.accum
        self.total = int(total_micro_batches) if total_micro_batches is not None else per_epoch
        self.start = 0
        self._perm_epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(self.n_windows)
            self._perm_epoch = epoch
        return self._perm

    def batch(self, b: int) -> list[int]:
        """Window indices of this rank's micro-batch number ``b`` (counted from the run's start)."""
        step, a = divmod(b, self.accum)
        epoch, s = divmod(step, self.steps_per_epoch)
        lo = s * self.global_batch + (a * self.world + self.rank) * self.micro
        return self._permutation(epoch)[lo:lo + self.micro].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for b in range(self.start, self.total):
            yield self.batch(b)

    def __len__(self) -> int:
        return self.total


class ResumableLoader(DataLoader):
    """A DataLoader whose position Lightning saves in and restores from checkpoints.

    The position is the number of micro-batches the model has consumed, read from ``progress()``
    (the trainer's optimizer steps x accumulation) rather than counted here: Lightning fetches a
    batch ahead, so a count of batches handed out would be one too many.
    """

    def __init__(self, *args, progress=None, **kwargs):
        super().__init__(*args, **kwargs)
        self._progress = progress

    def state_dict(self) -> dict:
        consumed = self._progress() if self._progress is not None else self.batch_sampler.start
        return {"consumed": int(consumed)}

    def load_state_dict(self, state: dict) -> None:
        self.batch_sampler.start = int(state["consumed"])


def shard_windows(n_windows: int, rank: int, world_size: int) -> list[int]:
    """Evaluation shard: windows rank, rank + world, ... (shards differ by at most one window)."""
    return list(range(rank, n_windows, world_size))


def eval_batches(n_windows: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    idx = shard_windows(n_windows, rank, world_size)
    return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
