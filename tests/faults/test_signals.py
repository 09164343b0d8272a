"""Ctrl-C and SIGTERM sent to the whole process group (a terminal, `docker stop`, systemd, Kubernetes):
a clean stop with the documented message and exit code, a checkpoint in training, no traceback, no
temporary server left behind, and a rerun that resumes."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tasks.core import stopping
from tasks.core.units import PoolExecutor

REPO = Path(__file__).resolve().parents[2]
INTERRUPTED = "llmpipe: interrupted; rerun the same command to resume (finished work is kept)."
SMALL = ["collect.max_docs=120", "pii.nlp_model=null", "tokenize.vocab_size=512", "pretrain.max_steps=200",
         "pretrain.n_layer=2", "pretrain.n_embd=32", "pretrain.n_head=2", "pretrain.block_size=64",
         "pretrain.micro_batch=8", "pretrain.log_every=10", "pretrain.eval_every=0", "pretrain.checkpoint_every=0",
         "runner.workers=1"]  # pool workers' signal handling has its own test above


def _ignored_signals(pid: int) -> set[int]:
    status = Path(f"/proc/{pid}/status").read_text()
    mask = int(re.search(r"^SigIgn:\s*([0-9a-f]+)$", status, re.MULTILINE)[1], 16)
    return {sig for sig in range(1, 65) if mask >> (sig - 1) & 1}


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads signal masks from /proc")
def test_pool_workers_ignore_the_groups_signals_and_keep_working():
    pool = PoolExecutor(2)
    try:
        pid = pool.pool.submit(os.getpid).result(timeout=60)
        assert {signal.SIGINT, signal.SIGTERM} <= _ignored_signals(pid)
        os.kill(pid, signal.SIGINT)
        os.kill(pid, signal.SIGTERM)
        time.sleep(0.2)
        assert pool.pool.submit(os.getpid).result(timeout=60) in pool.pool._processes
    finally:
        pool.shutdown()


def test_a_signal_is_recorded_as_a_stop_and_reported_with_its_exit_code(capsys):
    from flows.cli import StopOnSignals

    previous = signal.getsignal(signal.SIGTERM)
    try:
        with StopOnSignals() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            assert stop.wait(0.5) == signal.SIGTERM  # blocked: the main thread takes it when it waits
            assert stop.signum == stopping.stop_signal() == signal.SIGTERM
            with pytest.raises(stopping.StopRequested, match="SIGTERM arrived before stage clean started"):
                stopping.raise_if_stopping("stage clean")
            assert stop.report(None) == 143
        assert signal.getsignal(signal.SIGTERM) is previous
        assert "llmpipe: stopped by SIGTERM; rerun the same command to resume" in capsys.readouterr().err
    finally:
        stopping.clear()


# the real command, in its own process group --------------------------------------------------------------
def _server_pids(llmpipe_pid: int) -> list[int]:
    """The temporary Prefect servers that this llmpipe process started (flows/server.py passes its pid)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"prefect.server.api.server:create_app" in args and str(llmpipe_pid).encode() in args[:4]:
            pids.append(int(proc.name))
    return pids


class Run:
    """`python -m flows.cli run demo` in a new session; signals its whole group when a line shows up."""

    def __init__(self, store: Path, summary: Path):
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}  # llmpipe starts its own server
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        sets = [a for kv in SMALL + [f"store={store}"] for a in ("--set", kv)]
        cmd = [sys.executable, "-m", "flows.cli", "run", "demo", *sets, "--until", "pretrain", "--summary",
               str(summary)]
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, start_new_session=True)
        self.stdout: list[str] = []
        self.stderr = ""
        self.servers: list[int] = []
        self.server_sessions: list[int] = []

    def finish(self, signal_at: str | None = None, sig: int = signal.SIGINT, timeout: float = 300) -> int:
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            for line in self.proc.stdout:
                self.stdout.append(line)
                if signal_at and re.search(signal_at, line):
                    self.servers = _server_pids(self.proc.pid)
                    self.server_sessions = [os.getsid(pid) for pid in self.servers]
                    os.killpg(self.proc.pid, sig)  # what Ctrl-C in a terminal does
                    signal_at = None
            self.stderr = self.proc.stderr.read()
            return self.proc.wait()
        finally:
            timer.cancel()

    @property
    def output(self) -> str:
        return "".join(self.stdout) + self.stderr


def _check_clean_stop(run: Run, code: int, expected: int) -> None:
    assert code == expected, run.output
    assert "Traceback" not in run.output, run.output
    assert run.servers, "the temporary server should have been running when the signal was sent"
    assert all(not Path(f"/proc/{pid}").exists() for pid in run.servers), "temporary server left behind"
    assert not _server_pids(run.proc.pid)


@pytest.mark.slow
def test_ctrl_c_in_a_data_stage_and_sigterm_in_training_stop_cleanly_and_resume(tmp_path):
    store, summary = tmp_path / "store", tmp_path / "summary.json"

    first = Run(store, summary)
    _check_clean_stop(first, first.finish(r"^\s+dedup\s+running", signal.SIGINT), 130)
    assert first.stderr.rstrip().endswith(INTERRUPTED)
    assert first.proc.pid not in first.server_sessions, "the server runs in a session of its own"

    second = Run(store, summary)
    _check_clean_stop(second, second.finish(r"step 10/", signal.SIGTERM), 143)
    assert re.search(r"llmpipe: stopped: SIGTERM at step \d+: checkpoint \S+step-\d+", second.stderr)
    assert "cached" in "".join(line for line in second.stdout if line.lstrip().startswith("collect"))

    third = Run(store, summary)
    assert third.finish() == 0, third.output
    assert "Traceback" not in third.output
    stats = json.loads(summary.read_text())["stages"]["pretrain"]["stats"]
    assert stats["resumed_from_step"] >= 10 and stats["steps"] == 200
