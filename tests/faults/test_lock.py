"""One writer per stage output: a second run waits for the first and reuses its result; stale locks break."""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

from tasks.core.config import StageConfig
from tasks.core.lock import LOCK, StageLock
from tasks.core.stage import RunContext, RunnerConfig, Stage, StageOutput, plan_stage, run_stage
from tasks.core.store import Store

RUNS: list[str] = []


class Slow(StageConfig):
    seconds: float = 1.0


def slow_run(inputs, out_uri, cfg, ctx):
    RUNS.append(ctx.run_id)
    store = ctx.open_store()
    with store.open(f"{out_uri}/metrics.jsonl", "ab") as f:  # appends: two writers would double it
        for step in range(5):
            time.sleep(cfg.seconds / 5)
            f.write(json.dumps({"step": step}).encode() + b"\n")
    return StageOutput(outputs={"metrics": "metrics.jsonl"}, stats={"run": ctx.run_id})


SLOW = Stage("slow", "writes for a while", config=Slow, run=slow_run)


def _ctx(tmp_path, run_id):
    return RunContext(store=str(tmp_path / "store"), pipeline="t", run_id=run_id, runner=RunnerConfig(workers=1))


def test_two_runs_on_one_store_take_turns_and_share_the_result(tmp_path):
    RUNS.clear()
    results = {}

    def go(run_id):
        results[run_id] = run_stage(SLOW, Slow(), {}, _ctx(tmp_path, run_id))

    threads = [threading.Thread(target=go, args=(f"run-{i}",)) for i in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.2)
    for t in threads:
        t.join()
    assert len(RUNS) == 1, "the stage ran once"
    assert {r.cached for r in results.values()} == {False, True}
    uri = results["run-0"].uri
    lines = (tmp_path / "store" / "slow" / uri.rsplit("/", 1)[1] / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 5 and not (tmp_path / "store" / "slow" / uri.rsplit("/", 1)[1] / LOCK).exists()


def test_a_lock_left_by_a_dead_process_is_broken_at_once(tmp_path):
    ctx = _ctx(tmp_path, "r")
    plan = plan_stage(SLOW, Slow(seconds=0.0), {}, ctx)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    store = Store(ctx.store)
    import socket

    store.write_json(f"{plan.uri}/{LOCK}", {"run_id": "killed", "pid": int(dead.stdout), "host": socket.gethostname()})
    start = time.perf_counter()
    result = run_stage(SLOW, Slow(seconds=0.0), {}, ctx)
    assert not result.cached and time.perf_counter() - start < 5


def test_a_lock_without_heartbeat_from_elsewhere_goes_stale(tmp_path):
    store = Store(tmp_path)
    waited = []
    store.write_json(f"{tmp_path}/x/{LOCK}", {"run_id": "other", "pid": 1, "host": "another-machine"})
    with StageLock(store, f"{tmp_path}/x", {"run_id": "me"}, stale_after=1.0, poll=0.1, on_wait=waited.append):
        assert store.read_json(f"{tmp_path}/x/{LOCK}")["run_id"] == "me"
    assert waited and waited[0]["run_id"] == "other"
    assert not (tmp_path / "x" / LOCK).exists()
