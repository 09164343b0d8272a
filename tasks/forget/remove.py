"""Forget a source: every trace of its documents leaves the store; the models trained on them are tainted.

`forget_source(store, name)` runs these steps, each safe to repeat, so a crash anywhere is recovered by
running it again (tasks/forget/journal.py keeps what the first attempt found):
1. find: every output's files that hold something of the source (tasks/forget/files.py), the outputs that
   held its documents and every output made from those (tasks/forget/lineage.py); saved in the journal.
2. the tombstone (tasks/forget/tombstone.py), so no run collects the source again while this runs or after.
3. delete the token outputs made from it: token shards cannot be filtered (their text is gone).
4. rewrite every other file without the source's rows, and the manifests of finished outputs so that they
   describe the files again (sizes, SHA-256s, digest; a `forgotten` note in the stats). The digest changes,
   so downstream store keys change and the next run recomputes from the cleaned corpus. Unit markers of
   changed files are dropped (a rerun of the stage redoes those units).
5. the dedup index: the source's documents leave every local generation and every Redis index of the store.
6. the registry: every model version whose lineage holds a digest of step 1 is marked tainted, and a tainted
   champion as needing a retrain (tasks/register/registry.py), which the next maintenance run does.
7. the audit record `<store>/audit/forget-<time>-<id>.json`: what was removed, counts, when; no text.
Outputs of training and evaluation hold no corpus text: they are kept, and their models are tainted.
"""
from __future__ import annotations

import datetime as _dt
import logging
import uuid
from collections.abc import Iterable
from typing import Any

from tasks.core.config import stable_hash
from tasks.core.errors import UserError
from tasks.core.lock import StageLock
from tasks.core.stopping import raise_if_stopping
from tasks.core.store import MANIFEST, Store
from tasks.dedup.index import forget_local, forget_redis
from tasks.forget import files as F
from tasks.forget.journal import Journal, OutputPlan
from tasks.forget.lineage import Output, derived_from, list_outputs
from tasks.forget.tombstone import location, read_tombstone, write_tombstone
from tasks.register.registry import taint_versions

log = logging.getLogger("llmpipe.forget")

SCRATCH = ("_work", "_downloads")  # folders a stage deletes when it completes; a killed run leaves them
TEXT_TEMP = (".parquet", ".jsonl", ".u32", ".bin")  # temporary files of these formats may hold text


# --- 1. find ------------------------------------------------------------------------------------------------


def find(store: Store, source: str, journal: Journal) -> list[Output]:
    """Fill the journal: the source's trace, each output's plan, the outputs that held it and those made
    from them, their digests. Returns the store's outputs."""
    outputs = list_outputs(store)
    kinds = {o.uri: _kinds(store, o) for o in outputs}
    rows: dict[tuple[str, str], int] = {}
    for o in outputs:  # first the trace (ids, items) from documents and quarantine records...
        for rel, kind in kinds[o.uri].items():
            if kind in ("docs", "quarantine"):
                trace_of = F.trace_of_docs if kind == "docs" else F.trace_of_quarantine
                rows[o.uri, rel], trace = trace_of(store, f"{o.uri}/{rel}", source)
                journal.trace.update(trace)
    for o in outputs:  # ... then what each file holds, ledgers and id tables included
        plan = _plan(store, o, kinds[o.uri], source, journal.trace, rows)
        if plan.files or plan.scratch or plan.counted:
            journal.add_plan(o.uri, plan)
    journal.held |= {uri for uri, p in journal.plans.items() if p.holds_text}
    journal.derived |= derived_from(outputs, journal.held) - journal.held
    tainted = journal.held | journal.derived
    journal.digests |= {o.digest for o in outputs if o.digest and o.uri in tainted}
    journal.deletions |= {o.uri for o in outputs if o.uri in tainted and holds_tokens(o)}
    return outputs


def _kinds(store: Store, o: Output) -> dict[str, str]:
    kinds = {}
    for rel in o.files:
        name = rel.rsplit("/", 1)[-1]
        if name.startswith(".") or name.startswith("_INVALID"):
            continue
        try:
            kind = F.kind_of(store, f"{o.uri}/{rel}")
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise UserError(f"forget: {o.uri}/{rel} cannot be read ({exc}); it may hold text of the source. "
                            "Delete it (or that whole output), then rerun `llmpipe forget`.") from exc
        if kind is not None:
            kinds[rel] = kind
    return kinds


