"""F1 of the positive class 1 (binary; every other label counts as negative).

An `evaluate` metric module: load it with evaluate.load("<this directory>"); the formula is in
tasks/evaluate/metrics/formulas.py, shared with the bootstrap and the baselines.
"""
import evaluate

from tasks.evaluate.metrics import formulas
from tasks.evaluate.metrics.base import metric_info

_INPUTS = """
Args:
    predictions: predicted labels, 1 = positive.
    references: gold labels, 1 = positive.
Returns:
    {"f1": float}, in 0-1; 0 when no example is predicted or labelled positive.
"""


class F1(evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, _INPUTS, predictions="int64", references="int64")

    def _compute(self, predictions, references):
        return {"f1": formulas.f1(predictions, references)}
