"""Bridges to other libraries: transformers' loading hook, peft's LoRA, torchao's quantize_."""
