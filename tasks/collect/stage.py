"""The collect stage: read every configured source into Parquet document shards, incrementally if asked."""
from __future__ import annotations

import base64
import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, model_validator

from tasks.collect import sources
from tasks.core.config import StageConfig, stable_hash
from tasks.core.errors import UserError
from tasks.core.mapstage import UnitWriter
from tasks.core.stage import Inputs, RunContext, Stage, StageOutput
from tasks.core.store import MANIFEST, Store
from tasks.core.units import UnitResult, WorkUnit, execute_unit, merge_results
from tasks.forget.tombstone import lift_hint, read_tombstone, skipped_sources

log = logging.getLogger("llmpipe.collect")


LEDGER = "ledger.parquet"
LEDGER_SCHEMA = pa.schema([("item", pa.uint64()), ("content", pa.uint64())])


class SourceConfig(StageConfig):
    """One source. Exactly one of `path`, `url`, `dataset` is set, or `kind: demo`."""

    name: str
    kind: Literal["files", "url", "hub", "demo"] | None = None  # inferred from path/url/dataset
    path: str | None = None  # a file, a glob or a directory tree
    url: str | None = None
    dataset: str | None = None  # a Hugging Face hub dataset name
    config_name: str | None = None  # the hub dataset's configuration
    split: str = "train"
    revision: str | None = None
    format: Literal["auto", "txt", "md", "jsonl", "json", "parquet", "csv"] = "auto"
    text_field: str = "text"

    @model_validator(mode="after")
    def _one_location(self) -> "SourceConfig":
        given = [k for k in ("path", "url", "dataset") if getattr(self, k)]
        kind = self.kind or {"path": "files", "url": "url", "dataset": "hub"}.get(given[0] if given else "", None)
        if kind is None:
            raise ValueError(f"source '{self.name}' needs one of path, url, dataset (or kind: demo)")
        needed = {"files": "path", "url": "url", "hub": "dataset", "demo": None}[kind]
        if needed and not getattr(self, needed) or len(given) > (1 if needed else 0):
            raise ValueError(f"source '{self.name}' of kind {kind} takes `{needed}` only (got: {given})")
        object.__setattr__(self, "kind", kind)
        return self


class CollectConfig(StageConfig):
    sources: list[SourceConfig] = Field(default_factory=list)
    max_docs: int | None = Field(None, ge=1)  # stop after this many documents (in source order; serially)
    max_doc_chars: int = 2_000_000  # longer documents are split or dropped (see oversize)
    oversize: Literal["split", "drop"] = "split"
    invalid_utf8: Literal["repair", "quarantine"] = "repair"
    incremental: bool = False  # collect only items that are new or changed since the last run
    # with incremental: compare with this ledger (a collect output's ledger.parquet) instead of the newest
    # of the scope; the maintenance flow passes the champion's, so what a rejected run collected comes again
    since_ledger: str | None = None
    shard_mb: int = 128  # Parquet part files are rotated at about this size
    unit_mb: int = Field(64, ge=1)  # input files are grouped into parallel work units of about this size
    http_retries: int = 3
    http_timeout: float = 30.0
    http_backoff: float = Field(1.0, ge=0.0)  # seconds before the first retry, doubling (or Retry-After)
    # quarantine files keep file, line, reason, a SHA-256 and a masked excerpt of a bad record (letters
    # become x/X, digits 9: the shape of the problem, no personal data); true also keeps the raw bytes,
    # which may hold names, emails and card numbers that no later stage anonymizes
    quarantine_raw: bool = False

    key_exclude = frozenset({"http_retries", "http_timeout", "http_backoff"})  # how to fetch, not what


HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # org/name, as hub dataset ids are spelled


def source_from_arg(arg: str, index: int) -> SourceConfig:
    """`--source` values: 'demo', an http(s) URL, hf://NAME, or a local path/glob/directory.

    A bare `org/name` that does not exist locally is taken for a hub dataset; anything else (`corpus`,
    `corpus/`, `a/b/c`) is a path, so a typo gets "does not exist" rather than a hub lookup.
    """
    name = f"cli-{index}"
    if arg == "demo":
        return SourceConfig(name="demo", kind="demo")
    if arg.startswith(("http://", "https://")):
        return SourceConfig(name=name, url=arg)
    if arg.startswith("hf://"):
        return SourceConfig(name=name, dataset=arg[5:])
    hub_shaped = HUB_NAME.fullmatch(arg) is not None and sources.format_of(arg) is None
    if hub_shaped and not os.path.exists(os.path.expanduser(arg)):
        return SourceConfig(name=name, dataset=arg)
    return SourceConfig(name=name, path=arg)


