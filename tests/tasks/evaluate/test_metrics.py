"""The evaluate metric modules against scikit-learn and scipy, and the weighted formulas behind them."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from tasks.core.errors import UserError
from tasks.evaluate import metrics
from tasks.evaluate.metrics import METRICS, compute, formulas

SEEDS = (0, 1, 2)


@pytest.fixture(scope="module", autouse=True)
def modules_cache(tmp_path_factory):
    """evaluate copies module scripts into its modules cache: keep that under the test's temp dir, unless an
    earlier test of this process already imported evaluate's module package (`evaluate_modules`, one per
    process) from the default cache: a second cache would not be on that package's path."""
    import sys

    import evaluate.config

    with pytest.MonkeyPatch.context() as mp:
        if not any(name.startswith("evaluate_modules") for name in sys.modules):
            mp.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path_factory.mktemp("hf-modules"))
        mp.setattr(metrics, "_loaded", {})
        yield


def _classes(seed: int, n: int = 300, k: int = 2):
    rng = np.random.default_rng(seed)
    refs = rng.integers(0, k, n)
    preds = np.where(rng.random(n) < 0.7, refs, rng.integers(0, k, n))
    return preds, refs


def _scores(seed: int, n: int = 300, ties: bool = False):
    rng = np.random.default_rng(seed)
    refs = rng.normal(size=n)
    preds = refs + rng.normal(size=n)
    if ties:  # few distinct values, as STS-B's 0-5 scale in steps
        refs, preds = np.round(refs * 2) / 2, np.round(preds)
    return preds, refs


