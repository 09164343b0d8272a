"""Fine-tuning the tiny exported model into a classifier, regressor and multiple-choice model."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from tasks.core.errors import UserError
from tasks.evaluate.data import Example as Ex
from tasks.evaluate.finetune import (
    ExampleBatches,
    FinetuneConfig,
    PairFormat,
    PromptFormat,
    finetune,
    model_builder,
    predict,
    task_config,
)
from tasks.evaluate.prompts import PromptSpec

FAST = {"lr": 3e-3, "epochs": 2, "batch_size": 8, "eval_batch_size": 16}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The tiny model's matrices gain nothing from threads, and on a shared CPU they wait for each other
    (a 0.1 s fine-tuning took seconds with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)




SUBJECTS = ["the movie", "this film", "the show", "that book", "the play", "our dinner", "the park"]
ADVERBS = ["really ", "truly ", "quite ", "so ", "very ", ""]


def sentiment(n: int, seed: int = 0) -> list[tuple[str, int]]:
    """(sentence, 1 if it says great else 0), balanced."""
    rng = random.Random(seed)
    return [(f"{rng.choice(SUBJECTS)} was {rng.choice(ADVERBS)}{'great' if i % 2 else 'terrible'}", i % 2)
            for i in range(n)]


def accuracy(result, examples) -> float:
    return float(np.mean([p["prediction"] == e.label for p, e in zip(result.predictions, examples)]))


def test_classifier_learns_a_pair_task_and_predict_formats_pairs_the_same_way(tiny_hf_dir, tmp_path):
    rng = random.Random(1)
    # the label is in the second text only: the pooled last token must have read it
    train = [Ex(i, rng.choice(SUBJECTS), pair=s, label=y) for i, (s, y) in enumerate(sentiment(48))]
    result = finetune(tiny_hf_dir, "classification", ["negative", "positive"], train, train,
                      FinetuneConfig(**FAST), tmp_path / "run")
    assert accuracy(result, train) >= 0.9
    assert result.steps == 2 * 6 and result.train_examples == 48 and result.train_examples_per_s > 0
    first = result.predictions[0]
    assert first["idx"] == 0 and sum(first["scores"]) == pytest.approx(1.0)

    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(result.classifier_dir)
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.llmpipe_task["kind"] == "classification"
    labelled = predict(result.classifier_dir, [e.text for e in train], [e.pair for e in train])
    assert [name for name, _ in labelled] == [["negative", "positive"][p["prediction"]]
                                              for p in result.predictions]
    probs = [max(p["scores"]) for p in result.predictions]
    assert [prob for _, prob in labelled] == pytest.approx(probs, abs=1e-5)


def test_regression_learns_the_direction_and_outputs_floats(tiny_hf_dir, tmp_path):
    train = [Ex(i, s, label=float(y)) for i, (s, y) in enumerate(sentiment(32))]
    result = finetune(tiny_hf_dir, "regression", None, train, train, FinetuneConfig(**FAST), tmp_path / "run")
    values = [p["prediction"] for p in result.predictions]
    assert all(isinstance(v, float) for v in values)
    assert [p["scores"] for p in result.predictions] == values
    great = np.mean([v for v, e in zip(values, train) if e.label == 1])
    terrible = np.mean([v for v, e in zip(values, train) if e.label == 0])
    assert great > terrible + 0.4
    name, prob = predict(result.classifier_dir, [train[0].text])[0]
    assert float(name) == pytest.approx(values[0], abs=1e-4) and prob is None


def test_multiple_choice_scores_each_choice(tiny_hf_dir, tmp_path):
    rng = random.Random(2)
    train = []
    for i in range(32):
        good, bad = f"it was {rng.choice(ADVERBS)}great", f"it was {rng.choice(ADVERBS)}terrible"
        label = i % 2
        train.append(Ex(i, f"{rng.choice(SUBJECTS)} opened.", choices=[bad, good] if label else [good, bad],
                        label=label, meta={"question": rng.choice(["cause", "effect"])}))
    held_out = [Ex(0, "the show opened.", choices=["it was great", "it was terrible", "it was so terrible"],
                   meta={"question": "effect"})]  # three choices, no label
    result = finetune(tiny_hf_dir, "multiple_choice", None, train, train + held_out, FinetuneConfig(**FAST),
                      tmp_path / "run")
    assert accuracy(result, train) >= 0.9
    last = result.predictions[-1]
    assert len(last["scores"]) == 3 and sum(last["scores"]) == pytest.approx(1.0) and last["prediction"] == 0
    choice, _ = predict(result.classifier_dir, ["the show opened. What was the effect?"],
                        choices=[held_out[0].choices])[0]
    assert choice == "0"


def test_random_init_starts_from_other_weights_seeded(tiny_hf_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    config, fmt, _ = task_config(tiny_hf_dir, "classification", ["a", "b"], tokenizer, max_length=256)
    assert fmt.max_length == 64 and config.llmpipe_task["max_length"] == 64  # the model's positions
    exported = load_file(str(tiny_hf_dir / "model.safetensors"))["model.embed_tokens.weight"]
    torch.manual_seed(0)
    pretrained = model_builder(tiny_hf_dir, config, random_init=False)()
    torch.manual_seed(0)
    random_a = model_builder(tiny_hf_dir, config, random_init=True)()
    torch.manual_seed(0)
    random_b = model_builder(tiny_hf_dir, config, random_init=True)()
    assert torch.equal(pretrained.model.embed_tokens.weight, exported)
    assert not torch.allclose(random_a.model.embed_tokens.weight, exported)
    assert torch.equal(random_a.model.embed_tokens.weight, random_b.model.embed_tokens.weight)
    assert type(random_a) is type(pretrained) and random_a.config.num_labels == 2


def test_fixed_seed_runs_agree_and_an_interrupted_run_resumes_to_them(tiny_hf_dir, tmp_path):
    train = [Ex(i, s, label=y) for i, (s, y) in enumerate(sentiment(24))]
    cfg = FinetuneConfig(**(FAST | {"batch_size": 4, "epochs": 1, "checkpoint_every": 2}))  # 6 steps
    first = finetune(tiny_hf_dir, "classification", ["n", "p"], train, train, cfg, tmp_path / "a")
    again = finetune(tiny_hf_dir, "classification", ["n", "p"], train, train, cfg, tmp_path / "b")
    assert again.predictions == first.predictions

    def stop_at_3(step: int, total: int) -> None:
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(tiny_hf_dir, "classification", ["n", "p"], train, train, cfg, tmp_path / "c", progress=stop_at_3)
    assert json.loads((tmp_path / "c/checkpoints/step-000002/state.json").read_text())["loader"] == \
        {"epoch": 0, "position": 2}
    with pytest.raises(UserError, match="checkpoint .* was trained with"):  # a changed run refuses the state
        finetune(tiny_hf_dir, "classification", ["n", "p"], train, train, cfg.model_copy(update={"lr": 1e-3}),
                 tmp_path / "c")
    steps = []
    resumed = finetune(tiny_hf_dir, "classification", ["n", "p"], train, train, cfg, tmp_path / "c",
                       progress=lambda step, total: steps.append(step))
    assert steps == [3, 4, 5, 6] and resumed.predictions == first.predictions
    assert not (tmp_path / "c/checkpoints").exists()  # the classifier is published, the checkpoints go

    reused = finetune(tiny_hf_dir, "classification", ["n", "p"], train, train, cfg, tmp_path / "c")
    assert reused.reused and reused.steps == 6 and reused.predictions == first.predictions


# the tiny tokenizer splits most words after a space into " " and the rest; these start with distinct tokens
PROMPT = PromptSpec(template="{text}. Was it good or bad?", choices=[" so bad", " great"])


def test_prompt_head_starts_as_the_zero_shot_classifier(tiny_hf_dir):
    """The classifier's logits before training are the LM's next-token logits of the choices' first tokens
    after the rendered prompt; the random-init model gets the same inputs and a random head."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    config, fmt, why = task_config(tiny_hf_dir, "classification", ["neg", "pos"], tokenizer, 256, PROMPT, "prompt")
    assert isinstance(fmt, PromptFormat) and why == "" and config.llmpipe_task["format"] == "prompt"
    firsts = [tokenizer(c, add_special_tokens=False)["input_ids"][0] for c in PROMPT.choices]
    assert list(fmt.head_token_ids) == firsts
    examples = [Ex(i, s) for i, (s, _) in enumerate(sentiment(6))]
    ids = fmt.encode(tokenizer, examples)
    assert ids[0] == tokenizer(f"{examples[0].text}. Was it good or bad?", add_special_tokens=False)["input_ids"]
    lm = AutoModelForCausalLM.from_pretrained(tiny_hf_dir, dtype=torch.float32).eval()
    classifier = model_builder(tiny_hf_dir, config, random_init=False, head_token_ids=fmt.head_token_ids)().eval()
    torch.manual_seed(0)
    random_init = model_builder(tiny_hf_dir, config, random_init=True, head_token_ids=fmt.head_token_ids)()
    with torch.no_grad():
        for seq in ids:
            x = torch.tensor([seq])
            expected = lm(input_ids=x).logits[0, -1, firsts]
            assert torch.allclose(classifier(input_ids=x).logits[0], expected, atol=1e-5)
    assert not torch.allclose(random_init.score.weight, classifier.score.weight)


