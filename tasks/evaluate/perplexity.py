"""Validation perplexity and bits per byte of a causal LM on the tokenize stage's val split.

The split is cut into consecutive windows of `block_size + 1` tokens that overlap by one token, so every
token but the first is predicted exactly once (each window's first token is read, not predicted).
Perplexity is exp(mean negative log-likelihood per predicted token); bits per byte divides the summed
negative log-likelihood (in bits) by the UTF-8 bytes of the predicted tokens' text (special tokens such as
`<|endoftext|>` count no bytes), which makes models with different tokenizers comparable.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.core.token_shards import TokenSplit


def token_bytes(tokenizer: Any) -> np.ndarray:
    """UTF-8 bytes each token id stands for (0 for special tokens). Byte-level BPE (ours, GPT-2's) writes
    one character per byte in its vocabulary; other tokenizers are measured by decoding each piece."""
    vocab = tokenizer.get_vocab()
    special = set(tokenizer.all_special_ids)
    special |= {i for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items()
                if getattr(tok, "special", True)}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    byte_level = backend is not None and type(backend.decoder).__name__ == "ByteLevel"
    out = np.zeros(max(vocab.values()) + 1, dtype=np.int64)
    for piece, i in vocab.items():
        if i not in special:
            out[i] = len(piece) if byte_level else len(tokenizer.convert_tokens_to_string([piece]).encode())
    return out


@torch.inference_mode()
def val_perplexity(model: Any, tokenizer: Any, index_path: str | Path, device: torch.device | str,
                   block_size: int, max_tokens: int = 0, batch_size: int = 8) -> dict[str, Any]:
    """{"tokens", "bytes", "nll_nats", "perplexity", "bits_per_byte", "bits_per_token"} on the val split
    (its first `max_tokens` tokens; 0 = all)."""
    data = TokenSplit(index_path, "val")
    total = data.total if not max_tokens else min(data.total, max_tokens)
    if total < 2:
        raise ValueError(f"{index_path}: the val split holds {data.total} tokens; nothing to score")
    sizes = token_bytes(tokenizer)
    nll, n_tokens, n_bytes = 0.0, 0, 0
    starts = list(range(0, total - 1, block_size))
    for b in range(0, len(starts), batch_size):
        windows = [data.slice(s, min(block_size + 1, total - s)) for s in starts[b:b + batch_size]]
        width = max(len(w) for w in windows)
        ids = torch.zeros(len(windows), width, dtype=torch.long)
        mask = torch.zeros(len(windows), width, dtype=torch.long)
        for i, w in enumerate(windows):
            ids[i, :len(w)] = torch.from_numpy(w.astype(np.int64))
            mask[i, :len(w)] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1]).logits.float()
        targets, valid = ids[:, 1:], mask[:, 1:].bool()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        nll -= float(logp[valid].sum())
        n_tokens += int(valid.sum())
        picked = targets[valid].cpu().numpy()
        n_bytes += int(sizes[np.minimum(picked, sizes.size - 1)].sum())
    return {"tokens": n_tokens, "bytes": n_bytes, "nll_nats": nll / n_tokens,
            "perplexity": math.exp(nll / n_tokens), "bits_per_token": nll / n_tokens / math.log(2),
            "bits_per_byte": nll / math.log(2) / n_bytes if n_bytes else None}
