"""The evaluate stage's CUDA paths at tiny size: fine-tuning under bf16 and torch.compile, and the
shared-context scorer on the GPU against the CPU."""
from __future__ import annotations

import random

import pytest
import torch

from tasks.evaluate.data import Example as Ex

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU is "
                                 "available here); run `pytest -m gpu` on a GPU machine")]


@pytest.mark.parametrize("compile_", [False, True])
def test_finetune_bf16_on_cuda(tmp_path, tiny_hf_dir, compile_):
    from tasks.evaluate.finetune import FinetuneConfig, finetune

    rng = random.Random(0)
    data = [Ex(i, f"the film was {rng.choice(['so ', ''])}{'great' if i % 2 else 'terrible'}", label=i % 2)
            for i in range(64)]
    cfg = FinetuneConfig(lr=3e-3, epochs=3, batch_size=8, precision="bf16", compile=compile_)
    result = finetune(tiny_hf_dir, "classification", ["neg", "pos"], data, data, cfg, tmp_path / "ft")
    accuracy = sum(p["prediction"] == e.label for p, e in zip(result.predictions, data)) / len(data)
    assert accuracy > 0.9, accuracy


def test_scorer_on_cuda_matches_cpu(tiny_hf_dir):
    from tasks.evaluate.score import LoglikScorer, load_causal_lm

    requests = [("the cat sat on the", [" mat", " dog", " park today"]), ("", ["a great movie"]),
                ("is the sky blue?", [" yes", " no"])]
    scores = {}
    for device in ("cpu", "cuda"):
        model, tok = load_causal_lm(tiny_hf_dir, device)
        scores[device] = LoglikScorer(model, tok, device).score(requests)
    for cpu, gpu in zip(scores["cpu"], scores["cuda"]):
        for a, b in zip(cpu, gpu):
            assert abs(a.logprob - b.logprob) < 1e-3 and a.n_tokens == b.n_tokens
