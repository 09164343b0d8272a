"""The stage contract: one `Stage` declaration per stage; plan (key + output dir), execute (skip if complete,
else run and write the manifest)."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field

from tasks.core.artifacts import Artifact
from tasks.core.codever import code_version
from tasks.core.config import StageConfig, stable_hash
from tasks.core.errors import UserError
from tasks.core.lock import StageLock
from tasks.core.result import StageResult
from tasks.core.retry import explain_os_error
from tasks.core.store import MANIFEST, Store, stage_key
from tasks.core.units import Executor, default_executor, drop_markers_for

log = logging.getLogger("llmpipe")


class RunnerConfig(StageConfig):
    """Where shard-level work runs: `local` (threads feeding a process pool) or a `dask` cluster."""

    kind: Literal["local", "dask"] = "local"
    workers: int = Field(0, ge=0)  # processes for shard work; 0 = every core
    dask_address: str | None = None  # scheduler address; None with kind=dask starts a LocalCluster
    dask_workers: int = Field(2, ge=1)  # LocalCluster size when no address is given


class RunContext(BaseModel):
    """What every stage of one flow run shares; small and serializable."""

    store: str
    pipeline: str
    run_id: str
    seed: int = 0
    runner: RunnerConfig = Field(default_factory=RunnerConfig)
    incremental_scope: str = ""  # names the persistent state (ledgers, indexes) of this pipeline
    verify: Literal["sizes", "hashes"] = "sizes"  # how finished outputs are checked before reuse

    def open_store(self) -> Store:
        return Store(self.store)

    def executor(self) -> Executor:
        """The flow registers a Prefect-backed executor for its run; plain calls get a local pool."""
        return _EXECUTORS.get(self.run_id) or default_executor(self.runner.workers)

    def progress(self, stage: str, phase: str, done: int, total: int) -> None:
        """Report progress of a long step (training steps); the flow shows it on the console and as a
        Prefect progress artifact, plain calls ignore it."""
        reporter = _PROGRESS.get(self.run_id)
        if reporter is not None:
            reporter(stage, phase, done, total)

    @property
    def workers(self) -> int:
        return self.runner.workers or os.cpu_count() or 1


_EXECUTORS: dict[str, Executor] = {}
_PROGRESS: dict[str, Callable[[str, str, int, int], None]] = {}


def register_executor(run_id: str, executor: Executor | None,
                      progress: Callable[[str, str, int, int], None] | None = None) -> None:
    """What the flow lends the stages of one run: its shard executor and its progress reporter."""
    if executor is None:
        _EXECUTORS.pop(run_id, None)
        _PROGRESS.pop(run_id, None)
    else:
        _EXECUTORS[run_id] = executor
        if progress is not None:
            _PROGRESS[run_id] = progress


class StageOutput(BaseModel):
    """What a `run_<stage>` function returns: output files (relative to its dir) and stats."""

    outputs: dict[str, Any] = Field(default_factory=dict)
    stats: dict[str, Any] = Field(default_factory=dict)


Inputs = dict[str, StageResult]  # the results of the stages a stage reads, by stage name
StageFn = Callable[[Inputs, str, Any, "RunContext"], StageOutput]
KeyInputsFn = Callable[[Any, "RunContext"], dict[str, Any]]
ArtifactsFn = Callable[[StageResult], list[Artifact]]


@dataclass(frozen=True)
class Stage:
    """One stage, declared once, at the bottom of its module (`STAGE = Stage(...)`).

    - `config`: the pydantic model of its section of pipelines.yaml; `run(inputs, out_uri, cfg, ctx)`
      does the work and returns a StageOutput; `inputs` holds the results of the stages named in
      `reads`, by name. The flow runs a stage once all of those are finished; stages that do not
      depend on each other run at the same time.
    - `key_inputs(cfg, ctx)`: what the stage reads besides its upstream results (collect: the source
      files' sizes and mtimes); it goes into the store key. `uses_pipeline_seed`: the pipeline's top-level
      seed is part of what it computes (training), so it goes into the key too.
    - `artifacts(result)`: tables and markdown for the Prefect UI, built from the result (no Prefect
      import: the flow publishes them).
    - `preflight(cfg)`: cheap checks run before the flow starts anything (sources exist, a server is
      reachable), so a mistake is reported in a second, not when the stage is reached.
    - `raw_text`: its output holds text not yet anonymized (the stages before pii): on a local store its
      directory is made owner-only (0700).
    - `resumable`: a failure of any kind but a user error is worth a retry, because a rerun resumes
      from its checkpoint (training); otherwise only transient errors (network, preemption) are retried.
    - `run=None` declares a stage that is not built yet: the flow reports it as `not_implemented`.
    The code version in the store key is computed from the stage's package and everything it imports
    (tasks/core/codever.py), so nothing here lists code dependencies by hand.
    """

    name: str
    summary: str
    config: type[StageConfig] = StageConfig
    run: StageFn | None = None
    reads: tuple[str, ...] = ()
    artifacts: ArtifactsFn | None = None
    key_inputs: KeyInputsFn | None = None
    preflight: Callable[[Any], Any] | None = None
    raw_text: bool = False
    uses_pipeline_seed: bool = False
    resumable: bool = False
    retries: int = 2

    @property
    def built(self) -> bool:
        return self.run is not None

    @property
    def package(self) -> str:
        """The package (or module) holding the stage's code: the root of its code version."""
        module = self.run.__module__
        return module.rpartition(".")[0] if module.endswith(".stage") else module


class StagePlan(BaseModel):
    stage: str
    key: str
    uri: str
    inputs: list[str]  # digests of upstream results
    code: str
    complete: bool
    damaged: list[str] = Field(default_factory=list)  # what a finished output's check found (then rerun)

    @property
    def cache_key(self) -> str:
        """Prefect's cache key: the store key plus the store itself, so two stores never share results."""
        return f"llmpipe-{self.stage}-{self.key}-{stable_hash(self.uri, 8)}"


def _check_inputs(stage: Stage, inputs: Inputs) -> None:
    missing = [name for name in stage.reads if name not in inputs]
    if missing:
        raise UserError(f"stage {stage.name} reads {', '.join(stage.reads)} but got no result for "
                        f"{', '.join(missing)}; run those stages first (they come before it in the flow).")


def plan_stage(stage: Stage, cfg: StageConfig, inputs: Inputs, ctx: RunContext) -> StagePlan:
    """Decide where a stage writes: hash of its config, its inputs' digests and its code version."""
    _check_inputs(stage, inputs)
    store = ctx.open_store()
    extra_key = stage.key_inputs(cfg, ctx) if stage.key_inputs else None
    digests = [inputs[name].digest for name in stage.reads]
    code = code_version(stage.package)
    key_cfg = cfg.key_dict() | ({"_extra": extra_key} if extra_key else {})
    if stage.uses_pipeline_seed:
        key_cfg["_pipeline_seed"] = ctx.seed
    key = stage_key(stage.name, key_cfg, digests, code)
    uri = store.stage_dir(stage.name, key)
    damaged = check_output(store, stage.name, uri, hashes=ctx.verify == "hashes")
    # a damaged output's manifest was withdrawn just now: what still has one was checked and is intact
    return StagePlan(stage=stage.name, key=key, uri=uri, inputs=digests, code=code,
                     complete=store.exists(f"{uri}/{MANIFEST}"), damaged=damaged)


def check_output(store: Store, stage: str, uri: str, hashes: bool = False) -> list[str]:
    """Check a finished output against its manifest; a damaged one is withdrawn (the stage then reruns,
    reusing the work units whose files are intact) and what differs is logged by name."""
    if not store.exists(f"{uri}/{MANIFEST}"):
        return []
    damaged = store.damage(uri, hashes)
    problems = [f"{path}: {why}" for path, why in damaged.items()]
    if damaged:
        log.warning("%s: the finished output in %s does not match its manifest: %s. Rerunning the stage "
                    "from what is still intact.", stage, uri, "; ".join(problems))
        store.invalidate(uri)
        # a unit marker vouches only for sizes: the units that wrote a damaged file are redone
        drop_markers_for(store, uri, set(damaged))
    return problems


def execute_stage(plan: StagePlan, stage: Stage, cfg: StageConfig, inputs: Inputs,
                  ctx: RunContext) -> StageResult:
    """Return the finished output if the store has it; otherwise run the stage and publish its manifest.

    One writer at a time: another run writing the same output is waited for, and its result reused."""
    store = ctx.open_store()
    if store.is_complete(plan.uri):
        return result_from_manifest(store, plan.uri, cached=True)
    with StageLock(store, plan.uri, {"run_id": ctx.run_id, "pipeline": ctx.pipeline, "stage": stage.name}):
        if store.is_complete(plan.uri):  # the run we waited for finished it
            log.info("%s: reusing the output another run just finished in %s", stage.name, plan.uri)
            return result_from_manifest(store, plan.uri, cached=True)
        return _run_and_publish(plan, stage, cfg, inputs, ctx, store)


def _run_and_publish(plan: StagePlan, stage: Stage, cfg: StageConfig, inputs: Inputs, ctx: RunContext,
                     store: Store) -> StageResult:
    start = time.perf_counter()
    if stage.raw_text:
        store.make_private(plan.uri)
    store.sweep_temp(plan.uri)  # what a killed attempt left half-written is never reused
    try:
        out = stage.run({name: inputs[name] for name in stage.reads}, plan.uri, cfg, ctx)
    except OSError as exc:
        store.sweep_temp(plan.uri)
        explained = explain_os_error(exc, plan.uri)
        if explained is not None:
            raise explained from exc
        raise
    except BaseException:
        store.sweep_temp(plan.uri)
        raise
    stats = dict(out.stats)
    stats.setdefault("seconds", round(time.perf_counter() - start, 3))
    manifest = store.write_manifest(plan.uri, stage=plan.stage, key=plan.key, config=cfg.canonical(),
                                    inputs=plan.inputs, outputs=out.outputs, stats=stats, code_version=plan.code)
    return StageResult(stage=plan.stage, key=plan.key, uri=plan.uri, outputs=out.outputs, stats=stats,
                       digest=manifest["digest"], cached=False)


def result_from_manifest(store: Store, uri: str, cached: bool = True) -> StageResult:
    m = store.read_manifest(uri)
    return StageResult(stage=m["stage"], key=m["key"], uri=uri, outputs=m["outputs"], stats=m["stats"],
                       digest=m["digest"], cached=cached, purged=bool(m.get("purged")))


def run_stage(stage: Stage, cfg: StageConfig, inputs: Inputs, ctx: RunContext) -> StageResult:
    """Plan + execute without Prefect: what tests and library users call."""
    plan = plan_stage(stage, cfg, inputs, ctx)
    return execute_stage(plan, stage, cfg, inputs, ctx)
