"""Generation: the KV cache, sampling, and self-speculative decoding against plain greedy decoding."""
import pytest
import torch

from models.generate import generate, pick_next, speculative_generate
from models.gpt import GPT, GPTConfig


def random_model(n_future: int = 4, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=101, block_size=96, n_layer=3, n_head=4, n_kv_head=0, n_embd=32,
                         mlp="swiglu", dropout=0.0, tie_embeddings=True, n_future=n_future))


def uncached_greedy(model: GPT, idx: torch.Tensor, new: int) -> torch.Tensor:
    for _ in range(new):
        logits, _ = model(idx)
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def test_cached_greedy_equals_full_recompute():
    model = random_model().eval()
    prompt = torch.randint(0, 101, (2, 7))
    with torch.no_grad():
        assert torch.equal(generate(model, prompt, 25), uncached_greedy(model, prompt, 25))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_speculative_decoding_equals_greedy(seed):
    model = random_model(seed=seed)
    # a model with a strong pattern: its greedy output is not a constant, so drafts get rejected too
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0 if p.dim() >= 2 else 1.0)
    prompt = torch.randint(0, 101, (1, 5), generator=torch.Generator().manual_seed(seed))
    greedy = generate(model, prompt, 60)
    spec, stats = speculative_generate(model, prompt, 60)
    assert torch.equal(spec, greedy)
    assert stats.drafted <= 3 * stats.forwards and stats.accepted + stats.forwards == 60 - 1


def test_heads_that_agree_with_head_0_cut_the_forwards_by_the_number_of_heads():
    """Every token embedded alike makes the model's output the same at every position, whatever the
    input; with heads 1..3 copies of head 0, each draft is what head 0 then picks, so every draft is
    accepted and one forward yields 4 tokens."""
    model = random_model(n_future=4)
    model.lm_head.weight = torch.nn.Parameter(torch.randn(101, 32))  # untied: the logits differ by token
    with torch.no_grad():
        model.wte.weight.copy_(model.wte.weight[:1].expand(101, -1))
        for head in model.heads[1:]:
            head.load_state_dict(model.heads[0].state_dict())
    prompt = torch.randint(0, 101, (1, 5), generator=torch.Generator().manual_seed(0))
    greedy = generate(model, prompt, 61)
    spec, stats = speculative_generate(model, prompt, 61)
    assert torch.equal(spec, greedy)
    assert stats.accepted == stats.drafted == 45 and stats.forwards == 15  # greedy: 60 after the prompt


def test_speculative_decoding_saves_forwards_on_a_trained_model(trained_phrase_model):
    model, phrases = trained_phrase_model
    prompt = torch.as_tensor(phrases[:2].reshape(1, -1))  # two whole phrases: the model knows what follows
    greedy = generate(model, prompt, 48)
    spec, stats = speculative_generate(model, prompt, 48)
    assert torch.equal(spec, greedy)
    assert stats.acceptance_rate > 0.4, stats
    assert stats.forwards < 48 * 0.6  # fewer forward passes than greedy's one per token


def test_speculative_decoding_fills_the_context_exactly():
    model = random_model()
    prompt = torch.randint(0, 101, (1, 10))
    spec, _ = speculative_generate(model, prompt, 86)  # 96 positions: the whole context, no spare room
    assert torch.equal(spec, generate(model, prompt, 86))


def test_prompt_too_long_is_refused():
    model = random_model()
    with pytest.raises(ValueError, match="context length"):
        generate(model, torch.zeros(1, 90, dtype=torch.long), 10)
    with pytest.raises(ValueError, match="one prompt"):
        speculative_generate(model, torch.zeros(2, 4, dtype=torch.long), 4)


def test_sampling_filters():
    logits = torch.tensor([[0.0, 3.0, 2.9, -1.0, 1.0]])
    gen = torch.Generator().manual_seed(0)
    assert pick_next(logits).item() == 1
    assert {pick_next(logits, 1.0, top_k=1, generator=gen).item() for _ in range(20)} == {1}
    assert {pick_next(logits, 1.0, top_p=0.01, generator=gen).item() for _ in range(20)} == {1}
    picks = {pick_next(logits, 1.0, top_k=2, generator=gen).item() for _ in range(200)}
    assert picks == {1, 2}
    picks = {pick_next(logits, 1.0, top_p=0.9, generator=gen).item() for _ in range(300)}
    assert picks <= {1, 2, 4} and {1, 2} <= picks


def test_sampled_generation_is_reproducible():
    model = random_model(n_future=1)
    prompt = torch.randint(0, 101, (3, 4))
    a = generate(model, prompt, 12, temperature=0.8, top_k=20, generator=torch.Generator().manual_seed(5))
    b = generate(model, prompt, 12, temperature=0.8, top_k=20, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (3, 16)