# --- planning ----------------------------------------------------------------------------------------

def plan_units(cfg: CollectConfig, out_uri: str, ctx: RunContext, ledger_uri: str | None,
               skip: frozenset[str] = frozenset()) -> list[WorkUnit]:
    """Resolve sources to work units: groups of files, one URL, one hub dataset, or the demo corpus.
    Sources named in `skip` (forgotten ones) get none."""
    units: list[WorkUnit] = []
    for s_idx, src in enumerate(cfg.sources):
        if src.name in skip:
            continue
        groups: list[dict[str, Any]]
        if src.kind == "files":
            base, files = sources.expand_files(src.path, src.format, _path_key(s_idx, src))
            groups = [{"base": str(base), "files": [str(f) for f in g]}
                      for g in _group_by_size(files, cfg.unit_mb << 20)]
        else:
            groups = [{}]
        for g_idx, group in enumerate(groups):
            units.append(WorkUnit(
                stage="collect", unit_id=f"s{s_idx:03d}-{g_idx:05d}", inputs=group.get("files", []),
                out_uri=out_uri, store_root=ctx.store, config=cfg.canonical(),
                extra={"source": s_idx, "base": group.get("base"), "ledger": ledger_uri}))
    return units


def _path_key(index: int, src: SourceConfig) -> str:
    """How errors about a source's path name it: the config key, then the source's name."""
    return f"collect.sources[{index}].path ({src.name})"


def _group_by_size(files: list[Path], unit_bytes: int) -> list[list[Path]]:
    groups, current, size = [], [], 0
    for f in files:
        current.append(f)
        size += f.stat().st_size
        if size >= unit_bytes:
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    return groups


