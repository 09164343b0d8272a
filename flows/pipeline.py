"""The end-to-end Prefect flow: every stage as its own cached, retried task, run as soon as its inputs are.

The flow reads the pipeline's config, chooses the task runner for shard work from `runner:` (so a
deployment behaves exactly like the command line), and walks the stage graph: a stage starts when every
stage it reads has finished; stages that do not depend on each other run at the same time.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextvars import ContextVar, copy_context
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Optional

from prefect import flow, get_run_logger
from prefect.context import get_run_context
from prefect.states import Completed
from pydantic import Field

from flows import executors, report
from flows.config import dump_yaml, load_pipeline, read_config_file
from flows.stages import BY_NAME, STAGE_NAMES, STAGES, needed_for, prefect_task
from tasks.core.config import stable_hash
from tasks.core.errors import ConfigError, UserError
from tasks.core.result import StageResult
from tasks.core.stage import RunContext, Stage, plan_stage, register_executor, result_from_manifest
from tasks.core.stopping import raise_if_stopping
from tasks.core.store import Store

log = logging.getLogger("llmpipe")
Progress = Callable[[str, dict[str, Any]], None]
_PROGRESS: dict[str, Progress] = {}  # the CLI's progress printer (not a flow parameter: not serializable)
_PREFLIGHTED: set[str] = set()  # configs the command line checked for the flow run it is starting
BLOCKED = ("failed", "not_implemented", "not_run")
# a `--set` override as the UI form checks it before a run starts: a dotted key, `=`, a value
Override = Annotated[str, Field(pattern=r"^[A-Za-z_][\w.\[\]-]*=", description="KEY=VALUE, e.g. pretrain.max_steps=100")]


def _run_name() -> str:
    """`<pipeline>-<until>-<UTC time>`: the Prefect UI's run list says which pipeline ran."""
    from prefect.runtime import flow_run

    params = flow_run.parameters or {}
    until = f"-until-{params['until']}" if params.get("until") else ""
    if params.get("model"):
        until = f"-{params.get('until') or 'evaluate'}-{Path(params['model']).name}"
    return f"{params.get('pipeline', 'demo')}{until}-{_dt.datetime.now(_dt.timezone.utc):%Y%m%d-%H%M%S}"


def run_pipeline(pipeline: str, overrides: list[str] | None, sources: list[str] | None, until: str | None,
                 config_file: str | None, summary_path: str | None, model: str | None = None) -> Any:
    """The flow's body (the flow function below only adds typed parameters for the UI form)."""
    _send_logs_to_prefect()
    name, cfg = load_pipeline(pipeline, config_file, overrides, sources)
    if until is not None and until not in STAGE_NAMES:
        raise ConfigError(f"--until {until}: no such stage; stages: {', '.join(STAGE_NAMES)}.")
    stages = STAGES
    if model:
        cfg, stages, until = model_only(cfg, model, until or "evaluate")
    flow_run = get_run_context().flow_run
    _tag_run(flow_run, name)
    summary = run_config(name, cfg, until, stages, config_file, summary_path, str(flow_run.id))
    if summary["status"] == "partial":
        missing = [n for n, e in summary["stages"].items() if e["status"] == "not_implemented"]
        return Completed(name="Partial", data=summary,
                         message=f"finished what is built; not implemented yet: {', '.join(missing)}")
    return summary


