"""Retry only what can succeed on retry: network and server blips, preemption; never user errors or bugs."""
from __future__ import annotations

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
    (ConnectionError("reset"), True), (TimeoutError("slow"), True), (OSError("EIO"), True),
    (FileNotFoundError("x"), False), (PermissionError("x"), False), (IsADirectoryError("x"), False),
    (UserError("bad input"), False), (ConfigError("bad key"), False), (RunInterrupted("SIGTERM"), False),
    (ValueError("bug"), False), (KeyError("bug"), False), (None, False),
])
def test_transient_classification(exc, transient):
    assert retry_transient(None, None, FailedState(exc)) is transient


@pytest.mark.parametrize("exc, retried", [
    (RuntimeError("CUDA error: an illegal memory access"), True), (ConnectionError("x"), True),
    (UserError("bad"), False), (RunInterrupted("SIGTERM"), False), (None, False),
])
def test_resumable_stages_retry_all_but_user_errors_and_stops(exc, retried):
    assert retry_unless_user_error(None, None, FailedState(exc)) is retried
