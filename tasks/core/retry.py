"""Which failures are worth a retry: Prefect's `retry_condition_fn` for stage and unit tasks.

Plain functions of a Prefect state; flows/stages.py attaches them when it makes a stage's task.
"""
from __future__ import annotations

from typing import Any

from tasks.core.errors import RunInterrupted, UserError

TRANSIENT = (ConnectionError, TimeoutError, OSError)
# OSErrors that a retry cannot fix: a path or permission mistake is the user's to correct
NOT_TRANSIENT = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)


def _raised(state: Any) -> Exception | None:
    """The exception a failed Prefect state holds (None if it holds none)."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - inspected by the callers
        return exc
    return None


def retry_transient(task_obj: Any, task_run: Any, state: Any) -> bool:
    """Retry network hiccups and preemption-like OS errors; never a user error, a stop request or a bug."""
    exc = _raised(state)
    return isinstance(exc, TRANSIENT) and not isinstance(exc, (UserError, RunInterrupted, *NOT_TRANSIENT))


def retry_unless_user_error(task_obj: Any, task_run: Any, state: Any) -> bool:
    """For stages that resume from a checkpoint (training): any failure but a user error or a requested
    stop (SIGTERM: the checkpoint is written, the user reruns to resume) is worth a retry."""
    exc = _raised(state)
    return exc is not None and not isinstance(exc, (UserError, RunInterrupted))
