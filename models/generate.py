"""Text generation with a KV cache: sampling with head 0, and self-speculative greedy decoding.

Self-speculative decoding (blockwise parallel decoding, Stern et al. 2018; Gloeckle et al. 2024): heads
1..n-1 draft the next n-1 tokens, one forward pass over [last token, drafts] lets head 0 check them all,
and the longest prefix of drafts that head 0 would have chosen itself is kept, plus head 0's own next
token. The output is the greedy output of head 0 alone, produced in fewer forward passes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from models.gpt import GPT, KVCache, Positions


class Caches:
    """KV caches of every trunk block and every head block, for one generation."""

    def __init__(self, model: GPT, batch: int, max_len: int, heads: int):
        cfg = model.cfg
        param = model.wte.weight

        def make() -> KVCache:
            return KVCache(batch, cfg.kv_heads, max_len, cfg.head_size, param.device, param.dtype)

        self.trunk = [make() for _ in model.trunk]
        self.heads = [make() for _ in range(heads)]


def _check_length(model: GPT, needed: int) -> None:
    if needed > model.cfg.block_size:
        raise ValueError(f"prompt + new tokens need {needed} positions, more than the model's context "
                         f"length {model.cfg.block_size}; shorten the prompt or max_new_tokens")


def pick_next(logits: torch.Tensor, temperature: float = 0.0, top_k: int | None = None,
              top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token ids (B,) from logits (B, V): argmax at temperature 0, else a sample."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop = probs.cumsum(-1) - probs > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate(model: GPT, idx: torch.Tensor, max_new_tokens: int, temperature: float = 0.0,
             top_k: int | None = None, top_p: float | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Continue prompts idx (B, T0) by max_new_tokens with head 0 only; returns (B, T0 + max_new_tokens)."""
    model.eval()
    T0 = idx.size(1)
    _check_length(model, T0 + max_new_tokens)
    caches = Caches(model, idx.size(0), T0 + max_new_tokens, heads=1)
    out = torch.empty(idx.size(0), T0 + max_new_tokens, dtype=idx.dtype, device=idx.device)
    out[:, :T0] = idx
    feed, pos = idx, 0
    for i in range(max_new_tokens):
        at = model.positions(pos, feed.size(1), cached=True)
        h = model.trunk_forward(feed, at, caches.trunk)
        hidden = model.head_forward(0, h, at, caches.heads[0])  # (B, T, C): fills head 0's cache too
        nxt = pick_next(model.lm_head(hidden[:, -1]), temperature, top_k, top_p, generator)  # (B,)
        out[:, T0 + i] = nxt
        pos += feed.size(1)
        feed = nxt[:, None]
    return out


@dataclass
class SpeculativeStats:
    forwards: int = 0  # forward passes after the prompt
    drafted: int = 0  # draft tokens proposed by heads 1..n-1
    accepted: int = 0  # draft tokens head 0 agreed with

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    @property
    def tokens_per_forward(self) -> float:
        return (self.accepted + self.forwards) / self.forwards if self.forwards else 0.0


@torch.no_grad()
def speculative_generate(model: GPT, idx: torch.Tensor, max_new_tokens: int,
                         n_draft: int | None = None) -> tuple[torch.Tensor, SpeculativeStats]:
    """Greedy continuation of one prompt idx (1, T0) drafted by heads 1..n_draft and verified by head 0.

    Returns (tokens (1, T0 + max_new_tokens), stats); the tokens equal `generate(model, idx, ...)`
    at temperature 0 up to floating-point ties.
    """
    if idx.size(0) != 1:
        raise ValueError(f"speculative decoding takes one prompt at a time, got a batch of {idx.size(0)}")
    model.eval()
    stats = SpeculativeStats()
    if max_new_tokens <= 0:
        return idx, stats
    n_draft = model.cfg.n_future - 1 if n_draft is None else min(n_draft, model.cfg.n_future - 1)
    heads = n_draft + 1
    T0 = idx.size(1)
    _check_length(model, T0 + max_new_tokens)
    caches = Caches(model, 1, T0 + max_new_tokens, heads)

    # prompt: every head fills its cache; head 0 gives the next token, heads 1.. the drafts after it
    choices = _head_choices(model, idx, model.positions(0, T0, cached=True), caches, last_only=True)
    tokens = [choices[0][-1]]
    drafts = [row[-1] for row in choices[1:]]
    pos = T0  # cache entries 0..pos-1 are final; tokens[-1] sits at position pos
    while len(tokens) < max_new_tokens:
        drafts = drafts[:max_new_tokens - len(tokens) - 1]  # near the end, draft no further than needed
        feed = torch.tensor([[tokens[-1], *drafts]], dtype=idx.dtype, device=idx.device)  # (1, 1 + drafts)
        choices = _head_choices(model, feed, model.positions(pos, feed.size(1), cached=True), caches)
        checks = choices[0]  # head 0's choice after each fed token
        accepted = 0
        while accepted < len(drafts) and drafts[accepted] == checks[accepted]:
            accepted += 1
        stats.forwards += 1
        stats.drafted += len(drafts)
        stats.accepted += accepted
        tokens += drafts[:accepted] + [checks[accepted]]
        drafts = [row[accepted] for row in choices[1:]]
        pos += 1 + accepted  # rejected drafts' cache entries are overwritten by the next pass
    new = torch.tensor([tokens], dtype=idx.dtype, device=idx.device)
    return torch.cat([idx, new], dim=1), stats


def _head_choices(model: GPT, feed: torch.Tensor, at: Positions, caches: Caches, last_only: bool = False):
    """One pass over feed (1, T): the greedy choice of every head at every position (or the last one),
    as lists [head][position]. One device-to-host copy per pass: each sync costs as much as a small
    kernel."""
    h = model.trunk_forward(feed, at, caches.trunk)  # (1, T, C)
    rows = slice(-1, None) if last_only else slice(None)
    hidden = torch.stack([model.head_forward(k, h, at, cache)[0, rows]
                          for k, cache in enumerate(caches.heads)])  # (heads, T or 1, C)
    return model.lm_head(hidden).argmax(-1).tolist()
