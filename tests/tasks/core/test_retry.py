"""Retry only what can succeed on retry: network and server blips, preemption; never user errors or bugs."""
from __future__ import annotations

import errno

import pytest

from tasks.core.errors import ConfigError, RunInterrupted, UserError
from tasks.core.retry import retry_transient, retry_unless_user_error


class FailedState:
    def __init__(self, exc: Exception | None):
        self.exc = exc

    def result(self):
        if self.exc is not None:
            raise self.exc


@pytest.mark.parametrize("exc, transient", [
    (ConnectionError("reset"), True), (TimeoutError("slow"), True), (OSError(errno.ESTALE, "stale"), True),
    (OSError(errno.ENOSPC, "No space left on device"), False), (OSError(errno.EROFS, "read-only"), False),
    (OSError(errno.EIO, "I/O error"), False),
    (FileNotFoundError("x"), False), (PermissionError("x"), False), (IsADirectoryError("x"), False),
    (UserError("bad input"), False), (ConfigError("bad key"), False), (RunInterrupted("SIGTERM"), False),
    (ValueError("bug"), False), (KeyError("bug"), False), (None, False),
])
def test_transient_classification(exc, transient):
    assert retry_transient(None, None, FailedState(exc)) is transient


@pytest.mark.parametrize("exc, retried", [
    (RuntimeError("CUDA error: an illegal memory access"), True), (ConnectionError("x"), True),
    (OSError(errno.ENOSPC, "No space left on device"), False),
    (UserError("bad"), False), (RunInterrupted("SIGTERM"), False), (None, False),
])
def test_resumable_stages_retry_all_but_user_errors_and_stops(exc, retried):
    assert retry_unless_user_error(None, None, FailedState(exc)) is retried


def test_client_library_errors_by_class():
    import redis

    assert retry_transient(None, None, FailedState(redis.exceptions.ConnectionError("gone")))
    assert retry_transient(None, None, FailedState(redis.exceptions.TimeoutError("slow")))
    assert not retry_transient(None, None, FailedState(redis.exceptions.ResponseError("WRONGTYPE")))


def test_disk_errors_become_user_errors_naming_the_path():
    from tasks.core.retry import explain_os_error

    full = explain_os_error(OSError(errno.ENOSPC, "No space left on device", "/data/store/x.parquet"), "/s")
    assert isinstance(full, UserError) and "/data/store/x.parquet" in str(full) and "Free space" in str(full)
    assert "write access" in str(explain_os_error(OSError(errno.EACCES, "Permission denied"), "/s/clean"))
    assert explain_os_error(OSError(errno.EIO, "I/O error"), "/s") is None
