"""`llmpipe verify [PIPELINE]`: check every finished stage output of a pipeline against its manifest."""
from __future__ import annotations

from typing import Any

from flows.config import load_pipeline
from flows.stages import STAGES
from tasks.core.stage import RunContext, plan_stage, result_from_manifest
from tasks.core.store import Store


def verify_pipeline(pipeline: str, config_file: str | None = None, overrides: list[str] | None = None,
                    sources: list[str] | None = None, hashes: bool = True) -> list[dict[str, Any]]:
    """One row per stage: `ok` (every file as recorded), `damaged` (what differs; the manifest is
    withdrawn, so the next run redoes the stage from its intact units), `not built`, or `not checked`
    when a stage it reads is not built."""
    name, cfg = load_pipeline(pipeline, config_file, overrides, sources)
    ctx = RunContext(store=cfg.store, pipeline=name, run_id="verify", seed=cfg.seed, runner=cfg.runner,
                     verify="hashes" if hashes else "sizes")
    store = Store(cfg.store)
    results, rows = {}, []
    for stage in STAGES:
        if not stage.built:
            continue
        missing = [r for r in stage.reads if r not in results]
        if missing:
            rows.append({"stage": stage.name, "status": "not checked", "detail": f"{', '.join(missing)} not built"})
            continue
        plan = plan_stage(stage, getattr(cfg, stage.name), {r: results[r] for r in stage.reads}, ctx)
        if plan.damaged:
            rows.append({"stage": stage.name, "status": "damaged", "uri": plan.uri, "detail": plan.damaged})
        elif plan.complete:
            results[stage.name] = result_from_manifest(store, plan.uri)
            files = len(store.read_manifest(plan.uri).get("files", []))
            purged = " (raw text deleted after pii: retain_raw false)" if results[stage.name].purged else ""
            rows.append({"stage": stage.name, "status": "ok", "uri": plan.uri,
                         "detail": f"{files} files, {'SHA-256s' if hashes else 'sizes'} match{purged}"})
        else:
            rows.append({"stage": stage.name, "status": "not built", "uri": plan.uri, "detail": ""})
    return rows
