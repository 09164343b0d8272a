"""Prefect artifacts for the UI: every stage's account and per-source tables, the artifacts a stage declares,
and the run summary; keys per pipeline, figures rounded for reading."""
from __future__ import annotations

import logging
import re
from typing import Any

from tasks.core.artifacts import Artifact, Markdown, Table, rounded
from tasks.core.result import StageResult
from tasks.core.stage import Stage

log = logging.getLogger("llmpipe")

ACCOUNT_KEYS = ("docs_in", "docs_out", "rows_out", "quarantined")


def artifact_key(pipeline: str, stage: str, name: str) -> str:
    """Prefect keys allow lowercase letters, digits and dashes; one key per pipeline, stage and table, so
    the UI's artifact history of a key follows one pipeline."""
    return re.sub(r"[^a-z0-9-]+", "-", f"{pipeline}-{stage}-{name}".lower()).strip("-")


def count_units(stats: dict[str, Any], upstream: list[dict[str, str]]) -> dict[str, str]:
    """What a data stage's counts are: documents, or passages once a stage upstream split documents.
    `upstream`: the `counts` of the stages it reads (empty for a stage that reads files)."""
    unit_in = "passages" if any(c.get("out") == "passages" for c in upstream) else "documents"
    split_here = stats.get("rows_out", 0) != stats.get("docs_out", 0)
    return {"in": unit_in, "out": "passages" if split_here else unit_in}


def account_rows(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per figure of a data stage's account, dropped reasons spelled out."""
    rows = [{"figure": k, "value": stats[k]} for k in ACCOUNT_KEYS if k in stats]
    rows += [{"figure": f"dropped: {reason}", "value": n} for reason, n in sorted(stats.get("dropped", {}).items())]
    rows += [{"figure": f"quarantined: {reason}", "value": n}
             for reason, n in sorted(stats.get("quarantine_reasons", {}).items())]
    return rows


def stage_artifacts(pipeline: str, stage: Stage, result: StageResult) -> None:
    """Publish a finished stage's tables: its account, per-source counts, and what its declaration adds."""
    stats = result.stats
    items: list[Artifact] = []
    if rows := account_rows(stats):
        items.append(Table("account", rows, "documents in, out, dropped by reason, quarantined"))
    if isinstance(stats.get("sources"), dict):
        items.append(Table("sources", [{"source": n, **c} for n, c in stats["sources"].items()], "counts per source"))
    try:
        if stage.artifacts is not None:
            items += stage.artifacts(result)
        for item in items:
            publish(pipeline, stage.name, item)
    except Exception as exc:  # noqa: BLE001 - a UI table must never fail a finished stage
        log.warning("could not create the %s artifacts: %s", stage.name, exc)


def publish(pipeline: str, stage: str, item: Artifact) -> None:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    key = artifact_key(pipeline, stage, item.name)
    description = f"{pipeline} / {stage}: {item.description}"
    if isinstance(item, Table):
        create_table_artifact(table=[rounded(row) for row in item.rows], key=key, description=description)
    elif isinstance(item, Markdown):
        create_markdown_artifact(markdown=item.markdown, key=key, description=description)


def summary_markdown(summary: dict[str, Any]) -> str:
    lines = [f"# llmpipe run `{summary['pipeline']}`: {summary['status']}", "",
             "| stage | status | in | out | seconds |", "|---|---|---|---|---|"]
    for name, entry in summary["stages"].items():
        stats, counts = entry.get("stats", {}), entry.get("counts") or {}
        n_in = f"{stats['docs_in']:,} {counts.get('in', 'documents')}" if "docs_in" in stats else ""
        n_out = f"{stats['rows_out']:,} {counts.get('out', 'documents')}" if "rows_out" in stats else ""
        if "tokens" in stats and not n_out:
            n_out = f"{stats['tokens']:,} tokens"
        lines.append(f"| {name} | {entry['status']} | {n_in} | {n_out} | {entry.get('seconds', 0):.1f} |")
    return "\n".join(lines)


def summary_artifact(summary: dict[str, Any]) -> None:
    try:
        from prefect.artifacts import create_markdown_artifact

        create_markdown_artifact(markdown=summary_markdown(summary),
                                 key=artifact_key(summary["pipeline"], "run", "summary"),
                                 description=f"{summary['pipeline']}: per-stage status of this run")
    except Exception as exc:  # noqa: BLE001 - an artifact must never fail a finished run
        log.warning("could not create the summary artifact: %s", exc)


def stage_events(pipeline: str, result: StageResult) -> None:
    """Prefect events a finished stage emits for automations to act on: register's promotions and
    rejections (`llmpipe.model.promoted`, `llmpipe.model.rejected`). Failed runs need none of ours:
    Prefect emits `prefect.flow-run.Failed` itself."""
    stats = result.stats
    if result.stage != "register" or stats.get("decision") not in ("promote", "reject") or result.cached:
        return
    try:
        from prefect.events import emit_event

        kind = "promoted" if stats["decision"] == "promote" else "rejected"
        emit_event(event=f"llmpipe.model.{kind}",
                   resource={"prefect.resource.id": f"llmpipe.registry.{stats['registry']}.{stats['version']}",
                             "prefect.resource.name": f"{stats['registry']} {stats['version']}"},
                   related=[{"prefect.resource.id": f"llmpipe.pipeline.{pipeline}", "prefect.resource.role": "pipeline"}],
                   payload={"version": stats["version"], "registry": stats["registry"],
                            "champion_before": stats.get("champion_before"), "champion": stats.get("champion"),
                            "rules_failed": stats.get("rules_failed", [])})
    except Exception as exc:  # noqa: BLE001 - an event must never fail a finished stage
        log.warning("could not emit the %s event: %s", result.stage, exc)