def test_prompt_head_learns_and_predict_renders_the_prompt(tiny_hf_dir, tmp_path):
    train = [Ex(i, s, label=y) for i, (s, y) in enumerate(sentiment(48))]
    result = finetune(tiny_hf_dir, "classification", ["negative", "positive"], train, train,
                      FinetuneConfig(**FAST, head="prompt"), tmp_path / "run", prompt=PROMPT)
    assert result.head == "prompt" and accuracy(result, train) >= 0.9
    labelled = predict(result.classifier_dir, [e.text for e in train])
    assert [name for name, _ in labelled] == [["negative", "positive"][p["prediction"]]
                                              for p in result.predictions]
    assert [prob for _, prob in labelled] == pytest.approx([max(p["scores"]) for p in result.predictions],
                                                           abs=1e-5)
    linear = finetune(tiny_hf_dir, "classification", ["negative", "positive"], train, train,
                      FinetuneConfig(**FAST), tmp_path / "linear", prompt=PROMPT)  # the default head
    assert linear.head == "linear" and linear.linear_why == ""
    assert json.loads((linear.classifier_dir / "config.json").read_text())["llmpipe_task"]["format"] != "prompt"


def test_prompt_head_falls_back_to_a_linear_head_with_the_reason(tiny_hf_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    cases = [("regression", None, PROMPT, "a regression task gets a linear head"),
             ("classification", ["n", "p"], None, "no prompt"),
             ("classification", ["a", "b", "c"], PROMPT, "2 choices for 3 classes"),
             ("classification", ["n", "p"], PromptSpec(template="{text}", choices=[" good day", " good night"]),
              "do not start with distinct tokens")]
    for kind, labels, prompt, why in cases:
        _, fmt, reason = task_config(tiny_hf_dir, kind, labels, tokenizer, 256, prompt, "prompt")
        assert isinstance(fmt, PairFormat) and why in reason


def test_prompt_format_cuts_the_text_and_keeps_the_question(tiny_hf_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    pair_prompt = PromptSpec(template="{text}\nQuestion: {pair} Yes or no?\nAnswer:", choices=[" the", " was"])
    fmt, _ = PromptFormat.for_task(tokenizer, pair_prompt, "classification", ["n", "y"], 48)
    long = " ".join(["the cat sat on the mat"] * 10)
    (ids,) = fmt.encode(tokenizer, [Ex(0, long, pair="is the cat here?")])
    assert 40 <= len(ids) <= 48
    decoded = tokenizer.decode(ids)
    assert decoded.startswith("the cat sat") and decoded.endswith("Question: is the cat here? Yes or no?\nAnswer:")


def test_pair_format_cuts_the_first_text_down_to_half_the_room(tiny_hf_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_hf_dir)
    fmt = PairFormat((7,), sep=0, max_length=12)
    text = tokenizer("the cat sat on the mat and the dog ran in the park", add_special_tokens=False)["input_ids"]
    pair = tokenizer("the sky", add_special_tokens=False)["input_ids"]
    long_pair = tokenizer("a dog ran in the park, the grass is green", add_special_tokens=False)["input_ids"]
    assert len(text) > 12 and len(pair) < 4 and len(long_pair) > 9
    alone, short, long = fmt.encode(tokenizer, ["the cat sat on the mat and the dog ran in the park"] * 3,
                                    [None, "the sky", "a dog ran in the park, the grass is green"])
    assert alone == [7, *text[:10], 0]
    assert short == [7, *text[:9 - len(pair)], 0, *pair, 0]
    assert long == [7, *text[:4], 0, *long_pair[:5], 0] and len(long) == 12


def test_batches_cover_every_example_once_per_epoch_grouped_by_length():
    groups = [[[5] * n] for n in np.random.default_rng(0).integers(1, 40, size=103)]
    data = ExampleBatches(groups, torch.arange(103), batch_size=8, seed=3, pad_id=1, group_by_length=True)
    assert data.steps_per_epoch == 13
    seen, padded = [], 0
    for _ in range(13):
        x, y = data.next_batch()
        seen += y.tolist()
        padded += x["input_ids"].numel()
        assert torch.equal(x["attention_mask"].sum(1), torch.tensor([len(groups[i][0]) for i in y]))
    assert sorted(seen) == list(range(103))
    assert padded < 0.8 * 13 * 8 * max(len(g[0]) for g in groups)
    state = data.state_dict()
    assert state == {"epoch": 0, "position": 13}
    following = data.next_batch()[1]
    data.load_state_dict(state)
    assert torch.equal(data.next_batch()[1], following)  # a resume continues the same order
    assert data.state_dict() == {"epoch": 1, "position": 1}
    assert [b.tolist() for b in data.order(1)] != [b.tolist() for b in data.order(0)]  # epochs reshuffle


def test_bad_settings_and_examples_are_refused_with_their_names(tiny_hf_dir, tmp_path):
    with pytest.raises(ValidationError, match="lr"):
        FinetuneConfig(lr=0)
    with pytest.raises(ValidationError, match="epoch"):
        FinetuneConfig(epoch=3)
    with pytest.raises(UserError, match="training example 4: label 2 is not a class index"):
        finetune(tiny_hf_dir, "classification", ["n", "p"], [Ex(4, "x", label=2)], [], FinetuneConfig(),
                 tmp_path)
    with pytest.raises(UserError, match="evaluation example 0 has no choices"):
        finetune(tiny_hf_dir, "multiple_choice", None, [Ex(0, "x", choices=["a", "b"], label=0)], [Ex(0, "y")],
                 FinetuneConfig(), tmp_path)
    with pytest.raises(UserError, match="kind must be one of"):
        finetune(tiny_hf_dir, "ranking", None, [Ex(0, "x", label=0)], [], FinetuneConfig(), tmp_path)
