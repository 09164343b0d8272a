"""Statistics over evaluation results: bootstrap confidence intervals, the majority baseline and the
GLUE / SuperGLUE leaderboard averages. All scores are floats in 0-1 (correlations in -1..1), never percent."""
from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from tasks.core.errors import UserError
from tasks.evaluate.metrics import formulas

# rows of resample weights held at once: (rows, n) float64 arrays of about 4 MB
_CHUNK_CELLS = 500_000


class ResampledMetric:
    """One metric output over fixed predictions, scored on resamples of its examples.

    `metric(indices) -> float` scores the examples at `indices` (repeats count); bootstrap_ci uses the fast
    path `metric.weighted(weights) -> (B,)`, which scores B resamples given as (B, n) draw counts at once.
    `key` picks the output of a metric with several (multirc: "f1a" or "exact_match"; record: "f1" or
    "exact_match"). Group metrics (multirc exact_match, gender_parity) need whole groups resampled."""

    def __init__(self, name: str, predictions, references=None, *, groups=None, key: str | None = None):
        if name not in formulas.OUTPUTS:
            raise UserError(f"unknown metric {name!r}; known: {', '.join(formulas.OUTPUTS)}")
        outputs = formulas.OUTPUTS[name]
        if key is None and len(outputs) > 1:
            raise UserError(f"metric {name!r} has outputs {list(outputs)}: pass key= to pick one")
        if key is not None and key not in outputs:
            raise UserError(f"metric {name!r} has no output {key!r}; it has {list(outputs)}")
        self.name, self.key = name, key or outputs[0]
        self.predictions, self.references, self.groups = predictions, references, groups
        self.n = len(predictions)
        formulas.score(name, predictions, references, groups)  # check the inputs once, up front
        # matching answer strings is the slow part of ReCoRD: do it once, then only average
        self._per_query = None
        if name == "record":
            self._per_query = formulas.record_per_query(predictions, references)[self.key]

    def weighted(self, weights: np.ndarray) -> np.ndarray:
        """(B,) metric values for (B, n) draw counts."""
        if self._per_query is not None:
            return formulas.mean(self._per_query, weights)
        return formulas.score(self.name, self.predictions, self.references, self.groups, weights)[self.key]

    def __call__(self, indices) -> float:
        counts = np.bincount(np.asarray(indices, dtype=np.int64), minlength=self.n)
        return float(self.weighted(counts[None, :].astype(np.float64))[0])


