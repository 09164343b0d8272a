"""ReCoRD: token F1 and exact match against the best gold answer (SQuAD normalization).

An `evaluate` metric module: load it with evaluate.load("<this directory>"); the formula is in
tasks/evaluate/metrics/formulas.py, shared with the bootstrap and the baselines.
"""
import datasets
import evaluate

from tasks.evaluate.metrics import formulas

_INPUTS = """
Args:
    predictions: the predicted answer string of every query.
    references: the gold answer strings of every query (at least one each).
Returns:
    {"f1": float, "exact_match": float}, in 0-1, averaged over queries.
"""


class Record(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=__doc__,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({
                "predictions": datasets.Value("string"),
                "references": datasets.Sequence(datasets.Value("string")),
            }),
        )

    def _compute(self, predictions, references):
        return formulas.record(predictions, references)
