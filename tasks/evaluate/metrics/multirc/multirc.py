"""MultiRC: F1 over all answer options (f1a) and the exact match of whole questions.

An `evaluate` metric module: load it with evaluate.load("<this directory>"); the formula is in
tasks/evaluate/metrics/formulas.py, shared with the bootstrap and the baselines.
"""
import evaluate

from tasks.evaluate.metrics import formulas
from tasks.evaluate.metrics.base import metric_info

_INPUTS = """
Args:
    predictions: 0/1 per answer option, 1 = the option is a right answer.
    references: gold 0/1 per answer option.
    groups: the question id of every answer option.
Returns:
    {"f1a": float, "exact_match": float}, in 0-1; exact_match is the share of questions whose every
    option is predicted right.
"""


class MultiRC(evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, _INPUTS, predictions="int64", references="int64", groups="string")

    def _compute(self, predictions, references, groups):
        return formulas.multirc(predictions, references, groups)
