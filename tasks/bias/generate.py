"""Batched greedy continuations of prompts with transformers' `generate` (BOLD's protocol)."""
from __future__ import annotations

from typing import Any

import torch


def generate(model: Any, tokenizer: Any, prompts: list[str], *, max_new_tokens: int, batch_size: int = 32,
             device: str | torch.device = "cpu") -> list[str]:
    """The decoded continuation of each prompt, greedy (deterministic), in the order given.

    Prompts are batched by length (less padding) and padded on the left, so every row's next token comes
    right after its prompt; the prompt is cut on the left to leave room for `max_new_tokens` in the
    model's window. Special tokens are dropped from the decoded text; generation stops at EOS."""
    from tasks.evaluate.score import max_length

    window = max_length(model, tokenizer)
    keep = max(1, window - max_new_tokens)
    ids = tokenizer(prompts, add_special_tokens=False, verbose=False)["input_ids"]
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    ids = [(row or ([bos] if bos is not None else [0]))[-keep:] for row in ids]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[str] = [""] * len(ids)
    model.eval()
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        width = max(len(ids[i]) for i in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, i in enumerate(chunk):
            input_ids[r, width - len(ids[i]):] = torch.tensor(ids[i])
            mask[r, width - len(ids[i]):] = 1
        with torch.inference_mode():
            generated = model.generate(input_ids=input_ids.to(device), attention_mask=mask.to(device),
                                       max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad,
                                       eos_token_id=tokenizer.eos_token_id)
        new = generated[:, width:].tolist()
        for r, i in enumerate(chunk):
            out[i] = tokenizer.decode(new[r], skip_special_tokens=True)
    return out
