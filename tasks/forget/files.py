"""The files of the store that hold something of a source, found by their content, and their filtered rewrite.

Five kinds, recognized by schema or place, whichever stage wrote them (a new document stage is covered
without a change here):
- `docs`: Parquet with the document columns (id, text, source, meta): rows of the source are removed.
- `quarantine`: JSON lines under a `quarantine/` folder: records of the source (by name or id) are removed.
- `ledger`: collect's incremental ledger, Parquet (item, content) of 64-bit hashes: the source's items are
  removed, so that the source, once collected again, is not taken for already collected.
- `ids`: other Parquet with document ids (dedup's removed pairs, its sketch tables): rows naming a document
  of the source are removed.
- `json`: a small JSON report (dedup's report.json lists example pairs): entries of lists that name a
  document of the source by an `id` or `*_id` field are removed.
Every rewrite is written under a temporary name and published by `Store.commit`: a reader sees the old file
or the new one. A document or quarantine file left with nothing is deleted instead.
"""
from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from tasks.collect.stage import LEDGER_SCHEMA, ledger_item
from tasks.core.store import Store

DOC_COLUMNS = {"id", "text", "source", "meta"}
NOT_REPORTS = {"_SUCCESS.json", "_COMMITTED.json", "_LOCK.json", "tokenizer.json"}  # manifests, locks, vocabularies
JSON_LIMIT = 1 << 20  # larger JSON files are results and vocabularies, not reports listing documents
Mask = Callable[[pa.RecordBatch], np.ndarray]  # True for the rows to remove


@dataclass
class SourceTrace:
    """What identifies a source's documents beyond its name: their ids and their ledger items (hashes)."""

    ids: set[str] = field(default_factory=set)
    items: set[int] = field(default_factory=set)

    def update(self, other: SourceTrace) -> None:
        self.ids |= other.ids
        self.items |= other.items


def kind_of(store: Store, uri: str) -> str | None:
    """`docs`, `quarantine`, `ledger`, `ids`, `json`, or None for a file that holds nothing of any source."""
    rel = uri.rsplit("/", 1)[-1]
    if rel.endswith(".jsonl"):
        return "quarantine" if "/quarantine/" in uri else None
    if rel.endswith(".json"):
        report = rel not in NOT_REPORTS and "/_units/" not in uri and not rel.startswith("_INVALID")
        return "json" if report and store.fs.size(uri) <= JSON_LIMIT else None
    if not rel.endswith(".parquet"):
        return None
    with store.open(uri, "rb") as f:
        schema = pq.read_schema(f)
    names = set(schema.names)
    if DOC_COLUMNS <= names:
        return "docs"
    if schema.equals(LEDGER_SCHEMA):
        return "ledger"
    return "ids" if id_columns(schema) else None


def id_columns(schema: pa.Schema) -> list[str]:
    """String columns holding document ids: `id`, or named `<something>_id`."""
    return [f.name for f in schema if (f.name == "id" or f.name.endswith("_id"))
            and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))]


# --- finding the source ------------------------------------------------------------------------------------


def trace_of_docs(store: Store, uri: str, source: str) -> tuple[int, SourceTrace]:
    """(rows of the source, their ids and ledger items) in one document file; the text is not read."""
    trace, rows = SourceTrace(), 0
    with store.open(uri, "rb") as f:
        for batch in pq.ParquetFile(f).iter_batches(batch_size=4096, columns=["id", "source", "meta"]):
            mine = batch.filter(pc.equal(batch.column("source"), source))
            if not mine.num_rows:
                continue
            rows += mine.num_rows
            trace.ids.update(mine.column("id").to_pylist())
            for meta in mine.column("meta").to_pylist():
                item = _item(meta)
                if item is not None:
                    trace.items.add(ledger_item(source, item))
    return rows, trace


def _item(meta: str | None) -> str | None:
    """The source item (file, line, row) collect recorded in a document's meta, when there is one."""
    try:
        value = json.loads(meta) if meta else None
    except ValueError:
        return None
    item = value.get("item") if isinstance(value, dict) else None
    return item if isinstance(item, str) else None


def quarantine_records(store: Store, uri: str) -> Iterator[dict | str]:
    """The records of a quarantine file (a line that is not a JSON object comes back as its text)."""
    with store.open(uri, "rb") as f:
        for line in f:
            text = line.decode("utf-8", "replace").rstrip("\n")
            if not text:
                continue
            try:
                record = json.loads(text)
            except ValueError:
                record = None
            yield record if isinstance(record, dict) else text


def of_source(record: dict | str, source: str, ids: set[str]) -> bool:
    return isinstance(record, dict) and (record.get("source") == source or record.get("id") in ids)


def trace_of_quarantine(store: Store, uri: str, source: str) -> tuple[int, SourceTrace]:
    trace, rows = SourceTrace(), 0
    for record in quarantine_records(store, uri):
        if of_source(record, source, set()):
            rows += 1
            if isinstance(record.get("id"), str):
                trace.ids.add(record["id"])
            if isinstance(record.get("item"), str):
                trace.items.add(ledger_item(source, record["item"]))
    return rows, trace


# --- what a file holds of the source, given its trace --------------------------------------------------------


