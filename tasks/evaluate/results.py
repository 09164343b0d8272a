"""A task's figures from its predictions: every official metric through its `evaluate` module, with a
bootstrap 95% interval (whole MultiRC questions and AX-g pairs resampled together)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from tasks.evaluate import stats
from tasks.evaluate.metrics import compute

# the registry's metric names -> (metric module, its output); the output's name is what results report
SOURCES = {"multirc_f1a": ("multirc", "f1a"), "exact_match": ("multirc", "exact_match"),
           "record_f1": ("record", "f1"), "record_em": ("record", "exact_match")}
GROUPED = ("multirc", "gender_parity")


def _references(module: str, examples: list[Any]) -> tuple[list[Any] | None, list[Any] | None]:
    """(references, groups) a metric module scores against: none for gender_parity, answer lists for
    ReCoRD, labels otherwise; group ids for the metrics that score whole groups."""
    groups = [ex.group for ex in examples] if module in GROUPED else None
    if module == "gender_parity":
        return None, groups
    return [ex.answers if module == "record" else ex.label for ex in examples], groups


class _Mean:
    """The mean of several runs' metric (one model fine-tuned with several seeds) on the same resample of
    examples; ResampledMetric's fast path on every run."""

    def __init__(self, runs: list[stats.ResampledMetric]):
        self.runs = runs

    def weighted(self, weights):
        return np.mean([run.weighted(weights) for run in self.runs], axis=0)

    def __call__(self, indices) -> float:
        return float(np.mean([run(indices) for run in self.runs]))


def _resampled(module: str, key: str, runs: list[list[Any]], refs, groups):
    metrics = [stats.ResampledMetric(module, p, refs, groups=groups, key=key) for p in runs]
    return metrics[0] if len(metrics) == 1 else _Mean(metrics)


def score_task(spec: Any, examples: list[Any], predictions: list[Any], samples: int = 1000,
               seed: int = 0, more_runs: Sequence[list[Any]] = ()) -> dict[str, dict[str, Any]]:
    """{output: {"value", "ci": [lo, hi] or None}} for each of the task's metrics. With more_runs (the
    predictions of the same model fine-tuned with other seeds) the value is the mean over all runs, each
    resample scores every run on the same examples (the interval is the examples' uncertainty about that
    mean), and `runs`, `run_values` and `sd` (between runs) are added."""
    runs = [predictions, *more_runs]
    out: dict[str, dict[str, Any]] = {}
    for metric in spec.metrics:
        module, key = SOURCES.get(metric, (metric, metric))
        refs, groups = _references(module, examples)
        extra = {"groups": groups} if groups is not None else {}
        values = [compute(module, p, refs, **extra)[key] for p in runs]
        value = None if any(v is None for v in values) else float(np.mean(values))
        ci = None
        if samples:
            fn = _resampled(module, key, runs, refs, groups)
            lo, hi = stats.bootstrap_ci(fn, len(examples), samples=samples, seed=seed, groups=groups)
            ci = [float(lo), float(hi)]
        out[key] = {"value": value, "ci": ci}
        if more_runs:
            out[key] |= {"runs": len(runs), "run_values": values,
                         "sd": None if value is None else float(np.std(values, ddof=1))}
    return out


class _Difference:
    """metric(a) - metric(b) on the same resample of examples: a paired bootstrap (ResampledMetric's fast
    path on both sides)."""

    def __init__(self, a: stats.ResampledMetric | _Mean, b: stats.ResampledMetric | _Mean):
        self.a, self.b = a, b

    def weighted(self, weights):
        return self.a.weighted(weights) - self.b.weighted(weights)

    def __call__(self, indices) -> float:
        return self.a(indices) - self.b(indices)


def transfer_effect(spec: Any, examples: list[Any], predictions: list[Any], baseline: list[Any],
                    samples: int = 1000, seed: int = 0, more_runs: Sequence[list[Any]] = (),
                    more_baseline: Sequence[list[Any]] = ()) -> dict[str, dict[str, Any]]:
    """The pretrained model's score minus the random-init model's, per metric, on the same examples, with a
    paired bootstrap 95% interval (both scored on each resample): `separated` when it excludes 0. Two
    overlapping marginal intervals do not mean no difference; this interval says whether there is one.
    With several fine-tuning seeds (more_runs, more_baseline) each side is the mean over its runs."""
    a = score_task(spec, examples, predictions, samples=0, more_runs=more_runs)
    b = score_task(spec, examples, baseline, samples=0, more_runs=more_baseline)
    out: dict[str, dict[str, Any]] = {}
    for metric in spec.metrics:
        module, key = SOURCES.get(metric, (metric, metric))
        value = None if a[key]["value"] is None or b[key]["value"] is None else a[key]["value"] - b[key]["value"]
        ci = None
        if samples and value is not None:
            refs, groups = _references(module, examples)
            diff = _Difference(_resampled(module, key, [predictions, *more_runs], refs, groups),
                               _resampled(module, key, [baseline, *more_baseline], refs, groups))
            lo, hi = stats.bootstrap_ci(diff, len(examples), samples=samples, seed=seed, groups=groups)
            ci = [float(lo), float(hi)]
        out[key] = {"value": value, "ci": ci, "separated": None if ci is None else bool(ci[0] > 0 or ci[1] < 0)}
    return out


def majority(spec: Any, train: list[Any] | None, evaluation: list[Any]) -> dict[str, Any]:
    """The majority-class baseline (stats.majority_baseline: the train split's majority, else the eval
    split's; regression: the train mean) in score_task's shape: {"label", "from", "metrics", "notes"}."""
    modules = list(dict.fromkeys(SOURCES.get(m, (m, m))[0] for m in spec.metrics))
    refs = [ex.answers for ex in evaluation] if "record" in modules else [ex.label for ex in evaluation]
    groups = [ex.group for ex in evaluation] if any(m in GROUPED for m in modules) else None
    base = stats.majority_baseline([ex.label for ex in train] if train else None, refs, modules, kind=spec.kind,
                                   groups=groups)
    return {"label": base["prediction"], "from": base["source"], "notes": base["notes"],
            "metrics": {key: {"value": value, "ci": None} for key, value in base["scores"].items()}}


LEADERBOARD_NAMES = {"rte_sg": "rte"}  # our name for SuperGLUE's RTE (GLUE has its own)


def averages(done: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """GLUE and SuperGLUE averages (stats.suite_average: the leaderboards' rule):
    `<suite>`: the pretrained model over every task it was scored on (fine-tuned, few- or zero-shot);
    `<suite>_finetuned` and `<suite>_random_init`: the pretrained model and the same architecture from
    random initialization over the same fine-tuned tasks, the like-for-like transfer-learning comparison."""
    out = {}
    for suite in ("glue", "superglue"):
        finished = {name: r for name, r in done.items() if r.get("status") == "done" and r.get("suite") == suite}
        paired = {name: r for name, r in finished.items() if "random_init" in r}
        for label, tasks, variant in ((suite, finished, "metrics"), (f"{suite}_finetuned", paired, "metrics"),
                                      (f"{suite}_random_init", paired, "random_init")):
            scores = {LEADERBOARD_NAMES.get(name, name): {m: v["value"] for m, v in r[variant].items()}
                      for name, r in tasks.items()}
            if scores:
                out[label] = stats.suite_average(scores, suite)
    return out