def fingerprint(cfg: CollectConfig, skip: frozenset[str] = frozenset()) -> list[Any]:
    """What the sources look like now: local files by (path, size, mtime); URLs and datasets by name.

    Part of the stage key, so changed input files are collected again while unchanged ones are cached.
    Sources in `skip` (forgotten ones) are not read, so their files may change or be gone.
    """
    prints: list[Any] = []
    for s_idx, src in enumerate(cfg.sources):
        if src.name in skip:
            prints.append(["forgotten"])
        elif src.kind == "files":
            _, files = sources.expand_files(src.path, src.format, _path_key(s_idx, src))
            prints.append([(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files])
        elif src.kind == "demo":
            import sys
            prints.append(["demo", sys.version])
        else:
            prints.append([src.url or src.dataset, src.config_name, src.split, src.revision])
    return prints


# --- one work unit -----------------------------------------------------------------------------------

def collect_unit(unit: WorkUnit) -> UnitResult:
    """Read one unit's input, write its documents, quarantine what cannot be read, note its ledger.

    Whether any record had the text field is returned in `info` and judged per source by run_collect:
    a unit is only some of a source's files, and how files fall into units depends on unit_mb.
    """
    cfg = CollectConfig.model_validate(unit.config)
    s_idx = unit.extra["source"]
    src = cfg.sources[s_idx]
    writer = UnitWriter(unit, max_bytes=cfg.shard_mb << 20)
    seen = _load_ledger(Store(unit.store_root), unit.extra.get("ledger")) if cfg.incremental else set()
    ledger_rows: list[tuple[int, int]] = []
    limit = unit.extra.get("limit")
    fields_seen = False
    missing_first: str | None = None
    n = 0
    for rec in _records(unit, src, cfg):
        if limit is not None and n >= limit:
            break
        n += 1
        if isinstance(rec, sources.BadRecord):
            missing_first = missing_first or (rec.item if rec.reason == "missing_field" else None)
            fields_seen = fields_seen or rec.reason == "text_not_a_string"  # the field is there
            writer.quarantine(rec.reason, _quarantine_record(src, rec, cfg.quarantine_raw))
            continue
        fields_seen = True
        _collect_one(rec, src, cfg, writer, seen, ledger_rows)
    result = writer.finish()
    result.outputs["ledger"] = [_write_unit_ledger(writer.store, unit, ledger_rows)]
    result.info = {"source": src.name, "source_index": s_idx, "docs_read": n, "fields_seen": fields_seen,
                   "missing_first": missing_first}
    return result


def _quarantine_record(src: SourceConfig, rec: sources.BadRecord, keep_raw: bool) -> dict[str, Any]:
    record: dict[str, Any] = {"source": src.name, "item": rec.item, "detail": rec.detail}
    if rec.line is not None:
        record["line"] = rec.line
    raw = rec.raw_bytes if rec.raw_bytes is not None else rec.raw.encode() if rec.raw is not None else None
    if raw is not None:
        record.update(_raw_fields(raw, keep_raw))
    return record


def _raw_fields(raw: bytes, keep_raw: bool) -> dict[str, Any]:
    """A bad record's fingerprint and masked excerpt; its bytes only when the user opted in."""
    fields: dict[str, Any] = {"sha256": hashlib.sha256(raw).hexdigest(), "bytes": len(raw),
                              "excerpt": masked(raw.decode("utf-8", errors="replace"), 120)}
    if keep_raw:
        fields["raw_base64"] = base64.b64encode(raw).decode()
    return fields


def masked(text: str, limit: int) -> str:
    """The shape of a text without its content: letters become x or X, digits 9, the rest is kept
    (quotes, braces, commas: what a reader needs to see why a line did not parse)."""
    return _MASK.sub(lambda m: "X" if m.group().isupper() else "9" if m.group().isdigit() else "x", text[:limit])


_MASK = re.compile(r"[^\W_]", re.UNICODE)


def _records(unit: WorkUnit, src: SourceConfig, cfg: CollectConfig) -> Iterator[Any]:
    if src.kind == "files":
        base = Path(unit.extra["base"])
        for f in unit.inputs:
            path = Path(f)
            fmt = sources.format_of(f, src.format)
            yield from sources.read_file(path, path.relative_to(base).as_posix(), fmt, src.text_field,
                                         cfg.invalid_utf8)
    elif src.kind == "url":
        store = Store(unit.store_root)
        name = sources.url_filename(src.url)
        local = store.local_path(f"{unit.out_uri}/_downloads/{unit.unit_id}-{name}")
        sources.download(src.url, local, retries=cfg.http_retries, timeout=cfg.http_timeout,
                         backoff=cfg.http_backoff)
        fmt = sources.format_of(name, src.format) or "txt"
        for rec in sources.read_file(local, name, fmt, src.text_field, cfg.invalid_utf8):
            rec.item = f"{src.url}#{rec.item}" if fmt not in ("txt", "md") else src.url
            yield rec
        local.unlink(missing_ok=True)
    elif src.kind == "hub":
        yield from sources.read_hub(src.dataset, src.config_name, src.split, src.text_field, src.revision)
    else:
        yield from sources.read_demo()


def _collect_one(rec: sources.RawRecord, src: SourceConfig, cfg: CollectConfig, writer: UnitWriter,
                 seen: set[tuple[int, int]], ledger_rows: list[tuple[int, int]]) -> None:
    text, bad_at = _decode(rec.data)
    if rec.utf8_repaired:  # a structured reader already repaired it (it quarantines in quarantine mode)
        writer.count("utf8_repaired")
    elif bad_at is not None:
        if cfg.invalid_utf8 == "quarantine":
            writer.quarantine("invalid_utf8", {"source": src.name, "item": rec.item, "detail":
                              f"invalid UTF-8 at byte {bad_at}", **_raw_fields(rec.data, cfg.quarantine_raw)})
            return
        writer.count("utf8_repaired")
    content = _h64(text)
    item = ledger_item(src.name, rec.item)
    ledger_rows.append((item, content))
    if (item, content) in seen:
        writer.drop("already_collected")
        return
    if not text.strip():
        writer.drop("empty")
        return
    doc = {"id": doc_id(src.name, rec.item, content), "text": text, "source": src.name,
           "meta": rec.meta | {"item": rec.item}}
    writer.count("bytes_in", len(rec.data) if isinstance(rec.data, bytes) else len(text.encode("utf-8", "replace")))
    if len(text) > cfg.max_doc_chars:
        if cfg.oversize == "drop":
            writer.drop("oversize")
            return
        pieces = split_text(text, cfg.max_doc_chars)
        writer.count("oversize_split")
        writer.keep_pieces(doc, pieces)
        return
    writer.keep(doc)


def _decode(data: bytes | str) -> tuple[str, int | None]:
    if isinstance(data, str):
        return data, None
    return sources.decode_text(data)


def _h64(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "big")


def ledger_item(source: str, item: str) -> int:
    """The ledger's key of one item of a source (a file, a line, a row): what incremental runs compare."""
    return _h64(f"{source}\0{item}")


def doc_id(source: str, item: str, content: int) -> str:
    """Stable id from source, item and content hash: the same document gets the same id on every run."""
    return hashlib.blake2b(f"{source}\0{item}\0{content:016x}".encode(), digest_size=8).hexdigest()


def split_text(text: str, max_chars: int) -> list[str]:
    """Pieces of at most max_chars, cut at a paragraph, line or space boundary where one is near."""
    pieces, start = [], 0
    while len(text) - start > max_chars:
        end = start + max_chars
        window = text[start + max_chars // 2:end]
        for sep in ("\n\n", "\n", " "):
            cut = window.rfind(sep)
            if cut >= 0:
                end = start + max_chars // 2 + cut + len(sep)
                break
        pieces.append(text[start:end])
        start = end
    pieces.append(text[start:])
    return pieces


# --- the incremental ledger --------------------------------------------------------------------------

def _write_unit_ledger(store: Store, unit: WorkUnit, rows: list[tuple[int, int]]) -> str:
    rel = f"_ledger/{unit.unit_id}.parquet"
    table = pa.table({"item": [r[0] for r in rows], "content": [r[1] for r in rows]}, schema=LEDGER_SCHEMA)
    tmp = f"{unit.out_uri}/_ledger/.{unit.unit_id}.tmp"
    with store.open(tmp, "wb") as f:
        pq.write_table(table, f)
    store.commit(tmp, f"{unit.out_uri}/{rel}")
    return rel


def _load_ledger(store: Store, uri: str | None) -> set[tuple[int, int]]:
    if not uri:
        return set()
    with store.open(uri, "rb") as f:
        table = pq.read_table(f)
    return set(zip(table.column("item").to_pylist(), table.column("content").to_pylist()))


def latest_ledger(store: Store, scope: str) -> str | None:
    """The ledger of the newest finished collect output of this scope (a killed run has none).

    Each run's ledger holds everything collected so far: every run, incremental or full, merges the
    latest ledger into its own and sets its generation to one more than that ledger's, so "newest" is
    the highest generation.
    """
    best: tuple[int, str, str] | None = None
    for stage_dir in store.ls(store.join("collect")):
        manifest = f"{stage_dir}/{MANIFEST}"
        if not store.exists(manifest):
            continue
        m = store.read_json(manifest)
        rank = (m["stats"].get("ledger_generation", 0), m["created"], f"{stage_dir}/{LEDGER}")
        if m["stats"].get("scope") == scope and (best is None or rank > best):
            best = rank
    return best[2] if best else None


def _generation(store: Store, ledger: str | None) -> int:
    if not ledger:
        return 0
    return store.read_manifest(ledger.rsplit("/", 1)[0])["stats"].get("ledger_generation", 0)


def _merge_ledgers(store: Store, out_uri: str, previous: str | None, unit_ledgers: list[str]) -> str:
    tables = []
    if previous:
        with store.open(previous, "rb") as f:
            tables.append(pq.read_table(f))
    for rel in unit_ledgers:
        with store.open(f"{out_uri}/{rel}", "rb") as f:
            tables.append(pq.read_table(f))
    merged = pa.concat_tables(tables) if tables else LEDGER_SCHEMA.empty_table()
    merged = merged.group_by(["item", "content"]).aggregate([]).sort_by([("item", "ascending"),
                                                                           ("content", "ascending")])
    tmp = f"{out_uri}/.{LEDGER}.tmp"
    with store.open(tmp, "wb") as f:
        pq.write_table(merged, f)
    store.commit(tmp, f"{out_uri}/{LEDGER}")
    return LEDGER


# --- the stage ---------------------------------------------------------------------------------------

def collect_key(cfg: CollectConfig, ctx: RunContext) -> dict[str, Any]:
    """Extra key inputs: what the sources hold now, whose ledger history the output joins (the scope),
    (incremental) which ledger they are compared to, and which configured sources are skipped because they
    were forgotten (only when some are: the keys of stores without a forgotten source stay as they were)."""
    skipped = _skipped(cfg, ctx.open_store())
    extra: dict[str, Any] = {"sources": stable_hash(fingerprint(cfg, frozenset(skipped)), 24), "scope": _scope(ctx)}
    if skipped:
        extra["forgotten"] = sorted(skipped)
    if cfg.incremental:
        ledger = _since(cfg) or latest_ledger(ctx.open_store(), _scope(ctx))
        extra["ledger"] = ledger and ctx.open_store().file_digest(ledger)
    return extra


def _since(cfg: CollectConfig) -> str | None:
    if cfg.since_ledger is None:
        return None
    if not Path(cfg.since_ledger).is_file():
        raise UserError(f"collect.since_ledger: {cfg.since_ledger} does not exist; give the ledger.parquet of a "
                        "finished collect output, or remove the key to compare with the newest ledger")
    return cfg.since_ledger


def _scope(ctx: RunContext) -> str:
    return ctx.incremental_scope or ctx.pipeline


def _skipped(cfg: CollectConfig, store: Store) -> dict[str, str]:
    """{configured source: the forgotten source it matches} (tasks/forget/tombstone.py)."""
    return skipped_sources([s.model_dump() for s in cfg.sources], store)


def _warn_skipped(cfg: CollectConfig, store: Store, skipped: dict[str, str]) -> None:
    tombstone = read_tombstone(store)
    for name, forgotten in sorted(skipped.items()):
        entry = tombstone.get(forgotten, {})
        log.warning("collect: skipping source '%s': source '%s' was forgotten on %s (audit %s) and is listed in "
                    "%s; %s.", name, forgotten, entry.get("when", "?"), entry.get("audit", "?"),
                    store.join("forgotten.json"), lift_hint(forgotten))
    if len(skipped) == len(cfg.sources):
        raise UserError(f"collect: every configured source is forgotten ({', '.join(sorted(skipped))}; see "
                        f"{store.join('forgotten.json')}): nothing to collect. Add a source to collect.sources, "
                        f"or {lift_hint(sorted(skipped.values())[0])}.")


def run_collect(inputs: Inputs, out_uri: str, cfg: CollectConfig, ctx: RunContext) -> StageOutput:
    if not cfg.sources:
        raise UserError("collect.sources is empty: add a source to the pipeline or pass --source PATH_OR_URL.")
    store = ctx.open_store()
    skipped = _skipped(cfg, store)
    _warn_skipped(cfg, store, skipped)
    history = latest_ledger(store, _scope(ctx))  # full runs extend it too, so later incremental runs keep it
    previous = (_since(cfg) or history) if cfg.incremental else None  # what the units compare against
    units = plan_units(cfg, out_uri, ctx, previous, frozenset(skipped))
    if cfg.max_docs is not None:  # a budget carried across units in order, so the cut is deterministic
        results, left = [], cfg.max_docs
        for unit in units:
            if left <= 0:
                break
            unit.extra["limit"] = left
            results.append(execute_unit("tasks.collect.stage:collect_unit", unit))
            left -= results[-1].info.get("docs_read", 0)
    else:
        results = ctx.executor().map_units("tasks.collect.stage:collect_unit", units)
    _check_text_fields(cfg, results)
    account, outputs = merge_results(results)
    account.check("collect")
    outputs["ledger"] = _merge_ledgers(store, out_uri, history, outputs.pop("ledger", []))
    stats = account.as_stats()
    stats.update(scope=_scope(ctx), units=len(units), units_resumed=sum(r.resumed for r in results),
                 sources=_per_source(results), incremental=cfg.incremental, previous_ledger=previous,
                 new_docs=account.docs_out, ledger_generation=_generation(store, history) + 1)
    if skipped:
        stats["forgotten_sources"] = sorted(skipped)
    return StageOutput(outputs=outputs, stats=stats)


def _check_text_fields(cfg: CollectConfig, results: list[UnitResult]) -> None:
    """A source none of whose records has its text field is misconfigured, not dirty: stop and say so.

    Judged over all of a source's units (in unit order), so it does not depend on how files were grouped.
    """
    by_source: dict[int, list[UnitResult]] = {}
    for r in results:
        if r.info.get("source_index") is not None:
            by_source.setdefault(r.info["source_index"], []).append(r)
    for s_idx, unit_results in sorted(by_source.items()):
        if any(r.info.get("fields_seen") for r in unit_results):
            continue
        first = next((r.info["missing_first"] for r in unit_results if r.info.get("missing_first")), None)
        if first is not None:
            src = cfg.sources[s_idx]
            raise UserError(f"source '{src.name}': no record has the field {src.text_field!r} (first: {first}). "
                            f"Set collect.sources[{s_idx}].text_field to the field that holds the text.")


def _per_source(results: list[UnitResult]) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for r in results:
        row = table.setdefault(r.info.get("source", "?"), {"docs_in": 0, "docs_out": 0, "dropped": 0,
                                                            "quarantined": 0, "rows_out": 0})
        row["docs_in"] += r.account.docs_in
        row["docs_out"] += r.account.docs_out
        row["rows_out"] += r.account.rows_out
        row["dropped"] += sum(r.account.dropped.values())
        row["quarantined"] += r.account.quarantined
    return table


STAGE = Stage(
    name="collect", config=CollectConfig, run=run_collect, key_inputs=collect_key, preflight=fingerprint,
    raw_text=True,
    summary="read files, globs, directories, URLs, hub datasets or the demo corpus into Parquet shards")