def removal_mask(kind: str, source: str, trace: SourceTrace, schema: pa.Schema) -> Mask:
    """The rows of a Parquet file of `kind` that belong to the source."""
    if kind == "docs":
        return lambda batch: pc.equal(batch.column("source"), source).fill_null(False).to_numpy(zero_copy_only=False)
    if kind == "ledger":
        items = pa.array(sorted(trace.items), pa.uint64())
        return lambda batch: pc.is_in(batch.column("item"), value_set=items).to_numpy(zero_copy_only=False)
    ids = pa.array(sorted(trace.ids), pa.string())
    columns = id_columns(schema)

    def mask(batch: pa.RecordBatch) -> np.ndarray:
        hit = np.zeros(batch.num_rows, bool)
        for name in columns:
            values = batch.column(name).cast(pa.string())
            hit |= pc.is_in(values, value_set=ids).fill_null(False).to_numpy(zero_copy_only=False)
        return hit
    return mask


def _mask_columns(kind: str, schema: pa.Schema) -> list[str]:
    return {"docs": ["source"], "ledger": ["item"]}.get(kind) or id_columns(schema)


def count_parquet(store: Store, uri: str, kind: str, source: str, trace: SourceTrace) -> int:
    """Rows of the file the rewrite would remove (reads only the columns that decide)."""
    with store.open(uri, "rb") as f:
        pf = pq.ParquetFile(f)
        mask = removal_mask(kind, source, trace, pf.schema_arrow)
        return sum(int(mask(b).sum()) for b in pf.iter_batches(batch_size=8192,
                                                                 columns=_mask_columns(kind, pf.schema_arrow)))


def count_quarantine(store: Store, uri: str, source: str, trace: SourceTrace) -> int:
    return sum(of_source(r, source, trace.ids) for r in quarantine_records(store, uri))


def count(store: Store, uri: str, kind: str, source: str, trace: SourceTrace) -> int:
    if kind == "quarantine":
        return count_quarantine(store, uri, source, trace)
    if kind in ("ledger", "ids", "json") and not (trace.items if kind == "ledger" else trace.ids):
        return 0
    if kind == "json":
        return without_ids(store.read_json(uri), trace.ids)[1]
    return count_parquet(store, uri, kind, source, trace)


def without_ids(value: Any, ids: set[str]) -> tuple[Any, int]:
    """(the JSON value without the list entries that name one of `ids`, how many were removed)."""
    if isinstance(value, dict):
        pruned = {k: without_ids(v, ids) for k, v in value.items()}
        return {k: v for k, (v, _) in pruned.items()}, sum(n for _, n in pruned.values())
    if isinstance(value, list):
        kept = [without_ids(v, ids) for v in value if not _names(v, ids)]
        return [v for v, _ in kept], len(value) - len(kept) + sum(n for _, n in kept)
    return value, 0


def _names(entry: Any, ids: set[str]) -> bool:
    return isinstance(entry, dict) and any((k == "id" or k.endswith("_id")) and isinstance(v, str) and v in ids
                                           for k, v in entry.items())


# --- rewriting -----------------------------------------------------------------------------------------------


def _temp(uri: str) -> str:
    head, _, name = uri.rpartition("/")
    return f"{head}/.{name}.tmp-{uuid.uuid4().hex[:8]}"


def rewrite(store: Store, uri: str, kind: str, source: str, trace: SourceTrace, keep_empty: bool) -> tuple[int, bool]:
    """Rewrite one file without the source's rows; returns (rows removed, file deleted). Idempotent."""
    if kind == "quarantine":
        return _rewrite_jsonl(store, uri, source, trace, keep_empty)
    if kind == "json":
        pruned, removed = without_ids(store.read_json(uri), trace.ids)
        if removed:
            store.write_json(uri, pruned)  # atomic; indented with sorted keys, as the stages write reports
        return removed, False
    return _rewrite_parquet(store, uri, kind, source, trace, keep_empty)


def _rewrite_parquet(store: Store, uri: str, kind: str, source: str, trace: SourceTrace,
                     keep_empty: bool) -> tuple[int, bool]:
    removed = kept = 0
    tmp = _temp(uri)
    try:
        with store.open(uri, "rb") as src, store.open(tmp, "wb") as dst:
            pf = pq.ParquetFile(src)
            schema, mask = pf.schema_arrow, removal_mask(kind, source, trace, pf.schema_arrow)
            # zstd, and a row group per input row group: downstream work units split at row groups
            with pq.ParquetWriter(dst, schema, compression="zstd") as writer:
                for rg in range(pf.num_row_groups):
                    table = pf.read_row_group(rg)
                    drop = np.concatenate([mask(b) for b in table.to_batches()]) if table.num_rows else np.zeros(0, bool)
                    removed += int(drop.sum())
                    rest = table.filter(pa.array(~drop)) if drop.any() else table
                    if rest.num_rows:
                        writer.write_table(rest, row_group_size=rest.num_rows)
                        kept += rest.num_rows
    except BaseException:
        store.rm(tmp)
        raise
    return _publish(store, tmp, uri, removed, kept, keep_empty)


def _rewrite_jsonl(store: Store, uri: str, source: str, trace: SourceTrace, keep_empty: bool) -> tuple[int, bool]:
    removed = kept = 0
    tmp = _temp(uri)
    try:
        with store.open(tmp, "wb") as dst:
            for record in quarantine_records(store, uri):
                if of_source(record, source, trace.ids):
                    removed += 1
                    continue
                line = json.dumps(record, ensure_ascii=False, sort_keys=True) if isinstance(record, dict) else record
                dst.write((line + "\n").encode())
                kept += 1
    except BaseException:
        store.rm(tmp)
        raise
    return _publish(store, tmp, uri, removed, kept, keep_empty)


def _publish(store: Store, tmp: str, uri: str, removed: int, kept: int, keep_empty: bool) -> tuple[int, bool]:
    if not removed:
        store.rm(tmp)
        return 0, False
    if kept == 0 and not keep_empty:
        store.rm(tmp)
        store.rm(uri)
        return removed, True
    store.commit(tmp, uri)
    return removed, False