def run_config(name: str, cfg: Any, until: str | None, stages: list[Stage], config_file: str | None,
               summary_path: str | None, run_id: str, phase: str = "") -> dict[str, Any]:
    """Run the stage graph of one resolved config inside the current flow run: its config and summary go
    to `<store>/runs/<run_id>[/<phase>]/`. Returns the summary; a stage's failure is raised after the
    summary is written."""
    preflight(cfg, until, stages=stages)
    ctx = RunContext(store=cfg.store, pipeline=name, run_id=run_id, seed=cfg.seed, runner=cfg.runner,
                     verify=cfg.verify)
    summary = _new_summary(name, run_id, cfg, until, config_file)
    store = Store(cfg.store)
    run_dir = store.join("runs", run_id, *([phase] if phase else []))
    try:
        store.makedirs(run_dir)
    except OSError as exc:
        raise UserError(f"store '{cfg.store}' is not writable ({exc.strerror or exc}); set `store:` in "
                        "pipelines.yaml or --set store=PATH to a directory you can write.") from None
    store.write_json(f"{run_dir}/config.json", cfg.model_dump(mode="json"))
    with store.open(f"{run_dir}/config.yaml", "wb") as f:
        f.write(dump_yaml(cfg).encode())
    progress = _PROGRESS.get("current") or (lambda event, info: None)
    try:
        with executors.unit_runner(cfg.runner) as unit_executor:
            register_executor(run_id, unit_executor.with_progress(progress), unit_executor.report)
            summary["runner"] = {"kind": cfg.runner.kind, "task_runner": type(unit_executor.runner).__name__}
            run_graph(cfg, ctx, until, summary, progress, stages)
    finally:
        register_executor(run_id, None)
        summary["seconds"] = round(time.perf_counter() - summary.pop("_t0"), 3)
        try:
            _write_summary(store, run_dir, summary, summary_path)
        except OSError as exc:  # a full disk must not hide the error that ended the run
            log.warning("could not write the run summary (%s); the stage lines above say what happened", exc)
        report.summary_artifact(summary)
    return summary


def model_only(cfg: Any, model: str, stage: str = "evaluate") -> tuple[Any, list[Stage], str]:
    """(config, stages, until) that run one stage on a model directory (`llmpipe evaluate|bias --model`):
    `pretrain` takes the given model; for evaluate, `tokenize` gives no val split; for bias, collect, pii
    and evaluate give nothing (tasks/evaluate/external.py)."""
    from tasks.core.config import StageConfig
    from tasks.evaluate.external import EXTERNAL_MODEL, NO_TOKENS, ExternalModelConfig, absent

    if stage not in ("evaluate", "bias"):
        raise ConfigError(f"--model runs the evaluate or the bias stage, not {stage!r}")
    path = str(Path(model).expanduser().resolve())
    if stage == "evaluate":
        cfg = cfg.model_copy(update={"pretrain": ExternalModelConfig(path=path), "tokenize": StageConfig()})
        return cfg, [EXTERNAL_MODEL, NO_TOKENS, BY_NAME["evaluate"]], "evaluate"
    note = "a model given with --model: {} is not run"
    cfg = cfg.model_copy(update={"pretrain": ExternalModelConfig(path=path), "collect": StageConfig(),
                                 "pii": StageConfig(), "evaluate": StageConfig()})
    return cfg, [absent("collect", note.format("collect")), absent("pii", note.format("pii")), EXTERNAL_MODEL,
                 absent("evaluate", note.format("evaluate")), BY_NAME["bias"]], "bias"


def preflight(cfg: Any, until: str | None = None, remember: bool = False, stages: list[Stage] = STAGES) -> None:
    """Every stage's cheap checks (sources exist, servers answer) before anything runs. The command line
    runs them before starting Prefect (`remember=True`), and the flow run it starts then skips them."""
    done = stable_hash([cfg.canonical(), until])
    if done in _PREFLIGHTED:
        _PREFLIGHTED.discard(done)
        return
    wanted = needed_for(until, stages) if until else [s.name for s in stages]
    for stage in stages:
        if stage.built and stage.preflight is not None and stage.name in wanted:
            stage.preflight(getattr(cfg, stage.name))
    if remember:
        _PREFLIGHTED.add(done)


def _send_logs_to_prefect() -> None:
    """Our `llmpipe.*` lines (stage and training progress) go to the run's Logs tab at INFO, whatever
    started the run (the command line, a deployment, the UI); the console keeps its own level."""
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.logging.handlers import APILogHandler

    class RunLogHandler(APILogHandler):
        """Lines logged inside a flow or task run; others (`llmpipe verify`, plain calls) stay local."""

        def emit(self, record: logging.LogRecord) -> None:
            if FlowRunContext.get() or TaskRunContext.get():
                super().emit(record)

    logger = logging.getLogger("llmpipe")
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    if not any(isinstance(h, APILogHandler) for h in logger.handlers):
        logger.addHandler(RunLogHandler())


