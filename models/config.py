"""The model's shape as a plain dataclass: importable without torch (the pipeline config validates it)."""
from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, fields
from typing import Any


@dataclass
class GPTConfig:
    """The model's shape. The fields without a default are pretraining settings whose defaults live in
    the stage config (tasks/pretrain/stage.py PretrainConfig); the others are owned here."""

    vocab_size: int  # padded to a multiple of 64 by the stage: matmul kernels are faster on round shapes
    block_size: int  # context length
    n_layer: int  # blocks on each head's path: n_layer - 1 shared + 1 per head
    n_head: int
    n_kv_head: int  # 0 = n_head (multi-head attention); fewer = grouped-query attention
    n_embd: int
    mlp: str  # swiglu | gelu
    dropout: float
    tie_embeddings: bool
    n_future: int  # output heads; head k predicts token t+1+k
    mlp_ratio: float = 4.0  # gelu hidden = ratio * n_embd; swiglu uses 2/3 of that (same parameter count)
    rope_theta: float = 10000.0
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        n_kv = self.n_kv_head or self.n_head
        problems = []
        if self.n_embd % self.n_head:
            problems.append(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        elif (self.n_embd // self.n_head) % 2:
            problems.append(f"head size {self.n_embd // self.n_head} must be even for rotary embeddings")
        if self.n_head % n_kv:
            problems.append(f"n_head {self.n_head} is not a multiple of n_kv_head {n_kv}")
        if self.n_layer < 1 or self.n_future < 1:
            problems.append(f"n_layer ({self.n_layer}) and n_future ({self.n_future}) must be >= 1")
        if self.mlp not in ("swiglu", "gelu"):
            problems.append(f"mlp must be 'swiglu' or 'gelu', not {self.mlp!r}")
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def mlp_hidden(self) -> int:
        hidden = int(self.mlp_ratio * self.n_embd)
        if self.mlp == "swiglu":  # three matrices instead of two: 2/3 the width keeps the parameter count
            hidden = 64 * math.ceil(2 * hidden / 3 / 64)
        return hidden

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        unknown, missing = sorted(set(d) - known), sorted(required - set(d))
        if unknown or missing:
            raise ValueError(f"model config: unknown keys {unknown}, missing keys {missing}; known keys: "
                             f"{sorted(known)}")
        return cls(**d)


def pad_vocab(vocab_size: int, multiple: int = 64) -> int:
    return multiple * math.ceil(vocab_size / multiple)