@pytest.mark.parametrize("seed", SEEDS)
def test_classification_modules_match_sklearn(seed):
    preds, refs = _classes(seed)
    assert compute("accuracy", preds, refs)["accuracy"] == pytest.approx(
        accuracy_score(refs, preds), abs=1e-12)
    assert compute("f1", preds, refs)["f1"] == pytest.approx(f1_score(refs, preds), abs=1e-12)
    assert compute("matthews_correlation", preds, refs)["matthews_correlation"] == pytest.approx(
        matthews_corrcoef(refs, preds), abs=1e-12)
    preds3, refs3 = _classes(seed, k=3)
    assert compute("macro_f1", preds3, refs3)["macro_f1"] == pytest.approx(
        f1_score(refs3, preds3, average="macro"), abs=1e-12)
    assert compute("matthews_correlation", preds3, refs3)["matthews_correlation"] == pytest.approx(
        matthews_corrcoef(refs3, preds3), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("ties", [False, True])
def test_correlation_modules_match_scipy(seed, ties):
    preds, refs = _scores(seed, ties=ties)
    assert compute("pearson", preds, refs)["pearson"] == pytest.approx(pearsonr(preds, refs)[0], abs=1e-12)
    assert compute("spearman", preds, refs)["spearman"] == pytest.approx(
        spearmanr(preds, refs)[0], abs=1e-12)


def test_edge_cases_match_the_references():
    one_class = [1, 1, 1, 1]
    mixed = [0, 1, 1, 0]
    # all one class: MCC is undefined and scikit-learn reports 0, as we do
    assert compute("matthews_correlation", one_class, mixed)["matthews_correlation"] == 0.0
    assert matthews_corrcoef(mixed, one_class) == 0.0
    # no positive predicted or labelled: F1 0 (scikit-learn's zero_division=0)
    assert compute("f1", [0, 0], [0, 0])["f1"] == 0.0 == f1_score([0, 0], [0, 0], zero_division=0)
    # a class only predicted counts in macro F1 with score 0
    assert compute("macro_f1", [0, 2, 1], [0, 1, 1])["macro_f1"] == pytest.approx(
        f1_score([0, 1, 1], [0, 2, 1], average="macro"))
    # constant input: correlation undefined, NaN as scipy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert math.isnan(pearsonr([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])[0])
    assert math.isnan(compute("pearson", [1.0, 1.0, 1.0], [1.0, 2.0, 3.0])["pearson"])
    assert math.isnan(compute("spearman", [1.0, 2.0, 3.0], [2.0, 2.0, 2.0])["spearman"])
    # a perfectly anti-correlated pair stays inside [-1, 1]
    assert compute("pearson", [1.0, 2.0, 3.0], [3.0, 2.0, 1.0])["pearson"] == -1.0


def test_multirc_by_hand():
    # question a: both options right; b: its first option wrong; c: both right
    preds = [1, 0, 1, 1, 0, 0]
    refs = [1, 0, 0, 1, 0, 0]
    out = compute("multirc", preds, refs, groups=["a", "a", "b", "b", "c", "c"])
    # positives: tp = 2 (options 0, 3), fp = 1 (option 2), fn = 0 -> F1 = 4 / 5
    assert out["f1a"] == pytest.approx(0.8) == pytest.approx(f1_score(refs, preds))
    assert out["exact_match"] == pytest.approx(2 / 3)


def test_record_by_hand():
    preds = ["The Eiffel Tower!", "Paris France", "london"]
    golds = [["Eiffel Tower"], ["Paris", "France"], ["Berlin", "Bonn"]]
    out = compute("record", preds, golds)
    # 1: exact after normalization; 2: best gold "Paris" gives P=1/2, R=1 -> F1 2/3, no exact; 3: nothing
    assert out["exact_match"] == pytest.approx(1 / 3)
    assert out["f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert formulas.squad_normalize("  An apple, the PEAR.  ") == "apple pear"


def test_gender_parity_by_hand():
    out = compute("gender_parity", [1, 1, 0, 1, 0, 0], groups=[7, 7, 8, 8, 9, 9])
    assert out == {"gender_parity": pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="one example"):
        formulas.gender_parity([1, 1, 0], ["p", "p", "q"])


@pytest.mark.parametrize("seed", SEEDS)
def test_weights_count_as_repeated_examples(seed):
    """The bootstrap's fast path: weight k scores an example as k copies of it."""
    rng = np.random.default_rng(seed)
    preds, refs = _classes(seed, k=3)
    x, y = _scores(seed, ties=True)
    idx = rng.integers(0, len(preds), len(preds))
    w = np.bincount(idx, minlength=len(preds))
    assert formulas.accuracy(preds, refs, w) == pytest.approx(accuracy_score(refs[idx], preds[idx]))
    assert formulas.f1(preds, refs, w) == pytest.approx(f1_score(refs[idx] == 1, preds[idx] == 1))
    dp, dr = preds[idx], refs[idx]  # the drawn examples
    assert formulas.macro_f1(preds, refs, w) == pytest.approx(f1_score(dr, dp, average="macro"))
    assert formulas.matthews_correlation(preds, refs, w) == pytest.approx(matthews_corrcoef(dr, dp))
    assert formulas.pearson(x, y, w) == pytest.approx(pearsonr(x[idx], y[idx])[0])
    assert formulas.spearman(x, y, w) == pytest.approx(spearmanr(x[idx], y[idx])[0])
    batch = np.stack([w, np.ones(len(preds))])
    assert formulas.spearman(x, y, batch) == pytest.approx([spearmanr(x[idx], y[idx])[0], spearmanr(x, y)[0]])


def test_group_metrics_need_whole_groups_resampled():
    preds, refs, groups = [1, 0, 1, 1], [1, 1, 1, 1], ["a", "a", "b", "b"]
    assert formulas.multirc(preds, refs, groups, [2, 2, 1, 1])["exact_match"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="whole groups"):
        formulas.multirc(preds, refs, groups, [2, 1, 1, 1])


def test_input_errors():
    with pytest.raises(UserError, match="unknown metric 'bleu'"):
        compute("bleu", [0], [0])
    with pytest.raises(ValueError, match="references has 1 items but predictions has 2"):
        formulas.accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="no gold answer"):
        formulas.record(["x"], [[]])
    assert set(METRICS) == set(formulas.OUTPUTS)


def test_loads_when_the_modules_cache_is_not_writable(tmp_path, monkeypatch):
    """A read-only home: evaluate's modules cache cannot be created, a temporary one is used instead."""
    import evaluate.config

    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setattr(evaluate.config, "HF_MODULES_CACHE", blocker / "modules")  # under a file: unusable
    monkeypatch.setattr(metrics, "_loaded", {})
    assert compute("accuracy", [1, 0], [1, 1]) == {"accuracy": 0.5}
    assert str(evaluate.config.HF_MODULES_CACHE).startswith(str(metrics._scratch_dir()))
