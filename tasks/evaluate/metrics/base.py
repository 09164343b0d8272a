"""What every metric module of this folder declares the same way: its MetricInfo from the module's
docstring, its inputs text and its input features (names -> `datasets.Value` dtype)."""
import datasets
import evaluate


def metric_info(description: str, inputs: str, **features: str) -> evaluate.MetricInfo:
    return evaluate.MetricInfo(
        description=description, citation="", inputs_description=inputs,
        features=datasets.Features({name: datasets.Value(dtype) for name, dtype in features.items()}))
