"""Save and load structured models: safetensors weights + config.json carrying the structure spec.

``flyweight.from_pretrained(path)`` returns exactly the saved function: structured layers rebuilt
from the spec, tied weights re-tied, a padded vocabulary's -inf logits restored. Checkpoints are
also marked ``quantization_config = {"quant_method": "flyweight"}`` in config.json, so a plain
``AutoModelForCausalLM.from_pretrained`` goes through flyweight's transformers quantizer hook
(``flyweight.integrations.transformers``, registered by ``import flyweight``) and loads the same
model. In a process that never imported flyweight, transformers only logs "Unknown quantization
type, got flyweight" and builds the dense model: import flyweight first.

The spec (``config.flyweight_structure``: for every replaced module its kind, sizes, bias and the
exact ``settings()`` -- compression, nblocks, rank, SS1 seed, block sizes, hash
coefficients) is written twice: in config.json, which rebuilds the model, and in the safetensors
header, which belongs to the tensors. A loader that finds the two disagreeing, or tensors whose
names/shapes the spec does not produce, refuses with a message saying what differs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from flyweight.convert.surgery import (
    STRUCTURE_KEY,
    get_structure,
    is_linear_like,
    mark_flyweight_checkpoint,
    record_structure,
)
from flyweight.linear import make_linear
from flyweight.utils.io import atomic_path, atomic_write_text

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class StructureMismatchError(ValueError):
    """The checkpoint's structure spec does not describe its tensors."""


def _canonical(spec: Any) -> Any:
    return json.loads(json.dumps(spec, sort_keys=True))


