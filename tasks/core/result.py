"""What a stage returns (outputs + stats) and the exact account every data stage keeps."""
from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import BaseModel, Field


class Account(BaseModel):
    """Every document that enters a stage is kept, dropped with a reason, or quarantined with a reason.

    `docs_out` counts input documents that were kept (whole or as pieces); `rows_out` counts rows
    written, which is larger when a stage splits documents. The invariant is
    `docs_in == docs_out + sum(dropped.values()) + quarantined`.
    """

    docs_in: int = 0
    docs_out: int = 0
    rows_out: int = 0
    dropped: dict[str, int] = Field(default_factory=dict)
    quarantined: int = 0
    quarantine_reasons: dict[str, int] = Field(default_factory=dict)
    counters: dict[str, float] = Field(default_factory=dict)

    def keep(self, rows: int = 1) -> None:
        self.docs_in += 1
        self.docs_out += 1
        self.rows_out += rows

    def drop(self, reason: str) -> None:
        self.docs_in += 1
        self.dropped[reason] = self.dropped.get(reason, 0) + 1

    def quarantine(self, reason: str) -> None:
        self.docs_in += 1
        self.quarantined += 1
        self.quarantine_reasons[reason] = self.quarantine_reasons.get(reason, 0) + 1

    def count(self, name: str, n: float = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + n

    def merge(self, other: "Account") -> "Account":
        """Sum of two accounts (shard accounts add up to the stage account)."""
        return Account(
            docs_in=self.docs_in + other.docs_in,
            docs_out=self.docs_out + other.docs_out,
            rows_out=self.rows_out + other.rows_out,
            dropped=dict(Counter(self.dropped) + Counter(other.dropped)),
            quarantined=self.quarantined + other.quarantined,
            quarantine_reasons=dict(Counter(self.quarantine_reasons) + Counter(other.quarantine_reasons)),
            counters=_add(self.counters, other.counters),
        )

    @property
    def balanced(self) -> bool:
        return self.docs_in == self.docs_out + sum(self.dropped.values()) + self.quarantined

    def check(self, where: str) -> None:
        if not self.balanced:
            raise AssertionError(
                f"{where}: account does not balance: docs_in={self.docs_in} != docs_out={self.docs_out}"
                f" + dropped={sum(self.dropped.values())} + quarantined={self.quarantined}"
            )

    def as_stats(self) -> dict[str, Any]:
        stats = self.model_dump()
        stats["balanced"] = self.balanced
        return stats


def _add(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out


class StageResult(BaseModel):
    """Output of one stage: where its files are and what it measured. Small and JSON-serializable."""

    stage: str
    key: str
    uri: str  # the stage's output directory in the store
    outputs: dict[str, Any] = Field(default_factory=dict)  # e.g. {"docs": ["docs/part-00000.parquet"]}
    stats: dict[str, Any] = Field(default_factory=dict)
    digest: str = ""  # hash of the completion manifest; downstream keys include it
    cached: bool = False
    purged: bool = False  # its raw text was deleted after pii (retain_raw: false); restored when needed

    def files(self, name: str = "docs") -> list[str]:
        """Absolute URIs of one output group."""
        rels = self.outputs.get(name, [])
        if isinstance(rels, str):
            rels = [rels]
        return [f"{self.uri.rstrip('/')}/{r}" for r in rels]
