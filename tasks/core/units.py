"""Shard-level work units: the parallel, resumable part of every data stage.

A stage splits its input into units. Each unit writes its own output files and then a marker
`_units/<unit_id>.json` holding its account; a rerun after a kill skips units that have a marker and
redoes the rest. Units run through an Executor: serially, on a local process pool, or as Prefect tasks
on the flow's task runner (local threads feeding a process pool, or a Dask cluster). Unit ids depend on
the input only, never on the worker count, so a resumed or re-scaled run finds the same units.

Two ways to plan units, and only two:
- map stages (clean, pii, and any stage that treats each document on its own): `run_map_stage` in
  tasks/core/mapstage.py cuts the input Parquet shards into spans of row groups (about 512 rows), one
  unit each; the unit function reports every document to a `UnitWriter` (keep, drop, quarantine).
- stages whose units are not spans of input shards build their `WorkUnit`s themselves and call
  `ctx.executor().map_units`: collect (units are source items: files, URLs, hub datasets) and dedup
  (three phases: sketch each shard in parallel, one ordered decide unit, write each shard in parallel;
  the ordered middle keeps the result independent of the worker count).
"""
from __future__ import annotations

import importlib
import logging
import multiprocessing as mp
import os
import signal
from collections.abc import Callable, Iterator
from concurrent.futures import Executor as _FuturesExecutor
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FuturesTimeout
from contextlib import contextmanager
from typing import Any, Protocol

from pydantic import BaseModel, Field

from tasks.core.result import Account
from tasks.core.stopping import StopRequested, raise_if_stopping, stop_signal
from tasks.core.store import Store

log = logging.getLogger("llmpipe")


class WorkUnit(BaseModel):
    """Everything a worker needs to process one unit, picklable and JSON-safe."""

    stage: str
    unit_id: str
    inputs: list[str]  # URIs of input files
    out_uri: str  # the stage's output directory
    store_root: str
    config: dict[str, Any]  # the stage config, canonical form
    extra: dict[str, Any] = Field(default_factory=dict)


class UnitResult(BaseModel):
    unit_id: str
    account: Account = Field(default_factory=Account)
    outputs: dict[str, list[str]] = Field(default_factory=dict)  # relative to the stage dir
    info: dict[str, Any] = Field(default_factory=dict)
    resumed: bool = False  # True when a marker from an earlier (killed) run was reused
    sizes: dict[str, int] | None = None  # bytes of every output file when the marker was written


def marker_uri(unit: WorkUnit) -> str:
    return f"{unit.out_uri}/_units/{unit.unit_id}.json"


def resolve(fn_ref: str) -> Callable[[WorkUnit], UnitResult]:
    module, _, name = fn_ref.partition(":")
    return getattr(importlib.import_module(module), name)


def execute_unit(fn_ref: str, unit: WorkUnit) -> UnitResult:
    """Run one unit unless an earlier run already finished it; write its marker last."""
    raise_if_stopping(f"{unit.stage} unit {unit.unit_id}")
    store = Store(unit.store_root)
    marker = marker_uri(unit)
    if store.exists(marker):
        done = UnitResult.model_validate(store.read_json(marker))
        problems = _unit_damage(store, unit, done)
        if not problems:
            return done.model_copy(update={"resumed": True})
        log.warning("%s unit %s: its marker does not match its files (%s); redoing the unit",
                    unit.stage, unit.unit_id, "; ".join(problems))
        store.rm(marker)
    result = resolve(fn_ref)(unit)
    result.sizes = {rel: store.fs.size(f"{unit.out_uri}/{rel}") for rel in _unit_files(result)}
    store.write_json(marker, result.model_dump(mode="json"))
    return result


def _unit_files(result: UnitResult) -> list[str]:
    return [rel for files in result.outputs.values() for rel in files]


def _unit_damage(store: Store, unit: WorkUnit, done: UnitResult) -> list[str]:
    """A marker is trusted only while every file it names is there with the size it recorded."""
    if done.sizes is None:
        return ["the marker records no file sizes"] if _unit_files(done) else []
    problems = []
    for rel in _unit_files(done):
        uri = f"{unit.out_uri}/{rel}"
        if not store.exists(uri):
            problems.append(f"{rel}: missing")
        elif store.fs.size(uri) != done.sizes.get(rel):
            problems.append(f"{rel}: {store.fs.size(uri):,} bytes, the marker says {done.sizes.get(rel)}")
    return problems


