"""The one way a stage becomes a Prefect task: cached by store key, persisted, retried when transient.

Prefect is imported when the task is first used, not when a stage module is imported: worker processes
import stage modules for their unit functions and should not pay seconds for Prefect each.
"""
from __future__ import annotations

from typing import Any

from tasks.core.config import StageConfig
from tasks.core.errors import RunInterrupted, UserError
from tasks.core.result import StageResult
from tasks.core.stage import RunContext, StageFn, StagePlan, execute_stage

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


def _cache_key(context: Any, parameters: dict[str, Any]) -> str:
    return parameters["plan"].cache_key


def make_stage_task(stage: str, fn: StageFn, *, retries: int = 2, retry_delay_seconds: list[float] | None = None,
                    retry_condition=retry_transient, timeout_seconds: float | None = None) -> "StageTask":
    """A Prefect task running `fn` through the stage contract; the flow passes the plan it computed."""
    options = dict(name=stage, retries=retries, retry_delay_seconds=retry_delay_seconds or [2, 5, 15],
                   retry_condition_fn=retry_condition, persist_result=True, cache_key_fn=_cache_key,
                   result_serializer="json", timeout_seconds=timeout_seconds)
    return StageTask(stage, fn, options)


class StageTask:
    """Builds the Prefect task on first use; `stage_fn` is what the flow plans with."""

    def __init__(self, stage: str, fn: StageFn, options: dict[str, Any]):
        self.stage, self.stage_fn, self.options = stage, fn, options
        self._task: Any = None

    @property
    def task(self) -> Any:
        if self._task is None:
            from prefect import task

            fn = self.stage_fn

            def stage_task(plan: StagePlan, cfg: StageConfig, upstream: list[StageResult],
                           ctx: RunContext) -> StageResult:
                return execute_stage(plan, fn, cfg, upstream, ctx)

            stage_task.__qualname__ = stage_task.__name__ = f"{self.stage}_task"
            stage_task.__module__ = fn.__module__
            self._task = task(**self.options)(stage_task)
        return self._task

    def with_options(self, **kw: Any) -> Any:
        return self.task.with_options(**kw)

    def __call__(self, *args: Any, **kw: Any) -> Any:
        return self.task(*args, **kw)
