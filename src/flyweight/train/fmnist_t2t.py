"""Fashion-MNIST stand-in for the ImageNet experiment: train a small T2T-ViT with full attention, save it,
then evaluate full / local / performer / sblocal in its token transformers WITHOUT retraining, each at
the same attention-memory budget (a fraction of full attention), random-feature variants over seeds.

Images are upscaled (default 112 px, 1 channel) so the token transformers see 784 and 196 tokens (the
first is the size of ImageNet's second stage). Training uses the 60k train split only; every accuracy is
on the 10k test split. Results: ``results.json`` in the run folder and, when ``fmnist.results_dir`` is set,
``t2t_fmnist.csv`` / ``t2t_fmnist.md`` there.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from flyweight.attention import matched_budget
from flyweight.utils.device import device_name, resolve_device
from flyweight.data.images import load_fashion_mnist, upscale_batch
from flyweight.models.t2t_vit import T2TViT, T2TViTConfig
from flyweight.models.t2t_vit_checkpoint import load_t2t_vit, save_t2t_vit
from flyweight.train.image_eval import evaluate, summarize_seeds
from flyweight.utils.io import atomic_write, atomic_write_text
from flyweight.utils.rng import seed_all

TABLE_COLUMNS = [
    "dataset",
    "split",
    "img_size",
    "tokens",
    "budget",
    "variant",
    "settings",
    "seeds",
    "top1_mean",
    "top1_std",
    "top1_min",
    "top1_max",
    "attn_memory",
    "attn_memory_vs_full",
    "attn_flops",
    "attn_flops_vs_full",
    "images_per_s",
    "device",
    "torch",
]


def _batches(images, labels, batch_size, size, mean, std):
    for i in range(0, images.shape[0], batch_size):
        yield upscale_batch(images[i : i + batch_size], size, mean, std), labels[i : i + batch_size]


def train(cfg: DictConfig, model: T2TViT, images, labels, device, mean, std) -> dict:
    """Train ``model`` with Lightning (``ImageClassifierModule``) on uint8 images: ``cfg.train.steps``
    optimizer steps of ``cfg.train.batch_size`` images (``ShuffledImageBatches`` seeded by ``cfg.train_seed``)."""
    import lightning as L
    from torch.utils.data import DataLoader

    from flyweight.data.images import ShuffledImageBatches
    from flyweight.train.image_module import ImageClassifierModule
    from flyweight.train.logs import quiet_lightning
    from flyweight.train.optim import OptimConfig
    from flyweight.train.progress import StepProgressBar

    quiet_lightning()
    t = cfg.train
    steps, bs = int(t.steps), int(t.batch_size)
    batches = ShuffledImageBatches(images, labels, steps, bs, seed=int(cfg.train_seed), hflip=bool(t.hflip))
    optim = OptimConfig(lr=float(t.lr), weight_decay=float(t.weight_decay), schedule="cosine")
    module = ImageClassifierModule(model, optim, int(t.warmup_steps), steps, img_size=int(cfg.img_size), mean=mean,
                                   std=std, label_smoothing=float(t.label_smoothing), max_grad_norm=1.0,
                                   no_decay=("cls_token",))
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=1, max_steps=steps, max_epochs=1,
        logger=False, enable_checkpointing=False,
        enable_model_summary=False, callbacks=[StepProgressBar("fmnist train")], num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    model.eval()
    return {
        "steps": trainer.global_step,
        "batch_size": bs,
        "train_images_seen": trainer.global_step * bs,
        "train_seconds": module.train_seconds,
        "final_loss": sum(module.losses[-20:]) / len(module.losses[-20:]),
    }


def run(cfg: DictConfig, out_dir) -> dict:
    fm = cfg.fmnist
    out_dir = Path(out_dir)
    device = resolve_device(cfg.device)
    train_x, train_y = load_fashion_mnist("train", fm.data_dir, verify=bool(fm.verify_sha256))
    test_x, test_y = load_fashion_mnist("test", fm.data_dir, verify=bool(fm.verify_sha256))
    if fm.max_test_images:
        test_x, test_y = test_x[: int(fm.max_test_images)], test_y[: int(fm.max_test_images)]
    mean = float(train_x.float().mean() / 255)  # statistics of the train split only
    std = float((train_x.float() / 255).std())

    ckpt = Path(fm.ckpt) if fm.ckpt else out_dir / "t2t_fmnist.safetensors"
    result: dict = {
        "dataset": "Fashion-MNIST",
        "train_split": "train (60k)",
        "eval_split": f"test ({len(test_y)})",
        "checkpoint": str(ckpt),
    }
    train_log = ckpt.with_suffix(".train.json")  # how the saved model was trained, kept beside it
    if fm.ckpt and ckpt.is_file():
        print(f"[fmnist] reusing trained model {ckpt}")
        if train_log.is_file():
            result["train"] = json.loads(train_log.read_text())
    else:
        model_cfg = T2TViTConfig(
            img_size=int(fm.img_size),
            in_chans=1,
            num_classes=10,
            **OmegaConf.to_container(fm.model, resolve=True),
        )
        seed_all(int(fm.train_seed))
        model = T2TViT(model_cfg).to(device)
        print(
            f"[fmnist] training {model.num_parameters() / 1e6:.2f}M-parameter T2T-ViT at {fm.img_size} px, "
            f"token stages {model_cfg.stage_tokens()}"
        )
        result["train"] = train(fm, model, train_x, train_y, device, mean, std)
        save_t2t_vit(ckpt, model.state_dict(), model.cfg)
        atomic_write_text(train_log, json.dumps(result["train"], indent=2) + "\n")
        print(f"[fmnist] saved {ckpt}")

    rows = []
    full_cost = None
    variants = [("full", None)] + [(v, b) for b in fm.budgets for v in ("local", "performer", "sblocal")]
    for variant, budget in variants:
        model_cfg = load_t2t_vit(ckpt).cfg
        tokens = model_cfg.stage_tokens()
        seeds = list(fm.seeds) if variant in ("performer", "sblocal") else [None]
        runs = []
        for seed in seeds:
            specs = [matched_budget(variant, T, 1.0 / budget if budget else 1.0, seed) for T in tokens]
            model = load_t2t_vit(ckpt, *specs).to(device)
            n = math.ceil(len(test_y) / int(fm.eval_batch_size))
            res = evaluate(
                model,
                _batches(test_x, test_y, int(fm.eval_batch_size), int(fm.img_size), mean, std),
                device,
                total=n,
                desc=f"{variant} 1/{budget or 1} seed {seed}",
            )
            runs.append(res)
            print(
                f"[fmnist] {variant:9s} budget 1/{budget or 1} seed {seed}: top-1 {res['top1']:.2f} "
                f"({res['images_per_s']:.0f} images/s)"
            )
        cost = model.attention_cost()
        full_cost = full_cost or cost
        summary = summarize_seeds(runs, "top1")
        rows.append(
            {
                "dataset": "Fashion-MNIST",
                "split": f"test[:{len(test_y)}]",
                "img_size": int(fm.img_size),
                "tokens": "/".join(map(str, tokens)),
                "budget": f"1/{budget}" if budget else "1",
                "variant": variant,
                "settings": "; ".join(
                    ",".join(f"{k}={v}" for k, v in s.items() if k not in ("name", "seed")) or "-"
                    for s in specs
                ),
                "seeds": "-" if seeds == [None] else ",".join(map(str, seeds)),
                **{k: round(v, 2) for k, v in summary.items()},
                "attn_memory": cost["attention_memory"],
                "attn_memory_vs_full": round(cost["attention_memory"] / full_cost["attention_memory"], 4),
                "attn_flops": cost["attention_flops"],
                "attn_flops_vs_full": round(cost["attention_flops"] / full_cost["attention_flops"], 4),
                "images_per_s": round(sum(r["images_per_s"] for r in runs) / len(runs), 1),
                "device": device_name(device),
                "torch": torch.__version__.split("+")[0],
            }
        )
    result["rows"] = rows
    if fm.results_dir:
        write_table(rows, Path(fm.results_dir), result, fm.get("table_name", "t2t_fmnist"))
    return result


def write_table(rows: list[dict], results_dir: Path, result: dict, name: str = "t2t_fmnist") -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(results_dir / f"{name}.csv", "w") as f:
        writer = csv.DictWriter(f, fieldnames=TABLE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    train = result.get("train", {})
    trained = (
        f"{train['train_images_seen']} train images seen ({train['steps']} steps of {train['batch_size']}, "
        f"{train['train_seconds'] / 60:.1f} min on CPU)"
        if train
        else "a saved model"
    )
    r0 = rows[0]
    lines = [
        "# T2T-ViT on Fashion-MNIST: swapping the token-transformer attention without retraining",
        "",
        f"A small T2T-ViT-t trained with full attention on the train split ({trained}), evaluated on "
        f"{r0['split']} of the test split. Images upscaled to {r0['img_size']} px, so the two token "
        f"transformers see {r0['tokens']} tokens. Attention memory (elements: score matrix, window scores, "
        "q/k features) and FLOPs: both token transformers, one image. performer / sblocal: mean +- std "
        f"over feature seeds. images/s: model time, {r0['device']}, torch {r0['torch']} (a shared machine: "
        "throughput is indicative).",
        "",
        "| variant | budget | settings (stage 1; stage 2) | top-1 (%) | attention memory | attention FLOPs "
        "| images/s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        acc = f"{r['top1_mean']:.2f}"
        if r["seeds"] != "-":
            acc += f" +- {r['top1_std']:.2f} (seeds {r['seeds']})"
        memory = f"{r['attn_memory']:,} ({r['attn_memory_vs_full']:.3f}x)"
        flops = f"{r['attn_flops'] / 1e6:.1f}M ({r['attn_flops_vs_full']:.3f}x)"
        lines.append(
            f"| {r['variant']} | {r['budget']} | {r['settings']} | {acc} | {memory} | {flops} "
            f"| {r['images_per_s']:.0f} |"
        )
    atomic_write_text(results_dir / f"{name}.md", "\n".join(lines) + "\n")