def _plan(store: Store, o: Output, kinds: dict[str, str], source: str, trace: F.SourceTrace,
          rows: dict[tuple[str, str], int]) -> OutputPlan:
    plan = OutputPlan(stage=o.stage, key=o.key, finished=o.finished, digest=o.digest, counted=_counted(o, source))
    scratch = set()
    for rel, kind in kinds.items():
        n = rows.get((o.uri, rel))
        n = F.count(store, f"{o.uri}/{rel}", kind, source, trace) if n is None else n
        if n and rel.split("/", 1)[0] in SCRATCH:
            scratch.add(rel.split("/", 1)[0])  # work files: deleted whole, with the unit markers
        elif n:
            plan.files[rel], plan.rows[rel] = kind, n
    scratch |= {"_downloads"} if any(r.startswith("_downloads/") for r in o.files) else set()
    scratch |= {r for r in o.files if _text_temp(r)}  # what killed writers left
    plan.scratch = sorted(scratch)
    return plan


def _text_temp(rel: str) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return ".tmp" in name and any(f"{suffix}.tmp" in name for suffix in TEXT_TEMP)


def _counted(o: Output, source: str) -> int:
    """Documents (and quarantined records) of the source that collect's per-source counts say the output
    held, unless a forget took them out already. Its files may be gone (retain_raw: false purges them)."""
    stats = (o.manifest or {}).get("stats") or {}
    if source in (stats.get("forgotten") or {}):
        return 0
    counts = (stats.get("sources") or {}).get(source) or {}
    return int(counts.get("rows_out") or 0) + int(counts.get("quarantined") or 0)


def holds_tokens(o: Output) -> bool:
    """Token shards and the tokenizer trained on them: nothing there can be filtered by source."""
    return o.stage == "tokenize" or any(rel.startswith("tokens/") for rel in o.files)


# --- 2. the tombstone ---------------------------------------------------------------------------------------


def write_entry(store: Store, source: str, journal: Journal, outputs: list[Output]) -> None:
    """List the source as forgotten, with every location collect read it from (so a renamed copy of the
    same files is skipped too); an earlier entry keeps its date and audit id."""
    places = set()
    for o in outputs:
        for src in ((o.manifest or {}).get("config") or {}).get("sources") or []:
            if isinstance(src, dict) and src.get("name") == source and location(src):
                places.add(location(src))
    tombstone = read_tombstone(store)
    entry = tombstone.get(source) or {"when": journal.started, "audit": journal.audit}
    entry["locations"] = sorted(set(entry.get("locations", [])) | places)
    tombstone[source] = entry
    write_tombstone(store, tombstone)


# --- 3. token outputs ---------------------------------------------------------------------------------------


def delete_token_outputs(store: Store, journal: Journal) -> list[dict[str, str]]:
    """Delete them (those an interrupted attempt deleted already are listed too)."""
    deleted = []
    for uri in sorted(journal.deletions):
        stage, key = uri.rsplit("/", 2)[-2:]
        if store.exists(uri):
            with StageLock(store, uri, _owner(journal, stage), on_wait=_waiting):
                store.rm(uri)
            log.info("forget: deleted %s (token shards made from source '%s')", uri, journal.source)
        deleted.append({"stage": stage, "key": key, "why": "token shards made from the source"})
    return deleted


def _owner(journal: Journal, stage: str) -> dict[str, str]:
    return {"run_id": f"forget-{journal.audit}", "pipeline": "forget", "stage": stage}


def _waiting(holder: dict) -> None:
    log.warning("forget: waiting for run %s to finish writing; its output is rewritten next", holder.get("run_id"))


# --- 4. rewrite ---------------------------------------------------------------------------------------------


def rewrite_output(store: Store, uri: str, plan: OutputPlan, journal: Journal) -> dict[str, Any]:
    """Rewrite one output's files without the source, drop what no longer describes them, fix its manifest."""
    source, trace = journal.source, journal.trace
    with StageLock(store, uri, _owner(journal, plan.stage), on_wait=_waiting):
        manifest = store.read_manifest(uri) if store.exists(f"{uri}/{MANIFEST}") else None
        singles = {v for v in ((manifest or {}).get("outputs") or {}).values() if isinstance(v, str)}
        _drop_markers(store, uri, set(plan.files), source, trace.ids, everything="_work" in plan.scratch)
        for rel in plan.scratch:
            store.rm(f"{uri}/{rel}")
        deleted = 0
        for rel, kind in sorted(plan.files.items()):
            if store.exists(f"{uri}/{rel}"):
                keep_empty = kind in ("ledger", "ids", "json") or rel in singles
                deleted += F.rewrite(store, f"{uri}/{rel}", kind, source, trace, keep_empty)[1]
        listed = {e["path"] for e in (manifest or {}).get("files", [])}
        rewritten = manifest is not None and bool(listed & set(plan.files) or plan.counted)
        if rewritten:
            rewrite_manifest(store, uri, set(plan.files), journal, plan)
    return {"stage": plan.stage, "key": plan.key, "finished": plan.finished, "manifest_rewritten": rewritten,
            "rows": plan.count("docs"), "quarantine_records": plan.count("quarantine"),
            "ledger_items": plan.count("ledger"), "id_rows": plan.count("ids") + plan.count("json"),
            "files_deleted": deleted,
            "scratch_deleted": len(plan.scratch)}