def drop_markers_for(store: Store, stage_uri: str, rels: set[str]) -> int:
    """Remove the markers of the units that wrote any of `rels` (files found damaged), so a rerun redoes
    those units instead of trusting markers that only record sizes."""
    dropped = 0
    for marker in store.ls(f"{stage_uri}/_units"):
        if not marker.endswith(".json"):
            continue
        try:
            done = UnitResult.model_validate(store.read_json(marker))
        except (ValueError, OSError):
            continue
        if rels & set(_unit_files(done)):
            store.rm(marker)
            dropped += 1
    return dropped


class Executor(Protocol):
    def map_units(self, fn_ref: str, units: list[WorkUnit]) -> list[UnitResult]: ...


class SerialExecutor:
    """Runs units one after another in this process (tests, one core, inside a Dask worker)."""

    def map_units(self, fn_ref: str, units: list[WorkUnit]) -> list[UnitResult]:
        return [execute_unit(fn_ref, u) for u in units]


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class PoolExecutor:
    """Runs units on a local process pool. Uses forkserver: the parent runs Prefect's threads.

    The workers ignore SIGINT and SIGTERM (tasks/core/preload.py): a Ctrl-C reaches the whole process
    group, and the parent decides; after a stop it hands out no more units, lets the running ones finish
    (their markers make them count on a rerun) and shuts the pool down."""

    def __init__(self, workers: int = 0, preload: list[str] | None = None, close_after_map: bool = False):
        self.workers = workers or os.cpu_count() or 1
        self.preload = list(dict.fromkeys(["tasks.core.preload", *(preload or [])]))
        self.close_after_map = close_after_map  # a pool made for one stage call is not left running
        self._pool: _FuturesExecutor | None = None

    @property
    def pool(self) -> _FuturesExecutor:
        if self._pool is None:
            method = "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"
            ctx = mp.get_context(method)
            if method == "forkserver":
                ctx.set_forkserver_preload(self.preload)  # the forkserver ignores the signals too
            self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx,
                                             initializer=ignore_stop_signals)
        return self._pool

    def map_units(self, fn_ref: str, units: list[WorkUnit]) -> list[UnitResult]:
        if self.workers <= 1 or len(units) <= 1:
            return SerialExecutor().map_units(fn_ref, units)
        try:
            with _stop_signals_blocked():
                futures = [self.pool.submit(execute_unit, fn_ref, u) for u in units]
            return [_result(f, u) for f, u in zip(futures, units)]
        finally:
            if self.close_after_map:
                self.shutdown()

    def submit(self, fn_ref: str, unit: WorkUnit) -> UnitResult:
        raise_if_stopping(f"{unit.stage} unit {unit.unit_id}")
        with _stop_signals_blocked():
            future = self.pool.submit(execute_unit, fn_ref, unit)
        return _result(future, unit)

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


def _result(future: Future, unit: WorkUnit) -> UnitResult:
    """The unit's result; after a stop, a unit still waiting for a worker is cancelled instead."""
    while True:
        try:
            return future.result(timeout=0.25)
        except FuturesTimeout:
            if stop_signal() is not None and future.cancel():
                raise StopRequested(f"{unit.stage} unit {unit.unit_id} was not started: a stop was asked "
                                    "for") from None


@contextmanager
def _stop_signals_blocked() -> Iterator[None]:
    """Submitting may start the forkserver and workers; they inherit this thread's signal mask, so a
    Ctrl-C that lands while they start (before they ignore it) is never delivered to them."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore_stop_signals() -> None:
    """In pool workers: SIGINT/SIGTERM sent to the process group are the parent's to handle."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def default_executor(workers: int = 0) -> Executor:
    workers = workers or os.cpu_count() or 1
    return SerialExecutor() if workers <= 1 else PoolExecutor(workers, close_after_map=True)


def merge_results(results: list[UnitResult]) -> tuple[Account, dict[str, list[str]]]:
    """Sum the units' accounts and concatenate their outputs in unit order."""
    account = Account()
    outputs: dict[str, list[str]] = {}
    for r in sorted(results, key=lambda r: r.unit_id):
        account = account.merge(r.account)
        for name, files in r.outputs.items():
            outputs.setdefault(name, []).extend(files)
    return account, outputs
