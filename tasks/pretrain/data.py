"""The language-model data source of the training loop, and the n-gram baselines its losses are read against.

`LMData` hands the loop (tasks/pretrain/loop.py) training batches of token windows from the tokenize
stage's packed shards, validation batches, and its position for checkpoints. The baselines are what a
model without context (unigram) or with one token of context (bigram) reaches on the val split when fit
on train, in nats per token like the loss. numpy at import time; torch only inside the loader.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.errors import ConfigError
from tasks.core.token_shards import (
    ReplayError,
    ShardWriter,
    TokenSplit,
    TokenWindows,
    dtype_for_vocab,
    write_index,
)

log = logging.getLogger("llmpipe.pretrain")

BIGRAM_DISCOUNT = 0.75  # Kneser-Ney's usual absolute discount (Chen & Goodman 1998)


class LMData:
    """Random training windows (seeded, resumable) and sequential validation windows of one token index.

    x is (B, T) and y (B, T + n_future - 1): head k of a multi-token model reads y[:, k:k + T].
    With replay_ratio (continued pretraining on an appended index), that share of the training windows
    comes from the earlier runs' tokens and the rest from the new ones; None draws uniformly over all.
    """

    def __init__(self, index: str | os.PathLike, seq_len: int, micro_batch: int, n_future: int, seed: int,
                 rank: int = 0, world_size: int = 1, replay_ratio: float | None = None):
        self.index, self.seq_len, self.micro_batch, self.n_future = str(index), seq_len, micro_batch, n_future
        self.rank, self.world_size = rank, world_size
        try:
            self.train = TokenWindows(index, "train", seq_len, micro_batch, n_future, seed=seed, mode="random",
                                      rank=rank, world_size=world_size, replay_ratio=replay_ratio)
        except ReplayError as exc:
            raise ConfigError(f"pretrain.replay_ratio: {exc}") from exc

    @property
    def vocab_size(self) -> int:
        return self.train.data.vocab_size

    @property
    def eot_id(self) -> int:
        return self.train.data.eot_id

    @property
    def tokenizer_sha256(self) -> str | None:
        return self.train.data.index.get("tokenizer_sha256")

    def next_batch(self):
        return self.train.next_batch()

    def state_dict(self) -> dict[str, Any]:
        return self.train.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.train.load_state_dict(state)

    def replay_stats(self) -> dict[str, Any]:
        """The replay split of the training data and the windows drawn from each part over the run (kept
        in the loader state, so a resumed run counts from its start); {} without replay."""
        train = self.train
        if train.replay_ratio is None:
            return {}
        return {"replay_ratio": train.replay_ratio, "previous_train_tokens": train.boundary,
                "new_train_tokens": train.data.total - train.boundary,
                "windows_from_previous": train.drawn["previous"], "windows_from_new": train.drawn["new"]}

    def val_batches(self, max_batches: int) -> Iterator | None:
        """Up to max_batches (0 = all) batches of the val split, the same count on every process; None
        when the split cannot give every process a batch."""
        try:
            val = TokenWindows(self.index, "val", self.seq_len, self.micro_batch, self.n_future,
                               mode="sequential", rank=self.rank, world_size=self.world_size)
        except ValueError as exc:
            log.warning("no validation: %s", exc)
            return None
        val.batch_size = min(self.micro_batch, val.num_windows // self.world_size)
        if val.batch_size == 0:
            log.warning("no validation: the val split holds %d windows for %d processes", val.num_windows,
                        self.world_size)
            return None
        batches = val.num_windows // (val.batch_size * self.world_size)
        batches = min(batches, max_batches) if max_batches else batches
        return (val.next_batch() for _ in range(batches))


# baselines --------------------------------------------------------------------------------------------
def _split(index_path: str | os.PathLike, split: str) -> TokenSplit | None:
    try:
        data = TokenSplit(index_path, split)
    except ValueError:
        return None
    return data if data.total else None


def _chunks(data: TokenSplit, chunk: int, overlap: int = 0) -> Iterator[np.ndarray]:
    """The split's shards in pieces of `chunk` tokens; consecutive pieces share `overlap` tokens."""
    for arr in data.arrays:
        for start in range(0, max(arr.size - overlap, 1), chunk):
            yield np.asarray(arr[start:start + chunk + overlap])


def unigram_counts(data: TokenSplit, chunk: int = 1 << 24) -> np.ndarray:
    counts = np.zeros(data.vocab_size, dtype=np.int64)
    for piece in _chunks(data, chunk):
        counts += np.bincount(piece, minlength=data.vocab_size)[:data.vocab_size]
    return counts