def save_structured(model: nn.Module, path: str | Path) -> None:
    """Write ``path/model.safetensors`` and ``path/config.json`` (HF config + structure spec)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    spec = _canonical(get_structure(model) or {"version": 1, "layers": {}})
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "to_dict"):
        cfg = config.to_dict()
        cfg["architectures"] = [type(model).__name__]
        cfg["flyweight_attn_implementation"] = getattr(config, "_attn_implementation", None)
    else:
        cfg = {"architectures": [type(model).__name__]}
    cfg[STRUCTURE_KEY] = spec
    cfg.update(mark_flyweight_checkpoint(None))

    tied = tied_names(model)
    tensors = {
        name: tensor.detach().to("cpu").contiguous()
        for name, tensor in model.state_dict().items()
        if name not in tied  # a tied weight (lm_head = wte) is stored once
    }
    metadata = {"format": "pt", STRUCTURE_KEY: json.dumps(spec, sort_keys=True), "flyweight_tied": json.dumps(tied)}
    # each file complete or absent: a kill mid-save never leaves a truncated checkpoint under its name
    with atomic_path(path / WEIGHTS_NAME) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    atomic_write_text(path / CONFIG_NAME, json.dumps(cfg, indent=2, sort_keys=True, default=str) + "\n")


def tied_names(model: nn.Module) -> dict[str, str]:
    """{name: name it shares storage with}, for every state_dict entry that repeats an earlier one."""
    tied, seen = {}, {}
    for name, tensor in model.state_dict().items():
        key = (tensor.device, tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if tensor.numel() and key in seen:
            tied[name] = seen[key]
        else:
            seen[key] = name
    return tied


def _first_difference(a: dict, b: dict) -> str:
    la, lb = a.get("layers", {}), b.get("layers", {})
    for name in sorted(set(la) | set(lb)):
        if name not in la:
            return f"layer {name} is in the tensors' spec but not in config.json"
        if name not in lb:
            return f"layer {name} is in config.json but not in the tensors' spec"
        for key in sorted(set(la[name]) | set(lb[name])):
            if la[name].get(key) != lb[name].get(key):
                return f"layer {name}: {key} is {la[name].get(key)!r} in config.json but {lb[name].get(key)!r} in the tensors"
    return "top-level fields differ"


def apply_structure(model: nn.Module, spec: dict[str, Any]) -> nn.Module:
    """Replace the modules named in ``spec`` by freshly built layers of the recorded structure."""
    for name, entry in spec.get("layers", {}).items():
        try:
            old = model.get_submodule(name)
        except AttributeError:
            raise StructureMismatchError(
                f"structure spec names module {name!r}, which {type(model).__name__} does not have"
            ) from None
        if not is_linear_like(old):
            raise StructureMismatchError(f"structure spec names {name!r}, a {type(old).__name__}, not a linear layer")
        new = make_linear(
            entry["kind"], entry["in_features"], entry["out_features"], bias=entry["bias"], **entry["config"]
        )
        built = new.settings()
        if _canonical(built) != _canonical(entry["config"]):
            raise StructureMismatchError(f"layer {name}: spec {entry['config']} rebuilt as {built}")
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    record_structure(model, _canonical(spec.get("layers", {})))
    return model


def _build_skeleton(cfg: dict[str, Any]) -> nn.Module:
    import transformers

    arch = (cfg.get("architectures") or [None])[0]
    model_cls = getattr(transformers, arch, None) if arch else None
    if model_cls is None or "model_type" not in cfg:
        raise ValueError(
            f"config.json names architecture {arch!r}, not a transformers model class; "
            "pass model=<an unconverted instance> to load_structured"
        )
    # quantization_config only routes plain transformers loads through flyweight; apply_structure re-marks it
    fields = {k: v for k, v in cfg.items()
              if k not in (STRUCTURE_KEY, "flyweight_attn_implementation", "quantization_config")}
    config = transformers.AutoConfig.for_model(fields.pop("model_type"), **fields)
    attn = cfg.get("flyweight_attn_implementation") or "sdpa"
    return model_cls._from_config(config, attn_implementation=attn)


def load_structured(
    path: str | Path, *, device: str | torch.device | None = None, model: nn.Module | None = None
) -> nn.Module:
    """Rebuild a model saved by ``save_structured`` (or ``save_pretrained`` of a converted model).

    ``model``: an unconverted instance to load into (for models that are not transformers classes);
    by default the transformers class named in config.json is built from the config.
    """
    path = Path(path)
    config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
    for f in (config_file, weights_file):
        if not f.is_file():
            raise FileNotFoundError(f"load_structured: {f} not found (expected a folder written by save_structured)")
    try:
        cfg = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"load_structured: {config_file} is not valid JSON ({err}); the file is damaged or "
                         "not a flyweight/transformers config.json. Fix: save the model again") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"load_structured: {config_file} holds a JSON {type(cfg).__name__}, not an object")
    spec = _canonical(cfg.get(STRUCTURE_KEY) or {"version": 1, "layers": {}})
    try:
        with safe_open(str(weights_file), framework="pt") as f:
            metadata = f.metadata() or {}
    except Exception as err:  # safetensors raises its own SafetensorError naming no file
        raise ValueError(f"load_structured: {weights_file} is not a readable safetensors file ({err}); it is "
                         "truncated or damaged. Fix: save the model again") from None
    tied: dict[str, str] = json.loads(metadata.get("flyweight_tied", "{}"))
    if STRUCTURE_KEY in metadata:
        saved = _canonical(json.loads(metadata[STRUCTURE_KEY]))
        if saved != spec:
            raise StructureMismatchError(
                f"{config_file}: the structure spec in config.json does not match the one saved with the "
                f"tensors in {weights_file.name} ({_first_difference(spec, saved)}). The config was edited "
                "or belongs to another checkpoint; restore the original config.json."
            )

    if model is None:
        model = _build_skeleton(cfg)
    apply_structure(model, spec)
    load_checked_state(model, weights_file, tied, path)
    restore_padded_vocabulary(model)
    if device is not None:
        model.to(device)
    return model.eval()


def from_pretrained(
    path: str | Path, *, device: str | torch.device | None = None, model: nn.Module | None = None
) -> nn.Module:
    """Any flyweight checkpoint (``save_structured`` or ``save_pretrained`` of a converted / built
    model), rebuilt exactly as saved: structured layers, tied weights, padded vocabulary (-inf logits
    on the padding rows), saved precision; in eval mode. ``model``: an unconverted instance to load
    into, for models that are not transformers classes."""
    return load_structured(path, device=device, model=model)


def load_checked_state(model: nn.Module, weights_file: Path, tied: dict[str, str], path: Path) -> None:
    """Load ``weights_file`` into the rebuilt ``model``, refusing tensors the structure does not produce."""
    try:
        state = load_file(str(weights_file))
    except Exception as err:  # header fine, data cut short
        raise ValueError(f"load_structured: {weights_file} could not be read ({err}); it is truncated or "
                         "damaged. Fix: save the model again") from None
    expected = model.state_dict()
    model_tied = tied_names(model)
    missing = sorted(set(expected) - set(state) - set(model_tied))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs structure {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong:
        raise StructureMismatchError(
            f"{path}: the tensors do not match the structure spec in config.json"
            + (f"\n  missing tensors: {missing[:8]}{' ...' if len(missing) > 8 else ''}" if missing else "")
            + (f"\n  unexpected tensors: {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}" if unexpected else "")
            + (f"\n  shape mismatches: {wrong[:8]}" if wrong else "")
        )
    float_dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(float_dtypes) == 1:
        model.to(float_dtypes.pop())  # keep the saved precision (bit-identical outputs)
    model.load_state_dict(state, strict=False)
    for name, source in tied.items():  # the model's own tying must reproduce what was saved once
        if not torch.equal(model.state_dict()[name], state[source]):
            raise StructureMismatchError(
                f"{path}: {name} was saved tied to {source}, but the rebuilt model does not tie them "
                "(tie_word_embeddings in config.json changed?)"
            )


def restore_padded_vocabulary(model: nn.Module) -> None:
    """A padded vocabulary (config.flyweight_real_vocab_size < vocab_size) gets its -inf head back."""
    from flyweight.convert.vocab import REAL_VOCAB_KEY, install_padded_head

    config = getattr(model, "config", None)
    real = getattr(config, REAL_VOCAB_KEY, None) if config is not None else None
    if real is not None and int(real) < int(config.vocab_size):
        install_padded_head(model, int(real))
