"""Training checkpoints that are complete or absent, and the choice of the one to resume from.

Writing: Lightning's ``TorchCheckpointIO`` saves through fsspec's local "transaction", which writes a
temporary file in ``$TMPDIR`` and ``shutil.move``s it over the target. When ``$TMPDIR`` is another
filesystem (a tmpfs, a node-local disk) that move is a copy, so a kill during it leaves a truncated
``last.ckpt`` (issue 15). :class:`AtomicCheckpointIO` keeps Lightning's checkpoint format and its
plugin interface (``Trainer(plugins=[...])``) and only replaces the write: ``torch.save`` to a temporary
name beside the target, fsync, ``os.replace`` (:func:`flyweight.utils.io.atomic_path`). Remote URLs
(``s3://`` ...) keep Lightning's own path.

Reading: :func:`newest_loadable` looks at every ``*.ckpt`` of a run, opens each (``mmap``: the tensors
are not read, but a truncated or empty file fails to open because a zip archive's directory is at its
end), and returns the one with the highest training step, plus the files it skipped and why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from flyweight.utils.io import atomic_path

LAST = "last.ckpt"


class UnreadableCheckpointError(ValueError):
    """A checkpoint file that cannot be opened (empty, truncated, not a checkpoint); names the file."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"checkpoint {path} cannot be read: {reason}")
        self.path, self.reason = path, reason


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


def _describe_failure(path: Path, err: BaseException) -> str:
    try:
        size = path.stat().st_size
    except OSError:
        size = None
    if size == 0:
        return "it is empty (0 bytes; a write was cut off)"
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"it is not a complete checkpoint ({size} bytes; {type(err).__name__}: {text})"


def read_checkpoint(path: str | Path, mmap: bool = True) -> dict:
    """The checkpoint's dict (tensors memory-mapped when ``mmap``); :class:`UnreadableCheckpointError`
    naming the file when it is empty, truncated or not a torch checkpoint."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise
    except Exception as err:  # EOFError, RuntimeError (zip reader), UnpicklingError, ...: all "cannot open"
        raise UnreadableCheckpointError(path, _describe_failure(path, err)) from err
    if not isinstance(state, dict):
        raise UnreadableCheckpointError(path, f"it holds a {type(state).__name__}, not a checkpoint dict")
    return state


def checkpoint_step(path: str | Path) -> int:
    """The optimizer step a Lightning checkpoint was saved at (raises for an unreadable file)."""
    return int(read_checkpoint(path).get("global_step", -1))


def newest_loadable(ckpt_dir: str | Path, max_step: int | None = None
                    ) -> tuple[Path | None, int | None, list[tuple[Path, str]]]:
    """(newest readable checkpoint, its step, [(skipped file, why)]) among ``ckpt_dir/*.ckpt``.

    Newest means the highest saved step (at most ``max_step``); on a tie ``last.ckpt`` wins (the same
    state, its usual name).
    """
    ckpt_dir = Path(ckpt_dir)
    found, skipped = [], []
    for path in sorted(ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []:
        try:
            step = checkpoint_step(path)
        except UnreadableCheckpointError as err:
            skipped.append((path, err.reason))
            continue
        if max_step is None or step <= max_step:
            found.append((step, path.name == LAST, path))
    if not found:
        return None, None, skipped
    step, _, path = max(found, key=lambda t: (t[0], t[1], t[2].name))
    return path, step, skipped


def describe_skipped(skipped: list[tuple[Path, str]]) -> str:
    return "; ".join(f"skipped {p} because {why}" for p, why in skipped)



def open_checkpoint(path: str | Path, mmap: bool = True) -> dict:
    """:func:`read_checkpoint` for a file the user named: when it cannot be read, the error also names
    the newest readable checkpoint beside it."""
    path = Path(path)
    try:
        return read_checkpoint(path, mmap=mmap)
    except UnreadableCheckpointError as err:
        other, step, _ = newest_loadable(path.parent)
        hint = f"; the newest readable checkpoint beside it is {other} (step {step})" if other is not None else ""
        raise UnreadableCheckpointError(path, f"{err.reason}{hint}") from err


def resume_point(setting: str | None, ckpt_dir: str | Path) -> tuple[Path | None, int, str]:
    """(checkpoint to resume from or None, its step (0: fresh), a sentence saying which and why).

    ``setting`` is ``trainer.resume``: ``"auto"`` takes :func:`newest_loadable` of ``ckpt_dir`` (none:
    a fresh start), ``None``/``"never"`` starts fresh, anything else is a checkpoint path that must read.
    """
    if setting in (None, "", "never", "none", False):
        return None, 0, "starting fresh (trainer.resume=never)"
    if setting == "auto":
        path, step, skipped = newest_loadable(ckpt_dir)
        why = f" ({describe_skipped(skipped)})" if skipped else ""
        if path is None:
            return None, 0, f"no readable checkpoint in {ckpt_dir}{why}: starting at step 0"
        return path, step, f"resuming from {path} (step {step}, the newest readable checkpoint){why}"
    path = Path(setting).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"trainer.resume={setting}: no such checkpoint file (trainer.resume=auto picks "
                                f"the newest readable one of the run's checkpoints/ folder)")
    step = int(open_checkpoint(path).get("global_step", -1))
    return path, step, f"resuming from {path} (step {step}, trainer.resume)"
