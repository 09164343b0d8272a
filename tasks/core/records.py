"""Per-item records of a stage made of independent items (evaluate's tasks, bias's checks).

Each item's record is written as it finishes, so a rerun keeps what finished; an item that raises becomes
a `failed` record while the others go on, and the stage then fails with every failure named, so nothing
incomplete is certified. Files are written whole or not at all (a temporary name, then a rename), with
numpy scalars as plain numbers.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.errors import RunInterrupted, UserError


class ItemsFailed(UserError):
    """One or more items failed; the others' records are kept in the stage directory for the rerun."""


def json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")


def write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=json_default))
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        for row in rows:
            f.write(json.dumps(row, default=json_default) + "\n")
    os.replace(tmp, path)


def run_once(path: Path, base: dict[str, Any], fn: Callable[[], dict[str, Any]], log: logging.Logger,
             label: str) -> dict[str, Any]:
    """The record at `path` when an earlier attempt finished it, else `base | fn()`, timed and written; an
    exception (but a stop) becomes `base | {"status": "failed", "reason": ...}`."""
    if path.exists():
        record = json.loads(path.read_text())
        if record.get("status") != "failed":
            log.info("%s finished in an earlier attempt; kept", label)
            return record
    start = time.perf_counter()
    try:
        record = base | fn()
    except (RunInterrupted, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - one item's failure must not lose the others
        log.exception("%s failed", label)
        record = base | {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"}
    record["seconds"] = round(time.perf_counter() - start, 3)
    write_json(path, record)
    return record


def raise_if_failed(records: dict[str, dict[str, Any]], stage: str, noun: str, out: Path) -> None:
    """ItemsFailed naming every failed record, after the stage wrote what it has."""
    failed = {n: r["reason"] for n, r in records.items() if r["status"] == "failed"}
    if failed:
        raise ItemsFailed(f"{stage}: {len(failed)} {noun}(s) failed: "
                          + "; ".join(f"{n}: {why}" for n, why in failed.items())
                          + f". The other {noun}s' results are kept in {out}; rerun to redo the failed ones.")


def file_stamps(paths: Iterable[Path]) -> dict[str, list[int]]:
    """{resolved path: [size, mtime_ns]} of the files a stage reads besides its inputs, for its store key:
    editing one reruns the stage."""
    out = {}
    for p in paths:
        st = p.stat()
        out[str(p.resolve())] = [st.st_size, st.st_mtime_ns]
    return out
