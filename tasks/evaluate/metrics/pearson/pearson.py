"""Pearson correlation between predicted and gold scores.

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
    {"pearson": float}, in -1..1; NaN when either side is constant.
"""


class Pearson(evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, _INPUTS, predictions="float64", references="float64")

    def _compute(self, predictions, references):
        return {"pearson": formulas.pearson(predictions, references)}
