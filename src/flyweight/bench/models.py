"""Model speed benchmark: GPT-2 variants at inference (prefill, KV-cache decode) and training step."""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table
from tqdm.auto import tqdm

from flyweight.bench.layers import write_csv
from flyweight.bench.timing import env_tag, peak_memory_bytes, time_us
from flyweight.utils.device import device_name, resolve_device, synchronize
from flyweight.train.metrics import mfu, peak_flops
from flyweight.utils.dtypes import dtype_named

MODEL_COLUMNS = [
    "device", "torch", "model", "kind", "settings", "params", "dtype", "batch", "seq_len", "compile",
    "prefill_tokens_per_s", "decode_ms_per_token", "train_tokens_per_s", "train_mfu", "train_peak_mem_mb",
    "speedup_prefill", "speedup_decode", "speedup_train",
]

def train_mfu(flops_per_token_fwd: int, tokens_per_s: float, device: torch.device, dtype: torch.dtype):
    """MFU of a training step (the trainer's own function), reported for half-precision GPU runs only."""
    if dtype not in (torch.bfloat16, torch.float16):
        return None
    return mfu(flops_per_token_fwd, tokens_per_s, peak_flops(device))


def _autocast(device: torch.device, dtype: torch.dtype):
    if dtype in (torch.bfloat16, torch.float16):
        return torch.autocast(device.type, dtype=dtype)
    return contextlib.nullcontext()


def prefill_tokens_per_s(model, batch: int, seq_len: int, device, dtype, budget_s=0.3) -> float:
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), device=device)

    def step():
        with torch.no_grad(), _autocast(device, dtype):
            return model(ids, use_cache=False).logits

    return batch * seq_len / (time_us(step, device, budget_s=budget_s) * 1e-6)


def decode_ms_per_token(model, prompt_len: int, new_tokens: int, device, dtype, budget_s=0.3) -> float:
    """Per-token latency of greedy decoding with the KV cache, batch 1 (prefill time subtracted)."""
    prompt = torch.randint(0, model.config.vocab_size, (1, prompt_len), device=device)

    def prefill():
        with torch.no_grad(), _autocast(device, dtype):
            return model(prompt, use_cache=True)

    def generate():
        with torch.no_grad(), _autocast(device, dtype):
            out = model(prompt, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            for _ in range(new_tokens):
                out = model(token, past_key_values=past, use_cache=True)
                past, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
            return token

    total = time_us(generate, device, budget_s=budget_s)
    first = time_us(prefill, device, budget_s=budget_s)
    return max(total - first, 0.0) / new_tokens / 1e3


def train_step(model, batch: int, seq_len: int, device, dtype, compile_: bool = False, budget_s=0.5):
    """(tokens/s, peak memory bytes) of a full AdamW training step."""
    model.train()
    fused = device.type == "cuda"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused) if fused else torch.optim.AdamW(
        model.parameters(), lr=1e-4)
    fwd = torch.compile(model) if compile_ else model
    ids = torch.randint(0, model.config.vocab_size, (batch, seq_len), device=device)

    def step():
        with _autocast(device, dtype):
            loss = fwd(ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    synchronize(device)
    us = time_us(step, device, budget_s=budget_s)
    peak = peak_memory_bytes(step, device)
    model.eval()
    return batch * seq_len / (us * 1e-6), peak


def bench_models(variants: list[dict], size: str, dtype: str, batch: int, seq_len: int, decode_tokens: int,
                 compile_: bool, device: torch.device, model_overrides: dict | None = None,
                 budget_s: float = 0.3) -> list[dict]:
    from flyweight.models.gpt2 import build_gpt2, model_flops_per_token, num_parameters

    torch_dtype = dtype_named(dtype)
    rows = []
    for v in tqdm(variants, desc="models", unit="variant"):
        model = build_gpt2(size, kind=v["kind"], settings=v.get("settings"), dropout=0.0, seed=0,
                           **(model_overrides or {})).to(device)
        model.eval()
        prefill = prefill_tokens_per_s(model, batch, seq_len, device, torch_dtype, budget_s)
        decode = decode_ms_per_token(model, min(seq_len, 128), decode_tokens, device, torch_dtype, budget_s)
        train_tps, peak = train_step(model, batch, seq_len, device, torch_dtype, compile_, budget_s)
        settings = ",".join(f"{k}={x}" for k, x in sorted((v.get("settings") or {}).items())) or "-"
        rows.append({
            "device": device_name(device), "torch": torch.__version__, "model": f"gpt2-{size}", "kind": v["kind"],
            "settings": settings, "params": num_parameters(model), "dtype": dtype, "batch": batch,
            "seq_len": seq_len, "compile": compile_, "prefill_tokens_per_s": prefill, "decode_ms_per_token": decode,
            "train_tokens_per_s": train_tps,
            "train_mfu": train_mfu(model_flops_per_token(model, seq_len), train_tps, device, torch_dtype),
            "train_peak_mem_mb": peak / 2**20,
        })
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
    dense = next((r for r in rows if r["kind"] == "dense"), None)
    for r in rows:
        r["speedup_prefill"] = r["prefill_tokens_per_s"] / dense["prefill_tokens_per_s"] if dense else None
        r["speedup_decode"] = dense["decode_ms_per_token"] / r["decode_ms_per_token"] if dense else None
        r["speedup_train"] = r["train_tokens_per_s"] / dense["train_tokens_per_s"] if dense else None
    return rows


def print_model_rows(rows: list[dict], title: str) -> None:
    table = Table(title=title)
    for c in ("model", "kind", "settings", "params (M)", "prefill tok/s", "decode ms/tok", "train tok/s", "MFU",
              "peak MB", "speedup (prefill/decode/train)"):
        table.add_column(c, justify="left" if c in ("model", "kind", "settings") else "right")
    for r in rows:
        mfu_s = "-" if r["train_mfu"] is None else f"{100 * r['train_mfu']:.1f}%"
        sp = "/".join("-" if r[k] is None else f"{r[k]:.2f}x" for k in ("speedup_prefill", "speedup_decode",
                                                                         "speedup_train"))
        table.add_row(r["model"], r["kind"], r["settings"], f"{r['params'] / 1e6:.1f}",
                      f"{r['prefill_tokens_per_s']:,.0f}", f"{r['decode_ms_per_token']:.2f}",
                      f"{r['train_tokens_per_s']:,.0f}", mfu_s, f"{r['train_peak_mem_mb']:.0f}", sp)
    Console(width=150).print(table)


def run(cfg, out_dir) -> dict:
    """Hydra task ``models``: GPT-2 variants, inference and training speed."""
    from omegaconf import OmegaConf

    c = OmegaConf.to_container(cfg.models, resolve=True)
    device = resolve_device(cfg.device)
    rows = []
    for size in c["sizes"]:
        rows += bench_models(c["variants"], size, c["dtype"], c["batch"], c["seq_len"], c["decode_tokens"],
                             c["compile"], device, c.get("model_overrides"), c.get("budget_s", 0.3))
    print_model_rows(rows, f"GPT-2 variants on {device_name(device)} ({c['dtype']}, batch {c['batch']} x "
                           f"{c['seq_len']} tokens)")
    name = f"models_{env_tag(device, c['dtype'])}.csv"
    write_csv(rows, Path(out_dir) / name, MODEL_COLUMNS)
    if c.get("results_dir"):
        print(f"saved {write_csv(rows, Path(c['results_dir']) / name, MODEL_COLUMNS)}")
    return {"rows": rows}
