"""The image-classification training step for the Lightning trainer (the Fashion-MNIST stand-in).

The same pieces as the language-model module (``module.LMModule``): AdamW with weight decay on matrices
only (``optim.param_groups``), linear warm-up then cosine decay stepped per optimizer step
(``optim.make_scheduler``), gradient clipping by Lightning, the run's label and step in the progress bar
(``progress.StepProgressBar``). What is particular to images is the batch: uint8 (N, 28, 28) images with
their labels and a flip mask (``data.images.ShuffledImageBatches``, every draw from one seeded generator),
upscaled, normalised and flipped on the device. Gradients are clipped to norm 1 over the model's parameters
in their own order (the clipping factor is then the same to the last bit as in a plain loop), so a run is
reproducible from its seed.
"""

from __future__ import annotations

import time

import lightning as L
import torch
import torch.nn.functional as F

from flyweight.data.images import upscale_batch
from flyweight.train.optim import OptimConfig, make_optimizer, make_scheduler


class ImageClassifierModule(L.LightningModule):
    def __init__(self, model: torch.nn.Module, optim: OptimConfig, warmup_steps: int, total_steps: int, *,
                 img_size: int, mean: float, std: float, label_smoothing: float = 0.0, max_grad_norm: float = 1.0,
                 no_decay: tuple[str, ...] = ()):
        super().__init__()
        self.model = model
        self.optim, self.warmup_steps, self.total_steps = optim, int(warmup_steps), int(total_steps)
        self.img_size, self.mean, self.std = int(img_size), float(mean), float(std)
        self.label_smoothing, self.max_grad_norm, self.no_decay = float(label_smoothing), float(max_grad_norm), no_decay
        self.losses: list[float] = []
        self.train_seconds = 0.0
        self._t0 = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images_u8, labels, flip = batch
        x = upscale_batch(images_u8, self.img_size, self.mean, self.std)
        if flip.any():
            x[flip] = x[flip].flip(-1)
        loss = F.cross_entropy(self.model(x), labels, label_smoothing=self.label_smoothing)
        self.losses.append(loss.item())
        self.log("loss", loss, prog_bar=True, on_step=True, logger=False)
        return loss

    def on_train_start(self) -> None:
        self._t0 = time.perf_counter()

    def on_train_end(self) -> None:
        if self._t0 is not None:
            self.train_seconds = time.perf_counter() - self._t0

    def on_before_optimizer_step(self, optimizer) -> None:
        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)

    def configure_optimizers(self):
        opt = make_optimizer(self.model, self.optim, no_decay=self.no_decay)
        sched = make_scheduler(opt, self.warmup_steps, self.total_steps, self.optim.schedule, self.optim.min_lr_ratio)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
