"""Building blocks for data stages that map over document shards, one work unit per input shard.

A unit function reads its input shards in batches and reports each document through a UnitWriter:
`keep` (whole, or as pieces), `drop` with a reason, or `quarantine` with a reason and the record.
The writer keeps the unit's account, so the stage account balances by construction.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq

from tasks.core.config import StageConfig
from tasks.core.docs import DocWriter, iter_batches
from tasks.core.result import Account
from tasks.core.stage import RunContext, StageOutput
from tasks.core.store import Store
from tasks.core.units import UnitResult, WorkUnit, merge_results


class QuarantineWriter:
    """JSON lines of quarantined records, each with its reason; published when closed."""

    def __init__(self, store: Store, uri: str):
        self.store, self.uri = store, uri
        self.tmp = f"{uri.rsplit('/', 1)[0]}/.{uri.rsplit('/', 1)[1]}.tmp-{uuid.uuid4().hex[:8]}"
        self._fh = None
        self.count = 0

    def write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            self._fh = self.store.open(self.tmp, "wb")
        self._fh.write((json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n").encode())
        self.count += 1

    def close(self) -> bool:
        """True when anything was written (and published)."""
        if self._fh is None:
            return False
        self._fh.close()
        self.store.commit(self.tmp, self.uri)
        return True


class UnitWriter:
    """Output side of one work unit: documents, quarantine and the account."""

    def __init__(self, unit: WorkUnit, docs_dir: str = "docs", **doc_writer_kw: Any):
        self.unit = unit
        self.store = Store(unit.store_root)
        self.account = Account()
        self.docs_dir = docs_dir
        self.docs = DocWriter(self.store, f"{unit.out_uri}/{docs_dir}", prefix=unit.unit_id, **doc_writer_kw)
        self.quarantine_rel = f"quarantine/{unit.unit_id}.jsonl"
        self.quarantine_writer = QuarantineWriter(self.store, f"{unit.out_uri}/{self.quarantine_rel}")
        self.info: dict[str, Any] = {}

    def keep(self, doc: dict[str, Any], text: str | None = None, meta: dict | str | None = None) -> None:
        """Keep one document (optionally with new text/meta)."""
        self.docs.write(doc["id"], doc["text"] if text is None else text, doc["source"],
                        doc.get("meta") if meta is None else meta)
        self.account.keep(1)

    def keep_pieces(self, doc: dict[str, Any], pieces: list[str]) -> None:
        """Keep one document as several rows; piece k gets id `<id>-<k>` and its index in meta."""
        if len(pieces) == 1:
            self.keep(doc, pieces[0])
            return
        meta = _meta_dict(doc.get("meta"))
        parent = meta.get("parent", doc["id"])  # a piece split again keeps its source document as parent
        for k, piece in enumerate(pieces):
            self.docs.write(f"{doc['id']}-{k}", piece, doc["source"], meta | {"parent": parent, "piece": k})
        self.account.keep(len(pieces))

    def drop(self, reason: str) -> None:
        self.account.drop(reason)

    def quarantine(self, reason: str, record: dict[str, Any]) -> None:
        """Quarantine one document; `record` must identify it (and may hold its text where that is safe)."""
        self.quarantine_writer.write({"reason": reason, **record})
        self.account.quarantine(reason)

    def count(self, name: str, n: float = 1) -> None:
        self.account.count(name, n)

    def finish(self) -> UnitResult:
        files = [f"{self.docs_dir}/{name}" for name in self.docs.close()]
        outputs = {"docs": files}
        if self.quarantine_writer.close():
            outputs["quarantine"] = [self.quarantine_rel]
        self.account.check(f"{self.unit.stage} unit {self.unit.unit_id}")
        return UnitResult(unit_id=self.unit.unit_id, account=self.account, outputs=outputs, info=self.info)


def _meta_dict(meta: Any) -> dict[str, Any]:
    if isinstance(meta, dict):
        return dict(meta)
    if not meta:
        return {}
    return json.loads(meta)


def iter_unit_docs(unit: WorkUnit, batch_rows: int = 512) -> Iterator[list[dict[str, Any]]]:
    """The unit's input documents (its row groups of its input shard) as lists of dicts, a batch at a time."""
    store = Store(unit.store_root)
    row_groups = unit.extra.get("row_groups")
    if row_groups is None:
        for batch in iter_batches(store, unit.inputs, batch_rows):
            yield batch.to_pylist()
        return
    with store.open(unit.inputs[0], "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows, row_groups=row_groups):
            yield batch.to_pylist()


def shard_units(stage: str, inputs: list[str], out_uri: str, cfg: StageConfig, ctx: RunContext,
                extra: dict[str, Any] | None = None, unit_rows: int = 512) -> list[WorkUnit]:
    """Units of consecutive row groups of one input shard, at most about `unit_rows` rows each.

    The split depends on the input files only (not on the worker count), so a rerun finds the same unit
    ids and the same output files; small corpora still get several units to spread over the cores.
    """
    store = Store(ctx.store)
    units = []
    for i, uri in enumerate(inputs):
        with store.open(uri, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        groups: list[list[int]] = []
        rows = 0
        for rg in range(meta.num_row_groups):
            n = meta.row_group(rg).num_rows
            if not groups or rows + n > unit_rows:
                groups.append([])
                rows = 0
            groups[-1].append(rg)
            rows += n
        for k, rgs in enumerate(groups or [[]]):
            units.append(WorkUnit(stage=stage, unit_id=f"u{i:05d}-{k:04d}", inputs=[uri], out_uri=out_uri,
                                  store_root=ctx.store, config=cfg.canonical(),
                                  extra=(extra or {}) | {"row_groups": rgs}))
    return units


def run_map_stage(stage: str, unit_fn_ref: str, inputs: list[str], out_uri: str, cfg: StageConfig,
                  ctx: RunContext, extra: dict[str, Any] | None = None) -> tuple[StageOutput, list[UnitResult]]:
    """Run a unit function over every input shard on the run's executor and sum the accounts."""
    units = shard_units(stage, inputs, out_uri, cfg, ctx, extra)
    results = ctx.executor().map_units(unit_fn_ref, units)
    account, outputs = merge_results(results)
    account.check(stage)
    stats = account.as_stats()
    stats["units"] = len(units)
    stats["units_resumed"] = sum(r.resumed for r in results)
    return StageOutput(outputs=outputs, stats=stats), results
