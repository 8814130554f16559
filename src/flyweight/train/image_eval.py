"""ImageNet evaluation of T2T-ViT with a chosen token-transformer attention.

``python run.py experiment=imagenet-t2tvit-eval model/t2tattn_cfg=sblocal datamodule.data_dir=/imagenet
eval.ckpt=81.7_T2T_ViTt_14.pth.tar``: ImageFolder over ``data_dir/val``, resize 248 bicubic / center-crop
224 / ImageNet mean-std, top-1 and top-5, images/s. Random-feature attentions are evaluated once per seed
in ``eval.seeds`` and summarised as mean and spread.
"""

from __future__ import annotations

import statistics
import time
from typing import Iterable

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from flyweight.utils.device import device_name, resolve_device, synchronize
from flyweight.utils.dtypes import LOW_PRECISION, dtype_named


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    batches: Iterable,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    total: int | None = None,
    desc: str = "eval",
) -> dict:
    """Top-1/top-5 accuracy (%) and images/s (model time only: forward + sync, data loading excluded)."""
    model.eval()
    correct1 = correct5 = seen = 0
    model_time = 0.0
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else None
    for images, labels in tqdm(batches, total=total, desc=desc, leave=False):
        images, labels = images.to(device, non_blocking=True), labels.to(device)
        synchronize(device)
        t0 = time.perf_counter()
        if autocast is not None:
            with autocast:
                logits = model(images)
        else:
            logits = model(images)
        synchronize(device)
        model_time += time.perf_counter() - t0
        top5 = logits.float().topk(min(5, logits.shape[-1]), dim=-1).indices
        hit = top5 == labels[:, None]
        correct1 += int(hit[:, 0].sum())
        correct5 += int(hit.any(-1).sum())
        seen += labels.numel()
    if seen == 0:
        raise ValueError("evaluation saw no images")
    return {
        "top1": 100.0 * correct1 / seen,
        "top5": 100.0 * correct5 / seen,
        "images": seen,
        "images_per_s": seen / model_time if model_time > 0 else float("nan"),
    }


def summarize_seeds(runs: list[dict], key: str = "top1") -> dict:
    vals = [r[key] for r in runs]
    return {
        f"{key}_mean": statistics.fmean(vals),
        f"{key}_std": statistics.stdev(vals) if len(vals) > 1 else 0.0,
        f"{key}_min": min(vals),
        f"{key}_max": max(vals),
    }


def attention_specs(attn_cfg: DictConfig | dict, seed: int | None) -> tuple[dict | None, dict | None]:
    """The two stage specs of a t2tattn_cfg entry, with the seed filled in for random-feature variants.

    A null spec keeps the checkpoint's own attention ("native": full for T2T-ViT-t, the 32-feature token
    performer with the checkpoint's features for T2T-ViT)."""
    cfg = (
        OmegaConf.to_container(attn_cfg, resolve=True) if isinstance(attn_cfg, DictConfig) else dict(attn_cfg)
    )
    specs = []
    for key in ("t2t_attention1", "t2t_attention2"):
        if key not in cfg:
            raise ValueError(f"model.t2tattn_cfg needs {key!r} (a registry spec); got keys {sorted(cfg)}")
        if cfg[key] is None:
            specs.append(None)
            continue
        spec = dict(cfg[key])
        if seed is not None and spec.get("name") in ("performer", "sblocal"):
            spec["seed"] = int(seed)
        specs.append(spec)
    return specs[0], specs[1]


def run(cfg: DictConfig, out_dir) -> dict:
    from torch.utils.data import DataLoader

    from flyweight.data.images import EvalTransform, ImageFolder, imagenet_val_dir
    from flyweight.models.t2t_vit_checkpoint import load_t2t_vit

    dm, ev = cfg.datamodule, cfg.eval
    if dm.data_dir in (None, "???"):
        raise ValueError("datamodule.data_dir is required: the ImageNet folder (with val/<class>/<image>)")
    if ev.ckpt in (None, "???"):
        raise ValueError("eval.ckpt is required: an official T2T-ViT .pth.tar or a converted .safetensors")
    dtype = dtype_named(ev.dtype, "eval.dtype", LOW_PRECISION)
    device = resolve_device(cfg.device)
    transform = EvalTransform(dm.img_size, dm.crop_pct, interpolation=dm.interpolation)
    dataset = ImageFolder(imagenet_val_dir(dm.data_dir), transform)
    seeds = list(ev.seeds) if ev.seeds else [0]
    first = cfg.model.t2tattn_cfg.t2t_attention1
    variant = "native" if first is None else first.name
    if variant not in ("performer", "sblocal"):
        seeds = seeds[:1]  # deterministic variants: one run
    runs = []
    for seed in seeds:
        spec1, spec2 = attention_specs(cfg.model.t2tattn_cfg, seed)
        model = load_t2t_vit(ev.ckpt, spec1, spec2, variant=cfg.model.get("arch")).to(device)
        if model.cfg.num_classes != len(dataset.classes):
            raise ValueError(
                f"model has {model.cfg.num_classes} classes, {dataset.root} has {len(dataset.classes)}"
            )
        loader = DataLoader(
            dataset,
            batch_size=int(dm.batch_size),
            shuffle=False,
            num_workers=int(dm.num_workers),
            pin_memory=device.type == "cuda",
        )
        n = len(loader) if ev.max_batches is None else min(len(loader), int(ev.max_batches))
        batches = (b for i, b in enumerate(loader) if i < n)
        res = evaluate(model, batches, device, dtype, total=n, desc=f"{variant} seed {seed}")
        res.update(seed=seed, t2t_attention1=spec1, t2t_attention2=spec2)
        print(
            f"[imagenet-eval] {variant} seed {seed}: top-1 {res['top1']:.2f}  top-5 {res['top5']:.2f}  "
            f"{res['images_per_s']:.1f} images/s on {res['images']} images"
        )
        runs.append(res)
    result = {
        "variant": variant,
        "checkpoint": str(ev.ckpt),
        "data": str(dataset.root),
        "images": runs[0]["images"],
        "device": device_name(device),
        "dtype": ev.dtype,
        "runs": runs,
        **summarize_seeds(runs, "top1"),
        **summarize_seeds(runs, "top5"),
        "images_per_s": statistics.fmean(r["images_per_s"] for r in runs),
        **model.attention_cost(),
    }
    print(
        f"[imagenet-eval] {variant}: top-1 {result['top1_mean']:.2f} +- {result['top1_std']:.2f} "
        f"over seeds {seeds}"
    )
    return result
