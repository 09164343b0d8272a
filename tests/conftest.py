"""Shared fixtures: an isolated Prefect home, a temporary store, the real data in ../shared when present."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

# before anything imports prefect: an isolated home, no telemetry, patience for the temporary server
_HOME = tempfile.mkdtemp(prefix="llmpipe-prefect-home-")
os.environ.setdefault("PREFECT_HOME", _HOME)
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LLMPIPE_DATA") or REPO.parent / "shared" / "data")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (or $LLMPIPE_DATA); tests that need it skip, saying why, when it is absent."""
    if not (SHARED_DATA / "README.md").exists():
        pytest.skip(f"real data not found at {SHARED_DATA}: set LLMPIPE_DATA or check out ../shared beside the repo")
    return SHARED_DATA


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server (SQLite) for every test that runs a flow; yields its API URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield PREFECT_API_URL.value()


@pytest.fixture
def ctx(tmp_path):
    """A serial run context on a fresh store."""
    from tasks.core.stage import RunContext, RunnerConfig

    return RunContext(store=str(tmp_path / "store"), pipeline="test", run_id="test-run",
                      runner=RunnerConfig(workers=1))


@pytest.fixture
def torch_one_thread():
    """Tiny models gain nothing from a second thread, and on a busy 2-core machine every parallel region
    of a small op waits for a descheduled thread; one thread is also deterministic."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
