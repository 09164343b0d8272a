"""The temporary Prefect server of a run, started by llmpipe in its own session.

Without PREFECT_API_URL, Prefect would start a temporary server as a child in our process group: a
Ctrl-C in the terminal (or `docker stop`, systemd, Kubernetes, which signal the whole group) kills it
before llmpipe has recorded its shutdown, and the run ends in `ConnectError` tracebacks. This is
Prefect's own temporary server (same app, same database, same startup time), only started in a new
session, pointed at for the run through PREFECT_API_URL, and stopped by llmpipe when the run is over.
A watchdog in the server stops it when llmpipe is gone (even after SIGKILL), so none is left behind.
A user's own server (PREFECT_API_URL set) is never started or stopped here.
"""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import prefect
from prefect.server.api.server import SubprocessASGIServer
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
    get_current_settings,
    temporary_settings,
)

# uvicorn's command line, plus a thread that ends the server (gracefully, by SIGTERM) once the process
# that started it is gone: in its own session, it no longer dies with llmpipe's process group
_WATCHED_UVICORN = """
import os, signal, sys, threading, time
signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGINT, signal.SIGTERM))  # llmpipe's run blocks them
parent = int(sys.argv.pop(1))
def watch():
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)
threading.Thread(target=watch, daemon=True).start()
from uvicorn.main import main
sys.argv[0] = "uvicorn"
main()
"""


class SessionServer(SubprocessASGIServer):
    """Prefect's temporary server, in a session of its own."""

    _instances: ClassVar[dict[int | None, SessionServer]] = {}  # not shared with Prefect's own temporary servers

    def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1", **get_current_settings().to_environment_variables(exclude_unset=True)}
        args = [sys.executable, "-c", _WATCHED_UVICORN, str(os.getpid()),
                "--app-dir", str(prefect.__module_path__.parent), "--factory",
                "prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port),
                "--log-level", "error", "--lifespan", "on"]
        return subprocess.Popen(args, env=env, start_new_session=True)


def api_url_configured() -> str | None:
    """The Prefect API the user configured (environment or Prefect profile), or None."""
    return os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value() or None


@contextmanager
def temporary_server() -> Iterator[SessionServer | None]:
    """With no PREFECT_API_URL configured: start a temporary server in its own session, point Prefect at
    it (this process, and subprocesses through the environment) and stop it at exit, also after a signal
    or an error. With PREFECT_API_URL set: nothing to do (the user's server is theirs)."""
    if api_url_configured():
        yield None
        return
    server = SessionServer()
    try:
        server.start(timeout=PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value())
        os.environ["PREFECT_API_URL"] = server.api_url
        with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
            yield server
    finally:
        try:
            if server.running:
                send_pending_records()
        finally:
            os.environ.pop("PREFECT_API_URL", None)
            server.stop()


def send_pending_records(timeout: float = 10.0) -> None:
    """Prefect sends logs and events from background workers; they must reach the server before it stops
    (at interpreter exit they would retry a closed port for a minute and print `Error logging to API`)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout, at_exit=False)
        except Exception:  # noqa: BLE001, S112 - records that cannot be sent must not hide how the run ended
            continue
