"""What a stage shows in the Prefect UI: tables and markdown built by plain functions, published by the flow.

A stage's `artifacts` hook returns these; flows/report.py turns them into Prefect artifacts with keys per
pipeline (`<pipeline>-<stage>-<name>`) and figures rounded for reading. Stage code never imports Prefect.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Union


@dataclass(frozen=True)
class Table:
    name: str  # short, e.g. "account"; the key adds the pipeline and the stage
    rows: list[dict[str, Any]]
    description: str = ""


@dataclass(frozen=True)
class Markdown:
    name: str
    markdown: str
    description: str = ""


Artifact = Union[Table, Markdown]


def rounded(value: Any, digits: int = 4) -> Any:
    """Floats to `digits` significant digits (lists and dicts recursively); other values unchanged."""
    if isinstance(value, float):
        if not math.isfinite(value) or value == 0:
            return value
        return round(value, max(0, digits - 1 - int(math.floor(math.log10(abs(value))))))
    if isinstance(value, dict):
        return {k: rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [rounded(v, digits) for v in value]
    return value
