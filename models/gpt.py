"""Decoder-only transformer with a shared trunk and `n_future` output heads (multi-token prediction).

Gloeckle et al. 2024: head k (0-based) reads the trunk's output through its own transformer block and
predicts token t+1+k through the shared unembedding; the training loss sums the heads' cross-entropies.
Depth is fixed along every head's path: `n_layer - 1` shared trunk blocks + one block per head, so
`n_future=1` is exactly a standard `n_layer` GPT trained with the usual next-token loss.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.config import GPTConfig


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


@dataclass
class Positions:
    """Where the tokens of one forward pass sit, shared by every block of the pass.

    start: position of the first token; cos, sin: rotary angles, each (T, head_size / 2), fp32;
    mask: (T, start + T) bool when several new tokens extend a KV cache (token i sees positions
    0..start+i), else None (plain causal attention, or a single new token that sees everything).
    """

    start: int
    cos: torch.Tensor
    sin: torch.Tensor
    mask: torch.Tensor | None = None


def rope_tables(head_size: int, pos: int, length: int, theta: float,
                device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of every (position, frequency) pair for positions [pos, pos+length): each
    (length, head_size / 2), fp32. Computed per pass (a few thousand values) rather than stored as
    buffers, so no buffer is synced between processes or cast with the weights."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_size, 2, dtype=torch.float32, device=device) / head_size)
    positions = torch.arange(pos, pos + length, dtype=torch.float32, device=device)
    angles = torch.outer(positions, inv_freq)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., i], x[..., i + hs/2]) by position-dependent angles. x: (B, nh, T, hs)."""
    half = x.size(-1) // 2
    x1, x2 = x[..., :half], x[..., half:]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)  # (T, hs/2), broadcast over batch and heads
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class KVCache:
    """Keys and values of one attention layer for generation; `update` writes positions [pos, pos+T)."""

    def __init__(self, batch: int, kv_heads: int, max_len: int, head_size: int, device, dtype):
        self.k = torch.zeros(batch, kv_heads, max_len, head_size, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)

    def update(self, pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        end = pos + k.size(2)
        self.k[:, :, pos:end] = k
        self.v[:, :, pos:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]  # (B, nkv, pos+T, hs)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.n_kv, self.hs = cfg.n_head, cfg.kv_heads, cfg.head_size
        self.qkv = nn.Linear(cfg.n_embd, (cfg.n_head + 2 * cfg.kv_heads) * cfg.head_size, bias=False)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=False)
        self.dropout = cfg.dropout

    def forward(self, x: torch.Tensor, at: Positions, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split([self.n_head * self.hs, self.n_kv * self.hs, self.n_kv * self.hs], dim=-1)
        q = apply_rope(q.view(B, T, self.n_head, self.hs).transpose(1, 2), at.cos, at.sin)  # (B, nh, T, hs)
        k = apply_rope(k.view(B, T, self.n_kv, self.hs).transpose(1, 2), at.cos, at.sin)  # (B, nkv, T, hs)
        v = v.view(B, T, self.n_kv, self.hs).transpose(1, 2)  # (B, nkv, T, hs)
        extra = {"enable_gqa": True} if self.n_kv != self.n_head else {}
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               dropout_p=self.dropout if self.training else 0.0, **extra)
        else:
            k, v = cache.update(at.start, k, v)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=at.mask, **extra)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.swiglu = cfg.mlp == "swiglu"
        width = 2 * cfg.mlp_hidden if self.swiglu else cfg.mlp_hidden  # swiglu: gate and value in one matmul
        self.fc = nn.Linear(cfg.n_embd, width, bias=False)
        self.proj = nn.Linear(cfg.mlp_hidden, cfg.n_embd, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.swiglu:
            gate, value = h.chunk(2, dim=-1)
            h = F.silu(gate) * value
        else:
            h = F.gelu(h, approximate="tanh")
        return self.proj(h)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.norm1 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.attn = CausalSelfAttention(cfg)
        self.norm2 = RMSNorm(cfg.n_embd, cfg.norm_eps)
        self.mlp = MLP(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, at: Positions, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.drop(self.attn(self.norm1(x), at, cache))
        return x + self.drop(self.mlp(self.norm2(x)))


class Head(nn.Module):
    """One multi-token head: a transformer block and its final norm; the unembedding is shared."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.block = Block(cfg)
        self.norm = RMSNorm(cfg.n_embd, cfg.norm_eps)

    def forward(self, h: torch.Tensor, at: Positions, cache: KVCache | None = None) -> torch.Tensor:
        return self.norm(self.block(h, at, cache))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.trunk = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer - 1))
        self.heads = nn.ModuleList(Head(cfg) for _ in range(cfg.n_future))
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2: scale the residual-stream projections down with depth so the stream's variance stays put
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    # building blocks (training and generation share them) ---------------------------------------
    def positions(self, start: int, length: int, cached: bool = False) -> Positions:
        """Positions of `length` tokens from `start`; cached=True when they extend a KV cache."""
        if start + length > self.cfg.block_size:
            raise ValueError(f"positions up to {start + length} exceed the context length "
                             f"{self.cfg.block_size}")
        device = self.wte.weight.device
        cos, sin = rope_tables(self.cfg.head_size, start, length, self.cfg.rope_theta, device)
        mask = None
        if cached and length > 1:
            mask = torch.ones(length, start + length, dtype=torch.bool, device=device).tril(start)
        return Positions(start, cos, sin, mask)

    def trunk_forward(self, idx: torch.Tensor, at: Positions | None = None,
                      caches: list[KVCache] | None = None) -> torch.Tensor:
        """Shared trunk: token ids (B, T) -> hidden states (B, T, C). `at` defaults to positions 0..T-1."""
        at = at or self.positions(0, idx.size(1))
        x = self.drop(self.wte(idx))
        for i, block in enumerate(self.trunk):
            x = block(x, at, caches[i] if caches else None)
        return x

    def head_forward(self, k: int, h: torch.Tensor, at: Positions | None = None,
                     cache: KVCache | None = None) -> torch.Tensor:
        """Head k's normalized hidden states (B, T, C); `self.lm_head` turns them into logits."""
        return self.heads[k](h, at or self.positions(0, h.size(1)), cache)

    def head_loss(self, k: int, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of head k. h: (B, T, C); targets: (B, T + n_future - 1), head k reads
        targets[:, k:k+T] (head 0 = next token)."""
        T = h.size(1)
        logits = self.lm_head(self.head_forward(k, h))  # (B, T, V)
        target_k = targets[:, k:k + T]
        return F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), target_k.reshape(-1))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, *, return_hidden: bool = False):
        """idx (B, T) token ids.

        - targets (B, T + n_future - 1) given: returns (None, head_losses) with head_losses (n_future,);
          the training loss is head_losses.sum() (Gloeckle et al.), head_losses[0] the next-token loss.
        - no targets: returns (logits of head 0 (B, T, V), None).
        - return_hidden: returns the trunk output (B, T, C) only (the memory-saving step runs the heads).
        """
        h = self.trunk_forward(idx)
        if return_hidden:
            return h
        if targets is None:
            return self.lm_head(self.head_forward(0, h)), None
        if targets.size(1) < idx.size(1) + self.cfg.n_future - 1:
            raise ValueError(f"targets have {targets.size(1)} positions; {self.cfg.n_future} heads over "
                             f"{idx.size(1)} inputs need {idx.size(1) + self.cfg.n_future - 1}")
        return None, torch.stack([self.head_loss(k, h, targets) for k in range(self.cfg.n_future)])

    # accounting ----------------------------------------------------------------------------------
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # parameters() yields a tied weight once

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per input token (forward + backward), the nanoGPT/PaLM convention:
        6 x matmul parameters touched per token (each head's unembedding counted) + 12 x layers x T x C
        for attention. The input embedding is a lookup and costs nothing."""
        cfg = self.cfg
        # matrices only: norm gains take no matmul
        block = sum(p.numel() for p in self.heads[0].block.parameters() if p.dim() >= 2)
        blocks = cfg.n_layer - 1 + cfg.n_future
        matmul_params = blocks * block + cfg.n_future * cfg.vocab_size * cfg.n_embd
        return 6 * matmul_params + 12 * blocks * seq_len * cfg.n_embd
