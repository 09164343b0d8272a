"""Spearman rank correlation (tied values share their mean rank).

An `evaluate` metric module: load it with evaluate.load("<this directory>"); the formula is in
tasks/evaluate/metrics/formulas.py, shared with the bootstrap and the baselines.
"""
import evaluate

from tasks.evaluate.metrics import formulas
from tasks.evaluate.metrics.base import metric_info

_INPUTS = """
Args:
    predictions: predicted scores.
    references: gold scores.
Returns:
    {"spearman": float}, in -1..1; NaN when either side is constant.
"""


class Spearman(evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, _INPUTS, predictions="float64", references="float64")

    def _compute(self, predictions, references):
        return {"spearman": formulas.spearman(predictions, references)}
