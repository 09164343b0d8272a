"""llmpipe as Prefect deployments: what `llmpipe deploy` registers and `llmpipe serve` serves.

One list of deployments per pipeline (`deployments()`), used three ways:
- `llmpipe deploy [PIPELINE]` creates the work pools (process pools `deploy.cpu_pool` for data work and
  `deploy.gpu_pool` for training, the latter with a concurrency limit of `deploy.gpu_slots`), registers every
  deployment with the server in PREFECT_API_URL (`Flow.from_source(<this checkout>).deploy`), and creates the
  notification automation when `deploy.notify_block` is set;
- `llmpipe serve [PIPELINE]` serves the same deployments from one process (`prefect.serve`), schedules and
  triggers included, with no work pool;
- `llmpipe deploy --prefect-yaml` prints them as a prefect.yaml (infra/prefect.yaml is that output for the
  demo pipeline) for `prefect deploy --all --prefect-file infra/prefect.yaml`.

The deployments of pipeline P:
| deployment | flow | pool | started by |
|---|---|---|---|
| `llmpipe/P` | the pipeline | cpu | the UI/API; `deploy.pipeline_cron` if set |
| `llmpipe-maintenance/P` | maintenance | gpu | `maintenance.schedule` (cron); the `deploy.data_event` event about P; the UI/API. At most one run at a time (deployment concurrency limit 1, later runs wait) |
| `llmpipe-evaluate/P` | evaluate or bias a model directory | gpu | the UI/API |
| `llmpipe-forget/P` | forget a source | cpu | the UI/API |
| `llmpipe-stage/P` | one stage of a pipeline run (the `deploy.gpu_stages`, sent by `llmpipe/P` runs) | gpu | the pipeline flow |
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tasks.core.errors import UserError

log = logging.getLogger("llmpipe")
REPO = Path(__file__).resolve().parent.parent
PROCESS = "process"


@dataclass(frozen=True)
class Spec:
    flow_name: str  # the flow's name: the deployment is `<flow_name>/<pipeline>`
    entrypoint: str  # path:attribute, relative to the checkout
    pool: str
    parameters: dict[str, Any]
    description: str
    cron: str | None = None
    event: str | None = None  # start on this event about the pipeline
    concurrency: int | None = None
    tags: tuple[str, ...] = field(default_factory=tuple)


def deployments(pipeline: str, cfg: Any, config_file: str) -> list[Spec]:
    d = cfg.deploy
    common = {"pipeline": pipeline, "config_file": config_file}
    tags = ("llmpipe", f"pipeline:{pipeline}")
    return [
        Spec("llmpipe", "flows/pipeline.py:pipeline_flow", d.cpu_pool, dict(common),
             f"Run the {pipeline} pipeline end to end; its {', '.join(d.gpu_stages) or 'no'} stages on the GPU pool.",
             cron=d.pipeline_cron, tags=tags),
        Spec("llmpipe-maintenance", "flows/maintenance.py:maintenance_flow", d.gpu_pool, dict(common),
             f"Fold new data into the {pipeline} champion; gate; promote or reject. Weekly and on {d.data_event}.",
             cron=cfg.maintenance.schedule, event=d.data_event, concurrency=1, tags=tags + ("maintenance",)),
        Spec("llmpipe-evaluate", "flows/pipeline.py:evaluate_flow", d.gpu_pool, dict(common),
             f"Evaluate or bias-check a model directory with the {pipeline} settings.", tags=tags),
        Spec("llmpipe-forget", "flows/forget.py:forget", d.cpu_pool, dict(common),
             f"Remove a source from the {pipeline} store, its token shards and dedup index; taint its models.",
             tags=tags + ("forget",)),
        Spec("llmpipe-stage", "flows/pipeline.py:stage_flow", d.gpu_pool, {},
             f"One stage of a {pipeline} pipeline run, sent to the GPU pool.", tags=tags),
    ]


def _triggers(spec: Spec, pipeline: str) -> list[Any]:
    if not spec.event:
        return []
    from prefect.events import DeploymentEventTrigger

    return [DeploymentEventTrigger(name=f"{spec.flow_name}-{pipeline}-on-data", expect={spec.event},
                                   match={"prefect.resource.id": f"llmpipe.pipeline.{pipeline}"},
                                   parameters=dict(spec.parameters))]


def _concurrency(spec: Spec) -> Any:
    if spec.concurrency is None:
        return None
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    return ConcurrencyLimitConfig(limit=spec.concurrency, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)


def resolve(pipeline: str, config_file: str | None) -> tuple[str, Any, str]:
    """(pipeline name, its config, the absolute config path the deployments read)."""
    from flows.config import default_config_path, load_pipeline

    name, cfg = load_pipeline(pipeline, config_file, None)
    path = str(Path(config_file or default_config_path()).resolve())
    return name, cfg, path


def deploy(pipeline: str, config_file: str | None) -> list[str]:
    """Register the pipeline's deployments, pools and automation with the server in PREFECT_API_URL."""
    from prefect.flows import Flow
    from prefect.settings import PREFECT_API_URL

    if not (os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()):
        raise UserError("llmpipe deploy registers deployments with a Prefect server: set PREFECT_API_URL (e.g. "
                        "http://127.0.0.1:4200/api after `prefect server start`); `llmpipe serve` needs none")
    name, cfg, path = resolve(pipeline, config_file)
    # the flows' parameter types (the UI form's choices) come from the config the entrypoints are built with
    os.environ["LLMPIPE_CONFIG"] = path
    ensure_pools(cfg)
    env = {"LLMPIPE_CONFIG": path}
    made = []
    for spec in deployments(name, cfg, path):
        flow = Flow.from_source(source=str(REPO), entrypoint=spec.entrypoint)
        flow.deploy(name=name, work_pool_name=spec.pool, build=False, push=False, parameters=spec.parameters,
                    cron=spec.cron, triggers=_triggers(spec, name), concurrency_limit=_concurrency(spec),
                    description=spec.description, tags=list(spec.tags), job_variables={"env": env},
                    print_next_steps=False, ignore_warnings=True)
        made.append(f"{spec.flow_name}/{name}")
    if cfg.deploy.notify_block:
        made.append(ensure_notification(name, cfg))
    return made