def entropy_nats(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def bigram_counts(data: TokenSplit, chunk: int = 1 << 23) -> tuple[np.ndarray, np.ndarray]:
    """Distinct adjacent pairs (as prev * V + next, sorted) and how often each occurs."""
    V = data.vocab_size
    keys, counts = [], []
    for piece in _chunks(data, chunk, overlap=1):
        pairs = piece[:-1].astype(np.int64) * V + piece[1:]
        k, c = np.unique(pairs, return_counts=True)
        keys.append(k)
        counts.append(c)
    if not keys:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    k, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    return k, np.bincount(inverse, weights=np.concatenate(counts)).astype(np.int64)


def bigram_cross_entropy(train: TokenSplit, val: TokenSplit, discount: float = BIGRAM_DISCOUNT) -> float:
    """Loss in nats on val of an interpolated Kneser-Ney bigram model fit on train.

    p(b | a) = max(c(ab) - d, 0) / c(a) + d * N1+(a.) / c(a) * p_cont(b), where p_cont(b) counts the distinct
    tokens that precede b (add-one smoothed, so no token gets probability 0); a context never seen in
    train falls back to p_cont alone.
    """
    V = train.vocab_size
    keys, counts = bigram_counts(train)
    prev, nxt = keys // V, keys % V
    context = np.bincount(prev, weights=counts, minlength=V)  # c(a) as a context
    followers = np.bincount(prev, minlength=V)  # N1+(a.)
    p_cont = (np.bincount(nxt, minlength=V) + 1) / (keys.size + V)
    total, n = 0.0, 0
    for piece in _chunks(val, 1 << 22, overlap=1):
        a, b = piece[:-1].astype(np.int64), piece[1:].astype(np.int64)
        pos = np.searchsorted(keys, a * V + b)
        found = pos < keys.size
        found[found] = keys[pos[found]] == (a * V + b)[found]
        c_ab = np.where(found, counts[np.minimum(pos, keys.size - 1)], 0)
        c_a = context[a]
        seen = c_a > 0
        safe = np.where(seen, c_a, 1)
        p = np.where(seen, np.maximum(c_ab - discount, 0) / safe + discount * followers[a] / safe * p_cont[b],
                     p_cont[b])
        total -= np.log(p).sum()
        n += a.size
    return float(total / n) if n else float("nan")


def token_baselines(index_path: str | os.PathLike) -> dict[str, float | None]:
    """Baselines in nats for the validation loss: the entropy of all the data's token frequencies, the
    val split's own entropy (a context-free model that knew val in advance), and the loss on val of
    models fit on train, as the network is: unigram (add-one smoothed) and Kneser-Ney bigram."""
    train, val = _split(index_path, "train"), _split(index_path, "val")
    out: dict[str, float | None] = {"unigram_entropy_nats": None, "val_unigram_entropy_nats": None,
                                    "val_unigram_baseline_nats": None, "val_bigram_baseline_nats": None}
    train_counts = unigram_counts(train) if train else None
    val_counts = unigram_counts(val) if val else None
    present = [c for c in (train_counts, val_counts) if c is not None]
    if present:
        out["unigram_entropy_nats"] = entropy_nats(sum(present))
    if val_counts is not None:
        out["val_unigram_entropy_nats"] = entropy_nats(val_counts)
        if train_counts is not None:
            q = (train_counts + 1) / (train_counts.sum() + train_counts.size)
            out["val_unigram_baseline_nats"] = float(-(val_counts * np.log(q)).sum() / val_counts.sum())
            out["val_bigram_baseline_nats"] = bigram_cross_entropy(train, val)
    return out


# synthetic data (the benchmark and tests) -------------------------------------------------------------
def phrase_tokens(n_tokens: int, vocab_size: int, n_phrases: int = 64, phrase_len: int = 16,
                  seed: int = 0) -> np.ndarray:
    """A stream of fixed random phrases in random order: inside a phrase every next token is
    determined (a model can learn it, and its extra heads can draft it), between phrases it is not."""
    rng = np.random.default_rng(seed)
    phrases = rng.integers(1, vocab_size, size=(n_phrases, phrase_len))
    order = rng.integers(0, n_phrases, size=n_tokens // phrase_len + 1)
    return phrases[order].reshape(-1)[:n_tokens]


def write_token_index(out_dir: str | os.PathLike, train: np.ndarray, val: np.ndarray, vocab_size: int,
                      eot_id: int = 0) -> Path:
    """A token index (train + val splits) in the tokenize stage's format; returns index.json's path."""
    out_dir = Path(out_dir)
    dtype = dtype_for_vocab(vocab_size)
    splits = {}
    for name, tokens in (("train", train), ("val", val)):
        writer = ShardWriter(out_dir, name, dtype)
        writer.append(tokens, docs=1)
        splits[name] = writer.close()
    write_index(out_dir / "index.json", dtype=dtype, vocab_size=vocab_size, eot_id=eot_id,
                tokenizer_sha256="synthetic", splits=splits)
    return out_dir / "index.json"