def _tag_run(flow_run: Any, pipeline: str, extra: tuple[str, ...] = ()) -> None:
    """Tags say which pipeline ran, also for runs started from a deployment or the UI."""
    from prefect.client.orchestration import get_client

    tags = sorted(set(flow_run.tags or []) | {"llmpipe", f"pipeline:{pipeline}", *extra})
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, tags=tags)
    except Exception as exc:  # noqa: BLE001 - a label must never fail a run
        log.warning("could not tag the flow run: %s", exc)


def run_graph(cfg: Any, ctx: RunContext, until: str | None, summary: dict, progress: Progress,
              stages: list[Stage] = STAGES) -> None:
    """Start every stage whose inputs are finished; wait for one to end; repeat until none can start."""
    wanted = needed_for(until, stages) if until else [s.name for s in stages]
    names = [s.name for s in stages]
    results: dict[str, StageResult] = {}
    status: dict[str, str] = {}
    running: dict[Future, str] = {}
    logger = get_run_logger()
    failure: BaseException | None = None
    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="stage") as pool:
        while True:
            for stage in stages:
                if stage.name not in wanted or stage.name in status or stage.name in running.values():
                    continue
                blocked = [r for r in stage.reads if status.get(r) in BLOCKED]
                inputs_settled = all(r in status for r in stage.reads)
                if (not stage.built and inputs_settled) or blocked or failure is not None:
                    why = "not_implemented" if not stage.built or any(
                        status[r] == "not_implemented" for r in blocked) else "not_run"
                    status[stage.name] = why
                    _record(summary, stage.name, {"status": why, "stats": {}, "outputs": {}, "seconds": 0.0,
                                                  **({"blocked_by": blocked} if blocked else {})}, progress)
                    if why == "not_implemented" and not blocked:
                        logger.info("stage %s is not implemented yet", stage.name)
                    continue
                if stage.built and all(r in results for r in stage.reads):
                    counts = {n: e["counts"] for n, e in summary["stages"].items() if "counts" in e}
                    running[pool.submit(copy_context().run, _run_one, stage, cfg, ctx, dict(results),
                                        counts, progress)] = stage.name
            if not running:
                break
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                name = running.pop(fut)
                try:
                    results[name], entry = fut.result()
                    status[name] = entry["status"]
                    _record(summary, name, entry, progress)
                except _StageFailed as exc:
                    status[name] = "failed"
                    _record(summary, name, exc.entry, progress)
                    failure = failure or exc.__cause__ or exc
    summary["stages"] = {n: summary["stages"][n] for n in names if n in summary["stages"]}
    if failure is not None:
        summary["status"] = "failed"
        raise failure
    summary["status"] = "partial" if "not_implemented" in status.values() else "completed"
    if not getattr(cfg, "retain_raw", True) and status.get("pii") in ("completed", "cached"):
        summary["purged_raw"] = purge_raw(stages, results, ctx)


class _StageFailed(Exception):
    def __init__(self, entry: dict[str, Any]):
        super().__init__(entry.get("error", "stage failed"))
        self.entry = entry


