"""A transformers quantizer-style hook: plain ``from_pretrained`` of a flyweight checkpoint works.

flyweight checkpoints carry ``quantization_config = {"quant_method": "flyweight"}``. transformers
looks the method up among registered quantizers and calls ours around its own weight loading:

- before the weights load, the structured modules named in ``config.flyweight_structure`` replace
  the dense ones (``apply_structure``), so no converted layer is re-initialised as dense;
- after, the checkpoint's tensors are loaded again through flyweight's checked loader (SS1's stored
  layout hooks, tied weights, every name and shape checked) and a padded vocabulary gets its -inf
  head back; then the model is an ordinary (not quantized) transformers model again.

Registered by ``import flyweight``. Without it transformers cannot know the method: it logs
"Unknown quantization type, got flyweight" and builds the dense model, which is why
``flyweight.from_pretrained`` is the documented way to load.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers.quantizers import HfQuantizer
from transformers.quantizers.auto import (
    AUTO_QUANTIZATION_CONFIG_MAPPING,
    AUTO_QUANTIZER_MAPPING,
    register_quantization_config,
    register_quantizer,
)
from transformers.utils.quantization_config import QuantizationConfigMixin

from flyweight.convert.surgery import QUANT_METHOD, STRUCTURE_KEY, mark_flyweight_checkpoint


class FlyweightLoadConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of a flyweight checkpoint: only marks it; nothing is quantized."""

    def __init__(self, loader: str = "flyweight.from_pretrained", **kwargs):
        self.quant_method = QUANT_METHOD
        self.loader = loader

    def to_dict(self):
        return {"quant_method": QUANT_METHOD, "loader": self.loader}


class FlyweightHfQuantizer(HfQuantizer):
    """Rebuilds the structure before transformers loads the weights, reloads them checked after."""

    requires_calibration = False

    def __init__(self, quantization_config, **kwargs):
        super().__init__(quantization_config, **kwargs)
        self.checkpoint_files: list[str] = []

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        from flyweight.convert.checkpoint import apply_structure

        self.checkpoint_files = list(checkpoint_files or [])
        spec = getattr(model.config, STRUCTURE_KEY, None) or {"layers": {}}
        spec = json.loads(json.dumps(spec))
        apply_structure(model, spec)
        # transformers' own init must not touch the new layers (their weights come from the checkpoint)
        # nor their parents (GPT-2's init reads ``parent.c_proj.weight``, which a structured layer lacks)
        for name in spec.get("layers", {}):
            parent, _, _ = name.rpartition(".")
            for module_name in (name, parent):
                module = model.get_submodule(module_name) if module_name else model
                if module is not model:
                    module._is_hf_initialized = True
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        from safetensors import safe_open

        from flyweight.convert.checkpoint import load_checked_state, restore_padded_vocabulary

        files = [Path(f) for f in self.checkpoint_files]
        if len(files) != 1 or files[0].suffix != ".safetensors":
            raise ValueError(
                f"flyweight checkpoints are one model.safetensors file, transformers found {files}; "
                "load it with flyweight.from_pretrained(path)"
            )
        with safe_open(str(files[0]), framework="pt") as f:
            tied = json.loads((f.metadata() or {}).get("flyweight_tied", "{}"))
        dtype = next(iter(model.parameters())).dtype
        load_checked_state(model, files[0], tied, files[0].parent)
        model.to(dtype)  # transformers' dtype= choice stands (the checked loader keeps the saved one)
        restore_padded_vocabulary(model)
        # nothing is quantized: make it an ordinary model again (``.half()``, training, saving)
        for attr in ("hf_quantizer", "quantization_method"):
            if hasattr(model, attr):
                delattr(model, attr)
        model.is_quantized = False
        model.config._is_quantized = False
        mark_flyweight_checkpoint(model.config)
        return model

    @property
    def is_serializable(self):
        return True

    @property
    def is_trainable(self):
        return True


def register() -> None:
    """Register the config and quantizer with transformers (idempotent)."""
    if QUANT_METHOD not in AUTO_QUANTIZATION_CONFIG_MAPPING:
        register_quantization_config(QUANT_METHOD)(FlyweightLoadConfig)
    if QUANT_METHOD not in AUTO_QUANTIZER_MAPPING:
        register_quantizer(QUANT_METHOD)(FlyweightHfQuantizer)


register()
