"""The batched, shared-context scorer against lm-eval's algorithm run one context/continuation at a time."""
from __future__ import annotations

import logging
import random
import shutil

import pytest
import torch

from tasks.core.errors import UserError
from tasks.evaluate.score import ChoiceScore, LoglikScorer, load_causal_lm, max_length
from tests.tasks.conftest import write_tiny_model

pytestmark = pytest.mark.usefixtures("torch_one_thread")

WORDS = ["the", "cat", "sat", "on", "mat", "a", "dog", "ran", "in", "park", "it", "was", "great", "movie",
         "film", "terrible", "and", "boring", "is", "sky", "blue?", "yes", "no,", "grass", "green", "zebra!"]


def reference(model, tok, context: str, continuation: str) -> tuple[float, int, bool]:
    """lm-eval's HFLM loglikelihood at batch size 1: a plain forward of the concatenated tokens."""
    def enc(s: str) -> list[int]:
        return tok(s, add_special_tokens=False)["input_ids"]

    if context == "":
        prefix = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        ctx, cont = [prefix], enc(continuation)
    else:
        n_spaces = len(context) - len(context.rstrip())
        if n_spaces:
            context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
        ctx = enc(context)
        cont = enc(context + continuation)[len(ctx):]
    limit = max_length(model, tok)
    inp = (ctx + cont)[-(limit + 1):][:-1]
    with torch.no_grad():
        logits = model(torch.tensor([inp])).logits[0, len(inp) - len(cont):].float()
    target = torch.tensor(cont)
    lp = logits.log_softmax(-1).gather(1, target[:, None]).sum().item()
    return lp, len(cont), bool((logits.argmax(-1) == target).all())


def random_requests(seed: int, n: int) -> list[tuple[str, list[str]]]:
    """Contexts from empty to past the 64-token window, odd trailing whitespace, 1-4 continuations."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        n_words = rng.choice([0, 0, 1, 3, 8, 15, 25, 40, 70])
        context = " ".join(rng.choice(WORDS) for _ in range(n_words))
        if context and i % 3 == 0:
            context += rng.choice([" ", "\n", ":", " \n "])
        conts = []
        for _ in range(rng.randint(1, 4)):
            cont = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
            conts.append(cont if not context or context[-1].isspace() or rng.random() < 0.2 else " " + cont)
        out.append((context, conts))
    return out


def check_against_reference(scorer: LoglikScorer, requests) -> None:
    got = scorer.score(requests)
    assert [len(g) for g in got] == [len(c) for _, c in requests]
    for (context, conts), scores in zip(requests, got):
        for cont, s in zip(conts, scores):
            lp, n, greedy = reference(scorer.model, scorer.tokenizer, context, cont)
            assert s.logprob == pytest.approx(lp, abs=1e-4), (context, cont)
            assert (s.n_tokens, s.greedy, s.n_chars) == (n, greedy, len(cont)), (context, cont)


def sharpen(model, factor: float = 30.0):
    """Peaked attention, as in a trained model: a random one attends almost uniformly, and a wrong mask or
    position would then change scores by less than the tolerance."""
    with torch.no_grad():
        if hasattr(model, "transformer"):  # GPT-2: the query is the first third of the fused c_attn
            for block in model.transformer.h:
                block.attn.c_attn.weight[:, : model.config.n_embd].mul_(factor)
        else:
            for layer in model.model.layers:
                layer.self_attn.q_proj.weight.mul_(factor)
    return model


@pytest.fixture(scope="module")
def llama(tiny_hf_dir):
    model, tok = load_causal_lm(tiny_hf_dir)
    return sharpen(model), tok


@pytest.mark.parametrize("budget", [4096, 48])  # 48: rows split over the budget
def test_shared_context_scores_equal_one_at_a_time_forwards(llama, budget):
    scorer = LoglikScorer(*llama, max_batch_tokens=budget)
    requests = random_requests(seed=budget, n=60)
    check_against_reference(scorer, requests)
    assert scorer.share_context and scorer.keep_logits  # the fast path was used, not a fallback
    assert any(len(c) > 2 for _, c in requests) and any(c == "" for c, _ in requests)


def test_plain_batches_equal_one_at_a_time_forwards(llama):
    scorer = LoglikScorer(*llama, max_batch_tokens=256, share_context=False)
    check_against_reference(scorer, random_requests(seed=1, n=25))


def test_eager_attention_and_an_untied_full_head_model(tmp_path):
    from tasks.pretrain.export import export_hf

    ours = write_tiny_model(tmp_path / "ours", seed=3, n_kv_head=4, tie_embeddings=False)
    model, tok = load_causal_lm(export_hf(ours, tmp_path / "hf"), attn_implementation="eager")
    sharpen(model)
    assert model.config._attn_implementation == "eager"
    scorer = LoglikScorer(model, tok, max_batch_tokens=512)
    check_against_reference(scorer, random_requests(seed=2, n=25))
    assert scorer.share_context and scorer.keep_logits


def test_another_architecture_gpt2_absolute_positions(tiny_hf_dir, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=320, n_positions=48, n_embd=32, n_layer=2, n_head=4)
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_hf_dir / name, tmp_path / name)
    model, tok = load_causal_lm(tmp_path)
    scorer = LoglikScorer(sharpen(model), tok, max_batch_tokens=300)
    assert scorer.max_length == 48
    check_against_reference(scorer, random_requests(seed=3, n=25))
    assert scorer.share_context and scorer.keep_logits


class _IgnoresPositions(torch.nn.Module):
    """A causal LM whose forward drops position ids and takes no logits_to_keep: sharing must be refused."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.config = model, model.config

    def forward(self, input_ids, attention_mask=None, position_ids=None, use_cache=False):
        return self.inner(input_ids, attention_mask=attention_mask, use_cache=use_cache)


