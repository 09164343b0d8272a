"""What a stage shows in the Prefect UI: tables and markdown built by plain functions, published by the flow.

A stage's `artifacts` hook returns these; flows/report.py turns them into Prefect artifacts with keys per
pipeline (`<pipeline>-<stage>-<name>`) and figures rounded for reading. Stage code never imports Prefect.
"""
from __future__ import annotations

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
