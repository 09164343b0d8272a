"""Bootstrap intervals, the majority baseline and the GLUE / SuperGLUE averages."""
from __future__ import annotations

import time
from collections import Counter

import numpy as np
import pytest

from tasks.core.errors import UserError
from tasks.evaluate.metrics import formulas
from tasks.evaluate.stats import ResampledMetric, bootstrap_ci, majority_baseline, suite_average


def _labels(n: int, seed: int = 0, right: float = 0.75, k: int = 2):
    rng = np.random.default_rng(seed)
    refs = rng.integers(0, k, n)
    preds = np.where(rng.random(n) < right, refs, (refs + 1) % k)
    return preds, refs


def test_interval_holds_the_estimate_and_narrows_with_n():
    widths = []
    for n in (200, 5000):
        preds, refs = _labels(n)
        lo, hi = bootstrap_ci(ResampledMetric("accuracy", preds, refs), n, samples=500)
        assert lo < formulas.accuracy(preds, refs) < hi
        widths.append(hi - lo)
    # the width shrinks as 1 / sqrt(n): 5 times narrower for 25 times the examples
    assert widths[1] < widths[0] / 3


@pytest.mark.parametrize("name", ["accuracy", "f1", "macro_f1", "matthews_correlation", "pearson",
                                  "spearman"])
def test_vectorized_path_equals_the_generic_one(name):
    n = 400
    if name in ("pearson", "spearman"):
        rng = np.random.default_rng(1)
        refs = np.round(rng.normal(size=n) * 2) / 2  # ties
        preds = refs + rng.normal(size=n)
    else:
        preds, refs = _labels(n, seed=1, k=3 if name in ("macro_f1", "matthews_correlation") else 2)
    fn = getattr(formulas, name)
    generic = bootstrap_ci(lambda idx: fn(preds[idx], refs[idx]), n, samples=300, seed=7)
    fast = bootstrap_ci(ResampledMetric(name, preds, refs), n, samples=300, seed=7)
    assert fast == pytest.approx(generic, abs=1e-12)
    assert bootstrap_ci(ResampledMetric(name, preds, refs), n, samples=300, seed=8) != pytest.approx(fast)


