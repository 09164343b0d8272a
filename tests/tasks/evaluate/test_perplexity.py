"""Validation perplexity and bits per byte against a direct computation, one window at a time."""
from __future__ import annotations

import math

import numpy as np
import torch

from tasks.evaluate.perplexity import token_bytes, val_perplexity
from tasks.evaluate.score import load_causal_lm
from tasks.pretrain.data import write_token_index


def test_perplexity_and_bits_per_byte_match_a_direct_computation(tmp_path, tiny_hf_dir, torch_one_thread):
    model, tok = load_causal_lm(tiny_hf_dir)
    text = "the cat sat on the mat. a dog ran in the park; it was a great movie! " * 6
    ids = np.array(tok(text)["input_ids"] + [tok.eos_token_id] + tok(text[:50])["input_ids"], dtype=np.int64)
    index = write_token_index(tmp_path / "tokens", ids[:20], ids, vocab_size=320, eot_id=tok.eos_token_id)
    got = val_perplexity(model, tok, index, "cpu", block_size=16, batch_size=3)
    nll, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, 16):
            w = torch.tensor(ids[start:start + 17])[None]
            logp = torch.log_softmax(model(w[:, :-1]).logits.float(), -1)
            nll -= float(logp[0].gather(-1, w[0, 1:, None]).sum())
            n += w.shape[1] - 1
    assert got["tokens"] == n == len(ids) - 1
    assert math.isclose(got["nll_nats"], nll / n, rel_tol=1e-5)
    assert math.isclose(got["perplexity"], math.exp(nll / n), rel_tol=1e-5)
    # bytes: the UTF-8 text of every predicted token; the special token between the texts counts none
    expected_bytes = len(tok.decode(ids[1:].tolist(), skip_special_tokens=True).encode())
    assert got["bytes"] == expected_bytes
    assert math.isclose(got["bits_per_byte"], nll / math.log(2) / expected_bytes, rel_tol=1e-5)


def test_token_bytes_of_a_byte_level_vocabulary(tiny_hf_dir):
    _, tok = load_causal_lm(tiny_hf_dir)
    sizes = token_bytes(tok)
    assert sizes[tok.eos_token_id] == 0 and sizes[tok.pad_token_id] == 0
    for word in ("the", " cat", "é"):
        pieces = tok(word)["input_ids"]
        assert sizes[pieces].sum() == len(word.encode())
