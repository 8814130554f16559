"""LoRA (peft) on top of any structured layer, through peft's custom-module registration.

peft wraps ``nn.Linear`` / ``Conv1D`` itself; a ``StructuredLinear`` is neither, so peft refuses it
unless a LoRA layer class is registered for it. ``StructuredLoraLinear`` is peft's own LoRA linear
(y = base(x) + lora_B(lora_A(dropout(x))) * scaling, the adapter in ordinary dense factors) with the
structured layer as its frozen base:

    from peft import LoraConfig
    from flyweight.integrations.peft import get_peft_model, load_lora
    lora = get_peft_model(model, LoraConfig(r=8, target_modules=["c_attn", "c_fc"]))
    ... train ...; lora.save_pretrained("adapter/")          # the adapter only, as with any peft model
    base = flyweight.from_pretrained("base/"); lora = load_lora(base, "adapter/")

Merging is refused: the sum of a structured matrix and a dense low-rank delta is not of the kind any
more (keep the adapter separate, or convert the layer to "dense" first).
"""

from __future__ import annotations

from typing import Any

from peft import LoraConfig, PeftModel
from peft import get_peft_model as _peft_get_peft_model
from peft.tuners.lora import Linear as _LoraLinear

from flyweight.linear import StructuredLinear


class StructuredLoraLinear(_LoraLinear):
    """peft's LoRA linear around a flyweight ``StructuredLinear`` (never merged into it)."""

    def merge(self, safe_merge: bool = False, adapter_names=None) -> None:
        raise NotImplementedError(
            f"cannot merge a LoRA adapter into a {type(self.base_layer).__name__}: base + B A is not a "
            f"{self.base_layer.kind!r} matrix. Keep the adapter unmerged, or convert the layer with "
            "DenseConfig (init='project') before merging."
        )

    def unmerge(self) -> None:
        return None  # nothing is ever merged


def register_structured_lora(config: LoraConfig) -> LoraConfig:
    """Register ``StructuredLoraLinear`` for every ``StructuredLinear`` in ``config`` (in place)."""
    config._register_custom_module({StructuredLinear: StructuredLoraLinear})
    return config


def get_peft_model(model, config: LoraConfig, **kwargs: Any):
    """``peft.get_peft_model`` that also wraps structured layers named by ``config.target_modules``."""
    return _peft_get_peft_model(model, register_structured_lora(config), **kwargs)


def load_lora(model, adapter_path, **kwargs: Any) -> PeftModel:
    """``PeftModel.from_pretrained`` of an adapter saved from a structured model (the registration
    is not saved with the adapter, so it is redone here)."""
    config = register_structured_lora(LoraConfig.from_pretrained(str(adapter_path)))
    return PeftModel.from_pretrained(model, str(adapter_path), config=config, **kwargs)
