"""Corpora, tokenizers and datasets."""
