"""Work units as Prefect tasks on the flow's task runner: local threads feeding a process pool, or Dask."""
from __future__ import annotations

import os
from typing import Any

from prefect import task

from tasks.core.orchestration import retry_transient
from tasks.core.units import PoolExecutor, UnitResult, WorkUnit, execute_unit

# Set while a local-runner flow is running; Dask workers never have it, so they run units in-process.
_LOCAL_POOL: PoolExecutor | None = None


@task(name="unit", task_run_name="{unit.stage}-{unit.unit_id}", retries=1, retry_delay_seconds=[2],
      retry_condition_fn=retry_transient)
def unit_task(fn_ref: str, unit: WorkUnit) -> UnitResult:
    """One shard of a data stage. Resumable: a unit whose marker exists returns its recorded result."""
    if _LOCAL_POOL is not None:
        return _LOCAL_POOL.submit(fn_ref, unit)
    return execute_unit(fn_ref, unit)


class PrefectUnitExecutor:
    """Maps units over the flow's task runner, so every shard shows in the Prefect UI."""

    def map_units(self, fn_ref: str, units: list[WorkUnit]) -> list[UnitResult]:
        if not units:
            return []
        futures = unit_task.map(fn_ref, units)
        return [f.result() for f in futures]


def start_local_pool(workers: int) -> None:
    """Processes for CPU-bound unit work; preloaded with the stage modules once (forkserver)."""
    global _LOCAL_POOL
    if workers > 1:
        from flows.stages import STAGES

        os.environ["LLMPIPE_PRELOAD"] = ",".join(s.module for s in STAGES if s.built)
        _LOCAL_POOL = PoolExecutor(workers, preload=["tasks.core.preload"])


def stop_local_pool() -> None:
    global _LOCAL_POOL
    if _LOCAL_POOL is not None:
        _LOCAL_POOL.shutdown()
        _LOCAL_POOL = None


def task_runner_for(runner_cfg: Any):
    """The Prefect task runner the pipeline's `runner:` section asks for."""
    from prefect.task_runners import ThreadPoolTaskRunner

    if runner_cfg.kind == "dask":
        from prefect_dask import DaskTaskRunner

        if runner_cfg.dask_address:
            return DaskTaskRunner(address=runner_cfg.dask_address)
        return DaskTaskRunner(cluster_class="distributed.LocalCluster",
                              cluster_kwargs={"n_workers": runner_cfg.dask_workers, "threads_per_worker": 1,
                                              "processes": True, "dashboard_address": None})
    if runner_cfg.workers == 1:  # one process asked for: units run one at a time, in this process
        return ThreadPoolTaskRunner(max_workers=1)
    # threads only wait on the process pool, so a few more than processes keep it busy
    return ThreadPoolTaskRunner(max_workers=max(4, (runner_cfg.workers or os.cpu_count() or 1) * 2))
