"""Prefect artifacts for the UI: per-stage account tables, per-source counts, the run summary."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from tasks.core.result import StageResult

log = logging.getLogger("llmpipe")

ACCOUNT_KEYS = ("docs_in", "docs_out", "rows_out", "quarantined")


def account_rows(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per figure of a data stage's account, dropped reasons spelled out."""
    rows = [{"figure": k, "value": stats[k]} for k in ACCOUNT_KEYS if k in stats]
    rows += [{"figure": f"dropped: {reason}", "value": n} for reason, n in sorted(stats.get("dropped", {}).items())]
    rows += [{"figure": f"quarantined: {reason}", "value": n}
             for reason, n in sorted(stats.get("quarantine_reasons", {}).items())]
    return rows


def stage_artifact(stage: str, result: StageResult) -> None:
    """Tables of what a stage did (and the loss curve); skipped quietly outside a Prefect run."""
    try:
        from prefect.artifacts import create_table_artifact
    except ImportError:
        return
    stats = result.stats
    rows = account_rows(stats)
    if rows:
        create_table_artifact(table=rows, key=f"{stage}-account",
                              description=f"{stage}: documents in, out, dropped by reason, quarantined")
    if isinstance(stats.get("sources"), dict):
        table = [{"source": name, **counts} for name, counts in stats["sources"].items()]
        create_table_artifact(table=table, key=f"{stage}-sources", description=f"{stage}: counts per source")
    if stage == "pii":
        from prefect.artifacts import create_markdown_artifact

        from tasks.pii.stage import pii_entity_rows, pii_report_markdown

        create_table_artifact(table=pii_entity_rows(stats), key="pii-entities",
                              description="pii: detected entities (counts only, never values)")
        create_markdown_artifact(markdown=pii_report_markdown(stats), key="pii-report",
                                 description="pii: NER status, account and entity counts")
    if stage == "tokenize":
        from tasks.tokenizer.stage import publish_stats_artifact

        publish_stats_artifact(stats)
    if stage == "pretrain":
        from tasks.pretrain.stage import publish_artifact

        curve = result.files("loss_curve")
        publish_artifact(stats, Path(curve[0]) if curve else None)


def summary_artifact(summary: dict[str, Any]) -> None:
    try:
        from prefect.artifacts import create_markdown_artifact
    except ImportError:
        return
    lines = [f"# llmpipe run `{summary['pipeline']}`: {summary['status']}", "",
             "| stage | status | docs in | docs out | seconds |", "|---|---|---|---|---|"]
    for name, entry in summary["stages"].items():
        stats = entry.get("stats", {})
        lines.append(f"| {name} | {entry['status']} | {stats.get('docs_in', '')} | {stats.get('docs_out', '')} "
                     f"| {entry.get('seconds', 0):.1f} |")
    try:
        create_markdown_artifact(markdown="\n".join(lines), key="llmpipe-summary",
                                 description="per-stage status of this run")
    except Exception as exc:  # an artifact must never fail a finished run
        log.warning("could not create the summary artifact: %s", exc)
