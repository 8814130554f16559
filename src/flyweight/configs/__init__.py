"""Hydra's config package: experiments in YAML, the typed group defaults registered from ``schema``."""

from flyweight.configs.schema import register

register()
