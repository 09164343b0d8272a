"""The stage contract: plan (key + output dir), execute (skip if complete, else run and write the manifest)."""
from __future__ import annotations

import importlib.util
import logging
import os
import time
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field

from tasks.core.config import StageConfig, stable_hash
from tasks.core.result import StageResult
from tasks.core.store import Store, code_version, stage_key
from tasks.core.units import Executor, default_executor

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

    def open_store(self) -> Store:
        return Store(self.store)

    def executor(self) -> Executor:
        """The flow registers a Prefect-backed executor for its run; plain calls get a local pool."""
        return _EXECUTORS.get(self.run_id) or default_executor(self.runner.workers)

    @property
    def workers(self) -> int:
        return self.runner.workers or os.cpu_count() or 1


_EXECUTORS: dict[str, Executor] = {}


def register_executor(run_id: str, executor: Executor | None) -> None:
    if executor is None:
        _EXECUTORS.pop(run_id, None)
    else:
        _EXECUTORS[run_id] = executor


class StageOutput(BaseModel):
    """What a `run_<stage>` function returns: output files (relative to its dir) and stats."""

    outputs: dict[str, Any] = Field(default_factory=dict)
    stats: dict[str, Any] = Field(default_factory=dict)


class StagePlan(BaseModel):
    stage: str
    key: str
    uri: str
    inputs: list[str]  # digests of upstream results
    code: str
    complete: bool

    @property
    def cache_key(self) -> str:
        """Prefect's cache key: the store key plus the store itself, so two stores never share results."""
        return f"llmpipe-{self.stage}-{self.key}-{stable_hash(self.uri, 8)}"


StageFn = Callable[[list[StageResult], str, Any, RunContext], StageOutput]


def plan_stage(stage: str, fn: StageFn, cfg: StageConfig, upstream: list[StageResult],
               ctx: RunContext) -> StagePlan:
    """Decide where a stage writes: hash of its config, upstream digests and code version.

    A stage whose inputs are not all upstream results (collect reads files) sets `fn.key_inputs =
    f(cfg, ctx) -> dict`, which goes into the key too; `fn.code_deps` names further modules whose source
    counts as the stage's code (pretrain: the model and the training loop).
    """
    store = ctx.open_store()
    key_inputs = getattr(fn, "key_inputs", None)
    extra_key = key_inputs(cfg, ctx) if key_inputs else None
    inputs = [r.digest for r in upstream]
    deps = [importlib.util.find_spec(m).origin for m in getattr(fn, "code_deps", ())]  # no import: no torch
    code = code_version(fn, *deps)
    key_cfg = cfg.key_dict() | ({"_extra": extra_key} if extra_key else {})
    if getattr(fn, "uses_pipeline_seed", False):
        key_cfg["_pipeline_seed"] = ctx.seed
    key = stage_key(stage, key_cfg, inputs, code)
    uri = store.stage_dir(stage, key)
    return StagePlan(stage=stage, key=key, uri=uri, inputs=inputs, code=code, complete=store.is_complete(uri))


def execute_stage(plan: StagePlan, fn: StageFn, cfg: StageConfig, upstream: list[StageResult],
                  ctx: RunContext) -> StageResult:
    """Return the finished output if the store has it; otherwise run the stage and publish its manifest."""
    store = ctx.open_store()
    if store.is_complete(plan.uri):
        return result_from_manifest(store, plan.uri, cached=True)
    start = time.perf_counter()
    out = fn(upstream, plan.uri, cfg, ctx)
    stats = dict(out.stats)
    stats.setdefault("seconds", round(time.perf_counter() - start, 3))
    manifest = store.write_manifest(plan.uri, stage=plan.stage, key=plan.key, config=cfg.canonical(),
                                    inputs=plan.inputs, outputs=out.outputs, stats=stats, code_version=plan.code)
    return StageResult(stage=plan.stage, key=plan.key, uri=plan.uri, outputs=out.outputs, stats=stats,
                       digest=manifest["digest"], cached=False)


def result_from_manifest(store: Store, uri: str, cached: bool = True) -> StageResult:
    m = store.read_manifest(uri)
    return StageResult(stage=m["stage"], key=m["key"], uri=uri, outputs=m["outputs"], stats=m["stats"],
                       digest=m["digest"], cached=cached)


def run_stage(stage: str, fn: StageFn, cfg: StageConfig, upstream: list[StageResult],
              ctx: RunContext) -> StageResult:
    """Plan + execute without Prefect: what tests and library users call."""
    plan = plan_stage(stage, fn, cfg, upstream, ctx)
    return execute_stage(plan, fn, cfg, upstream, ctx)
