"""The deployments on real components: a `prefect server start` on PostgreSQL, `llmpipe deploy`, process
workers for the CPU and GPU pools, runs triggered through the API, by the cron scheduler and by an event,
the maintenance deployment's concurrency limit, and the promotion notification through an automation.

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, no password); skips with the reason otherwise.
"""
from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from tasks.register.maintenance import records
from tasks.register.registry import Registry
from tests.flows.tiny import tiny_config, write_batch

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
PG = ("127.0.0.1", 5432)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _psql(sql: str) -> None:
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(host=PG[0], port=PG[1], user="postgres", database="postgres")
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory):
    try:
        socket.create_connection(PG, timeout=2).close()
    except OSError as exc:
        pytest.skip(f"PostgreSQL is not reachable on {PG[0]}:{PG[1]} ({exc}): the deployment tests need a "
                    "Prefect server on PostgreSQL")
    db = f"llmpipe_test_{uuid.uuid4().hex[:8]}"
    _psql(f'CREATE DATABASE "{db}"')
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": url,
           "PREFECT_API_DATABASE_CONNECTION_URL": f"postgresql+asyncpg://postgres@{PG[0]}:{PG[1]}/{db}",
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "PREFECT_UI_ENABLED": "false",
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
           "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "2",
           "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_LOGGING_LEVEL": "INFO",
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    log = open(home / "server.log", "w")
    server = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 90
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        server.terminate()
        pytest.fail(f"prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
    procs: list[subprocess.Popen] = []
    try:
        yield {"url": url, "env": env, "home": home, "procs": procs}
    finally:
        for p in procs + [server]:
            p.terminate()
        for p in procs + [server]:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(10)
        log.close()
        _psql(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')


class Hook(http.server.BaseHTTPRequestHandler):
    received: list[bytes] = []

    def do_POST(self):  # noqa: N802 - the http.server API
        Hook.received.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def client(pg_server):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: pg_server["url"]}):
        with get_client(sync_client=True) as c:
            yield c


def _wait_run(client, run_id, timeout=300.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        run = client.read_flow_run(run_id)
        if run.state and run.state.is_final():
            return run
        time.sleep(1)
    pytest.fail(f"flow run {run_id} did not finish in {timeout} s (state {run.state and run.state.name})")


def _runs_of(client, deployment_id):
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    return client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])))


