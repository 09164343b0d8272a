"""Which failures are worth a retry, and what the others should say.

`retry_transient` and `retry_unless_user_error` are Prefect `retry_condition_fn`s (plain functions of a
Prefect state; flows/stages.py attaches them). Only what can succeed on retry is retried: network,
Redis and server blips, a stale network-filesystem handle. A full disk, a permission error, a missing
file or bad data fail at once; `explain_os_error` turns the common ones into a user error that names
the path and what to do.
"""
from __future__ import annotations

import errno
from typing import Any

from tasks.core.errors import RunInterrupted, UserError

# OSError numbers a retry can fix: the network or a remote filesystem hiccuped
TRANSIENT_ERRNOS = {errno.ECONNRESET, errno.ECONNREFUSED, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE,
                    errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ENETDOWN, errno.EAGAIN, errno.ESTALE}
# exception classes of client libraries we use, by module and name (no import: redis may not be installed)
TRANSIENT_CLASSES = {("redis.exceptions", "ConnectionError"), ("redis.exceptions", "TimeoutError"),
                     ("redis.exceptions", "BusyLoadingError"), ("httpx", "TransportError"),
                     ("httpcore", "NetworkError"), ("fsspec.exceptions", "FSTimeoutError")}
NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
NO_WRITE = {errno.EACCES, errno.EPERM, errno.EROFS}


def is_transient(exc: BaseException | None) -> bool:
    if exc is None or isinstance(exc, (UserError, RunInterrupted)):
        return False
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    if any((k.__module__, k.__name__) in TRANSIENT_CLASSES for k in type(exc).__mro__):
        return True
    return isinstance(exc, OSError) and exc.errno in TRANSIENT_ERRNOS


def _raised(state: Any) -> Exception | None:
    """The exception a failed Prefect state holds (None if it holds none)."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - inspected by the callers
        return exc
    return None


def retry_transient(task_obj: Any, task_run: Any, state: Any) -> bool:
    """Retry network and server blips; never a user error, a stop request, a full disk or a bug."""
    return is_transient(_raised(state))


def retry_unless_user_error(task_obj: Any, task_run: Any, state: Any) -> bool:
    """For stages that resume from a checkpoint (training): any failure but a user error, a requested
    stop (SIGTERM: the checkpoint is written, the user reruns to resume) or a full or read-only disk is
    worth a retry."""
    exc = _raised(state)
    if exc is None or isinstance(exc, (UserError, RunInterrupted)):
        return False
    return not (isinstance(exc, OSError) and exc.errno in NO_SPACE | NO_WRITE)


def explain_os_error(exc: OSError, where: str) -> UserError | None:
    """A user error for what the user must fix (full disk, no permission), naming the path; else None."""
    path = exc.filename or where
    if exc.errno in NO_SPACE:
        return UserError(f"no space left on the device holding {path} ({exc.strerror}). Free space there, "
                         "or set `store:` to a directory on a larger disk, then rerun: finished work is kept.")
    if exc.errno in NO_WRITE:
        return UserError(f"cannot write {path} ({exc.strerror}). Give this user write access to it, or set "
                         "`store:` to a directory you can write, then rerun.")
    return None
