"""What a forget shows: the Prefect UI's tables and markdown, and the console's lines, from its audit record.

Counts and names only, like the record itself.
"""
from __future__ import annotations

from typing import Any

from tasks.core.artifacts import Artifact, Markdown, Table

COUNTS = ("rows", "quarantine_records", "ledger_items", "id_rows", "files_deleted", "scratch_deleted")


def totals(record: dict[str, Any]) -> dict[str, int]:
    return {name: sum(row[name] for row in record["outputs"]) for name in COUNTS}


def lines(record: dict[str, Any]) -> list[str]:
    """The console's summary of a forget."""
    source, store = record["source"], record["store"]
    if not record["found"]:
        return [f"nothing of source '{source}' is left in {store}; it stays listed as forgotten "
                f"(audit record: {record['audit_record']})"]
    t = totals(record)
    tainted = record["tainted_versions"]
    named = "; ".join(f"{reg}: {' '.join(vs)}" for reg, vs in sorted(tainted.items()))
    versions = f"{sum(map(len, tainted.values()))} model versions tainted" + (f" ({named})" if named else "")
    out = [f"removed {t['rows']:,} document rows and {t['quarantine_records']:,} quarantined records of source "
           f"'{source}' from {len(record['outputs'])} outputs ({t['files_deleted']:,} files left empty and deleted; "
           f"{t['ledger_items']:,} ledger items, {t['id_rows']:,} id rows)",
           f"deleted {len(record['deleted'])} token outputs made from it; {record['index']['removed']:,} dedup "
           f"index entries removed; {len(record['tainted_digests'])} output digests tainted, {versions}"]
    if record["index"]["unreachable"]:
        out.append(f"not reachable, not cleaned: {', '.join(record['index']['unreachable'])}")
    out.append(f"audit record: {record['audit_record']}")
    return out


def artifacts(record: dict[str, Any]) -> list[Artifact]:
    """A table per output rewritten or deleted, and the summary in markdown."""
    rows = [{"output": f"{r['stage']}/{r['key']}", "what": "rewritten" if r["manifest_rewritten"] else "cleaned",
             **{name: r[name] for name in COUNTS}} for r in record["outputs"]]
    rows += [{"output": f"{d['stage']}/{d['key']}", "what": "deleted", **dict.fromkeys(COUNTS, 0)}
             for d in record["deleted"]]
    md = "\n".join([f"# Forgot source `{record['source']}`", "", f"audit `{record['audit']}`, {record['when']}", "",
                    *[f"- {line}" for line in lines(record)]])
    return [Table("outputs", rows, f"rows removed per output, source '{record['source']}'"),
            Markdown("summary", md, "what the forget removed, counts only")]