def ensure_pools(cfg: Any) -> None:
    """The process pools, created once; the GPU pool's concurrency limit is `deploy.gpu_slots`."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for pool, limit in ((cfg.deploy.cpu_pool, None), (cfg.deploy.gpu_pool, cfg.deploy.gpu_slots)):
            try:
                existing = client.read_work_pool(pool)
            except ObjectNotFound:
                client.create_work_pool(WorkPoolCreate(name=pool, type=PROCESS, concurrency_limit=limit,
                                                       description="llmpipe: " + ("training" if limit else "data work")))
                log.info("created work pool %s", pool)
                continue
            if limit is not None and existing.concurrency_limit != limit:
                client.update_work_pool(pool, WorkPoolUpdate(concurrency_limit=limit))


def ensure_notification(pipeline: str, cfg: Any) -> str:
    """An automation that sends the pipeline's failed runs and its promotions to `deploy.notify_block`."""
    from prefect.automations import Automation
    from prefect.blocks.core import Block
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    slug = cfg.deploy.notify_block
    try:
        block = Block.load(slug)
    except (ValueError, KeyError) as exc:
        raise UserError(f"deploy.notify_block: no Prefect block {slug!r} ({exc}); create one (e.g. `prefect block "
                        "register` / the UI's Blocks page) and give it as <block type>/<name>") from None
    name = f"llmpipe-{pipeline}-notify"
    try:
        for old in Automation.read(name=name):  # deployed again: the automation is replaced, not doubled
            old.delete()
    except ValueError:  # none of that name yet
        pass
    Automation(name=name, description=f"{pipeline}: failed runs and promotions to {slug}",
               trigger=EventTrigger(expect={"prefect.flow-run.Failed", "llmpipe.model.promoted"},
                                    match_related={"prefect.resource.id": [f"llmpipe.pipeline.{pipeline}",
                                                                           f"prefect.tag.pipeline:{pipeline}"]},
                                    posture=Posture.Reactive, threshold=1),
               actions=[SendNotification(block_document_id=block._block_document_id,
                                         subject="llmpipe {{ event.event }}",
                                         body="{{ event.event }} {{ event.resource.get('prefect.resource.name') }}"
                                              " {{ event.payload }}")]).create()
    return f"automation {name}"


