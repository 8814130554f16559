"""The LightningDataModule of language modelling: corpus -> cached tokens -> windows -> loaders."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from flyweight.data.corpora import make_corpus
from flyweight.data.fitted_tokenizer import fitted_bpe, is_fitted_spec
from flyweight.data.random_tokens import RANDOM_CORPUS, random_vocabulary, random_windows
from flyweight.data.tokenizer import Tokenizer, load_tokenizer
from flyweight.data.tokens import tokenize_split
from flyweight.data.windows import ResumableLoader, TokenWindows, TrainBatchSampler, eval_batches


@dataclass
class DataConfig:
    corpus: str = "wiki_offline"   # wikitext103 | wikitext2 | wiki_offline | text | english | english_small
                                   # | random (random ids, for throughput; see random_tokens.py)
    path: Any = None               # local folder/files of the corpus (see corpora.py)
    tokenizer: str = "gpt2"        # "gpt2" (registry copy), a local folder, "hub:NAME", or "bpe:N" (a byte-level
                                   # BPE of N tokens fitted on this corpus's train split, cached)
    max_length: int = 1024
    global_batch_size: int = 512   # sequences per optimizer step, all ranks and accumulation together
    micro_batch_size: Any = "auto"  # sequences per forward/backward on one device; auto: the trainer picks
                                   # (a memory probe on CUDA, see flyweight.train.fastpath)
    eval_batch_size: int | None = None
    val_fraction: float = 0.05     # for corpora without splits (by document, seeded)
    test_fraction: float = 0.05
    split_seed: int = 1111
    cache_dir: str | None = None   # default: $FLYWEIGHT_CACHE/tokens or ~/.cache/flyweight/tokens
    num_workers: int = 0
    progress: bool = True


def accumulation(global_batch: int, micro_batch: int, world_size: int) -> int:
    """Gradient-accumulation steps so that world_size x micro_batch x accumulation == global_batch."""
    per_pass = micro_batch * world_size
    if global_batch % per_pass:
        raise ValueError(
            f"data.global_batch_size={global_batch} is not a multiple of data.micro_batch_size={micro_batch} "
            f"x world size {world_size} = {per_pass}; choose sizes so that global = devices x micro x accumulation"
        )
    return global_batch // per_pass


class LMDataModule(L.LightningDataModule):
    def __init__(self, cfg: DataConfig, seed: int = 1111):
        super().__init__()
        self.cfg = cfg
        self.seed = int(seed)
        self.tokenizer: Tokenizer | None = None
        self.windows: dict[str, TokenWindows] = {}
        self.total_micro_batches: int | None = None   # set by the trainer set-up (steps x accumulation)
        self.accumulate = 1

    # ---- data ---------------------------------------------------------------------------------------
    def load(self, splits=("train", "val", "test")) -> LMDataModule:
        """Tokenize (once, cached) and window the requested splits. Idempotent."""
        c = self.cfg
        if c.corpus == RANDOM_CORPUS:
            return self._load_random(splits)
        cache_dir = self.token_cache_dir()
        if self.tokenizer is None:
            self._corpus = make_corpus(c.corpus, c.path, c.val_fraction, c.test_fraction, c.split_seed)
            if is_fitted_spec(c.tokenizer):  # bpe:N, fitted on this corpus's train split
                self.tokenizer = fitted_bpe(self._corpus, c.tokenizer, cache_dir)
            else:
                self.tokenizer = load_tokenizer(c.tokenizer)
        for split in splits:
            if split not in self.windows:
                tokens = tokenize_split(self._corpus, split, self.tokenizer, cache_dir, c.progress)
                self.windows[split] = TokenWindows(tokens, c.max_length)
        return self

    def _load_random(self, splits) -> LMDataModule:
        c = self.cfg
        if self.tokenizer is None:
            self.tokenizer = random_vocabulary(c.tokenizer)
        for split in splits:
            if split not in self.windows:
                self.windows[split] = random_windows(self.tokenizer, split, c.global_batch_size, c.max_length,
                                                     c.split_seed)
        return self

    def token_cache_dir(self) -> str | None:
        """data.cache_dir; for a named corpus given a cache root as data.path, that root's tokens/ (where
        its build and an unpacked artifact put them), so data.path alone finds them."""
        from flyweight.data.sources import RECIPES

        c = self.cfg
        if c.cache_dir is None and c.path and c.corpus in RECIPES:
            return str(Path(c.path).expanduser() / "tokens")
        return c.cache_dir

    def prepare_data(self) -> None:
        self.load(tuple(self.windows) or ("train", "val", "test"))

    def setup(self, stage: str | None = None) -> None:
        self.load(tuple(self.windows) or ("train", "val", "test"))

    @property
    def vocab_size(self) -> int:
        return self.load(()).tokenizer.vocab_size

    def manifest(self) -> dict | None:
        """The corpus manifest (sources, licences, tokens per split) of a named corpus; None for the others."""
        from flyweight.data.sources import RECIPES

        if self.cfg.corpus not in RECIPES:
            return None
        from flyweight.data.manifest import corpus_manifest
        return corpus_manifest(self.cfg.corpus, self.cfg.path)

    def describe(self) -> dict:
        return {s: {"windows": len(w), "tokens": len(w) * w.max_length, "stream_tokens": len(w.tokens)}
                for s, w in self.windows.items()}

    # ---- loaders ------------------------------------------------------------------------------------
    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, 1
        return trainer.global_rank, trainer.world_size

    def _progress(self) -> int:
        t = self.trainer
        return t.global_step * t.accumulate_grad_batches

    def train_dataloader(self) -> DataLoader:
        rank, world = self._rank_world()
        ds = self.windows["train"]
        sampler = TrainBatchSampler(len(ds), self.cfg.micro_batch_size, self.accumulate, world, rank,
                                    self.seed, self.total_micro_batches)
        return ResumableLoader(ds, batch_sampler=sampler, num_workers=self.cfg.num_workers,
                               progress=self._progress if getattr(self, "trainer", None) else None)

    def eval_dataloader(self, split: str) -> DataLoader:
        rank, world = self._rank_world()
        ds = self.windows[split]
        bs = self.cfg.eval_batch_size or self.cfg.micro_batch_size
        # a private generator: a DataLoader iterator draws its base seed from the global torch RNG otherwise,
        # so an evaluation moved the training's dropout stream, and a run resumed from a checkpoint taken just
        # before an evaluation (which it does not repeat) drew other masks than the uninterrupted run
        return DataLoader(ds, batch_sampler=eval_batches(len(ds), bs, rank, world),
                          num_workers=self.cfg.num_workers, generator=torch.Generator().manual_seed(self.seed))

    def val_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val")

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test")
