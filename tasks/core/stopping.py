"""A stop asked for by SIGINT or SIGTERM: the command line records it, long work checks it between steps.

The `llmpipe` process owns its signals (flows/cli.py): it does not die on the spot but sets this flag, so
no new stage or shard starts, training writes a checkpoint, and the run ends with a message and 130/143.
"""
from __future__ import annotations

import signal

from tasks.core.errors import RunInterrupted

_requested: int | None = None  # the signal number that asked for the stop


class StopRequested(RunInterrupted):
    """Work that had not started yet when a stop was asked for; a rerun does it."""


def request_stop(signum: int) -> None:
    global _requested
    if _requested is None:
        _requested = signum


def stop_signal() -> int | None:
    """The signal that asked for a stop, or None."""
    return _requested


def clear() -> None:
    global _requested
    _requested = None


def raise_if_stopping(what: str) -> None:
    """Refuse to start `what` once a stop was asked for."""
    if _requested is not None:
        raise StopRequested(f"{signal.Signals(_requested).name} arrived before {what} started")