def _group_members(groups: Sequence, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Group index of every example, and the examples of every group: members[starts[g]:][:sizes[g]]."""
    if len(groups) != n:
        raise UserError(f"groups has {len(groups)} items but there are {n} examples")
    _, codes = np.unique(np.asarray([str(g) for g in groups]), return_inverse=True)
    members = np.argsort(codes, kind="stable")
    sizes = np.bincount(codes)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    return codes, members, starts, sizes


def _draws(units: int, samples: int, seed: int, cells_per_row: int) -> Iterator[np.ndarray]:
    """(rows, units) matrices of drawn unit indices, `samples` rows in all; the chunking depends only on
    the arguments, so every caller with the same arguments sees the same draws."""
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_CELLS // max(cells_per_row, 1))
    for start in range(0, samples, rows):
        yield rng.integers(0, units, size=(min(rows, samples - start), units))


def _counts(draws: np.ndarray, units: int) -> np.ndarray:
    """(rows, units) draw counts of the drawn indices of every row."""
    rows = draws.shape[0]
    flat = (np.arange(rows)[:, None] * units + draws).ravel()
    return np.bincount(flat, minlength=rows * units).reshape(rows, units).astype(np.float64)


def bootstrap_ci(metric_fn: Callable[[np.ndarray], float], n: int, samples: int = 1000, seed: int = 0,
                 alpha: float = 0.05, groups: Sequence | None = None) -> tuple[float, float]:
    """Percentile bootstrap interval (alpha/2 and 1 - alpha/2 quantiles) of a metric over resampled examples.

    metric_fn(indices) scores the examples at `indices` (n of them drawn with replacement). With `groups`
    (one id per example: MultiRC question, AX-g pair, ...) whole groups are drawn instead, as many as there
    are groups, and a group drawn k times contributes its examples k times. A metric_fn with a `weighted`
    method (ResampledMetric) is scored on all resamples of a chunk at once from draw counts; the draws
    are the same either way for a given seed. Resamples where the metric is undefined (NaN, e.g. a
    correlation over a constant resample) are left out; (nan, nan) when all are."""
    if n < 1 or samples < 1:
        raise UserError(f"bootstrap_ci needs n >= 1 and samples >= 1, got n={n}, samples={samples}")
    if not 0 < alpha < 1:
        raise UserError(f"bootstrap_ci alpha must be in (0, 1), got {alpha}")
    weighted = getattr(metric_fn, "weighted", None)
    values: list[np.ndarray] = []
    if groups is None:
        for draws in _draws(n, samples, seed, n):
            if weighted is not None:
                values.append(np.asarray(weighted(_counts(draws, n)), dtype=np.float64))
            else:
                values.append(np.array([metric_fn(row) for row in draws], dtype=np.float64))
    else:
        codes, members, starts, sizes = _group_members(groups, n)
        units = len(sizes)
        for draws in _draws(units, samples, seed, n):
            if weighted is not None:
                values.append(np.asarray(weighted(_counts(draws, units)[:, codes]), dtype=np.float64))
            else:
                values.append(np.array([metric_fn(_expand(row, members, starts, sizes)) for row in draws]))
    stats = np.concatenate(values)
    stats = stats[~np.isnan(stats)]
    if len(stats) == 0:
        return math.nan, math.nan
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def _expand(drawn_groups: np.ndarray, members: np.ndarray, starts: np.ndarray,
            sizes: np.ndarray) -> np.ndarray:
    """The example indices of the drawn groups, group after group."""
    counts = sizes[drawn_groups]
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    return members[np.repeat(starts[drawn_groups], counts) + offsets]


def _majority(labels: Sequence) -> Any:
    """The most frequent label; on a tie the smallest of the tied labels."""
    counts = Counter(np.asarray(labels).tolist())
    top = max(counts.values())
    return min(label for label, c in counts.items() if c == top)


def majority_baseline(train_labels: Sequence | None, eval_labels: Sequence, metrics: Sequence[str], *,
                      kind: str = "classification", groups: Sequence | None = None) -> dict[str, Any]:
    """Scores of always predicting the train split's majority class (regression: the train mean).

    Without train labels (None or empty) the eval split's own majority is used: `source` says which.
    kind is TaskSpec.kind ("classification", "multiple_choice": label = index of the right choice, or
    "regression"). Each metric is computed with the same formulas as the model's scores; a score that is
    undefined for a constant prediction (a correlation) is None with the reason in `notes`, and so is
    ReCoRD, whose answers are entity strings with no majority class. groups: per eval example, for
    multirc and gender_parity. Returns {"source", "prediction", "scores": {output: float | None},
    "notes": {output: reason}}."""
    if kind not in ("classification", "multiple_choice", "regression"):
        raise UserError(f"majority_baseline kind must be classification, multiple_choice or regression, "
                        f"got {kind!r}")
    if len(eval_labels) == 0:
        raise UserError("majority_baseline needs eval labels; the eval split has none")
    unknown = [name for name in metrics if name not in formulas.OUTPUTS]
    if unknown:
        raise UserError(f"unknown metrics {unknown}; known: {', '.join(formulas.OUTPUTS)}")
    source = "train" if train_labels is not None and len(train_labels) > 0 else "eval"
    basis = train_labels if source == "train" else eval_labels
    prediction: Any = None
    if kind == "regression":
        prediction = float(np.mean(np.asarray(basis, dtype=np.float64)))
    elif any(name != "record" for name in metrics):
        prediction = _majority(basis)
    predictions = [prediction] * len(eval_labels)
    scores: dict[str, float | None] = {}
    notes: dict[str, str] = {}
    for name in metrics:
        if name == "record":
            for key in formulas.OUTPUTS[name]:
                scores[key] = None
                notes[key] = "ReCoRD answers are entity strings: there is no majority class to predict"
            continue
        result = formulas.score(name, predictions, list(eval_labels), groups)
        for key, value in result.items():
            if math.isnan(value):
                scores[key] = None
                notes[key] = f"undefined: {name} of a constant prediction ({prediction!r}) is NaN"
            else:
                scores[key] = float(value)
    return {"source": source, "prediction": prediction, "scores": scores, "notes": notes}


# The leaderboard rule, from the benchmark papers:
#  GLUE (Wang et al., ICLR 2019, sec. 3.4): "a macro-average of those [per-task] scores ... For tasks with
#  multiple metrics (e.g., accuracy and F1), we use an unweighted average of the metrics as the score for
#  the task". Nine tasks; MNLI is one of them, scored by the mean of its matched and mismatched accuracy
#  (this reproduces the paper's Table 4 averages, e.g. 58.9 for CBoW; counting MNLI-m and MNLI-mm as two
#  tasks does not). The diagnostic set AX is reported separately and not averaged.
#  SuperGLUE (Wang et al., NeurIPS 2019, sec. 3.3): "weighing each task equally, and for tasks with
#  multiple metrics, first averaging those metrics to get a task score". Eight tasks; AX-b and AX-g are
#  diagnostics outside the average.
# Each task: (result entry names, metrics) -- the task score averages every metric of every entry.
SUITES: dict[str, dict[str, tuple[tuple[str, ...], tuple[str, ...]]]] = {
    "glue": {
        "cola": (("cola",), ("matthews_correlation",)),
        "sst2": (("sst2",), ("accuracy",)),
        "mrpc": (("mrpc",), ("f1", "accuracy")),
        "qqp": (("qqp",), ("f1", "accuracy")),
        "stsb": (("stsb",), ("pearson", "spearman")),
        "mnli": (("mnli_matched", "mnli_mismatched"), ("accuracy",)),
        "qnli": (("qnli",), ("accuracy",)),
        "rte": (("rte",), ("accuracy",)),
        "wnli": (("wnli",), ("accuracy",)),
    },
    "superglue": {
        "boolq": (("boolq",), ("accuracy",)),
        "cb": (("cb",), ("accuracy", "macro_f1")),
        "copa": (("copa",), ("accuracy",)),
        "multirc": (("multirc",), ("f1a", "exact_match")),
        "record": (("record",), ("f1", "exact_match")),
        "rte": (("rte",), ("accuracy",)),
        "wic": (("wic",), ("accuracy",)),
        "wsc": (("wsc",), ("accuracy",)),
    },
}
# spellings of result names (after lowercasing and dropping everything but letters and digits)
_ALIASES = {"mnli": "mnli_matched", "mnlim": "mnli_matched", "mnlimatched": "mnli_matched",
            "mnlimm": "mnli_mismatched", "mnlimismatched": "mnli_mismatched", "wscfixed": "wsc",
            "diagnostic": "ax"}


def _canonical(name: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    return _ALIASES.get(key, key)


def suite_average(results: dict[str, dict[str, float | None]], suite: str) -> dict[str, Any]:
    """The GLUE or SuperGLUE leaderboard score of per-task results (0-1 floats) -- rule and sources above.

    results: {task: {metric: value}} with our metric output names (accuracy, f1, macro_f1,
    matthews_correlation, pearson, spearman, f1a, exact_match). Task names are matched ignoring case and
    punctuation: "STS-B" is stsb, "mnli"/"mnli-m" are MNLI matched, "mnli-mm" mismatched, "wsc.fixed" wsc.
    Returns {"suite", "score", "tasks": [{"task", "score", "metrics"}], "missing", "undefined", "ignored",
    "complete"}. A task or metric absent from results is listed in `missing` and left out: the task score
    averages the metrics present, the suite score the tasks present (None if none), so `score` matches the
    leaderboard's definition only when `complete`. A metric that is None or NaN (a correlation of constant
    predictions) counts as 0.0 and is listed in `undefined`. Entries outside the suite's average
    (diagnostics, other suites' or own tasks) are listed in `ignored`."""
    if suite not in SUITES:
        raise UserError(f"suite must be one of {sorted(SUITES)}, got {suite!r}")
    by_name: dict[str, tuple[str, dict[str, float | None]]] = {}
    for name, metrics in results.items():
        canonical = _canonical(name)
        if canonical in by_name:
            raise UserError(f"results name task {canonical!r} twice: {by_name[canonical][0]!r} and {name!r}")
        by_name[canonical] = (name, metrics)
    used: set[str] = set()
    tasks, missing, undefined = [], [], []
    for task, (entries, metric_names) in SUITES[suite].items():
        values: dict[str, float] = {}
        for entry in entries:
            if entry not in by_name:
                missing.append(entry)
                continue
            used.add(entry)
            original, metrics = by_name[entry]
            for metric in metric_names:
                label = metric if len(entries) == 1 else f"{entry}.{metric}"
                if metric not in metrics:
                    missing.append(f"{entry}.{metric}")
                    continue
                value = metrics[metric]
                if value is None or (isinstance(value, float) and math.isnan(value)):
                    undefined.append(f"{entry}.{metric}")
                    value = 0.0
                if not -1.0 <= value <= 1.0:
                    raise UserError(f"results[{original!r}][{metric!r}] = {value}: suite_average takes 0-1 "
                                    f"floats (correlations -1..1), not percent")
                values[label] = float(value)
        if values:
            tasks.append({"task": task, "score": sum(values.values()) / len(values), "metrics": values})
    ignored = sorted(by_name[name][0] for name in by_name if name not in used)
    score = sum(t["score"] for t in tasks) / len(tasks) if tasks else None
    return {"suite": suite, "score": score, "tasks": tasks, "missing": missing, "undefined": undefined,
            "ignored": ignored, "complete": not missing}