def test_deployments_on_a_postgres_backed_server(pg_server, client, tmp_path):
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    env = pg_server["env"]
    src, store = tmp_path / "src", tmp_path / "store"
    src.mkdir()
    write_batch(src, "a", 0, 40)
    hook = http.server.HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    CustomWebhookNotificationBlock(name="hook", url=f"http://127.0.0.1:{hook.server_port}/hook", method="POST",
                                   json_data={"text": "{{subject}}: {{body}}"}, allow_private_urls=True
                                   ).save("llmpipe-test-hook", overwrite=True)
    config = tiny_config(tmp_path / "pipelines.yaml", store, {"docs": src},
                         maintenance='{max_steps: 4, replay_ratio: 0.5, min_new_docs: 1, schedule: "0 3 * * 0"}',
                         deploy="{notify_block: custom-webhook/llmpipe-test-hook, gpu_slots: 2, gpu_stages: [pretrain]}")

    out = subprocess.run([str(BIN / "llmpipe"), "deploy", "mt", "-c", str(config)], env=env, capture_output=True,
                         text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "deployed llmpipe-maintenance/mt" in out.stdout and "automation llmpipe-mt-notify" in out.stdout
    # the committed prefect.yaml registers with Prefect's own command too
    out = subprocess.run([str(BIN / "prefect"), "--no-prompt", "deploy", "--all", "--prefect-file",
                          str(REPO / "infra" / "prefect.yaml")], env={**env, "LLMPIPE_HOME": str(REPO)},
                         cwd=REPO, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    demo = client.read_deployment_by_name("llmpipe-maintenance/demo")
    assert [s.schedule.cron for s in demo.schedules] == ["0 3 * * 0"] and demo.work_pool_name == "llmpipe-gpu"

    # the deployments, their pools, schedule, concurrency limit, and the UI form's schema
    deps = {d: client.read_deployment_by_name(f"{d}/mt") for d in
            ("llmpipe", "llmpipe-maintenance", "llmpipe-evaluate", "llmpipe-forget", "llmpipe-stage")}
    assert deps["llmpipe"].work_pool_name == "llmpipe-cpu" and deps["llmpipe-maintenance"].work_pool_name == "llmpipe-gpu"
    assert deps["llmpipe-stage"].work_pool_name == "llmpipe-gpu" and deps["llmpipe-forget"].work_pool_name == "llmpipe-cpu"
    assert client.read_work_pool("llmpipe-gpu").concurrency_limit == 2  # deploy.gpu_slots
    maint = deps["llmpipe-maintenance"]
    assert [s.schedule.cron for s in maint.schedules] == ["0 3 * * 0"]
    assert _limit(maint) == 1 and maint.concurrency_options.collision_strategy.value == "ENQUEUE"
    props = maint.parameter_openapi_schema["properties"]
    choice = props["pipeline"].get("enum") or [props["pipeline"].get("const")]  # one pipeline: a const
    assert choice == ["mt"] and "pattern" in json.dumps(props["overrides"])
    schema = json.dumps(deps["llmpipe"].parameter_openapi_schema)
    assert '"mt"' in schema and "KEY=VALUE" in schema and "pattern" in schema
    assert deps["llmpipe-evaluate"].parameter_openapi_schema["required"] == ["model"]
    with pytest.raises(Exception, match="(?i)validation|pattern|enum|422|409"):
        client.create_flow_run_from_deployment(maint.id, parameters={"pipeline": "mt", "overrides": ["no equals sign"]})

    # the cron schedule produces scheduled runs (next Sundays at 03:00)
    deadline = time.time() + 60
    scheduled = []
    while time.time() < deadline and not scheduled:
        scheduled = [r for r in _runs_of(client, maint.id) if r.state and r.state.type.value == "SCHEDULED"]
        time.sleep(1)
    assert scheduled, "the scheduler created no run of the maintenance deployment"
    start = scheduled[0].expected_start_time.astimezone(dt.timezone.utc)
    assert start.weekday() == 6 and (start.hour, start.minute) == (3, 0)

    # workers for both pools; the pipeline runs on the CPU pool and sends training to the GPU pool
    for pool in ("llmpipe-cpu", "llmpipe-gpu"):
        pg_server["procs"].append(subprocess.Popen(
            [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"], env=env,
            stdout=open(pg_server["home"] / f"worker-{pool}.log", "w"), stderr=subprocess.STDOUT,
            start_new_session=True))
    run = client.create_flow_run_from_deployment(deps["llmpipe"].id, parameters={"pipeline": "mt"})
    run = _wait_run(client, run.id)
    assert run.state.is_completed(), _logs(pg_server)
    assert run.work_pool_name == "llmpipe-cpu"
    stage_runs = [r for r in _runs_of(client, deps["llmpipe-stage"].id)]
    assert [r.parameters["stage"] for r in stage_runs] == ["pretrain"]  # deploy.gpu_stages
    assert all(r.work_pool_name == "llmpipe-gpu" and r.state.is_completed() for r in stage_runs)
    reg = Registry(store, "mt")
    assert reg.alias() == "v1"

    # new data; the maintenance deployment triggered through the API with typed parameters, on the GPU pool
    write_batch(src, "b", 40, 10)
    m = client.create_flow_run_from_deployment(maint.id, parameters={
        "pipeline": "mt", "overrides": ["register.gate.val_loss_margin=10"]})
    m = _wait_run(client, m.id)
    assert m.state.is_completed() and m.work_pool_name == "llmpipe-gpu", _logs(pg_server)
    assert records(reg)[-1]["outcome"] == "promote" and reg.alias() == "v2"
    assert records(reg)[-1]["decision"]["rules"], "the gate's rules are recorded"
    deadline = time.time() + 60
    while time.time() < deadline and not any(b"llmpipe.model.promoted" in b for b in Hook.received):
        time.sleep(1)
    assert any(b"llmpipe.model.promoted" in b for b in Hook.received), "the automation sent the promotion"

    # `llmpipe serve`: the same deployments served from one process, schedules and triggers included; with
    # the workers stopped, runs can only execute there
    for worker in pg_server["procs"]:
        worker.terminate()
    for worker in pg_server["procs"]:
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:  # a graceful shutdown can outlast 30 s on a loaded 2-core machine
            os.killpg(worker.pid, 9)  # its own session (start_new_session): the worker and what it started
            worker.wait(10)
    started = dt.datetime.now(dt.timezone.utc)
    served = subprocess.Popen([str(BIN / "llmpipe"), "serve", "mt", "-c", str(config)], env=env,
                              stdout=open(pg_server["home"] / "serve.log", "w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    pg_server["procs"].append(served)
    from prefect.exceptions import ObjectNotFound

    deadline, maint, trigger = time.time() + 90, None, []
    while time.time() < deadline and (maint is None or maint.work_pool_name or not trigger):
        try:  # replaced: deleted, then created again by the served process, with its trigger
            maint = client.read_deployment_by_name("llmpipe-maintenance/mt")
            trigger = client.read_resource_related_automations(f"prefect.deployment.{maint.id}")
        except ObjectNotFound:
            maint = None
        time.sleep(1)
    assert maint is not None and maint.work_pool_name is None and maint.created > started, \
        "llmpipe serve did not register its deployments"
    assert [s.schedule.cron for s in maint.schedules] == ["0 3 * * 0"] and _limit(maint) == 1

    # the event trigger (what an external system sends when data arrived), twice: two maintenance runs start,
    # and the deployment's concurrency limit keeps them from running at the same time
    write_batch(src, "c", 50, 6)
    before = {r.id for r in _runs_of(client, maint.id)}  # the scheduler's future runs are told apart below
    for _ in range(2):
        out = subprocess.run([str(BIN / "prefect"), "event", "emit", "llmpipe.data.arrived", "--resource-id",
                              "llmpipe.pipeline.mt"], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    deadline, new = time.time() + 90, []
    while time.time() < deadline and len(new) < 2:
        new = [r for r in _runs_of(client, maint.id) if r.id not in before and not r.auto_scheduled]
        time.sleep(1)
    assert len(new) == 2, f"the events started {len(new)} maintenance runs, not 2"
    done = [_wait_run(client, r.id) for r in new]
    assert all(r.state.is_completed() for r in done), _logs(pg_server)  # the workers are gone: served
    (a0, a1), (b0, b1) = [(r.start_time, r.end_time) for r in done]
    assert a1 <= b0 or b1 <= a0, f"the two maintenance runs overlapped: {a0}-{a1} and {b0}-{b1}"
    assert "AwaitingConcurrencySlot" in [s.name for r in done for s in client.read_flow_run_states(r.id)]
    outcomes = sorted(r["outcome"] for r in records(reg)[-2:])  # the first trains on batch c, the second finds nothing
    assert outcomes in (["nothing_new", "promote"], ["nothing_new", "reject"]), outcomes


def _limit(deployment) -> int | None:
    """The deployment's concurrency limit (Prefect keeps it as a global concurrency limit of its own)."""
    gcl = getattr(deployment, "global_concurrency_limit", None)
    return gcl.limit if gcl is not None else deployment.concurrency_limit


def _logs(pg_server) -> str:
    home = pg_server["home"]
    return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(home.glob("*.log")))


def test_infra_prefect_yaml_is_the_demo_deployments():
    """infra/prefect.yaml is what `llmpipe deploy demo --prefect-yaml` prints: regenerate it after a change."""
    import yaml

    from flows.deployments import prefect_yaml

    committed = (REPO / "infra" / "prefect.yaml").read_text()
    assert committed == prefect_yaml("demo", str(REPO / "pipelines.yaml")), \
        "run `llmpipe deploy demo --prefect-yaml > infra/prefect.yaml`"
    doc = yaml.safe_load(committed)
    by_entry = {d["entrypoint"]: d for d in doc["deployments"]}
    maint = by_entry["flows/maintenance.py:maintenance_flow"]
    assert maint["schedules"] == [{"cron": "0 3 * * 0"}] and maint["work_pool"]["name"] == "llmpipe-gpu"
    assert maint["triggers"][0]["expect"] == ["llmpipe.data.arrived"]
    assert maint["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    for d in doc["deployments"]:
        path, attr = d["entrypoint"].split(":")
        assert (REPO / path).exists() and attr in (REPO / path).read_text()