def _relabel_copies(idx: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Group ids that tell apart two draws of one group (a new block starts when the index does not grow)."""
    new_block = np.concatenate(([True], (groups[idx][1:] != groups[idx][:-1]) | (np.diff(idx) <= 0)))
    return np.cumsum(new_block)


def test_group_resampling_keeps_groups_whole():
    rng = np.random.default_rng(3)
    sizes = rng.integers(1, 6, 40)  # MultiRC-like questions with 1-5 answer options
    groups = np.repeat([f"q{i}" for i in range(40)], sizes)
    rng.shuffle(groups)
    n = len(groups)
    seen = []

    def check(idx):
        counts = Counter(groups[idx].tolist())
        per_example = np.bincount(idx, minlength=n)
        for g, c in counts.items():
            members = np.flatnonzero(groups == g)
            assert (per_example[members] == per_example[members[0]]).all()  # all members drawn alike
            assert c == per_example[members[0]] * len(members)
        seen.append(sum(c // (groups == g).sum() for g, c in counts.items()))
        return float(len(idx))

    bootstrap_ci(check, n, samples=50, groups=groups.tolist())
    assert seen == [40] * 50  # as many groups drawn as there are


def test_grouped_metric_vectorized_equals_generic():
    rng = np.random.default_rng(4)
    sizes = rng.integers(2, 5, 60)
    groups = np.repeat(np.arange(60), sizes)
    refs = rng.integers(0, 2, len(groups))
    preds = np.where(rng.random(len(groups)) < 0.8, refs, 1 - refs)
    n = len(groups)
    for key in ("f1a", "exact_match"):
        metric = ResampledMetric("multirc", preds, refs, groups=groups, key=key)
        generic = bootstrap_ci(
            lambda idx, key=key: formulas.multirc(preds[idx], refs[idx], _relabel_copies(idx, groups))[key],
            n, samples=200, groups=groups)
        assert bootstrap_ci(metric, n, samples=200, groups=groups) == pytest.approx(generic, abs=1e-12)
    with pytest.raises(ValueError, match="whole groups"):
        bootstrap_ci(ResampledMetric("multirc", preds, refs, groups=groups, key="exact_match"), n, samples=5)


def test_record_vectorized_equals_generic():
    rng = np.random.default_rng(5)
    names = ["Paris", "the Louvre", "Seine", "Notre Dame", "Versailles"]
    golds = [[names[i]] + ([names[(i + 1) % 5]] if i % 2 else []) for i in rng.integers(0, 5, 80)]
    preds = np.array([rng.choice(g) if rng.random() < 0.5 else "the " + names[j] + " museum"
                      for g, j in zip(golds, rng.integers(0, 5, 80), strict=True)])
    for key in ("f1", "exact_match"):
        generic = bootstrap_ci(lambda idx, key=key: formulas.record(preds[idx], [golds[i] for i in idx])[key],
                               80, samples=100)
        fast = bootstrap_ci(ResampledMetric("record", preds, golds, key=key), 80, samples=100)
        assert fast == pytest.approx(generic, abs=1e-12)


def test_bootstrap_is_fast_on_10k_examples():
    n = 10_000
    preds, refs = _labels(n)
    start = time.perf_counter()
    for name in ("accuracy", "f1", "matthews_correlation"):
        bootstrap_ci(ResampledMetric(name, preds, refs), n, samples=1000)
    # about 0.1 s each on an idle core; generous for a busy machine, far below a per-resample loop
    assert time.perf_counter() - start < 4.0


def test_bootstrap_errors_and_undefined_resamples():
    with pytest.raises(UserError, match="alpha"):
        bootstrap_ci(lambda idx: 0.0, 10, alpha=1.5)
    with pytest.raises(UserError, match="groups has 2 items"):
        bootstrap_ci(lambda idx: 0.0, 3, groups=["a", "b"])
    with pytest.raises(UserError, match="pass key="):
        ResampledMetric("multirc", [1], [1], groups=["a"])
    lo, hi = bootstrap_ci(ResampledMetric("pearson", [1.0, 1.0, 1.0], [1.0, 2.0, 3.0]), 3, samples=20)
    assert np.isnan(lo) and np.isnan(hi)


def test_majority_baseline():
    train = [0, 1, 1, 1, 2]
    evals = [1, 1, 0, 2, 0, 1]
    out = majority_baseline(train, evals, ["accuracy", "macro_f1", "matthews_correlation", "f1"])
    assert out["source"] == "train" and out["prediction"] == 1
    assert out["scores"]["accuracy"] == pytest.approx(0.5)
    assert out["scores"]["matthews_correlation"] == 0.0
    assert out["scores"]["macro_f1"] == pytest.approx((2 * 3 / (6 + 3)) / 3)  # class 1: P=1/2, R=1
    assert out["scores"]["f1"] == pytest.approx(2 / 3)
    # no train split: the eval majority; a tie goes to the smallest label
    out = majority_baseline(None, [2, 0, 2, 0], ["accuracy"])
    assert out["source"] == "eval" and out["prediction"] == 0 and out["scores"]["accuracy"] == 0.5


def test_majority_baseline_regression_and_groups():
    out = majority_baseline([1.0, 2.0, 6.0], [0.5, 4.0, 3.0], ["pearson", "spearman"], kind="regression")
    assert out["prediction"] == pytest.approx(3.0)
    assert out["scores"] == {"pearson": None, "spearman": None}
    assert "constant prediction" in out["notes"]["pearson"]
    out = majority_baseline([0, 0, 1], [0, 1, 0, 0], ["multirc"], groups=["a", "a", "b", "b"])
    assert out["scores"] == {"f1a": 0.0, "exact_match": 0.5}
    out = majority_baseline(None, [["x"]], ["record"])
    assert out["scores"] == {"f1": None, "exact_match": None} and "entity" in out["notes"]["f1"]


# The GLUE paper's Table 4, CBoW row (test sets, x100): average 58.9
CBOW = {"CoLA": {"matthews_correlation": 0.0}, "SST-2": {"accuracy": 0.800},
        "MRPC": {"accuracy": 0.734, "f1": 0.815}, "QQP": {"accuracy": 0.791, "f1": 0.514},
        "STS-B": {"pearson": 0.612, "spearman": 0.587}, "MNLI-m": {"accuracy": 0.560},
        "MNLI-mm": {"accuracy": 0.564}, "QNLI": {"accuracy": 0.721}, "RTE": {"accuracy": 0.541},
        "WNLI": {"accuracy": 0.651}, "AX": {"matthews_correlation": 0.09}}
# The SuperGLUE paper's Table 3, BERT row (x100): average 69.0
BERT = {"boolq": {"accuracy": 0.774}, "cb": {"macro_f1": 0.757, "accuracy": 0.836},
        "copa": {"accuracy": 0.706},
        "multirc": {"f1a": 0.700, "exact_match": 0.240}, "record": {"f1": 0.720, "exact_match": 0.713},
        "rte": {"accuracy": 0.716}, "wic": {"accuracy": 0.695}, "wsc": {"accuracy": 0.643},
        "axb": {"matthews_correlation": 0.230}, "axg": {"gender_parity": 0.978, "accuracy": 0.517}}


def test_suite_average_reproduces_the_papers():
    glue = suite_average(CBOW, "glue")
    assert glue["score"] == pytest.approx(0.589, abs=5e-4) and glue["complete"]
    assert glue["ignored"] == ["AX"] and len(glue["tasks"]) == 9
    mnli = next(t for t in glue["tasks"] if t["task"] == "mnli")
    assert mnli["score"] == pytest.approx(0.562)
    superglue = suite_average(BERT, "superglue")
    assert superglue["score"] == pytest.approx(0.690, abs=5e-4) and superglue["complete"]
    assert superglue["ignored"] == ["axb", "axg"]


def test_suite_average_missing_undefined_and_percent():
    results = {"cola": {"matthews_correlation": 0.2}, "mrpc": {"accuracy": 0.7},
               "stsb": {"pearson": float("nan"), "spearman": 0.4}, "mnli": {"accuracy": 0.6}}
    out = suite_average(results, "glue")
    assert not out["complete"]
    assert "mrpc.f1" in out["missing"] and "qqp" in out["missing"] and "mnli_mismatched" in out["missing"]
    assert out["undefined"] == ["stsb.pearson"]
    # cola 0.2, mrpc 0.7 (accuracy only), stsb (0 + 0.4) / 2, mnli matched only 0.6
    assert out["score"] == pytest.approx((0.2 + 0.7 + 0.2 + 0.6) / 4)
    with pytest.raises(UserError, match="not percent"):
        suite_average({"sst2": {"accuracy": 91.5}}, "glue")
    with pytest.raises(UserError, match="twice"):
        suite_average({"sst2": {"accuracy": 0.9}, "SST-2": {"accuracy": 0.9}}, "glue")
    assert suite_average({}, "superglue")["score"] is None


def test_transfer_effect_is_a_paired_difference_that_sees_what_marginal_intervals_miss():
    """Two classifiers that agree on most examples: their marginal intervals overlap, the paired interval of
    the difference (both scored on the same resamples) does not contain 0; the fast path equals the slow."""
    from types import SimpleNamespace

    from tasks.evaluate.data import resolve
    from tasks.evaluate.results import _Difference, score_task, transfer_effect

    spec = resolve(["sst2"])[0]
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, 800)
    examples = [SimpleNamespace(label=int(y), group=None, answers=None) for y in gold]
    base = np.where(rng.random(800) < 0.70, gold, 1 - gold)
    better = base.copy()
    wrong = np.flatnonzero(base != gold)
    better[wrong[: len(wrong) // 6]] = gold[wrong[: len(wrong) // 6]]  # fixes 1 in 6 of the baseline's errors
    a, b = score_task(spec, examples, better.tolist()), score_task(spec, examples, base.tolist())
    assert a["accuracy"]["ci"][0] < b["accuracy"]["ci"][1]  # the marginal intervals overlap
    t = transfer_effect(spec, examples, better.tolist(), base.tolist(), samples=500, seed=1)["accuracy"]
    assert t["value"] == pytest.approx(a["accuracy"]["value"] - b["accuracy"]["value"])
    assert 0 < t["ci"][0] <= t["value"] <= t["ci"][1] and t["separated"] is True
    same = transfer_effect(spec, examples, base.tolist(), base.tolist(), samples=200)["accuracy"]
    assert same["value"] == 0 and same["ci"] == [0.0, 0.0] and same["separated"] is False
    refs = gold.tolist()
    diff = _Difference(ResampledMetric("accuracy", better.tolist(), refs), ResampledMetric("accuracy", base.tolist(), refs))
    slow = bootstrap_ci(lambda idx: diff(idx), 800, samples=200, seed=3)
    assert bootstrap_ci(diff, 800, samples=200, seed=3) == pytest.approx(slow)


def test_several_fine_tuning_runs_score_as_their_mean_and_resample_the_same_examples():
    """Three runs' accuracy is the mean of the three, their sd is reported, and each resample scores every
    run on the same examples (the fast path equals averaging the runs' slow paths); the transfer of several
    runs per side is the difference of the means."""
    from types import SimpleNamespace

    from tasks.evaluate.data import resolve
    from tasks.evaluate.results import _Mean, score_task, transfer_effect

    spec = resolve(["sst2"])[0]
    rng = np.random.default_rng(0)
    gold = rng.integers(0, 2, 400)
    examples = [SimpleNamespace(label=int(y), group=None, answers=None) for y in gold]
    runs = [np.where(rng.random(400) < p, gold, 1 - gold).tolist() for p in (0.6, 0.7, 0.8)]
    accs = [float(np.mean(np.array(r) == gold)) for r in runs]
    one = score_task(spec, examples, runs[0], samples=200, seed=2)["accuracy"]
    assert "runs" not in one and one["value"] == pytest.approx(accs[0])
    three = score_task(spec, examples, runs[0], samples=200, seed=2, more_runs=runs[1:])["accuracy"]
    assert three["value"] == pytest.approx(np.mean(accs)) and three["runs"] == 3
    assert three["run_values"] == pytest.approx(accs) and three["sd"] == pytest.approx(np.std(accs, ddof=1))
    assert three["ci"][0] < three["value"] < three["ci"][1]
    refs = gold.tolist()
    mean = _Mean([ResampledMetric("accuracy", r, refs) for r in runs])
    slow = bootstrap_ci(lambda idx: float(np.mean([ResampledMetric("accuracy", r, refs)(idx) for r in runs])),
                        400, samples=100, seed=3)
    assert bootstrap_ci(mean, 400, samples=100, seed=3) == pytest.approx(slow)
    t = transfer_effect(spec, examples, runs[2], runs[0], samples=200, more_runs=[runs[1]],
                        more_baseline=[runs[0]])["accuracy"]
    assert t["value"] == pytest.approx((accs[2] + accs[1]) / 2 - accs[0])
    assert t["ci"][0] <= t["value"] <= t["ci"][1]
