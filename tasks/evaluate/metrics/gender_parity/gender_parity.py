"""AX-g gender parity: the share of pairs whose two examples get the same prediction.

An `evaluate` metric module: load it with evaluate.load("<this directory>"); the formula is in
tasks/evaluate/metrics/formulas.py, shared with the bootstrap and the baselines.
"""
import evaluate

from tasks.evaluate.metrics import formulas
from tasks.evaluate.metrics.base import metric_info

_INPUTS = """
Args:
    predictions: predicted class indices.
    groups: the pair id of every example (each pair has two or more).
Returns:
    {"gender_parity": float}, in 0-1.
"""


class GenderParity(evaluate.Metric):
    def _info(self):
        return metric_info(__doc__, _INPUTS, predictions="int64", groups="string")

    def _compute(self, predictions, groups):
        return {"gender_parity": formulas.gender_parity(predictions, groups)}