def _run_one(stage: Stage, cfg: Any, ctx: RunContext, results: dict[str, StageResult],
             counts: dict[str, dict[str, str]], progress: Progress) -> tuple[StageResult, dict[str, Any]]:
    """Plan one stage, run its Prefect task (a cache hit when the store has it), publish its artifacts."""
    name = stage.name
    stage_cfg = getattr(cfg, name)
    inputs = {r: results[r] for r in stage.reads}
    start = time.perf_counter()
    try:
        plan = plan_stage(stage, stage_cfg, inputs, ctx)
        if not plan.complete and any(r.purged for r in inputs.values()):
            inputs = {r: _restored(results[r], cfg, ctx, results) for r in stage.reads}
            plan = plan_stage(stage, stage_cfg, inputs, ctx)
        raise_if_stopping(f"stage {name}")  # after a SIGINT/SIGTERM (tasks/core/stopping.py) no stage starts
        progress("start", {"stage": name, "cached": plan.complete})
        remote = None if plan.complete else gpu_deployment(stage, cfg, ctx)
        if remote is not None:
            result = run_remote(remote, stage, plan, cfg, ctx, inputs)
        else:
            result = prefect_task(stage).with_options(refresh_cache=not plan.complete)(plan, stage_cfg, inputs, ctx)
        if plan.complete:  # the store, not Prefect's cached copy, says whether it was purged since
            result = result_from_manifest(ctx.open_store(), plan.uri, cached=True)
    except BaseException as exc:
        entry = {"status": "failed", "error": f"{type(exc).__name__}: {exc}", "stats": {}, "outputs": {},
                 "seconds": round(time.perf_counter() - start, 3)}
        raise _StageFailed(entry) from exc
    entry = {"status": "cached" if (plan.complete or result.cached) else "completed", "stats": result.stats,
             **({"repaired": plan.damaged} if plan.damaged else {}),
             "outputs": result.outputs, "uri": result.uri, "seconds": round(time.perf_counter() - start, 3),
             "counts": report.count_units(result.stats, [counts[r] for r in stage.reads if r in counts])}
    report.stage_artifacts(ctx.pipeline, stage, result)
    report.stage_events(ctx.pipeline, result)
    return result, entry


_IN_STAGE_FLOW: ContextVar[bool] = ContextVar("llmpipe_in_stage_flow", default=False)


def gpu_deployment(stage: Stage, cfg: Any, ctx: RunContext) -> str | None:
    """In a run started from a deployment on a pool other than the GPU pool, the stages listed in
    `deploy.gpu_stages` run as flow runs of the `llmpipe-stage/<pipeline>` deployment, which sits on the GPU
    pool; runs from the command line (and the stage flow itself) run every stage in-process."""
    deploy = getattr(cfg, "deploy", None)
    if _IN_STAGE_FLOW.get() or deploy is None or stage.name not in deploy.gpu_stages:
        return None
    try:
        flow_run = get_run_context().flow_run
    except Exception:  # noqa: BLE001 - no flow run: a plain call
        return None
    if flow_run is None or flow_run.deployment_id is None or flow_run.work_pool_name in (None, deploy.gpu_pool):
        return None
    return f"llmpipe-stage/{ctx.pipeline}"


def run_remote(deployment: str, stage: Stage, plan: Any, cfg: Any, ctx: RunContext,
               inputs: dict[str, StageResult]) -> StageResult:
    """Run one stage as a flow run of the GPU pool's stage deployment (a subflow in the UI) and read its
    result from the store, where that run left it."""
    from prefect.deployments import run_deployment

    log.info("%s: running on the GPU pool as a run of %s", stage.name, deployment)
    parameters = {"pipeline": ctx.pipeline, "stage": stage.name, "config": cfg.model_dump(mode="json"),
                  "inputs": {n: r.model_dump(mode="json") for n, r in inputs.items()}, "parent_run_id": ctx.run_id}
    run = run_deployment(deployment, parameters=parameters,
                         timeout=None, poll_interval=2, tags=["llmpipe", f"pipeline:{ctx.pipeline}", f"stage:{stage.name}"])
    store = ctx.open_store()
    if not run.state or not run.state.is_completed():
        message = run.state.message if run.state else "no state"
        raise RuntimeError(f"{stage.name} ran as flow run {run.name} ({run.id}) of {deployment} and ended "
                           f"{run.state.name if run.state else 'without a state'}: {message}")
    if not store.is_complete(plan.uri):
        raise RuntimeError(f"{stage.name} ran as flow run {run.name} of {deployment}, but {plan.uri} is not "
                           "finished: the GPU worker computed another store key (different code or data files "
                           "there?) or another store; give both pools the same checkout and store")
    return result_from_manifest(store, plan.uri, cached=False)


