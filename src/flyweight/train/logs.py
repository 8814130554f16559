"""Run logs that survive a restart: rows up to the resumed step are kept, the resumed run appends after them.

Lightning's ``CSVLogger`` deletes ``metrics.csv`` when its folder already holds files, so a resumed run
kept only the steps after the restart (issue 15). :class:`ResumableCSVLogger` is Lightning's logger with
its writer subclassed: at start it keeps the rows the resumed run will not log again (step < the
checkpoint's step; a fresh start keeps none), rewrites the file atomically, and from then on Lightning
appends as usual. It also flushes every logging step (instead of every 100), so a kill loses no rows
that a checkpoint already covers, and Lightning's header rewrite (when a new metric appears) goes
through a temporary file beside the log instead of truncating it in place.

:func:`trim_csv` does the same for flyweight's own per-step logs (``steps.csv``, ``evals.csv``).
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from flyweight.utils.io import atomic_write_text


def _complete_rows(path: Path) -> tuple[list[str], list[dict]]:
    """(header, rows) of a CSV log; a last line cut off by a kill (no newline) is dropped."""
    text = path.read_text(encoding="utf-8", errors="replace")
    if text and not text.endswith("\n"):
        text = text[:text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    rows = list(reader)
    return list(reader.fieldnames or []), rows


def _step_of(row: dict, column: str) -> int | None:
    try:
        return int(float(row.get(column) or ""))
    except ValueError:
        return None


def _write_rows(path: Path, header: list[str], rows: list[dict]) -> None:
    out = io.StringIO(newline="")
    w = csv.DictWriter(out, fieldnames=header)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, out.getvalue())


def trim_csv(path: str | Path, keep_below: int, column: str = "step") -> int | None:
    """Keep the rows of the CSV log ``path`` whose ``column`` is < ``keep_below`` (atomically); with no
    row left the file is removed. Returns how many rows were kept (None when there was no file)."""
    path = Path(path)
    if not path.is_file():
        return None
    header, rows = _complete_rows(path)
    kept = [r for r in rows if (s := _step_of(r, column)) is not None and s < keep_below]
    if not kept or not header:
        path.unlink()
        return 0
    if len(kept) != len(rows) or not path.read_bytes().endswith(b"\n"):
        _write_rows(path, header, kept)
    return len(kept)


class _ResumingWriter(ExperimentWriter):
    def __init__(self, log_dir: str, keep_below: int):
        self._keep_below = int(keep_below)
        super().__init__(log_dir=log_dir)

    def _check_log_dir_exists(self) -> None:  # Lightning: warn and delete metrics.csv; here: keep what is valid
        path = Path(self.metrics_file_path)
        if trim_csv(path, self._keep_below):
            self.metrics_keys = sorted(_complete_rows(path)[0])

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        path = Path(self.metrics_file_path)
        _write_rows(path, fieldnames, _complete_rows(path)[1])


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` keeps the rows of steps before ``keep_below`` (Lightning's step
    column counts from 0, so a run resumed at optimizer step S passes S) and appends after them."""

    def __init__(self, save_dir, name: str = "logs", version: str = "csv", keep_below: int = 0):
        super().__init__(save_dir, name=name, version=version, flush_logs_every_n_steps=1)
        self._keep_below = int(keep_below)

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumingWriter(self.log_dir, self._keep_below)
        return self._experiment


def quiet_lightning() -> None:
    """Lightning prints through its own handler; under Hydra the root handler would print it twice."""
    logging.getLogger("lightning.pytorch").propagate = False
    logging.getLogger("lightning.fabric").propagate = False
