"""Shard work: the flow opens the task runner `runner:` asks for, and reports units done as they finish."""
from __future__ import annotations

from prefect import flow

from flows import executors
from tasks.core.stage import RunnerConfig
from tasks.core.units import WorkUnit


def test_runner_follows_the_config():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    assert isinstance(executors.task_runner_for(RunnerConfig(kind="local", workers=1)), ThreadPoolTaskRunner)
    assert isinstance(executors.task_runner_for(RunnerConfig(kind="dask")), DaskTaskRunner)
    remote = executors.task_runner_for(RunnerConfig(kind="dask", dask_address="tcp://127.0.0.1:1"))
    assert isinstance(remote, DaskTaskRunner)


def echo_unit(unit: WorkUnit):
    from tasks.core.units import UnitResult

    return UnitResult(unit_id=unit.unit_id, info={"seen": unit.unit_id})


def test_units_run_as_tasks_with_progress(prefect_server, tmp_path):
    units = [WorkUnit(stage="toy", unit_id=f"u{i}", inputs=[], out_uri=str(tmp_path / "out"),
                      store_root=str(tmp_path), config={}) for i in range(5)]
    events = []

    @flow
    def units_flow():
        with executors.unit_runner(RunnerConfig(workers=1)) as ex:
            ex.with_progress(lambda ev, info: events.append((ev, info["done"], info["total"])))
            return ex.map_units(f"{__name__}:echo_unit", units)

    results = units_flow()
    assert [r.info["seen"] for r in results] == [u.unit_id for u in units]
    assert [e[1] for e in events] == [1, 2, 3, 4, 5] and {e[2] for e in events} == {5}
    assert all((tmp_path / "out" / "_units" / f"{u.unit_id}.json").exists() for u in units)  # resumable markers
