"""The metric formulas in numpy, each also computed over many weighted resamples at once.

Every function takes the predictions (and references, groups) of n examples and optional `weights`:
None scores the examples once and returns a float; a (B, n) array scores B resamples, where weights[b, i]
is how many times example i was drawn into resample b, and returns a (B,) array (a 1-D weights array
returns a float). A weight k counts an example exactly as k copies of it would, so a bootstrap over
B resamples costs a few (B, n) array passes instead of B calls. Classification labels are class
indices; results are floats in 0-1 (correlations in -1..1).
"""
from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np

# what each metric returns (the keys of its result dict)
OUTPUTS: dict[str, tuple[str, ...]] = {
    "accuracy": ("accuracy",),
    "f1": ("f1",),
    "macro_f1": ("macro_f1",),
    "matthews_correlation": ("matthews_correlation",),
    "pearson": ("pearson",),
    "spearman": ("spearman",),
    "multirc": ("f1a", "exact_match"),
    "record": ("f1", "exact_match"),
    "gender_parity": ("gender_parity",),
}


def _labels(values, n: int | None, what: str) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1:
        raise ValueError(f"{what} must be a flat list, got shape {a.shape}")
    if n is not None and len(a) != n:
        raise ValueError(f"{what} has {len(a)} items but predictions has {n}")
    if len(a) == 0:
        raise ValueError(f"{what} is empty: a metric needs at least one example")
    return a


def _weights(weights, n: int) -> tuple[np.ndarray, bool]:
    """(B, n) float weights and whether the caller wants a float back."""
    if weights is None:
        return np.ones((1, n)), True
    w = np.asarray(weights, dtype=np.float64)
    single = w.ndim == 1
    w = np.atleast_2d(w)
    if w.ndim != 2 or w.shape[1] != n:
        raise ValueError(f"weights must have shape (n,) or (B, n) with n={n}, got {np.shape(weights)}")
    if (w < 0).any() or (w.sum(axis=1) <= 0).any():
        raise ValueError("weights must be >= 0 with a positive sum in every resample")
    return w, single


