"""What a forget found before it changed anything, kept in the store until it is done, so that a rerun after a
crash still knows the source's document ids (the rewritten files no longer say them) and the digests to taint.

`<store>/_forget/<source>/`: `journal.json` (audit id, start time, reason, the outputs found and what each
holds, digests as they were before the rewrite) and `trace.parquet` (document ids and ledger item hashes of
the source: identifiers, never text). Deleted when the audit record is written.
"""
from __future__ import annotations

import datetime as _dt
import re
import uuid
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.core.config import stable_hash
from tasks.core.store import Store
from tasks.forget.files import SourceTrace

TRACE_SCHEMA = pa.schema([("id", pa.string()), ("item", pa.uint64())])  # one of the two set per row


def journal_dir(store: Store, source: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", source)[:40]
    return store.join("_forget", f"{slug}-{stable_hash(source, 8)}")


@dataclass
class OutputPlan:
    """What one output holds of the source: the files to rewrite (relative path -> kind), rows per file as
    first found, scratch folders and temporary files to delete."""

    stage: str
    key: str
    finished: bool
    digest: str | None = None  # of its manifest before the rewrite
    files: dict[str, str] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    scratch: list[str] = field(default_factory=list)
    counted: int = 0  # documents of the source its stats count (collect's per-source table), files or not

    def merge(self, other: OutputPlan) -> None:
        """A rerun's plan into the first one: the first counts stand (a rerun finds only what is left)."""
        self.files.update({rel: kind for rel, kind in other.files.items() if rel not in self.files})
        for rel, n in other.rows.items():
            self.rows[rel] = max(n, self.rows.get(rel, 0))
        self.scratch = sorted(set(self.scratch) | set(other.scratch))
        self.digest = self.digest or other.digest
        self.counted = max(self.counted, other.counted)

    def count(self, kind: str) -> int:
        return sum(self.rows.get(rel, 0) for rel, k in self.files.items() if k == kind)

    @property
    def holds_text(self) -> bool:
        """It held the source's documents (or quarantined records, or work files naming them)."""
        return bool(self.count("docs") or self.count("quarantine") or self.counted or "_work" in self.scratch)


@dataclass
class Journal:
    source: str
    audit: str
    started: str
    reason: str = ""
    resumed: bool = False
    plans: dict[str, OutputPlan] = field(default_factory=dict)  # by output URI
    held: set[str] = field(default_factory=set)
    derived: set[str] = field(default_factory=set)
    digests: set[str] = field(default_factory=set)  # of held and derived outputs, before the rewrite
    deletions: set[str] = field(default_factory=set)  # token outputs among them: deleted whole
    trace: SourceTrace = field(default_factory=SourceTrace)

    @classmethod
    def open(cls, store: Store, source: str, reason: str) -> Journal:
        """The journal of an unfinished forget of this source, or a new one."""
        where = journal_dir(store, source)
        if not store.exists(f"{where}/journal.json"):
            now = _dt.datetime.now(_dt.timezone.utc)
            return cls(source=source, audit=f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}",
                       started=now.isoformat(timespec="seconds"), reason=reason)
        data = store.read_json(f"{where}/journal.json")
        journal = cls(source=source, audit=data["audit"], started=data["started"], reason=data["reason"] or reason,
                      resumed=True, plans={uri: OutputPlan(**p) for uri, p in data["plans"].items()},
                      held=set(data["held"]), derived=set(data["derived"]), digests=set(data["digests"]),
                      deletions=set(data["deletions"]))
        if store.exists(f"{where}/trace.parquet"):
            with store.open(f"{where}/trace.parquet", "rb") as f:
                table = pq.read_table(f)
            journal.trace.ids = {i for i in table.column("id").to_pylist() if i is not None}
            journal.trace.items = {i for i in table.column("item").to_pylist() if i is not None}
        return journal

    def add_plan(self, uri: str, plan: OutputPlan) -> None:
        if uri in self.plans:
            self.plans[uri].merge(plan)
        else:
            self.plans[uri] = plan

    def save(self, store: Store) -> None:
        """The trace first, then journal.json: a journal never names a trace that is not there."""
        where = journal_dir(store, self.source)
        store.make_private(where)
        ids, items = sorted(self.trace.ids), sorted(self.trace.items)
        table = pa.table({"id": ids + [None] * len(items), "item": [None] * len(ids) + items}, schema=TRACE_SCHEMA)
        tmp = f"{where}/.trace.parquet.tmp-{uuid.uuid4().hex[:8]}"
        with store.open(tmp, "wb") as f:
            pq.write_table(table, f)
        store.commit(tmp, f"{where}/trace.parquet")
        store.write_json(f"{where}/journal.json", {
            "source": self.source, "audit": self.audit, "started": self.started, "reason": self.reason,
            "plans": {uri: vars(p) for uri, p in sorted(self.plans.items())}, "held": sorted(self.held),
            "derived": sorted(self.derived), "digests": sorted(self.digests), "deletions": sorted(self.deletions)})

    def remove(self, store: Store) -> None:
        store.rm(journal_dir(store, self.source))