def run_one_stage(pipeline: str, stage: str, config: dict[str, Any], inputs: dict[str, dict[str, Any]],
                  parent_run_id: str | None = None) -> dict[str, Any]:
    """The body of the stage flow: one stage, with the very config and input results of the run that sent
    it (its inputs are finished outputs in the shared store). Returns the stage's result."""
    from flows.config import PipelineConfig

    _send_logs_to_prefect()
    cfg = PipelineConfig.model_validate(config)
    flow_run = get_run_context().flow_run
    _tag_run(flow_run, pipeline, extra=(f"stage:{stage}",))
    the_stage = BY_NAME[stage]
    ctx = RunContext(store=cfg.store, pipeline=pipeline, run_id=parent_run_id or str(flow_run.id), seed=cfg.seed,
                     runner=cfg.runner, verify=cfg.verify)
    results = {name: StageResult.model_validate(r) for name, r in inputs.items()}
    stage_cfg = getattr(cfg, stage)
    plan = plan_stage(the_stage, stage_cfg, results, ctx)
    result = prefect_task(the_stage).with_options(refresh_cache=not plan.complete)(plan, stage_cfg, results, ctx)
    report.stage_artifacts(pipeline, the_stage, result)
    return result.model_dump(mode="json")


def _restored(result: StageResult, cfg: Any, ctx: RunContext, results: dict[str, StageResult]) -> StageResult:
    """Regenerate a purged stage output (and the purged outputs it reads) from its sources."""
    if not result.purged:
        return result
    stage = BY_NAME[result.stage]
    inputs = {r: _restored(results[r], cfg, ctx, results) for r in stage.reads}
    log.info("%s: regenerating the raw text deleted after pii (retain_raw: false): a later stage needs it",
             stage.name)
    store = ctx.open_store()
    store.invalidate(result.uri)
    store.rm(f"{result.uri}/_units")  # its units' files were deleted with the text: redo them all
    plan = plan_stage(stage, getattr(cfg, stage.name), inputs, ctx)
    return prefect_task(stage).with_options(refresh_cache=True)(plan, getattr(cfg, stage.name), inputs, ctx)


def purge_raw(stages: list[Stage], results: dict[str, StageResult], ctx: RunContext) -> list[str]:
    """After pii has finished: delete the documents of the stages upstream of it (retain_raw: false)."""
    store, purged = ctx.open_store(), []
    for stage in stages:
        result = results.get(stage.name)
        if result is not None:  # the store knows best: an output regenerated in this run is not purged
            result = result_from_manifest(store, result.uri)
        if stage.raw_text and result is not None and not result.purged:
            n = store.purge(result.uri)
            purged.append(stage.name)
            log.info("%s: deleted %d files of raw text after pii finished (retain_raw: false)", stage.name, n)
    return purged


def _record(summary: dict, name: str, entry: dict[str, Any], progress: Progress) -> None:
    summary["stages"][name] = entry
    progress("stage", {"stage": name, **entry})


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


def pipeline_choices(config_file: str | None) -> tuple[Any, str]:
    """(the type whose values are the config file's pipelines, the default one): a choice in the UI form."""
    try:
        names = tuple(read_config_file(config_file).pipelines) or ("demo",)
    except UserError:
        names = ("demo",)
    return Literal[names], ("demo" if "demo" in names else names[0])  # type: ignore[valid-type]


def build_pipeline_flow(config_file: str | None = None) -> Any:
    """The `llmpipe` flow with parameters typed from a config file: the UI form offers its pipelines and
    the stages as choices, and Prefect validates them before a run starts."""
    PipelineName, default = pipeline_choices(config_file)
    StageName = Literal[tuple(STAGE_NAMES)]  # type: ignore[valid-type]

    def pipeline_flow(pipeline=default, overrides=None, sources=None, until=None, config_file=config_file,
                      summary_path=None, model=None):
        """Run a named pipeline from pipelines.yaml.

        Args:
            pipeline: the pipeline's name in pipelines.yaml
            overrides: `KEY=VALUE` settings by dotted path, e.g. `pretrain.max_steps=100`
            sources: replace the pipeline's sources (files, globs, directories, URLs, hub datasets, `demo`)
            until: stop after this stage (and what it needs)
            config_file: the pipelines.yaml to read (default: ./pipelines.yaml, else the repo's)
            summary_path: also write the run summary JSON here
            model: evaluate this model directory (ours or a Hugging Face causal LM) instead of training one:
                runs the evaluate stage only (or, with until=bias, the bias stage only), with the
                pipeline's settings
        """
        return run_pipeline(pipeline, overrides, sources, until, config_file, summary_path, model)

    # real types, not the strings `from __future__ import annotations` makes: Prefect builds the form from them
    pipeline_flow.__annotations__ = {
        "pipeline": PipelineName, "overrides": Optional[list[Override]], "sources": Optional[list[str]],
        "until": Optional[StageName], "config_file": Optional[str], "summary_path": Optional[str],
        "model": Optional[str], "return": Any}
    pipeline_flow = flow(
        name="llmpipe", flow_run_name=_run_name, log_prints=False, persist_result=False,
        description="Run a pipeline of pipelines.yaml end to end: collect, clean, dedup, pii, tokenize, "
                    "pretrain; each stage a cached, retried task.")(pipeline_flow)
    return pipeline_flow


