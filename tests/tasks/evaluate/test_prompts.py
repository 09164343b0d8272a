"""Prompt rendering, few-shot contexts, demonstration drawing and the prediction from scores."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import ValidationError

from tasks.core.errors import UserError
from tasks.evaluate.prompts import (
    PromptSpec,
    continuations,
    draw_demos,
    example_fields,
    fewshot_context,
    predict_from_scores,
    render,
)
from tasks.evaluate.score import ChoiceScore


@dataclass
class Ex:
    """The attributes prompts read from tasks.evaluate.data.Example."""

    idx: int
    text: str
    pair: str | None = None
    label: int | float | None = None
    choices: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


SST = PromptSpec(template="{text}\nQuestion: Is this positive or negative?\nAnswer:",
                 choices=[" negative", " positive"])
COPA = PromptSpec(template="{text} {connector}")


def test_classification_prompt_renders_text_and_fixed_choices():
    context, conts = render(SST, Ex(0, "a great movie", label=1))
    assert context == "a great movie\nQuestion: Is this positive or negative?\nAnswer:"
    assert conts == [" negative", " positive"]


def test_pair_and_meta_fields_and_the_examples_own_choices():
    spec = PromptSpec(template="{text} Question: {pair} Is '{word}' used the same way?",
                      choices=[" no", " yes"])
    ex = Ex(3, "He ate a bat.", pair="The bat flew.", meta={"word": "bat"})
    assert render(spec, ex)[0] == "He ate a bat. Question: The bat flew. Is 'bat' used the same way?"
    copa = Ex(1, "The man broke his toe", choices=["He dropped a hammer.", "He got a hole in his sock."],
              meta={"connector": "because"})
    assert render(COPA, copa) == ("The man broke his toe because",
                                  [" He dropped a hammer.", " He got a hole in his sock."])
    lower = COPA.model_copy(update={"choice_template": " {choice}!"})
    assert continuations(lower, copa)[0] == " He dropped a hammer.!"
    assert example_fields(Ex(0, "t")) == {"text": "t"}  # no pair: not a field


def test_a_missing_field_names_the_field_and_those_available():
    with pytest.raises(UserError, match=r"field \{word\} is not in example 7; the fields available are pair, "
                                        r"span, text"):
        render(PromptSpec(template="{text} {word}", choices=[" a", " b"]),
               Ex(7, "x", pair="y", meta={"span": "z"}))
    with pytest.raises(UserError, match=r"field \{pair\} is not in example 2"):
        render(PromptSpec(template="{text} {pair}", choices=[" a", " b"]), Ex(2, "x"))
    with pytest.raises(UserError, match="example 4 has no choices and the prompt gives none"):
        render(PromptSpec(template="{text}"), Ex(4, "x"))


def test_spec_rejects_unknown_keys_positional_fields_bad_braces_and_one_choice():
    with pytest.raises(ValidationError, match="extra"):
        PromptSpec(template="{text}", choises=[" a", " b"])
    with pytest.raises(ValidationError, match="positional field"):
        PromptSpec(template="{} is")
    with pytest.raises(ValidationError, match="not a valid format string"):
        PromptSpec(template="{text")
    with pytest.raises(ValidationError, match="at least two choices"):
        PromptSpec(template="{text}", choices=[" yes"])


def test_fewshot_context_is_demos_with_gold_answers_then_the_query():
    demos = [Ex(10, "awful", label=0), Ex(11, "lovely", label=1)]
    spec = PromptSpec(template="Review: {text}\nSentiment:", choices=[" negative", " positive"],
                      fewshot_separator="\n###\n")
    query = Ex(0, "fine", label=1)
    context, conts = render(spec, query, demos)
    assert context == ("Review: awful\nSentiment: negative\n###\nReview: lovely\nSentiment: positive\n###\n"
                       "Review: fine\nSentiment:")
    assert conts == [" negative", " positive"]
    assert fewshot_context(spec, demos) + render(spec, query)[0] == context
    assert fewshot_context(spec, []) == "" and render(spec, query, [])[0] == "Review: fine\nSentiment:"
    copa_demo = Ex(5, "It rained", label=1, choices=["sun", "wet ground"], meta={"connector": "so"})
    assert fewshot_context(COPA, [copa_demo]) == "It rained so wet ground\n\n"


def test_a_demo_without_a_usable_label_is_refused():
    for label in (None, 2, 0.5, True):
        with pytest.raises(UserError, match="draw demonstrations from a labelled split"):
            fewshot_context(SST, [Ex(9, "x", label=label)])


def test_demos_are_seeded_per_query_and_never_the_query():
    pool = [Ex(i, f"sentence {i}", label=i % 2) for i in range(30)]
    for q in pool:
        demos = draw_demos(pool, 5, seed=1, query=q)
        assert len(demos) == 5 and q not in demos and len({d.idx for d in demos}) == 5
        assert demos == draw_demos(pool, 5, seed=1, query=q)
    outside = Ex(3, "a validation example", label=0)  # same idx as a train example, different example
    assert pool[3] in [d for s in range(20) for d in draw_demos(pool[:8], 5, seed=s, query=outside)]
    draws = {tuple(d.idx for d in draw_demos(pool, 5, seed=s, query=pool[0])) for s in range(10)}
    assert len(draws) > 5
    assert draw_demos(pool, 0, seed=1, query=pool[0]) == []
    assert {d.idx for d in draw_demos(pool[:3], 2, seed=0, query=pool[1])} == {0, 2}
    with pytest.raises(UserError, match="3-shot prompts need 3 demonstrations"):
        draw_demos(pool[:3], 3, seed=0, query=pool[1])


def test_prediction_and_character_normalized_prediction():
    scores = [ChoiceScore(-4.0, 2, 4, False, 3), ChoiceScore(-6.0, 3, 13, False, 12)]
    assert predict_from_scores(scores) == (0, 1)  # -4/3 < -6/12
    assert predict_from_scores([ChoiceScore(-2.0, 1, 2, True), ChoiceScore(-2.0, 1, 2, True)]) == (0, 0)
    # the divisor is lm-eval's len(choice), without the delimiter: -3/2 < -5/4; by n_chars -3/3 == -5/5 ties
    with_norm = [ChoiceScore(-3.0, 1, 3, False, 2), ChoiceScore(-5.0, 1, 5, False, 4)]
    assert predict_from_scores(with_norm) == (0, 1)
    assert predict_from_scores([ChoiceScore(-3.0, 1, 3, False), ChoiceScore(-5.0, 1, 5, False)]) == (0, 0)
    with pytest.raises(ValueError):
        predict_from_scores([])
