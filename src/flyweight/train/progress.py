"""The training progress bar: the run's name, the optimizer step out of the schedule, loss and tokens/s.

Lightning's default bar counts loader batches of "Epoch 0/0" and shows the logger's version; a run here
is one loader epoch of micro-batches, so the useful position is the optimizer step.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    def __init__(self, label: str | None = None, refresh_rate: int = 1):
        super().__init__(refresh_rate=refresh_rate)
        self.label = label or "train"

    def get_metrics(self, trainer, pl_module) -> dict:
        items = super().get_metrics(trainer, pl_module)
        items.pop("v_num", None)
        return items

    def _describe(self, trainer) -> str:
        return f"{self.label} step {trainer.global_step}/{trainer.max_steps}"

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        super().on_train_epoch_start(trainer, pl_module)
        self.train_progress_bar.set_description(self._describe(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self.train_progress_bar.set_description(self._describe(trainer), refresh=False)
