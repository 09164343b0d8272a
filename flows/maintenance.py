"""The `maintenance` flow: fold new data into the champion, gate the result, promote or reject.

The same stages as the pipeline flow, composed differently (tasks/register/maintenance.py says how):
1. data phase: collect what the champion's ledger does not hold, clean it, dedup it against the index of
   the champion's data, anonymize it. Fewer new documents than `maintenance.min_new_docs`: the run records
   that and ends without training (unless the champion is tainted and must be retrained anyway);
2. training phase: `continue` appends the new tokens to the champion's, with its tokenizer, and continues
   pretraining the champion with replay of the old tokens; `retrain` (or a tainted champion, or no
   champion yet) runs the pipeline from scratch on everything. Then evaluate, bias and register, whose
   gate promotes the challenger or rejects it.
Every run leaves a record in `<store>/registry/<name>/maintenance/` and a Prefect artifact. The champion
changes only in register's final locked step, so a failure anywhere leaves it untouched.
"""
from __future__ import annotations

import datetime as _dt
import logging
import os
from typing import Any, Optional

from prefect import flow
from prefect.context import get_run_context

from flows import pipeline as _pipeline
from flows.config import load_pipeline
from tasks.register.maintenance import (
    champion_basis,
    continue_config,
    data_config,
    new_documents,
    record_markdown,
    validated,
    write_record,
)
from tasks.register.registry import CHAMPION, Registry

log = logging.getLogger("llmpipe")


def run_maintenance(pipeline: str, overrides: list[str] | None, config_file: str | None,
                    summary_path: str | None) -> dict[str, Any]:
    _pipeline._send_logs_to_prefect()
    name, cfg = load_pipeline(pipeline, config_file, overrides)
    m = cfg.maintenance
    reg = Registry(cfg.store, cfg.register.name or name)
    flow_run = get_run_context().flow_run
    run_id = str(flow_run.id)
    _pipeline._tag_run(flow_run, name, extra=("maintenance",))
    basis = champion_basis(reg)
    needs = reg.needs_retrain()
    mode = "initial" if basis is None else ("retrain" if (basis.tainted or needs or m.mode == "retrain")
                                             else "continue")
    record: dict[str, Any] = {
        "run_id": run_id, "pipeline": name, "registry": reg.name, "mode": mode, "min_new_docs": m.min_new_docs,
        "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "champion_before": basis.version if basis else None,
        "retrain_because": (needs or {}).get("reason") if mode == "retrain" and (needs or basis.tainted) else None}
    summary: dict[str, Any] | None = None
    try:
        if basis is not None and mode == "retrain" and (basis.tainted or needs):
            log.info("maintenance: the champion %s is tainted (%s): retraining on everything", basis.version,
                     (needs or {}).get("reason", "trained on a forgotten source"))
        elif basis is not None:
            log.info("maintenance: champion %s; looking for data it has not seen", basis.version)
            data = _pipeline.run_config(name, validated(data_config(cfg, basis)), "pii", _pipeline.STAGES,
                                        config_file, None, run_id, phase="data")
            record["new"] = new_documents(data)
            if record["new"]["documents"] < m.min_new_docs:
                record["outcome"] = "nothing_new"
                log.info("maintenance: %d new documents (minimum %d): nothing to train", record["new"]["documents"],
                         m.min_new_docs)
                summary = data
                return _finish(reg, record, data, summary_path)
        run_cfg = validated(continue_config(cfg, basis, m)) if mode == "continue" else cfg
        summary = _pipeline.run_config(name, run_cfg, None, _pipeline.STAGES, config_file, None, run_id)
        stages = summary["stages"]
        trained = (stages.get("pretrain") or {}).get("stats") or {}
        record["trained"] = {k: trained.get(k) for k in ("steps", "tokens", "val_loss", "replay_ratio",
                                                            "previous_train_tokens", "new_train_tokens",
                                                            "windows_from_previous", "windows_from_new")}
        record["trained"]["init_from"] = basis.version if mode == "continue" else None
        reg_stats = (stages.get("register") or {}).get("stats") or {}
        record["version"] = reg_stats.get("version")
        decisions = [d for d in reg.decisions() if d.get("run_id") == run_id]
        record["decision"] = decisions[-1] if decisions else None
        record["outcome"] = reg_stats.get("decision") or summary["status"]
        if mode == "initial":
            record["new"] = new_documents(summary)
        return _finish(reg, record, summary, summary_path)
    except BaseException as exc:
        record["outcome"] = "failed"
        record["error"] = f"{type(exc).__name__}: {exc}"
        _finish(reg, record, summary, None)
        raise


def _finish(reg: Registry, record: dict[str, Any], summary: dict[str, Any] | None,
            summary_path: str | None) -> dict[str, Any]:
    record["champion_after"] = reg.alias(CHAMPION)
    record["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    path = write_record(reg, record)
    log.info("maintenance: %s; record %s", record["outcome"], path)
    try:
        from prefect.artifacts import create_markdown_artifact

        from flows.report import artifact_key

        create_markdown_artifact(markdown=record_markdown(record),
                                 key=artifact_key(record["pipeline"], "maintenance", "record"),
                                 description=f"{record['pipeline']}: what was new, trained and decided")
    except Exception as exc:  # noqa: BLE001 - an artifact must never fail the run
        log.warning("could not create the maintenance artifact: %s", exc)
    out = dict(summary or {"stages": {}, "status": record["outcome"]})
    out["maintenance"] = {**record, "record": str(path)}
    if summary is not None and record["outcome"] != "failed":  # a failed phase wrote its own summary
        # the run's summary.json (and --summary) once, with the maintenance record in it
        phase = ["data"] if record["outcome"] == "nothing_new" else []  # only the data phase ran
        run_dir = reg.store.join("runs", record["run_id"], *phase)
        _pipeline._write_summary(reg.store, run_dir, out, summary_path)
    return out


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters or {}
    return f"{params.get('pipeline', 'demo')}-maintenance-{_dt.datetime.now(_dt.timezone.utc):%Y%m%d-%H%M%S}"


def build_maintenance_flow(config_file: str | None = None) -> Any:
    """The `llmpipe-maintenance` flow, its pipeline parameter typed from the config file (a UI choice)."""
    PipelineName, default = _pipeline.pipeline_choices(config_file)

    def maintenance_flow(pipeline=default, overrides=None, config_file=config_file, summary_path=None):
        """Fold the data that is new since the champion was trained into a challenger; gate; promote or reject.

        Args:
            pipeline: the pipeline's name in pipelines.yaml (its `maintenance:` section says how)
            overrides: `KEY=VALUE` settings by dotted path, e.g. `maintenance.replay_ratio=0.3`
            config_file: the pipelines.yaml to read (default: ./pipelines.yaml, else the repo's)
            summary_path: also write the run summary JSON (with the maintenance record) here
        """
        return run_maintenance(pipeline, overrides, config_file, summary_path)

    maintenance_flow.__annotations__ = {"pipeline": PipelineName, "overrides": Optional[list[_pipeline.Override]],
                                        "config_file": Optional[str], "summary_path": Optional[str], "return": Any}
    return flow(name="llmpipe-maintenance", flow_run_name=_run_name, log_prints=False, persist_result=False,
                description="Maintenance retraining: new data since the champion, continued pretraining with "
                            "replay (or a retrain), evaluate, bias, gate, promote or reject.")(maintenance_flow)


maintenance_flow = build_maintenance_flow(os.environ.get("LLMPIPE_CONFIG") or None)  # see flows/pipeline.py
