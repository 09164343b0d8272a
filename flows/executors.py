"""Shard work as Prefect tasks on the task runner that the pipeline's `runner:` section asks for.

The flow opens the runner itself (`unit_runner(cfg.runner)`), so a run started from a deployment or the
Prefect UI uses exactly the runner the command line would: local threads feeding a process pool, or Dask.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

from prefect import task
from prefect.futures import as_completed

from tasks.core.retry import retry_transient
from tasks.core.units import PoolExecutor, UnitResult, WorkUnit, execute_unit

log = logging.getLogger("llmpipe")
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
    """Maps units over a Prefect task runner, so every shard shows in the Prefect UI; reports progress
    (units done / total per stage) to the console printer and as a Prefect progress artifact."""

    def __init__(self, runner: Any, progress: Callable[[str, dict[str, Any]], None] | None = None):
        self.runner = runner
        self.progress = progress or (lambda event, info: None)
        self._lock = threading.Lock()  # stages run concurrently; one runner serves them all
        self._trackers: dict[tuple[str, str], _ProgressArtifact] = {}

    def with_progress(self, progress: Callable[[str, dict[str, Any]], None]) -> PrefectUnitExecutor:
        self.progress = progress
        return self

    def map_units(self, fn_ref: str, units: list[WorkUnit]) -> list[UnitResult]:
        if not units:
            return []
        with self._lock:
            futures = self.runner.map(unit_task, {"fn_ref": fn_ref, "unit": units})
        phase = f"{fn_ref.rpartition(':')[2]}: shards"
        for done, _ in enumerate(as_completed(futures), 1):
            self.report(units[0].stage, phase, done, len(units))
        return [f.result() for f in futures]

    def report(self, stage: str, phase: str, done: int, total: int) -> None:
        """Progress of one stage phase: a console line (throttled) and a Prefect progress artifact."""
        key = (stage, phase)
        with self._lock:
            tracker = self._trackers.get(key)
            if tracker is None or done < tracker.done:  # a new pass of the same phase: a new artifact
                tracker = self._trackers[key] = _ProgressArtifact(stage, phase, total)
        self.progress("units", {"stage": stage, "phase": phase, "done": done, "total": total})
        tracker.update(done)


class _ProgressArtifact:
    """A Prefect progress artifact per stage phase (e.g. `dedup: sketch_unit`), updated as units finish."""

    def __init__(self, stage: str, phase: str, total: int):
        self.phase, self.total, self.id = phase, total, None
        self.last, self.done = 0.0, 0
        try:
            from prefect.artifacts import create_progress_artifact

            self.id = create_progress_artifact(progress=0.0, description=f"{stage}: {phase} done")
        except Exception as exc:  # noqa: BLE001 - progress display must never fail a stage
            log.debug("no progress artifact: %s", exc)

    def update(self, done: int) -> None:
        self.done = done
        pct = 100.0 * done / max(self.total, 1)
        if self.id is None or (pct - self.last < 10 and done < self.total):  # a few updates, not one a unit
            return
        self.last = pct
        try:
            from prefect.artifacts import update_progress_artifact

            update_progress_artifact(artifact_id=self.id, progress=round(pct, 1))
        except Exception as exc:  # noqa: BLE001
            log.debug("progress artifact update failed: %s", exc)


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


@contextmanager
def unit_runner(runner_cfg: Any) -> Iterator[PrefectUnitExecutor]:
    """Open the configured task runner (and, for `local`, the process pool it feeds) for one flow run."""
    global _LOCAL_POOL
    workers = runner_cfg.workers or os.cpu_count() or 1
    if runner_cfg.kind == "local" and workers > 1:
        from flows.stages import STAGE_MODULES

        os.environ["LLMPIPE_PRELOAD"] = ",".join(STAGE_MODULES)
        _LOCAL_POOL = PoolExecutor(workers, preload=["tasks.core.preload"])
    try:
        with task_runner_for(runner_cfg) as runner:
            yield PrefectUnitExecutor(runner)
    finally:
        if _LOCAL_POOL is not None:
            _LOCAL_POOL.shutdown()
            _LOCAL_POOL = None