def build_stage_flow() -> Any:
    """`llmpipe-stage`: one stage of a pipeline run, sent by that run to the GPU pool (`deploy.gpu_stages`)."""
    StageName = Literal[tuple(STAGE_NAMES)]  # type: ignore[valid-type]

    def stage_flow(pipeline: str, stage: StageName, config: dict, inputs: dict, parent_run_id: Optional[str] = None):
        """Run one stage of a pipeline run with that run's config and input results.

        Args:
            pipeline: the pipeline's name
            stage: the stage to run
            config: the run's resolved config (PipelineConfig as JSON)
            inputs: the results of the stages it reads, by name (StageResult as JSON)
            parent_run_id: the pipeline run that sent it
        """
        return run_one_stage(pipeline, stage, config, inputs, parent_run_id)

    stage_flow.__annotations__ = {"pipeline": str, "stage": StageName, "config": dict, "inputs": dict,
                                  "parent_run_id": Optional[str], "return": Any}
    return flow(name="llmpipe-stage", flow_run_name=lambda: _stage_run_name(), log_prints=False,
                persist_result=False, description="One stage of a pipeline run, on the pool its work belongs on "
                                                  "(training on the GPU pool).")(stage_flow)


def _stage_run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters or {}
    return f"{params.get('pipeline')}-{params.get('stage')}-{_dt.datetime.now(_dt.timezone.utc):%Y%m%d-%H%M%S}"


def build_evaluate_flow(config_file: str | None = None) -> Any:
    """`llmpipe-evaluate`: the evaluate (or bias) stage alone on a model directory, from the UI or the API."""
    PipelineName, default = pipeline_choices(config_file)

    def evaluate_flow(model: str, stage="evaluate", pipeline=default, overrides=None, config_file=config_file,
                      summary_path=None):
        """Evaluate a model directory (ours, a registry version's hf/, or any Hugging Face causal LM).

        Args:
            model: the model directory
            stage: evaluate (GLUE, SuperGLUE, your tasks) or bias (the bias checks)
            pipeline: whose evaluate/bias settings to use
            overrides: `KEY=VALUE` settings by dotted path, e.g. `evaluate.tasks=[sst2,rte]`
            config_file: the pipelines.yaml to read
            summary_path: also write the run summary JSON here
        """
        return run_pipeline(pipeline, overrides, None, stage, config_file, summary_path, model)

    evaluate_flow.__annotations__ = {"model": str, "stage": Literal["evaluate", "bias"], "pipeline": PipelineName,
                                     "overrides": Optional[list[Override]], "config_file": Optional[str],
                                     "summary_path": Optional[str], "return": Any}
    return flow(name="llmpipe-evaluate", flow_run_name=_run_name, log_prints=False, persist_result=False,
                description="Evaluate or bias-check a model directory with a pipeline's settings.")(evaluate_flow)


# the flows as deployments and workers load them: built from $LLMPIPE_CONFIG when set (`llmpipe deploy`
# sets it for the runs of its deployments), else ./pipelines.yaml or the repo's
pipeline_flow = build_pipeline_flow(os.environ.get("LLMPIPE_CONFIG") or None)
evaluate_flow = build_evaluate_flow(os.environ.get("LLMPIPE_CONFIG") or None)
stage_flow = build_stage_flow()
