"""Document shards: Parquet files of (id, text, source, meta), read and written in streaming batches."""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from tasks.core.store import Store

SCHEMA = pa.schema([
    ("id", pa.string()),
    ("text", pa.large_string()),  # books run to several MB each: large offsets avoid 2 GiB batch limits
    ("source", pa.string()),
    ("meta", pa.string()),  # JSON object; free-form per source
])


class DocWriter:
    """Buffers documents and writes Parquet part files of bounded size under `<dir>/<prefix>-NNNNN.parquet`.

    Row groups hold at most `batch_rows` rows and about `batch_bytes` of text: downstream stages split
    their work units at row-group boundaries, so small row groups mean parallel work on small corpora.

    Each part is written under a temporary name and published on close, so a killed writer
    leaves no file that looks finished.
    """

    def __init__(self, store: Store, dir_uri: str, prefix: str = "part", *, max_bytes: int = 128 << 20,
                 batch_rows: int = 512, batch_bytes: int = 16 << 20, compression: str = "zstd"):
        self.store, self.dir_uri, self.prefix = store, dir_uri.rstrip("/"), prefix
        self.max_bytes, self.batch_rows, self.batch_bytes = max_bytes, batch_rows, batch_bytes
        self.compression = compression
        self.files: list[str] = []  # part names within dir_uri
        self.rows = 0
        self._cols: dict[str, list] = {n: [] for n in SCHEMA.names}
        self._buf_bytes = 0
        self._part_bytes = 0
        self._writer: pq.ParquetWriter | None = None
        self._handle = None
        self._tmp = self._final = ""

    def write(self, id: str, text: str, source: str, meta: dict[str, Any] | str | None = None) -> None:
        if not isinstance(meta, str):
            meta = json.dumps(meta or {}, ensure_ascii=False, sort_keys=True)
        cols = self._cols
        cols["id"].append(id)
        cols["text"].append(text)
        cols["source"].append(source)
        cols["meta"].append(meta)
        self._buf_bytes += len(text)
        self.rows += 1
        if len(cols["id"]) >= self.batch_rows or self._buf_bytes >= self.batch_bytes:
            self._flush()

    def write_batch(self, batch: pa.RecordBatch | pa.Table) -> None:
        """Write rows that already have the document schema (a filtered input batch, say)."""
        if batch.num_rows == 0:
            return
        self._flush()
        table = batch if isinstance(batch, pa.Table) else pa.Table.from_batches([batch])
        self._write_table(table.cast(SCHEMA))
        self.rows += table.num_rows

    def _flush(self) -> None:
        if not self._cols["id"]:
            return
        table = pa.table(self._cols, schema=SCHEMA)
        self._cols = {n: [] for n in SCHEMA.names}
        self._buf_bytes = 0
        self._write_table(table)

    def _write_table(self, table: pa.Table) -> None:
        if self._writer is None:
            name = f"{self.prefix}-{len(self.files):05d}.parquet"
            self._final = f"{self.dir_uri}/{name}"
            self._tmp = f"{self.dir_uri}/.{name}.tmp-{uuid.uuid4().hex[:8]}"
            self._handle = self.store.open(self._tmp, "wb")
            # no dictionary or min/max statistics for ids and texts: they are unique, so both are wasted work
            self._writer = pq.ParquetWriter(self._handle, SCHEMA, compression=self.compression,
                                            use_dictionary=["source"], write_statistics=["source"])
            self.files.append(name)
            self._part_bytes = 0
        self._writer.write_table(table, row_group_size=max(table.num_rows, 1))
        self._part_bytes += table.get_total_buffer_size()
        if self._part_bytes >= self.max_bytes:
            self._close_part()

    def _close_part(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._handle.close()
            self.store.commit(self._tmp, self._final)
            self._writer = None

    def close(self) -> list[str]:
        """Finish the last part; returns the part file names (relative to `dir_uri`)."""
        self._flush()
        self._close_part()
        return list(self.files)

    def __enter__(self) -> "DocWriter":
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self.close()
        elif self._writer is not None:  # leave no temp file behind on failure
            self._writer.close()
            self._handle.close()
            self.store.rm(self._tmp)


def iter_batches(store: Store, uris: Iterable[str], batch_rows: int = 1024,
                 columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    """Stream record batches from document shards; memory stays at about one batch."""
    for uri in uris:
        with store.open(uri, "rb") as f:
            pf = pq.ParquetFile(f)
            yield from pf.iter_batches(batch_size=batch_rows, columns=columns)


def iter_docs(store: Store, uris: Iterable[str], batch_rows: int = 1024) -> Iterator[dict[str, Any]]:
    """Stream documents as dicts (id, text, source, meta)."""
    for batch in iter_batches(store, uris, batch_rows):
        yield from batch.to_pylist()


def read_all(store: Store, uris: Iterable[str]) -> list[dict[str, Any]]:
    """Every document in memory: for tests and small fixtures only."""
    return list(iter_docs(store, uris))
