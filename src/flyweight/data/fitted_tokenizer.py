"""A byte-level BPE fitted on a corpus's own train split: ``data.tokenizer=bpe:4096``.

GPT-2's 50,257-token vocabulary makes the embedding most of a small model, so the block linears that
the structured kinds replace would hold few of the parameters. A vocabulary of a few thousand tokens
fitted on the corpus (GPT-2's byte-level scheme, trained with ``tokenizers``) keeps small models
dominated by their blocks. Fitted once per (corpus content, size, recipe) and cached beside the token
cache; the train split only, so nothing of the held-out splits leaks into the vocabulary.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from flyweight.data.corpora import Corpus
from flyweight.data.tokenizer import Tokenizer
from flyweight.utils.io import cache_root

PREFIX = "bpe:"
RECIPE = 1  # bump when the fitting recipe below changes: cached tokenizers then stop matching
SPECIAL = "<|endoftext|>"


def is_fitted_spec(spec) -> bool:
    return str(spec).startswith(PREFIX)


def parse_size(spec: str) -> int:
    text = str(spec)[len(PREFIX):]
    if not text.isdigit() or not 257 <= int(text) <= 65535:
        raise ValueError(f"data.tokenizer={spec!r}: a fitted BPE needs a size from 257 (the 256 bytes + "
                         f"{SPECIAL}) to 65535, e.g. data.tokenizer=bpe:4096")
    return int(text)


def fitted_bpe(corpus: Corpus, spec: str, cache_dir: str | Path | None = None) -> Tokenizer:
    """The corpus's fitted BPE of ``spec`` ("bpe:N"): loaded from the cache, or fitted and cached."""
    from tokenizers import Tokenizer as TkTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    size = parse_size(spec)
    folder = (Path(cache_dir).expanduser() if cache_dir else cache_root() / "tokens") / "tokenizers"
    docs = corpus.documents("train")
    h = hashlib.sha256(corpus.fingerprint.encode())
    for d in docs:  # the train split itself: a different split of the same source is another tokenizer
        h.update(d.encode())
        h.update(b"\0")
    path = folder / f"{corpus.name}-{h.hexdigest()[:16]}-bpe{size}-r{RECIPE}.json"
    if path.exists():
        tok = TkTokenizer.from_file(str(path))
    else:
        tok = TkTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      special_tokens=[SPECIAL], show_progress=False)
        tok.train_from_iterator(docs, trainer=trainer)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tok.save(str(tmp))
        os.replace(tmp, path)  # a killed fit never leaves a half-written tokenizer that looks valid
    fingerprint = hashlib.sha256(tok.to_str().encode()).hexdigest()[:16]
    return Tokenizer(backend=tok, name=f"bpe{size}-{corpus.name}", fingerprint=fingerprint)