def test_a_model_that_cannot_share_contexts_is_scored_the_plain_way(tiny_hf_dir, caplog):
    model, tok = load_causal_lm(tiny_hf_dir)
    scorer = LoglikScorer(_IgnoresPositions(sharpen(model)), tok, max_batch_tokens=512)
    assert not scorer.keep_logits
    with caplog.at_level(logging.WARNING):
        got = scorer.score([("the cat sat on the", [" mat", " dog ran in", " park"])])
    assert not scorer.share_context and "shared_context=True" in caplog.text
    for cont, s in zip([" mat", " dog ran in", " park"], got[0]):
        assert s.logprob == pytest.approx(reference(model, tok, "the cat sat on the", cont)[0], abs=1e-4)


def test_bfloat16_scores_stay_close_and_keep_sharing(tiny_hf_dir, llama):
    requests = random_requests(seed=5, n=12)
    want = LoglikScorer(*llama).score(requests)
    model, tok = load_causal_lm(tiny_hf_dir)
    scorer = LoglikScorer(sharpen(model), tok, dtype=torch.bfloat16)
    got = scorer.score(requests)
    assert scorer.dtype == torch.bfloat16 and scorer.share_context and scorer.keep_logits
    for x, y in zip(got, want):
        for a, b in zip(x, y):
            assert a.n_tokens == b.n_tokens and a.logprob == pytest.approx(b.logprob, abs=0.1 * b.n_tokens)


def test_counts_and_normalizing_length(llama):
    (a, b), = LoglikScorer(*llama).score([("it was a great", [" movie", "  film!"])])
    assert isinstance(a, ChoiceScore)
    assert (a.n_chars, a.norm_chars, b.n_chars, b.norm_chars) == (6, 5, 7, 5)
    assert a.n_tokens >= 1 and a.logprob < 0


def test_batch_composition_does_not_change_scores(llama):
    """Batch composition must not change a score: one request alone equals it among many."""
    scorer = LoglikScorer(*llama, max_batch_tokens=1024)
    requests = random_requests(seed=7, n=20)
    together = scorer.score(requests)
    alone = [scorer.score([r])[0] for r in requests[:5]]
    for x, y in zip(together, alone):
        assert [s.logprob for s in x] == pytest.approx([s.logprob for s in y], abs=1e-5)


def test_continuations_that_cannot_be_scored_are_refused(llama):
    scorer = LoglikScorer(*llama)
    with pytest.raises(UserError, match="continuation 1 .* encodes to no tokens"):
        scorer.score([("the cat", [" sat", ""])])
    with pytest.raises(UserError, match="more than the model's window of 64"):
        scorer.score([("the cat", [" sat" * 70])])
    with pytest.raises(UserError, match="request 0 has no continuations"):
        scorer.score([("the cat", [])])


def test_skip_too_long_leaves_out_what_score_refuses_for_length(llama):
    scorer = LoglikScorer(*llama)
    requests = [("the cat", [" sat"]), ("the cat", [" sat", " sat" * 70]), ("the cat " * 200, [" sat"]),
                ("", ["a dog ran"])]
    scored = scorer.score(requests, skip_too_long=True)
    assert [s is not None for s in scored] == [True, False, True, True]  # a long context is cut; a long answer is not
    kept = [r for r, s in zip(requests, scored) if s is not None]
    assert len(scorer.score(kept)) == 3
    assert [s for s in scored if s is not None] == scorer.score(kept)  # the same scores as without the long one