def _drop_markers(store: Store, uri: str, rels: set[str], source: str, ids: set[str], everything: bool) -> int:
    """Unit markers vouch for their files: those of changed files go (a rerun redoes those units), and so do
    markers naming the source or one of its documents (dedup's decide unit keeps example pairs of ids).
    `everything`: the work files the stage's phases share are gone."""
    dropped = 0
    for marker in store.ls(f"{uri}/_units"):
        try:
            done = store.read_json(marker) if marker.endswith(".json") else {}
        except (OSError, ValueError):
            done = {}
        outputs = done.get("outputs") if isinstance(done.get("outputs"), dict) else {}
        files = {r for group in outputs.values() if isinstance(group, list) for r in group}
        info = done.get("info") if isinstance(done.get("info"), dict) else {}
        if everything or files & rels or info.get("source") == source or F.without_ids(info, ids)[1]:
            store.rm(marker)
            dropped += 1
    return dropped


def manifest_digest(files: list[dict[str, Any]], outputs: dict[str, Any]) -> str:
    """What `Store.write_manifest` hashes into a manifest's digest (tests/tasks/forget checks they agree)."""
    return stable_hash({"files": files, "outputs": outputs}, 24)


def rewrite_manifest(store: Store, uri: str, changed: set[str], journal: Journal, plan: OutputPlan) -> None:
    """The manifest of the files as they are now; idempotent (a rerun after a crash finishes the job)."""
    m = store.read_manifest(uri)
    notes = (m.get("stats") or {}).get("forgotten") or {}
    if (notes.get(journal.source) or {}).get("audit") == journal.audit:
        return
    gone = {rel for rel in changed if not store.exists(f"{uri}/{rel}")}
    outputs = {g: [r for r in v if r not in gone] if isinstance(v, list) else v for g, v in m["outputs"].items()}
    files = []
    for entry in m.get("files", []):
        if entry["path"] in gone:
            continue
        if entry["path"] in changed:
            path = f"{uri}/{entry['path']}"
            entry = {"path": entry["path"], "bytes": store.fs.size(path), "sha256": store.file_digest(path)}
        files.append(entry)
    note = {"audit": journal.audit, "when": journal.started, "rows": plan.count("docs"), "counted": plan.counted,
            "quarantine_records": plan.count("quarantine"), "ledger_items": plan.count("ledger"),
            "id_rows": plan.count("ids") + plan.count("json"), "digest_before": m["digest"]}
    m.update(outputs=outputs, files=files, digest=manifest_digest(files, outputs),
             stats={**m.get("stats", {}), "forgotten": {**notes, journal.source: note}})
    store.write_json(f"{uri}/{MANIFEST}", m)


# --- 5. the dedup index ---------------------------------------------------------------------------------------


def forget_index(store: Store, ids: set[str], redis_urls: Iterable[str], required: set[str]) -> dict[str, Any]:
    """Remove the documents from the local index generations and from the Redis indexes of the store.
    A Redis server in `required` (the pipeline's) must answer; others (from older runs' configs) that do not
    are reported, not waited for."""
    import redis

    found: dict[str, Any] = {"local": forget_local(store, ids), "redis": {}, "unreachable": []}
    for url in sorted(set(redis_urls)):
        try:
            found["redis"].update(forget_redis(url, store, ids))
        except (ConnectionError, redis.exceptions.RedisError) as exc:
            if url in required:
                raise UserError(f"forget: the dedup index on Redis at {url} (dedup.redis_url) is not reachable "
                                f"({exc}): the source's documents are still in it. Start Redis (or fix "
                                "dedup.redis_url) and rerun `llmpipe forget`: it resumes.") from exc
            log.warning("forget: Redis at %s (named by an earlier run's dedup config) is not reachable (%s); "
                        "its index, if it still exists, keeps the source's documents", url, exc)
            found["unreachable"].append(url)
    return found


def redis_urls_of(outputs: list[Output]) -> set[str]:
    """The Redis servers earlier dedup runs of the store used."""
    urls = set()
    for o in outputs:
        cfg = (o.manifest or {}).get("config") or {}
        if o.stage == "dedup" and cfg.get("backend") == "redis" and cfg.get("redis_url"):
            urls.add(cfg["redis_url"])
    return urls


# --- 6. the registry ----------------------------------------------------------------------------------------


# --- 7. the audit record ---------------------------------------------------------------------------------------


