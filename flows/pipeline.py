"""The end-to-end Prefect flow: each stage in order, as its own cached, retried task."""
from __future__ import annotations

import datetime as _dt
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

from prefect import flow, get_run_logger
from prefect.context import get_run_context

from flows import executors, report
from flows.config import dump_yaml, load_pipeline
from flows.stages import STAGES, STAGE_NAMES
from tasks.core.errors import ConfigError, UserError
from tasks.core.result import StageResult
from tasks.core.stage import RunContext, plan_stage, register_executor
from tasks.core.store import Store

log = logging.getLogger("llmpipe")
Progress = Callable[[str, dict[str, Any]], None]
_PROGRESS: dict[str, Progress] = {}  # the CLI's progress printer, by run id (not a flow parameter)


@flow(name="llmpipe", log_prints=False, persist_result=False)
def pipeline_flow(pipeline: str = "demo", overrides: list[str] | None = None, sources: list[str] | None = None,
                  until: str | None = None, config_file: str | None = None,
                  summary_path: str | None = None) -> dict[str, Any]:
    """Run a named pipeline from pipelines.yaml, optionally with `--set` overrides and replacement sources."""
    name, cfg = load_pipeline(pipeline, config_file, overrides, sources)
    if until is not None and until not in STAGE_NAMES:
        raise ConfigError(f"--until {until}: no such stage; stages: {', '.join(STAGE_NAMES)}.")
    run_id = str(get_run_context().flow_run.id)
    ctx = RunContext(store=cfg.store, pipeline=name, run_id=run_id, seed=cfg.seed, runner=cfg.runner)
    progress = _PROGRESS.get("current") or (lambda event, info: None)
    summary = _new_summary(name, run_id, cfg, until, config_file)
    store = Store(cfg.store)
    run_dir = store.join("runs", run_id)
    try:
        store.makedirs(run_dir)
    except OSError as exc:
        raise UserError(f"store '{cfg.store}' is not writable ({exc.strerror or exc}); set `store:` in "
                        "pipelines.yaml or --set store=PATH to a directory you can write.") from None
    store.write_json(f"{run_dir}/config.json", cfg.model_dump(mode="json"))
    with store.open(f"{run_dir}/config.yaml", "wb") as f:
        f.write(dump_yaml(cfg).encode())
    if cfg.runner.kind == "local":
        executors.start_local_pool(ctx.workers)
    register_executor(run_id, executors.PrefectUnitExecutor())
    try:
        _run_stages(cfg, ctx, until, summary, progress)
    finally:
        register_executor(run_id, None)
        executors.stop_local_pool()
        summary["seconds"] = round(time.perf_counter() - summary.pop("_t0"), 3)
        _write_summary(store, run_dir, summary, summary_path)
        report.summary_artifact(summary)
    return summary


def _run_stages(cfg: Any, ctx: RunContext, until: str | None, summary: dict, progress: Progress) -> None:
    logger = get_run_logger()
    upstream: list[StageResult] = []
    for spec in STAGES:
        entry: dict[str, Any] = {"status": "not_implemented", "stats": {}, "outputs": {}, "seconds": 0.0}
        summary["stages"][spec.name] = entry
        if not spec.built:
            progress("stage", {"stage": spec.name, **entry})
            logger.info("stage %s is not implemented yet; stopping here", spec.name)
            _mark_rest(summary, spec.name, until)
            summary["status"] = "partial"
            return
        stage_cfg = getattr(cfg, spec.name)
        task = spec.prefect_task()
        plan = plan_stage(spec.name, task.stage_fn, stage_cfg, upstream, ctx)
        progress("start", {"stage": spec.name, "cached": plan.complete})
        start = time.perf_counter()
        try:
            result = task.with_options(refresh_cache=not plan.complete)(plan, stage_cfg, upstream, ctx)
        except BaseException as exc:
            entry.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                         seconds=round(time.perf_counter() - start, 3), uri=plan.uri)
            summary["status"] = "failed"
            progress("stage", {"stage": spec.name, **entry})
            raise
        entry.update(status="cached" if (plan.complete or result.cached) else "completed", stats=result.stats,
                     outputs=result.outputs, uri=result.uri, seconds=round(time.perf_counter() - start, 3))
        progress("stage", {"stage": spec.name, **entry})
        try:
            report.stage_artifact(spec.name, result)
        except Exception as exc:  # a UI table must never fail a finished stage
            logger.warning("could not create the %s artifacts: %s", spec.name, exc)
        upstream = [result]
        if spec.name == until:
            break
    summary["status"] = "completed"


def _mark_rest(summary: dict, after: str, until: str | None) -> None:
    """Stages after an unbuilt one cannot run either; they are reported as not implemented."""
    names = STAGE_NAMES[STAGE_NAMES.index(after) + 1:]
    if until is not None and until in STAGE_NAMES:
        names = [n for n in names if STAGE_NAMES.index(n) <= STAGE_NAMES.index(until)]
    for n in names:
        summary["stages"][n] = {"status": "not_implemented", "stats": {}, "outputs": {}, "seconds": 0.0}


def _new_summary(name: str, run_id: str, cfg: Any, until: str | None, config_file: str | None) -> dict:
    return {"pipeline": name, "run_id": run_id, "store": Store(cfg.store).root, "until": until,
            "config_file": config_file, "status": "running",
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "stages": {}, "_t0": time.perf_counter()}


def _write_summary(store: Store, run_dir: str, summary: dict, summary_path: str | None) -> None:
    store.write_json(f"{run_dir}/summary.json", summary)
    if summary_path:
        path = Path(summary_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str))