def _dot(w: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(B,) row sums of w * v. einsum, not BLAS: threaded BLAS on many small products stalls on a busy
    machine (measured 16 ms against 0.6 ms for a (50, 10000) product)."""
    return np.einsum("ij,j->i", w, np.asarray(v, dtype=np.float64))


def _out(values: np.ndarray, single: bool):
    return float(values[0]) if single else values


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, and 0 where den is 0 (scikit-learn's zero_division=0)."""
    safe = np.where(den > 0, den, 1.0)
    return np.where(den > 0, num / safe, 0.0)


def accuracy(predictions, references, weights=None):
    """Share of predictions equal to their reference."""
    p = _labels(predictions, None, "predictions")
    r = _labels(references, len(p), "references")
    w, single = _weights(weights, len(p))
    return _out(_dot(w, p == r) / w.sum(axis=1), single)


def f1(predictions, references, weights=None, positive=1):
    """Binary F1 of the `positive` class (every other label is negative); 0 when there is no positive."""
    p = _labels(predictions, None, "predictions")
    r = _labels(references, len(p), "references")
    w, single = _weights(weights, len(p))
    pp, rp = p == positive, r == positive
    tp = _dot(w, pp & rp)
    fp = _dot(w, pp & ~rp)
    fn = _dot(w, ~pp & rp)
    return _out(_ratio(2 * tp, 2 * tp + fp + fn), single)


def _class_counts(p: np.ndarray, r: np.ndarray, w: np.ndarray):
    """Per class (union of both label sets): true positives, predicted and true counts, each (B, K)."""
    classes = np.union1d(p, r)
    tp = np.stack([_dot(w, (p == c) & (r == c)) for c in classes], axis=1)
    pred = np.stack([_dot(w, p == c) for c in classes], axis=1)
    true = np.stack([_dot(w, r == c) for c in classes], axis=1)
    return tp, pred, true


def macro_f1(predictions, references, weights=None):
    """Unweighted mean of the per-class F1 over the classes present in predictions or references
    (scikit-learn's f1_score(average="macro")): a class seen only in one of them scores 0."""
    p = _labels(predictions, None, "predictions")
    r = _labels(references, len(p), "references")
    w, single = _weights(weights, len(p))
    tp, pred, true = _class_counts(p, r, w)
    den = pred + true  # = 2tp + fp + fn
    present = den > 0
    per_class = _ratio(2 * tp, den)
    return _out((per_class * present).sum(axis=1) / present.sum(axis=1), single)


def matthews_correlation(predictions, references, weights=None):
    """Matthews correlation (multiclass form, Gorodkin 2004, as scikit-learn); 0 when it is undefined,
    e.g. when all predictions or all references are one class."""
    p = _labels(predictions, None, "predictions")
    r = _labels(references, len(p), "references")
    w, single = _weights(weights, len(p))
    tp, pred, true = _class_counts(p, r, w)
    s = w.sum(axis=1)
    c = tp.sum(axis=1)
    cov_tp = c * s - (true * pred).sum(axis=1)
    cov_pp = s * s - (pred * pred).sum(axis=1)
    cov_tt = s * s - (true * true).sum(axis=1)
    den = np.sqrt(cov_tt * cov_pp)
    return _out(_ratio(cov_tp, den), single)


def _floats(values, n: int | None, what: str) -> np.ndarray:
    a = _labels(values, n, what).astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{what} holds NaN or infinite values")
    return a


def _constant(x: np.ndarray, order: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Per resample: every drawn (weight > 0) value of x is the same; `order` sorts x."""
    drawn = (w > 0)[:, order]
    first = np.argmax(drawn, axis=1)
    last = drawn.shape[1] - 1 - np.argmax(drawn[:, ::-1], axis=1)
    xs = x[order]
    return xs[first] == xs[last]


def _correlation(cov: np.ndarray, var_x: np.ndarray, var_y: np.ndarray, undefined: np.ndarray) -> np.ndarray:
    undefined = undefined | ~(var_x > 0) | ~(var_y > 0)
    r = cov / np.sqrt(np.where(undefined, 1.0, var_x * var_y))
    return np.where(undefined, np.nan, np.clip(r, -1.0, 1.0))


def pearson(predictions, references, weights=None):
    """Pearson correlation; NaN when either side is constant (scipy.stats.pearsonr gives NaN too)."""
    x = _floats(predictions, None, "predictions")
    y = _floats(references, len(x), "references")
    w, single = _weights(weights, len(x))
    # weighted moments by matrix-vector products; centring first keeps the subtraction below exact enough
    x0, y0 = x - x.mean(), y - y.mean()
    sw, sx, sy = w.sum(axis=1), _dot(w, x0), _dot(w, y0)
    cov = _dot(w, x0 * y0) - sx * sy / sw
    var_x = _dot(w, x0 * x0) - sx * sx / sw
    var_y = _dot(w, y0 * y0) - sy * sy / sw
    constant = _constant(x, np.argsort(x, kind="stable"), w) | _constant(y, np.argsort(y, kind="stable"), w)
    return _out(_correlation(cov, var_x, var_y, constant), single)


def _weighted_ranks(x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(B, n) average ranks (1-based, ties share their mean rank) of x in each weighted resample, and
    whether the resample holds a single distinct value."""
    _, codes, counts = np.unique(x, return_inverse=True, return_counts=True)
    order = np.argsort(codes, kind="stable")
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    per_value = np.add.reduceat(w[:, order], starts, axis=1)  # (B, U): weight drawn at each distinct value
    below = np.cumsum(per_value, axis=1) - per_value  # weight drawn at smaller values
    return (below + (per_value + 1) / 2)[:, codes], (per_value > 0).sum(axis=1) == 1


def spearman(predictions, references, weights=None):
    """Spearman correlation: Pearson of the average ranks (ties as scipy.stats.spearmanr); NaN when
    either side is constant."""
    x = _floats(predictions, None, "predictions")
    y = _floats(references, len(x), "references")
    w, single = _weights(weights, len(x))
    rank_x, constant_x = _weighted_ranks(x, w)
    rank_y, constant_y = _weighted_ranks(y, w)
    mean = (w.sum(axis=1, keepdims=True) + 1) / 2  # ranks 1..total weight, ties keep the sum: exact mean
    dx, dy = rank_x - mean, rank_y - mean
    wdx = w * dx
    cov = np.einsum("ij,ij->i", wdx, dy)
    var_x = np.einsum("ij,ij->i", wdx, dx)
    var_y = np.einsum("ij,ij->i", w * dy, dy)
    return _out(_correlation(cov, var_x, var_y, constant_x | constant_y), single)


def _group_codes(groups, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Group index of every example and the first example of every group."""
    g = _labels([str(v) for v in groups], n, "groups")
    _, first, codes = np.unique(g, return_index=True, return_inverse=True)
    return codes, first


def _group_weights(w: np.ndarray, codes: np.ndarray, first: np.ndarray) -> np.ndarray:
    """(B, G) weight of every group; a group-level metric needs whole groups resampled."""
    wg = w[:, first]
    if not np.array_equal(wg[:, codes], w):
        raise ValueError("weights differ inside a group: resample whole groups (bootstrap_ci(groups=...))")
    return wg


def multirc(predictions, references, groups, weights=None):
    """MultiRC: f1a, the binary F1 over all answer options (label 1 positive), and exact_match, the share
    of questions (groups) whose every answer option is predicted right."""
    p = _labels(predictions, None, "predictions")
    r = _labels(references, len(p), "references")
    codes, first = _group_codes(groups, len(p))
    w, single = _weights(weights, len(p))
    wrong = np.bincount(codes, weights=(p != r).astype(np.float64), minlength=len(first))
    wg = _group_weights(w, codes, first)
    em = _dot(wg, wrong == 0) / wg.sum(axis=1)
    return {"f1a": _out(np.atleast_1d(f1(p, r, w)), single), "exact_match": _out(em, single)}


def gender_parity(predictions, groups, weights=None):
    """AX-g gender parity: the share of groups (pairs) whose examples all get the same prediction."""
    p = _labels(predictions, None, "predictions")
    codes, first = _group_codes(groups, len(p))
    sizes = np.bincount(codes, minlength=len(first))
    if (sizes < 2).any():
        lone = np.asarray([str(v) for v in groups])[first[sizes < 2]][:5].tolist()
        raise ValueError(f"gender parity compares the examples of a group, but groups {lone} have one "
                         f"example")
    w, single = _weights(weights, len(p))
    _, pcodes = np.unique(p, return_inverse=True)
    pcodes = pcodes.astype(np.float64)
    lo = np.full(len(first), np.inf)
    hi = np.full(len(first), -np.inf)
    np.minimum.at(lo, codes, pcodes)
    np.maximum.at(hi, codes, pcodes)
    wg = _group_weights(w, codes, first)
    return _out(_dot(wg, lo == hi) / wg.sum(axis=1), single)


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def squad_normalize(text: str) -> str:
    """SQuAD answer normalization: lowercase, drop punctuation and articles, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _token_f1(prediction: str, gold: str) -> float:
    pred, ref = squad_normalize(prediction).split(), squad_normalize(gold).split()
    same = sum((Counter(pred) & Counter(ref)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(ref)
    return 2 * precision * recall / (precision + recall)


def record_per_query(predictions: Sequence[str],
                     references: Sequence[Sequence[str]]) -> dict[str, np.ndarray]:
    """ReCoRD per query: the best token F1 and exact match over its gold answers (SQuAD normalization, as
    the official ReCoRD script)."""
    preds = list(predictions)
    golds = [list(g) for g in references]
    if not preds:
        raise ValueError("predictions is empty: a metric needs at least one example")
    if len(golds) != len(preds):
        raise ValueError(f"references has {len(golds)} items but predictions has {len(preds)}")
    empty = [i for i, g in enumerate(golds) if not g]
    if empty:
        raise ValueError(f"references {empty[:5]} have no gold answer: ReCoRD scores against at least one")
    f1s = np.array([max(_token_f1(p, g) for g in gs) for p, gs in zip(preds, golds, strict=True)])
    ems = np.array([max(float(squad_normalize(p) == squad_normalize(g)) for g in gs)
                    for p, gs in zip(preds, golds, strict=True)])
    return {"f1": f1s, "exact_match": ems}


def mean(values, weights=None):
    """Mean of per-example values (e.g. record_per_query's)."""
    v = _floats(values, None, "values")
    w, single = _weights(weights, len(v))
    return _out(_dot(w, v) / w.sum(axis=1), single)


def record(predictions: Sequence[str], references: Sequence[Sequence[str]], weights=None):
    """ReCoRD: record_per_query's F1 and exact match, averaged over queries."""
    return {key: mean(values, weights) for key, values in record_per_query(predictions, references).items()}


def score(name: str, predictions, references=None, groups=None, weights=None) -> dict:
    """Any metric by name as {output: value}; value is a float, or a (B,) array for (B, n) weights."""
    if name not in OUTPUTS:
        raise ValueError(f"unknown metric {name!r}; known: {', '.join(OUTPUTS)}")
    if name in ("multirc", "gender_parity") and groups is None:
        raise ValueError(f"{name} needs groups (the question or pair id of every example)")
    if name != "gender_parity" and references is None:
        raise ValueError(f"{name} needs references")
    if name == "multirc":
        return multirc(predictions, references, groups, weights)
    if name == "gender_parity":
        return {"gender_parity": gender_parity(predictions, groups, weights)}
    if name == "record":
        return record(predictions, references, weights)
    fn = {"accuracy": accuracy, "f1": f1, "macro_f1": macro_f1, "matthews_correlation": matthews_correlation,
          "pearson": pearson, "spearman": spearman}[name]
    return {name: fn(predictions, references, weights)}
