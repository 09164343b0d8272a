"""`llmpipe forget --source NAME [PIPELINE]`: the `forget` flow, which removes a source from a pipeline's store.

The work is `tasks.forget.remove.forget_source` (plain functions); the flow gives it a named run in the
Prefect UI, its log lines and a table of what it removed. The pipeline says which store, and which Redis
server holds its dedup index when `dedup.backend` is `redis`. Prefect is imported when the flow is built,
not when the command line is parsed.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import sys
from functools import cache
from typing import Any, Optional


def _run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters or {}
    return f"forget-{params.get('source', '?')}-{_dt.datetime.now(_dt.timezone.utc):%Y%m%d-%H%M%S}"


def run_forget(source: str, pipeline: str = "demo", overrides: Optional[list[str]] = None,
               config_file: Optional[str] = None, reason: str = "") -> dict[str, Any]:
    """The flow's body: forget one source of a pipeline's store; returns the audit record.

    Args:
        source: the source's name (`collect.sources[].name`, the documents' `source` column)
        pipeline: the pipeline in pipelines.yaml whose store and dedup settings to use
        overrides: `KEY=VALUE` settings by dotted path, e.g. `store=/data/store`
        config_file: the pipelines.yaml to read (default: ./pipelines.yaml, else the repo's)
        reason: why (kept in the audit record)
    """
    from flows import report
    from flows.config import load_pipeline
    from flows.pipeline import _send_logs_to_prefect
    from tasks.core.store import Store
    from tasks.forget import report as forget_report
    from tasks.forget.remove import forget_source

    _send_logs_to_prefect()
    name, cfg = load_pipeline(pipeline, config_file, overrides)
    redis = {cfg.dedup.redis_url} if cfg.dedup.backend == "redis" else set()
    record = forget_source(Store(cfg.store), source, reason=reason, redis_urls=redis, required_redis=redis)
    for item in forget_report.artifacts(record):
        report.publish(name, "forget", item)
    return record


@cache
def forget_flow() -> Any:
    """The `forget` flow (its parameters: those of `run_forget`)."""
    from prefect import flow

    return flow(name="llmpipe-forget", flow_run_name=_run_name, log_prints=False, persist_result=False,
                description="Remove a source's documents from the store, with the token shards and dedup index "
                            "entries made from them; taint the models trained on them; write an audit record "
                            "(counts, no text).")(run_forget)


def __getattr__(name: str) -> Any:
    """`flows/forget.py:forget`, the deployments' entrypoint, is the flow (built, and Prefect imported, on
    first use: the command line's parser imports this module too)."""
    if name == "forget":
        return forget_flow()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def add_parser(sub: Any) -> None:
    """The `forget` subcommand of `llmpipe` (flows/cli.py)."""
    p = sub.add_parser("forget", help="remove a source's documents from the store, with the token shards and "
                                      "dedup index entries made from them; taint the models trained on them",
                       description="Run it when no pipeline run is writing to the store. A rerun after a crash "
                                   "resumes; a repeat finds nothing and says so.")
    p.add_argument("pipeline", nargs="?", default="demo",
                   help="the pipeline whose store (and dedup index) to clean (default: demo)")
    p.add_argument("--source", required=True, metavar="NAME",
                   help="the source's name: collect.sources[].name (`llmpipe run --source` names its sources "
                        "cli-0, cli-1, ...)")
    p.add_argument("-c", "--config", help="pipelines.yaml to read (default: ./pipelines.yaml, else the repo's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set store=/data/store (repeatable)")
    p.add_argument("--reason", default="", help="why the source is forgotten (kept in the audit record)")
    p.add_argument("--lift", action="store_true",
                   help="undo it instead: the source is no longer skipped, the next run collects it again")
    p.add_argument("-v", "--verbose", action="store_true", help="show Prefect's own log lines")
    p.set_defaults(handler=cmd_forget)


def cmd_forget(args: argparse.Namespace) -> int:
    from flows.cli import StopOnSignals, _quiet_prefect_tracebacks, check_prefect_server, run_in_thread
    from flows.config import load_pipeline
    from flows.server import send_pending_records, temporary_server
    from tasks.core.errors import UserError
    from tasks.core.store import Store
    from tasks.forget import report as forget_report
    from tasks.forget.remove import check_name, lift_source

    check_name(args.source)  # mistakes are reported before Prefect starts
    _, cfg = load_pipeline(args.pipeline, args.config, args.overrides)
    if args.lift:
        record = lift_source(Store(cfg.store), args.source)
        print(f"llmpipe: source '{args.source}' is no longer forgotten: the next run collects it again "
              f"({len(record['withdrawn'])} collect outputs withdrawn); audit record: {record['audit_record']}")
        return 0
    with StopOnSignals() as stop:
        check_prefect_server()
        _quiet_prefect_tracebacks()
        print(f"llmpipe: forgetting source '{args.source}' in {cfg.store}; starting Prefect...", flush=True)
        with temporary_server():
            record, error = run_in_thread(lambda: forget_flow()(
                source=args.source, pipeline=args.pipeline, overrides=args.overrides, config_file=args.config,
                reason=args.reason), stop)
            send_pending_records()
        if stop.signum is not None and error is not None:
            return stop.report(error)
    if isinstance(error, (UserError, KeyboardInterrupt)):
        raise error
    if error is not None:
        print(f"llmpipe: forget failed: {type(error).__name__}: {error}", file=sys.stderr)
        print("llmpipe: rerun the same command: it resumes where it stopped.", file=sys.stderr)
        return 1
    for line in forget_report.lines(record):
        print(f"  {line}")
    return 0
