"""Macro F1: the unweighted mean of per-class F1 over the classes seen in predictions or references.

An `evaluate` metric module: load it with evaluate.load("<this directory>"); the formula is in
tasks/evaluate/metrics/formulas.py, shared with the bootstrap and the baselines.
"""
import evaluate

from tasks.evaluate.metrics import formulas
from tasks.evaluate.metrics.base import metric_info

_INPUTS = """
Args:
    predictions: predicted class indices.
    references: gold class indices.
Returns:
    {"macro_f1": float}, in 0-1.
"""


class MacroF1(evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, _INPUTS, predictions="int64", references="int64")

    def _compute(self, predictions, references):
        return {"macro_f1": formulas.macro_f1(predictions, references)}