def write_audit(store: Store, record: dict[str, Any]) -> str:
    uri = store.join("audit", f"forget-{record['audit']}.json")
    store.write_json(uri, record)
    return uri


# --- the whole -----------------------------------------------------------------------------------------------


def check_name(source: str) -> None:
    if not source or not source.strip():
        raise UserError("forget: give the name of the source to forget (--source NAME: the `name` of a "
                        "collect.sources entry, as the documents' `source` column holds it).")


def check_store(store: Store) -> None:
    """A store that is not there is a wrong `store:` setting, not a store with nothing to forget."""
    if not store.exists(store.root):
        raise UserError(f"forget: store '{store.root}' does not exist; check the pipeline's `store:` (or pass "
                        "--set store=PATH, the directory your runs wrote).")


def forget_source(store: Store, source: str, *, reason: str = "", redis_urls: Iterable[str] = (),
                  required_redis: Iterable[str] = ()) -> dict[str, Any]:
    """Forget one source (by the name its documents carry); returns the audit record. See the module doc."""
    check_name(source)
    check_store(store)
    store.makedirs(store.join("_forget"))
    with StageLock(store, store.join("_forget"), {"run_id": "forget", "pipeline": "forget", "stage": "forget"},
                   on_wait=_waiting):
        journal = Journal.open(store, source, reason)
        outputs = find(store, source, journal)
        journal.save(store)
        write_entry(store, source, journal, outputs)
        deleted = delete_token_outputs(store, journal)
        rows = []
        for uri, plan in sorted(journal.plans.items()):
            raise_if_stopping(f"forgetting in {uri}")  # Ctrl-C: stop between outputs; a rerun resumes
            if store.exists(uri):
                rows.append(rewrite_output(store, uri, plan, journal))
        urls = set(redis_urls) | redis_urls_of(outputs)
        index = forget_index(store, journal.trace.ids, urls, set(required_redis))
        # every registered version whose lineage holds one of these digests; a tainted champion is flagged
        # as needing a retrain, which the next maintenance run does (from scratch, without the source)
        tainted = taint_versions(store, journal.digests, _taint_reason(source, journal.reason), journal.audit)
        record = {
            "audit": journal.audit, "source": source, "when": journal.started, "reason": journal.reason,
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "resumed": journal.resumed, "store": store.root,
            "found": bool(journal.held or journal.derived or deleted or _index_count(index)
                          or any(r[n] for r in rows for n in ("rows", "quarantine_records", "ledger_items",
                                                              "id_rows"))),
            "outputs": rows, "deleted": deleted,
            "held": sorted(_short(store, u) for u in journal.held),
            "derived": sorted(_short(store, u) for u in journal.derived),
            "document_ids": len(journal.trace.ids), "index": {**index, "removed": _index_count(index)},
            "tainted_digests": sorted(journal.digests),
            "tainted_versions": tainted,
        }
        record["audit_record"] = write_audit(store, record)
        journal.remove(store)
    return record


def _taint_reason(source: str, reason: str) -> str:
    return f"trained on source '{source}', since forgotten" + (f": {reason}" if reason else "")


def _index_count(index: dict[str, Any]) -> int:
    return sum(index["local"].values()) + sum(index["redis"].values())


def _short(store: Store, uri: str) -> str:
    return uri[len(store.root) + 1:] if uri.startswith(store.root + "/") else uri


# --- lifting ----------------------------------------------------------------------------------------------------


def lift_source(store: Store, source: str) -> dict[str, Any]:
    """Take a source off the tombstone so that collect reads it again. Outputs read from no other output
    (collect's) that a forget rewrote are withdrawn: their store keys are those of a config with the source,
    so a run would otherwise reuse them without it; a rerun redoes their units of the source only."""
    check_store(store)
    tombstone = read_tombstone(store)
    if source not in tombstone:
        listed = ", ".join(sorted(tombstone)) or "none"
        raise UserError(f"forget --lift: source '{source}' is not forgotten in {store.root} (forgotten: {listed}).")
    withdrawn = []
    for o in list_outputs(store):
        notes = ((o.manifest or {}).get("stats") or {}).get("forgotten") or {}
        if source in notes and not o.inputs:
            store.invalidate(o.uri)
            withdrawn.append(_short(store, o.uri))
    entry = tombstone.pop(source)
    write_tombstone(store, tombstone)
    now = _dt.datetime.now(_dt.timezone.utc)
    record = {"audit": f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}", "source": source, "when": now.isoformat(timespec="seconds"),
              "lifted": entry, "withdrawn": withdrawn, "store": store.root}
    record["audit_record"] = store.join("audit", f"lift-{record['audit']}.json")
    store.write_json(record["audit_record"], record)
    return record
