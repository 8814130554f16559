"""The comparison report: train every variant under one budget, evaluate, time, and write the report.

Each variant trains through the one trainer (``flyweight.train.lm.train_lm``) with the same data,
optimiser, schedule and token budget (only ``model.kind`` and ``model.settings`` differ), is evaluated on
the same held-out split along the way (perplexity vs tokens and vs training time) and at the end, and
its final model is timed at inference. Results land in ``<dir>/variants/<name>/``; a variant whose
``result.json`` exists is not run again, and one cut off mid-training (a kill, or the command's
``compare.budget_s``) resumes from its last checkpoint -- so the same command, re-run, continues where
it stopped, and the report merges every variant once all are done.

The whole config is checked before any work (``check_config``): unknown keys, kinds and kind settings
are errors that name the valid ones.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import inspect
import json
import os
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

from flyweight.bench.models import decode_ms_per_token, prefill_tokens_per_s
from flyweight.bench.report import write_report
from flyweight.utils.config_dict import plain_config
from flyweight.utils.device import device_name, resolve_device
from flyweight.utils.dtypes import LOW_PRECISION, dtype_named
from flyweight.utils.io import atomic_write_json, atomic_write_text, read_csv, remove_stale_temps

COMPARE_KEYS = {
    "dir": "output folder (null: runs/compare/<hash of every setting that changes a result>)",
    "variants": "list of {name, kind, settings}",
    "only": "names of the variants to run (null: all)",
    "budget": "{steps | tokens}: the shared training budget per variant",
    "budget_s": "seconds this command may spend (null: no limit); re-run the command to continue",
    "reserve_s": "seconds of budget_s kept for evaluation and timing after a variant's training",
    "evals": "held-out evaluations along each variant's training (perplexity-vs-time curve points)",
    "inference": "{batch, seq_len, prompt_len, decode_tokens, dtype, budget_s, repeats}",
    "keep_checkpoints": "keep each variant's checkpoints, model and logs (default: only what the report needs)",
    "timing": "training tokens/s from: interleaved (round-robin re-timing, default on CPU) | log (default on GPU)",
    "progress_bar": "per-variant training progress bars",
    "extra_eval": "optional {corpus, path}: a second held-out corpus's test split (e.g. WikiText-103)",
}
VARIANT_KEYS = ("name", "kind", "settings")
INFERENCE_KEYS = ("batch", "seq_len", "prompt_len", "decode_tokens", "dtype", "budget_s", "repeats")
BUDGET_KEYS = ("steps", "tokens")
# settings that change how the command runs but not any number in the report
NOT_IN_HASH = ("dir", "only", "budget_s", "reserve_s", "keep_checkpoints", "progress_bar")
KEEP = ("result.json", "steps.csv", "evals.csv", "speeds.json")  # what the report reads from a finished variant


# ---- the config, checked as a whole before any work ------------------------------------------------
def _kind_settings(kind: str) -> list[str]:
    from flyweight.linear import LINEAR_KINDS

    params = inspect.signature(LINEAR_KINDS[kind].__init__).parameters
    return [p for p in params if p not in ("self", "in_features", "out_features", "bias", "device", "dtype")]


def _unknown(got, valid, where: str) -> None:
    bad = sorted(set(got) - set(valid))
    if bad:
        raise ValueError(f"{where}: unknown key(s) {bad}; valid keys: {', '.join(valid)}")


def check_config(cfg: dict) -> list[dict]:
    """The variants this command runs, after checking every compare setting; raises naming the fix."""
    from flyweight.linear import LINEAR_KINDS

    c = cfg.get("compare") or {}
    _unknown(c, COMPARE_KEYS, "compare")
    _unknown(c.get("budget") or {}, BUDGET_KEYS, "compare.budget")
    _unknown(c.get("inference") or {}, INFERENCE_KEYS, "compare.inference")
    kinds = ", ".join(sorted(LINEAR_KINDS))
    model = cfg.get("model") or {}
    if model.get("kind") not in LINEAR_KINDS:
        raise ValueError(f"model.kind={model.get('kind')!r} is not a linear kind; valid kinds: {kinds}. "
                         "In a comparison each variant sets its own kind (compare.variants).")
    given = {**dict(model.get("settings") or {}), **dict(model.get("linear") or {})}
    if model.get("kind") != "dense" or given:
        raise ValueError(f"model.kind={model.get('kind')!r} / model.settings={given} would be ignored: "
                         "a comparison sets the kind per variant. Pick variants with compare.only=[dense,ss1-r4] "
                         "or change compare.variants (e.g. compare.variants.1.settings.compression=8)")
    variants = c.get("variants") or []
    if not variants:
        raise ValueError("compare.variants is empty; e.g. compare.variants=[{name: dense, kind: dense}]")
    names = []
    for i, v in enumerate(variants):
        _unknown(v, VARIANT_KEYS, f"compare.variants.{i}")
        if v.get("kind") not in LINEAR_KINDS:
            raise ValueError(f"compare.variants.{i}.kind={v.get('kind')!r}; valid kinds: {kinds}")
        valid = _kind_settings(v["kind"])
        bad = sorted(set(v.get("settings") or {}) - set(valid))
        if bad:
            raise ValueError(f"compare.variants.{i}.settings: {bad} not a setting of {v['kind']}; valid: {', '.join(valid)}")
        if not v.get("name"):
            raise ValueError(f"compare.variants.{i} has no name; e.g. {{name: {v['kind']}, kind: {v['kind']}}}")
        names.append(v["name"])
    if len(set(names)) != len(names):
        raise ValueError(f"compare.variants: names must be unique, got {names}")
    only = c.get("only")
    if only:
        only = [only] if isinstance(only, str) else list(only)
        _unknown(only, names, "compare.only (variant names)")
        variants = [v for v in variants if v["name"] in only]
    for key in ("budget_s", "reserve_s"):
        if c.get(key) is not None and float(c[key]) < 0:
            raise ValueError(f"compare.{key} must be >= 0 seconds, got {c[key]}")
    if int(c.get("evals") or 0) < 0:
        raise ValueError(f"compare.evals must be >= 0, got {c.get('evals')}")
    budget_steps(cfg)  # its own checks
    return variants


def compare_dir(cfg: dict) -> Path:
    """``compare.dir``, or a folder named after a hash of everything that changes a result."""
    c = cfg["compare"]
    if c.get("dir"):
        return Path(c["dir"])
    defining = {k: cfg.get(k) for k in ("model", "data", "optim", "trainer", "seed", "device")}
    defining["trainer"] = {k: v for k, v in (defining["trainer"] or {}).items()
                           if k not in ("progress_bar", "max_time", "label", "resume")}
    defining["compare"] = {k: v for k, v in c.items() if k not in NOT_IN_HASH}
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
        return max(1, int(float(budget["tokens"])) // per_step)
    return None


def variant_config(cfg: dict, variant: dict, steps: int | None, max_time: float | None = None) -> dict:
    v = copy.deepcopy(cfg)
    v["model"]["kind"] = variant["kind"]
    v["model"]["settings"] = variant.get("settings") or {}
    t = v["trainer"]
    t["resume"] = "auto"
    t["progress_bar"] = bool(cfg["compare"].get("progress_bar", True))
    t["label"] = variant["name"]
    t["max_time"] = max_time
    if steps is not None:
        t["max_steps"], t["max_epochs"], t["stop_at_step"] = steps, None, None
    evals = int(cfg["compare"].get("evals") or 0)
    total = steps or t.get("max_steps")
    if evals and total:
        t["val_every_n_steps"] = max(1, int(total) // evals)
    if not t.get("ckpt_every_n_steps") and (max_time or cfg["compare"].get("budget_s")):
        t["ckpt_every_n_steps"] = max(1, int(total or 1000) // 4)  # a kill mid-variant loses at most a quarter
    return v


# ---- what the report reads back from a variant's files ----------------------------------------------
def read_csv_rows(path: Path) -> list[dict]:
    return read_csv(path) if path.exists() else []


def read_steps(steps_csv: Path) -> dict[int, dict]:
    """Per-step log rows; a resumed run logs some steps again: the later row wins."""
    return {int(row["step"]): row for row in read_csv_rows(steps_csv)}


def read_evals(evals_csv: Path) -> list[dict]:
    """Held-out evaluations during training (step, tokens, train_seconds, ppl); the later row of a step wins."""
    by_step = {int(r["step"]): r for r in read_csv_rows(evals_csv)}
    return [{"step": s, "tokens": int(r["tokens"]), "seconds": float(r["train_seconds"]), "ppl": float(r["ppl"])}
            for s, r in sorted(by_step.items())]


def loss_curve(steps: dict[int, dict], tokens_per_step: int) -> list[tuple[int, float]]:
    return [(s * tokens_per_step, float(r["loss"])) for s, r in sorted(steps.items())]


def spread(values: list[float]) -> dict:
    """Median and quartiles (the report's timing statistic: robust to a few disturbed repeats)."""
    values = sorted(v for v in values if v == v)
    if not values:
        return {"median": None, "p25": None, "p75": None, "n": 0}
    if len(values) == 1:
        return {"median": values[0], "p25": values[0], "p75": values[0], "n": 1}
    q = statistics.quantiles(values, n=4, method="inclusive")
    return {"median": statistics.median(values), "p25": q[0], "p75": q[2], "n": len(values)}


def train_rates(steps: dict[int, dict], skip: int = 2) -> list[float]:
    """Per-step training tokens/s, without the first ``skip`` steps (warm-up, compilation)."""
    rows = [r for s, r in sorted(steps.items()) if s > skip and r.get("tokens_per_s")]
    return [float(r["tokens_per_s"]) for r in rows if float(r["tokens_per_s"]) == float(r["tokens_per_s"])]


def block_parameters(model) -> int:
    """Parameters inside the transformer blocks (linears, biases, norms); embedding and head excluded."""
    return sum(p.numel() for p in model.transformer.h.parameters())


def _train_step_fn(model, cfg: dict, device: torch.device, micro: int):
    """One AdamW training step of ``model`` on a fixed random batch (the trainer's loss and optimizer)."""
    from flyweight.train.metrics import NextTokenNLL
    from flyweight.train.optim import OptimConfig, make_optimizer

    seq = int(cfg["data"]["max_length"])
    ids = torch.randint(0, model.get_input_embeddings().num_embeddings, (micro, seq), device=device)
    nll = NextTokenNLL(model)
    opt = make_optimizer(model, OptimConfig(lr=1e-6, fused=device.type == "cuda"))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def step():
        with autocast:
            loss = nll(ids) / ids.numel()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step, micro * seq


def measure_speeds(model_dirs: dict[str, Path], micro: dict[str, int], cfg: dict, device: torch.device,
                   train: bool) -> dict[str, dict]:
    """Inference (and, with ``train``, training) speed of every final model, measured round-robin:
    each repeat times every variant once, so a change of machine load hits all variants alike instead of
    whichever happened to run then. Medians and quartiles over the repeats."""
    from flyweight.utils.device import synchronize
    from flyweight.models.gpt2 import load_structured

    inf = cfg["compare"]["inference"]
    dtype = dtype_named(inf.get("dtype", "float32"), "inference dtype", LOW_PRECISION)
    seq_len = int(inf.get("seq_len") or cfg["data"]["max_length"])
    budget = float(inf.get("budget_s", 0.3))
    repeats = max(1, int(inf.get("repeats") or 3))
    samples = {n: {"infer": [], "decode": [], "train": []} for n in model_dirs}
    models = {n: load_structured(d, device=device) for n, d in model_dirs.items()}
    steps = {n: _train_step_fn(m.train(), cfg, device, micro[n]) for n, m in models.items()} if train else {}
    for n, (fn, _) in steps.items():
        fn()  # warm-up: first-call allocations, optimizer state
    for _ in range(repeats):
        for n, model in models.items():
            if train:
                fn, tokens = steps[n]
                model.train()
                synchronize(device)
                t0 = time.perf_counter()
                k = 0
                while True:  # whole steps, at least two, for about the inference budget
                    fn()
                    k += 1
                    synchronize(device)
                    if k >= 2 and time.perf_counter() - t0 >= budget:
                        break
                samples[n]["train"].append(k * tokens / (time.perf_counter() - t0))
            model.eval()
            samples[n]["infer"].append(prefill_tokens_per_s(model, int(inf["batch"]), seq_len, device, dtype, budget))
            samples[n]["decode"].append(decode_ms_per_token(model, int(inf["prompt_len"]), int(inf["decode_tokens"]),
                                                            device, dtype, budget))
    return {n: {k: spread(v) for k, v in s.items()} for n, s in samples.items()}


def extra_eval(cfg: dict, vcfg: dict, vdir: Path) -> dict | None:
    """compare.extra_eval={corpus, path}: the final model's perplexity on that corpus's test split too
    (e.g. WikiText-103 from a local folder), with the same tokenizer and window length."""
    spec = cfg["compare"].get("extra_eval") or {}
    if not spec.get("corpus"):
        return None
    from flyweight.train.lm import eval_lm

    ecfg = copy.deepcopy(vcfg)
    ecfg["data"].update({"corpus": spec["corpus"], "path": spec.get("path")})
    ecfg.update({"mode": "eval", "ckpt": str(vdir / "model")})
    ecfg["trainer"]["eval_test"] = True
    res = eval_lm(ecfg, vdir / "extra_eval")
    return {"corpus": spec["corpus"], "test_ppl": float(res["test"]["ppl"]), "test_tokens": int(res["test"]["tokens"])}


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def _atomic_json(path: Path, data: dict) -> None:
    atomic_write_json(path, data, indent=2)  # beside the target, fsynced, renamed: complete or absent


def _read_result(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        print(f"[compare] {path} is unreadable ({type(err).__name__}: {err}); computing it again")
        return None
    if not isinstance(data, dict):
        print(f"[compare] {path} holds a {type(data).__name__}, not a result; computing it again")
        return None
    return data


def prune(vdir: Path, keep: tuple[str, ...] = ()) -> None:
    """Delete everything of a finished variant except what the report reads (``KEEP``, and ``keep``)."""
    for p in vdir.iterdir():
        if p.name in KEEP or p.name in keep:
            continue
        shutil.rmtree(p) if p.is_dir() else p.unlink()


def run_variant(cfg: dict, variant: dict, vdir: Path, steps: int | None, device: torch.device,
                max_time: float | None) -> dict | None:
    """The variant's report row; None when the time budget stopped it (its checkpoint is kept)."""
    from flyweight.train.lm import train_lm

    done = vdir / "result.json"
    remove_stale_temps(vdir)  # a killed write's result.json.<host>-<pid>.<random>.tmp
    if done.exists():
        row = _read_result(done)
        if row is not None:
            print(f"[compare] {variant['name']}: done earlier, reusing {done}")
            return row
    vcfg = variant_config(cfg, variant, steps, max_time)
    vdir.mkdir(parents=True, exist_ok=True)
    load_before = _load()
    res = train_lm(vcfg, vdir)
    if res is None:  # a non-zero rank under DDP
        return {}
    if not res.get("complete", True):
        return None
    tokens_per_step = int(cfg["data"]["global_batch_size"]) * int(cfg["data"]["max_length"])
    steps_log = read_steps(vdir / "steps.csv")
    evals = read_evals(vdir / "evals.csv")
    final = {"step": int(res["steps"]), "tokens": int(res["tokens_trained"]), "seconds": float(res["train_seconds"]),
             "ppl": float(res["val"]["ppl"])}
    if not evals or evals[-1]["step"] != final["step"]:
        evals.append(final)
    settings = variant.get("settings") or {}
    mfus = [float(r["mfu"]) for s, r in steps_log.items() if s > 2 and r.get("mfu")]
    from flyweight.models.gpt2 import load_structured

    block_params = block_parameters(load_structured(vdir / "model"))
    extra = extra_eval(cfg, vcfg, vdir)
    row = {
        "variant": variant["name"], "kind": variant["kind"],
        "settings": ",".join(f"{k}={x}" for k, x in sorted(settings.items())) or "-",
        "params": int(res["params"]), "block_params": block_params,
        "flops_per_token": int(res["flops_per_token_fwd"]),
        "val_ppl": final["ppl"], "val_tokens": int(res["val"]["tokens"]),
        "test_ppl": float(res["test"]["ppl"]) if "test" in res else None,
        "train_tokens_per_s_logged": spread(train_rates(steps_log)),
        "train_mfu": statistics.median(mfus) if mfus else None,
        "extra_eval": extra,
        "peak_train_memory_bytes": res.get("peak_train_memory_bytes"),
        "weight_bytes": int(res["params"]) * 4,
        "train_tokens": int(res["tokens_trained"]), "train_steps": int(res["steps"]),
        "train_seconds": final["seconds"], "compile_seconds": res.get("compile_seconds"),
        "micro_batch_size": res.get("micro_batch_size"), "accumulation": res.get("accumulation"),
        "fast_path": {k: res.get(k) for k in ("compile", "fused_loss", "attention", "precision")},
        "corpus": res["corpus"], "split": "val", "splits": res.get("splits"),
        "device": device_name(device), "load_before": load_before, "load_after": _load(),
        "evals": evals, "curve": loss_curve(steps_log, tokens_per_step),
    }
    _atomic_json(done, row)
    if not cfg["compare"].get("keep_checkpoints"):
        prune(vdir, keep=("model",))  # the model until the speeds are measured (see run)
    return row


def attach_speeds(rows: list[dict], root: Path, cfg: dict, device: torch.device) -> list[dict]:
    """Every row's speeds: measured round-robin on the final models once all variants are trained (saved
    as ``speeds.json``, so a re-run reuses them), then the models are deleted unless keep_checkpoints.
    Training tokens/s comes from that round-robin on a CPU (a shared machine's load drifts between
    variants trained minutes apart) and from the training log on a GPU (the real fast path, compiled)."""
    c = cfg["compare"]
    timing = c.get("timing") or ("interleaved" if device.type == "cpu" else "log")
    path = root / "speeds.json"
    names = [r["variant"] for r in rows]
    speeds = _read_result(path) if path.exists() else None
    if not speeds or sorted(speeds) != sorted(names):
        dirs = {n: root / "variants" / n / "model" for n in names}
        missing = [n for n, d in dirs.items() if not d.exists()]
        if missing:
            raise FileNotFoundError(f"the final models of {missing} are gone but {path} is missing: delete "
                                    f"their variants/<name>/result.json to train them again")
        micro = {r["variant"]: int(r.get("micro_batch_size") or 1) for r in rows}
        print(f"[compare] timing {', '.join(names)} round-robin ({c['inference'].get('repeats')} repeats)", flush=True)
        speeds = measure_speeds(dirs, micro, cfg, device, train=timing == "interleaved")
        _atomic_json(path, speeds)
    if not c.get("keep_checkpoints"):
        for n in names:
            shutil.rmtree(root / "variants" / n / "model", ignore_errors=True)
    for r in rows:
        s = speeds[r["variant"]]
        r["infer_tokens_per_s"], r["decode_ms_per_token"] = s["infer"], s["decode"]
        r["train_tokens_per_s"] = s["train"] if s["train"].get("median") else r["train_tokens_per_s_logged"]
        r["train_timing"] = "round-robin re-timing of the final models" if s["train"].get("median") else "training log"
    return rows


def run(cfg, out_dir) -> dict:
    """Hydra task ``compare``."""
    plain = plain_config(cfg)
    variants = check_config(plain)  # before any work
    c = plain["compare"]
    device = resolve_device(plain.get("device", "auto"))
    root = compare_dir(plain)
    root.mkdir(parents=True, exist_ok=True)
    from omegaconf import OmegaConf

    remove_stale_temps(root)
    atomic_write_text(root / "resolved_config.yaml", OmegaConf.to_yaml(OmegaConf.create(plain)))
    steps = budget_steps(plain)
    deadline = time.monotonic() + float(c["budget_s"]) if c.get("budget_s") else None
    reserve = float(c.get("reserve_s") or 0)
    command = " ".join(shlex.quote(a) for a in [Path(sys.argv[0]).name, *sys.argv[1:]])
    print(f"[compare] {len(variants)} variants -> {root} (re-run the same command to resume)")
    rows, pending, trained = [], [], False
    for i, v in enumerate(variants, 1):
        max_time = None
        if deadline is not None and not (root / "variants" / v["name"] / "result.json").exists():
            max_time = deadline - time.monotonic() - reserve
            if max_time <= 0 and trained:
                pending.append(v["name"])
                continue
            max_time = max(max_time, 1e-9)  # every command trains at least one step, so re-runs always progress
            trained = True
        print(f"[compare] variant {i}/{len(variants)}: {v['name']} ({v['kind']} {v.get('settings') or ''})", flush=True)
        row = run_variant(plain, v, root / "variants" / v["name"], steps, device, max_time)
        if row is None:
            pending.append(v["name"])
        elif row:
            rows.append(row)
    if pending:
        print(f"[compare] compare.budget_s={c.get('budget_s')} spent; not finished: {', '.join(pending)} "
              f"(checkpoints kept). Run the same command again to continue:\n  {command}")
        return {"dir": str(root), "complete": False, "pending": pending, "done": [r["variant"] for r in rows]}
    if not rows:  # non-zero DDP rank
        return {"dir": str(root), "complete": True, "rows": []}
    rows = attach_speeds(rows, root, plain, device)
    meta = {"command": command, "config": plain, "device": device}
    paths = write_report(rows, root, meta)
    print(paths["report"].read_text())
    print(f"[compare] report: {paths['report']}")
    return {"dir": str(root), "complete": True, "rows": rows, "plot_series": paths["series"]}
