"""Prompts for zero- and few-shot scoring: an example becomes a context and one continuation per choice.

Few-shot contexts are built the way lm-evaluation-harness builds them: each demonstration is its rendered
context followed by its gold continuation, demonstrations are joined by a separator, and the separator
then the query's context follow. The prediction is the choice with the highest log-likelihood, and for
acc_norm the highest log-likelihood per character (see `predict_from_scores`).
"""
from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, field_validator

from tasks.core.errors import UserError

if TYPE_CHECKING:
    from tasks.evaluate.score import ChoiceScore


class ExampleLike(Protocol):
    """What prompts read from an example (tasks.evaluate.data.Example has these attributes)."""

    idx: int
    text: str
    pair: str | None
    label: int | float | None
    choices: list[str] | None
    meta: dict[str, Any]


class PromptSpec(BaseModel):
    """How an example is turned into a context and its continuations."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # str.format over {text}, {pair} and every key of the example's meta
    template: str
    # the continuation of each class index, e.g. [" negative", " positive"]; None: the example's own choices,
    # each through choice_template
    choices: list[str] | None = None
    choice_template: str = " {choice}"  # over {choice} and the template's fields
    fewshot_separator: str = "\n\n"

    @field_validator("template", "choice_template")
    @classmethod
    def _named_fields_only(cls, value: str) -> str:
        names = _field_names(value)
        if "" in names or any(n.isdigit() for n in names):
            raise ValueError(f"{value!r} has a positional field ({{}} or {{0}}); name every field, "
                             "e.g. {text}")
        return value

    @field_validator("choices")
    @classmethod
    def _some_choices(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and len(value) < 2:
            raise ValueError("give at least two choices, or leave choices out to use each example's own")
        return value


def _field_names(template: str) -> list[str]:
    """The base names of a format string's fields ("{a.b}" -> "a"); ValueError when it does not parse."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"{template!r} is not a valid format string ({exc}); "
                         "write a literal brace as {{ or }}") from None
    return [re.match(r"[^.\[]*", name).group() for _, name, _, _ in parsed if name is not None]


def fill(template: str, fields: dict[str, Any], example: ExampleLike, what: str) -> str:
    missing = [n for n in _field_names(template) if n not in fields]
    if missing:
        raise UserError(f"prompt {what} field {{{missing[0]}}} is not in example {example.idx}; the fields "
                        f"available are {', '.join(sorted(fields))} (check the prompt's {what} or the data)")
    return template.format(**fields)


def example_fields(example: ExampleLike) -> dict[str, Any]:
    """The names a template may use: the example's meta, text and pair (when it has one)."""
    fields = {**example.meta, "text": example.text, "pair": example.pair}
    return {k: v for k, v in fields.items() if v is not None}


def continuations(spec: PromptSpec, example: ExampleLike) -> list[str]:
    """One continuation per choice: the spec's fixed ones, else the example's through choice_template."""
    if spec.choices is not None:
        return list(spec.choices)
    if not example.choices:
        raise UserError(f"example {example.idx} has no choices and the prompt gives none: set the prompt's "
                        "choices (one continuation per label) for a classification task")
    fields = example_fields(example)
    return [fill(spec.choice_template, {**fields, "choice": c}, example, "choice_template")
            for c in example.choices]


def fewshot_context(spec: PromptSpec, demos: Sequence[ExampleLike], query: ExampleLike | None = None) -> str:
    """Each demonstration's context and gold continuation, joined by the separator; then the separator and
    the query's context when a query is given ("" with neither demonstrations nor query)."""
    parts = [fill(spec.template, example_fields(d), d, "template") + _gold(spec, d) for d in demos]
    if query is not None:
        parts.append(fill(spec.template, example_fields(query), query, "template"))
    elif parts:
        parts.append("")
    return spec.fewshot_separator.join(parts)


def render(spec: PromptSpec, example: ExampleLike,
           demos: Sequence[ExampleLike] = ()) -> tuple[str, list[str]]:
    """(context, continuations) for one example, with the few-shot demonstrations before it."""
    return fewshot_context(spec, demos, example), continuations(spec, example)


def _gold(spec: PromptSpec, demo: ExampleLike) -> str:
    conts = continuations(spec, demo)
    label = demo.label
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(conts):
        raise UserError(f"few-shot demonstration {demo.idx} has label {label!r}, not the index of one of its "
                        f"{len(conts)} choices; draw demonstrations from a labelled split (train)")
    return conts[label]


def draw_demos(pool: Sequence[ExampleLike], k: int, seed: int, query: ExampleLike) -> list[ExampleLike]:
    """k demonstrations for `query` drawn from `pool` by an RNG seeded with (seed, query.idx), so a query's
    demonstrations do not depend on which other queries run; the query itself is never among them."""
    if k <= 0:
        return []
    rng = random.Random(f"{seed}:{query.idx}")
    picked = rng.sample(range(len(pool)), min(k + 1, len(pool)))
    demos = [pool[i] for i in picked if pool[i] is not query and pool[i] != query][:k]
    if len(demos) < k:
        raise UserError(f"{k}-shot prompts need {k} demonstrations besides the query but the split they come "
                        f"from has only {len(pool)} examples: lower the number of shots")
    return demos


def predict_from_scores(scores: Sequence[ChoiceScore]) -> tuple[int, int]:
    """(argmax of log-likelihood, argmax of log-likelihood per character), the first on ties, as lm-eval's
    acc and acc_norm. lm-eval divides by len(choice) where the request's continuation is
    target_delimiter + choice; ChoiceScore.norm_chars is that length (n_chars when it is not set)."""
    if not scores:
        raise ValueError("no scores to predict from")
    raw = [s.logprob for s in scores]
    norm = [s.logprob / max(1, s.n_chars if s.norm_chars is None else s.norm_chars) for s in scores]
    return raw.index(max(raw)), norm.index(max(norm))