def serve(pipeline: str, config_file: str | None) -> None:
    """Serve the deployments from this process with their schedules and triggers (no work pool)."""
    from prefect import serve as prefect_serve
    from prefect.flows import load_flow_from_entrypoint

    name, cfg, path = resolve(pipeline, config_file)
    os.environ["LLMPIPE_CONFIG"] = path  # the served runs load the flows built from this config
    specs = deployments(name, cfg, path)
    _replace_deployed([f"{spec.flow_name}/{name}" for spec in specs])
    runners = []
    for spec in specs:
        flow = load_flow_from_entrypoint(str(REPO / spec.entrypoint))
        runner = flow.to_deployment(name=name, parameters=spec.parameters, cron=spec.cron,
                                    triggers=_triggers(spec, name), concurrency_limit=_concurrency(spec),
                                    description=spec.description, tags=list(spec.tags))
        # the flows are built by functions (typed from the config), so the entrypoint Prefect derives from the
        # function's name would not import: the module attribute, by absolute path, does
        path, attr = spec.entrypoint.split(":")
        runner.entrypoint = f"{REPO / path}:{attr}"
        runners.append(runner)
    prefect_serve(*runners)


def _replace_deployed(names: list[str]) -> None:
    """Deployments of these names registered by `llmpipe deploy` (work pool, code storage) are deleted first:
    served ones of the same name would keep their storage settings, and their runs would not load."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for full in names:
            try:
                old = client.read_deployment_by_name(full)
            except ObjectNotFound:
                continue
            if old.work_pool_name or old.pull_steps:
                log.warning("replacing the deployment %s (work pool %s) with the served one", full, old.work_pool_name)
                client.delete_deployment(old.id)


def prefect_yaml(pipeline: str, config_file: str | None) -> str:
    """The deployments as a prefect.yaml for `prefect deploy --all --prefect-file ...` (run from the checkout)."""
    import yaml

    name, cfg, path = resolve(pipeline, config_file)
    rel = os.path.relpath(path, REPO) if Path(path).is_relative_to(REPO) else path
    items = []
    for spec in deployments(name, cfg, rel):
        item: dict[str, Any] = {"name": name, "entrypoint": spec.entrypoint, "description": spec.description,
                                "tags": list(spec.tags), "parameters": spec.parameters,
                                "work_pool": {"name": spec.pool, "job_variables": {"env": {"LLMPIPE_CONFIG": rel}}}}
        if spec.cron:
            item["schedules"] = [{"cron": spec.cron}]
        if spec.event:
            item["triggers"] = [{"type": "event", "enabled": True, "expect": [spec.event],
                                 "match": {"prefect.resource.id": f"llmpipe.pipeline.{name}"},
                                 "parameters": dict(spec.parameters)}]
        if spec.concurrency:
            item["concurrency_limit"] = {"limit": spec.concurrency, "collision_strategy": "ENQUEUE"}
        items.append(item)
    doc = {"name": "llmpipe",
           "pull": [{"prefect.deployments.steps.set_working_directory": {"directory": "{{ $LLMPIPE_HOME }}"}}],
           "deployments": items}
    head = ("# Generated by `llmpipe deploy --prefect-yaml " + name + "` from pipelines.yaml (flows/deployments.py);\n"
            "# a test checks it is current. Register with: LLMPIPE_HOME=$PWD prefect deploy --all "
            "--prefect-file infra/prefect.yaml\n# (work pools first: `llmpipe deploy` creates them, or "
            "`prefect work-pool create llmpipe-cpu --type process` and llmpipe-gpu).\n")
    return head + yaml.safe_dump(doc, sort_keys=False, width=100)
