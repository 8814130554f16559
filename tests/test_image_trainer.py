"""The image stand-in trains through Lightning (ImageClassifierModule): checked step for step against a plain
PyTorch loop written here (AdamW with the same groups, warm-up + cosine LambdaLR, norm-1 clipping)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("lightning")
pytest.importorskip("omegaconf")

from omegaconf import OmegaConf  # noqa: E402

from flyweight.data.images import ShuffledImageBatches, upscale_batch  # noqa: E402
from flyweight.models.t2t_vit import T2TViT, T2TViTConfig  # noqa: E402
from flyweight.train.fmnist_t2t import train  # noqa: E402


def plain_loop(model, images, labels, steps, bs, seed, lr, wd, warmup, smoothing, img_size, mean, std):
    """The reference: one generator for the permutation (a fresh one when fewer than bs remain) and the
    flips, drawn in that order each step."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and n != "cls_token"]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and n != "cls_token")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": other, "weight_decay": 0.0}], lr=lr)

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(images.shape[0], generator=gen)
    model.train()
    losses = []
    for step in range(steps):
        idx = order[(step * bs) % images.shape[0]:][:bs]
        if idx.numel() < bs:
            order = torch.randperm(images.shape[0], generator=gen)
            idx = order[:bs]
        x = upscale_batch(images[idx], img_size, mean, std)
        flip = torch.rand(bs, generator=gen) < 0.5
        x[flip] = x[flip].flip(-1)
        loss = F.cross_entropy(model(x), labels[idx], label_smoothing=smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def test_lightning_training_equals_the_plain_loop_bit_for_bit():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (150, 28, 28), dtype=torch.uint8)
    labels = torch.randint(0, 10, (150,))
    cfg = OmegaConf.create({"train_seed": 5, "img_size": 32, "train": dict(
        steps=7, batch_size=64, lr=2e-3, weight_decay=0.05, warmup_steps=2, label_smoothing=0.1, hflip=True)})
    mcfg = T2TViTConfig(img_size=32, in_chans=1, num_classes=10, tokens_type="transformer", token_dim=8,
                        embed_dim=16, depth=1, num_heads=2, mlp_ratio=2.0)
    model = T2TViT(mcfg)
    reference = copy.deepcopy(model)
    result = train(cfg, model, images, labels, torch.device("cpu"), 0.3, 0.4)
    losses = plain_loop(reference, images, labels, 7, 64, 5, 2e-3, 0.05, 2, 0.1, 32, 0.3, 0.4)
    assert result["steps"] == 7 and result["train_images_seen"] == 7 * 64
    assert result["final_loss"] == pytest.approx(sum(losses) / len(losses), rel=0, abs=0)
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


def test_shuffled_batches_cover_each_epoch_once_and_ignore_prefetching():
    images = torch.arange(10, dtype=torch.uint8)[:, None, None].expand(10, 28, 28).contiguous()
    labels = torch.arange(10)
    batches = ShuffledImageBatches(images, labels, steps=6, batch_size=4, seed=3, hflip=True)
    first = list(batches)
    seen = [b[1] for b in first]
    assert len(batches) == 6 and all(s.numel() == 4 for s in seen)
    assert len(set(torch.cat(seen[:2]).tolist())) == 8  # no image twice within an epoch
    assert all(torch.equal(img[:, 0, 0].long(), lab) for img, lab, _ in first)  # images travel with labels
    flips = torch.stack([b[2] for b in first])
    assert 0 < flips.sum() < flips.numel()
    again = list(batches)  # a second pass (what a restarted or prefetching loader sees) repeats every draw
    assert all(torch.equal(a[1], b[1]) and torch.equal(a[2], b[2]) for a, b in zip(again, first))
    no_flip = ShuffledImageBatches(images, labels, steps=6, batch_size=4, seed=3, hflip=False)
    assert not any(b[2].any() for b in no_flip)
    with pytest.raises(ValueError, match="batch_size=11 is larger than the 10"):
        ShuffledImageBatches(images, labels, steps=1, batch_size=11, seed=0)
