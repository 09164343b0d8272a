"""Spearman rank correlation (tied values share their mean rank).

An `evaluate` metric module: load it with evaluate.load("<this directory>"); the formula is in
tasks/evaluate/metrics/formulas.py, shared with the bootstrap and the baselines.
"""
import datasets
import evaluate

from tasks.evaluate.metrics import formulas

_INPUTS = """
Args:
    predictions: predicted scores.
    references: gold scores.
Returns:
    {"spearman": float}, in -1..1; NaN when either side is constant.
"""


class Spearman(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({
                "predictions": datasets.Value("float64"),
                "references": datasets.Value("float64"),
            }),
        )

    def _compute(self, predictions, references):
        return {"spearman": formulas.spearman(predictions, references)}
