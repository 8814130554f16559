"""The comparison report: train every variant under one budget, evaluate, time, and write the report.

Each variant trains with the same data, optimiser, schedule and token budget (only ``model.kind`` and
``model.linear`` differ), is evaluated on the same held-out split, and its saved model is timed at
inference. Results land in ``<dir>/variants/<name>/``; a variant whose ``result.json`` exists is not
run again, and one cut off mid-training resumes from its last checkpoint -- so re-running the same
command after an interruption continues where it stopped.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import json
import shlex
import sys
from pathlib import Path

import torch

from flyweight.bench.models import decode_ms_per_token, prefill_tokens_per_s
from flyweight.bench.report import write_report
from flyweight.bench.timing import device_name, resolve_device


def _plain(cfg) -> dict:
    if isinstance(cfg, dict):
        return copy.deepcopy(cfg)
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def compare_dir(cfg: dict) -> Path:
    """``compare.dir``, or a folder named after a hash of everything that defines the comparison."""
    c = cfg["compare"]
    if c.get("dir"):
        return Path(c["dir"])
    defining = {k: cfg.get(k) for k in ("model", "data", "optim", "trainer", "seed", "device")}
    defining["compare"] = {k: c.get(k) for k in ("variants", "budget")}
    digest = hashlib.sha256(json.dumps(defining, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return Path("runs") / "compare" / digest


def budget_steps(cfg: dict) -> int | None:
    """Optimizer steps for the shared budget: compare.budget.steps, or .tokens converted to steps."""
    budget = cfg["compare"].get("budget") or {}
    if budget.get("steps") and budget.get("tokens"):
        raise ValueError("compare.budget: give steps or tokens, not both")
    if budget.get("steps"):
        return int(budget["steps"])
    if budget.get("tokens"):
        per_step = int(cfg["data"]["global_batch_size"]) * int(cfg["data"]["max_length"])
        return max(1, int(budget["tokens"]) // per_step)
    return None


def variant_config(cfg: dict, variant: dict, steps: int | None) -> dict:
    v = copy.deepcopy(cfg)
    v["model"]["kind"] = variant["kind"]
    v["model"]["linear"] = variant.get("linear") or None
    v["trainer"]["resume"] = "auto"
    v["trainer"]["progress_bar"] = bool(cfg["compare"].get("progress_bar", True))
    if steps is not None:
        v["trainer"]["max_steps"] = steps
        v["trainer"]["max_epochs"] = None
        v["trainer"]["stop_at_step"] = None
    return v


def read_steps(steps_csv: Path) -> dict[int, dict]:
    """Per-step log rows; a resumed run logs some steps again: the later row wins."""
    if not steps_csv.exists():
        return {}
    with open(steps_csv, newline="") as f:
        return {int(row["step"]): row for row in csv.DictReader(f)}


def loss_curve(steps: dict[int, dict], tokens_per_step: int) -> list[tuple[int, float]]:
    return [(s * tokens_per_step, float(r["loss"])) for s, r in sorted(steps.items())]


def median_tokens_per_s(steps: dict[int, dict]) -> float | None:
    """Training throughput as the median of the logged per-step rates (robust to resume and warm-up)."""
    rates = sorted(float(r["tokens_per_s"]) for r in steps.values() if r.get("tokens_per_s"))
    return rates[len(rates) // 2] if rates else None


def measure_inference(model_dir: Path, cfg: dict, device: torch.device) -> dict:
    from flyweight.models.gpt2 import load_structured

    inf = cfg["compare"]["inference"]
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[inf.get("dtype", "float32")]
    model = load_structured(model_dir, device=device).eval()
    seq_len = int(inf.get("seq_len") or cfg["data"]["max_length"])
    budget = float(inf.get("budget_s", 0.3))
    prefill = prefill_tokens_per_s(model, int(inf["batch"]), seq_len, device, dtype, budget)
    decode = decode_ms_per_token(model, int(inf["prompt_len"]), int(inf["decode_tokens"]), device, dtype, budget)
    return {"infer_tokens_per_s": prefill, "decode_ms_per_token": decode}


def run_variant(cfg: dict, variant: dict, vdir: Path, steps: int | None, device: torch.device) -> dict:
    from flyweight.train.lm import train_lm

    done = vdir / "result.json"
    if done.exists():
        print(f"[compare] {variant['name']}: done earlier, reusing {done}")
        return json.loads(done.read_text())
    vcfg = variant_config(cfg, variant, steps)
    vdir.mkdir(parents=True, exist_ok=True)
    res = train_lm(vcfg, vdir)
    if res is None:  # a non-zero rank under DDP
        return {}
    tokens_per_step = int(cfg["data"]["global_batch_size"]) * int(cfg["data"]["max_length"])
    steps_log = read_steps(vdir / "steps.csv")
    linear = variant.get("linear") or {}
    row = {
        "variant": variant["name"], "kind": variant["kind"],
        "settings": ",".join(f"{k}={x}" for k, x in sorted(linear.items())) or "-",
        "params": int(res["params"]), "flops_per_token": int(res["flops_per_token_fwd"]),
        "val_ppl": float(res["val"]["ppl"]),
        "train_tokens_per_s": median_tokens_per_s(steps_log),
        "train_tokens": int(res["tokens_trained"]), "train_steps": int(res["steps"]),
        "train_seconds": float(res["train_time_s"]), "corpus": res["corpus"], "split": "val",
        "device": device_name(device),
        **measure_inference(vdir / "model", cfg, device),
        "curve": loss_curve(steps_log, tokens_per_step),
    }
    done.write_text(json.dumps(row, indent=2))
    return row


def run(cfg, out_dir) -> dict:
    """Hydra task ``compare``."""
    from tqdm.auto import tqdm

    plain = _plain(cfg)
    variants = plain["compare"]["variants"]
    names = [v["name"] for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"compare.variants: names must be unique, got {names}")
    device = resolve_device(plain.get("device", "auto"))
    root = compare_dir(plain)
    root.mkdir(parents=True, exist_ok=True)
    from omegaconf import OmegaConf

    (root / "resolved_config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(plain)))
    steps = budget_steps(plain)
    print(f"[compare] {len(variants)} variants -> {root} (re-run the same command to resume)")
    rows = []
    bar = tqdm(variants, desc="compare", unit="variant")
    for v in bar:
        bar.set_postfix_str(v["name"])
        rows.append(run_variant(plain, v, root / "variants" / v["name"], steps, device))
    dense = next((r for r in rows if r["kind"] == "dense"), None)
    for r in rows:
        r["speedup_vs_dense"] = r["infer_tokens_per_s"] / dense["infer_tokens_per_s"] if dense else float("nan")
    curves = {r["variant"]: r.pop("curve") for r in rows}
    first = rows[0]
    meta = {
        "corpus": first["corpus"], "evaluated on": "validation split (held out, never trained on)",
        "budget": f"{first['train_steps']} steps = {first['train_tokens']:,} tokens per variant",
        "device": first["device"], "inference": f"batch {plain['compare']['inference']['batch']} prefill, "
                                                f"{plain['compare']['inference'].get('dtype', 'float32')}",
        "seed": plain.get("seed"),
    }
    command = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])
    paths = write_report(rows, curves, root, meta, command)
    print(paths["report"].read_text())
    print(f"[compare] report: {paths['report']}")
    return {"dir": str(root), "rows": rows, "plot_series": paths["series"]}
