"""Precision and recall per entity type on the labeled evaluation set shipped in tasks/pii/eval/.

A predicted span is correct when it overlaps a gold span of the same entity type; a gold span is found
when predicted spans of its type cover at least half of it. Both engines of `bench.pii` and the stage's
report (`precision_eval`) use this scoring.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

EVAL_SET = Path(__file__).parent / "eval" / "pii_eval.jsonl"


def load_eval_set(path: Path = EVAL_SET) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _overlap(a_start: int, a_end: int, b_start: int, b_end: int) -> int:
    return max(0, min(a_end, b_end) - max(a_start, b_start))


def score_spans(predicted: Iterable[Sequence[Any]], gold: Iterable[Sequence[dict[str, Any]]],
                entities: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """Per entity type: gold, found, recall, predicted, correct, precision (None when undefined).

    `predicted` holds, per text, spans with .start/.end/.entity; `gold` holds, per text, dicts with
    start/end/entity. Only `entities` are scored when given (gold spans of other types are ignored, as
    an engine that does not look for them cannot find them).
    """
    wanted = set(entities) if entities is not None else None
    acc: dict[str, Counter] = defaultdict(Counter)
    for spans, truth in zip(predicted, gold):
        truth = [t for t in truth if wanted is None or t["entity"] in wanted]
        for t in truth:
            covered = sum(_overlap(s.start, s.end, t["start"], t["end"]) for s in spans
                          if s.entity == t["entity"])
            acc[t["entity"]]["gold"] += 1
            acc[t["entity"]]["found"] += covered * 2 >= t["end"] - t["start"]
        for s in spans:
            if wanted is not None and s.entity not in wanted:
                continue
            acc[s.entity]["predicted"] += 1
            acc[s.entity]["correct"] += any(t["entity"] == s.entity and
                                            _overlap(s.start, s.end, t["start"], t["end"]) > 0 for t in truth)
    table = {}
    for entity in sorted(acc):
        c = acc[entity]
        table[entity] = {"gold": c["gold"], "found": c["found"], "predicted": c["predicted"],
                         "correct": c["correct"],
                         "recall": round(c["found"] / c["gold"], 4) if c["gold"] else None,
                         "precision": round(c["correct"] / c["predicted"], 4) if c["predicted"] else None}
    return table


def evaluate_engine(engine: Any, records: list[dict[str, Any]] | None = None,
                    batch_size: int = 64) -> dict[str, dict[str, Any]]:
    """Run a PiiEngine's detection (NER included when it has a model) over the evaluation set and score
    the entity types it detects."""
    records = load_eval_set() if records is None else records
    predicted = []
    for i in range(0, len(records), batch_size):
        texts = [r["text"] for r in records[i:i + batch_size]]
        ner = engine.ner.spans_batch(texts) if engine.ner else [[] for _ in texts]
        predicted += [engine.detect(text, [] if isinstance(n, Exception) else n) for text, n in zip(texts, ner)]
    return score_spans(predicted, [r["spans"] for r in records], engine.plan.entities)


def format_table(table: dict[str, dict[str, Any]]) -> list[str]:
    """Rows `entity  precision  recall  (correct/predicted, found/gold)` for printing."""
    return [f"{e:<14} P {_fmt(r['precision'])}  R {_fmt(r['recall'])}  "
            f"({r['correct']}/{r['predicted']} predicted correct, {r['found']}/{r['gold']} gold found)"
            for e, r in table.items()]


def _fmt(x: float | None) -> str:
    return "   -  " if x is None else f"{x:6.3f}"
