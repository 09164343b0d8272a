"""The stage registry: every stage's declaration, in the order they are listed, and their Prefect tasks.

Each built stage declares itself once (`STAGE = Stage(...)` at the bottom of `tasks/<stage>/stage.py`);
this module only lists where the declarations are. Stages that are not built yet are declared here with
no run function, so the flow and `llmpipe stages` can say so.
"""
from __future__ import annotations

import importlib
from functools import cache
from typing import Any

from tasks.core.stage import Stage

STAGE_MODULES = ("tasks.collect.stage", "tasks.clean.stage", "tasks.dedup.stage", "tasks.pii.stage",
                 "tasks.tokenizer.stage", "tasks.pretrain.stage",
                 "tasks.evaluate.stage", "tasks.bias.stage", "tasks.register.stage")
NOT_BUILT: tuple[Stage, ...] = ()


def _load() -> list[Stage]:
    stages = [importlib.import_module(m).STAGE for m in STAGE_MODULES] + list(NOT_BUILT)
    names = [s.name for s in stages]
    for s in stages:
        unknown = [r for r in s.reads if r not in names[: names.index(s.name)]]
        if unknown:  # a declaration error, caught by every test that loads the registry
            raise RuntimeError(f"stage {s.name} reads {unknown}, which are not declared before it")
    return stages


STAGES: list[Stage] = _load()
STAGE_NAMES = [s.name for s in STAGES]
BY_NAME = {s.name: s for s in STAGES}


def needed_for(name: str, stages: list[Stage] = STAGES) -> list[str]:
    """`name` and every stage it reads, directly or not, in list order (what `--until NAME` runs)."""
    need = {name}
    for s in reversed(stages):
        if s.name in need:
            need.update(s.reads)
    return [s.name for s in stages if s.name in need]


@cache
def prefect_task(stage: Stage) -> Any:
    """The stage's Prefect task: cached by its store key, results persisted, retried when worth it."""
    from prefect import task

    from tasks.core.retry import retry_transient, retry_unless_user_error
    from tasks.core.stage import execute_stage

    name = stage.name

    def stage_task(plan, cfg, inputs, ctx):
        return execute_stage(plan, stage, cfg, inputs, ctx)

    stage_task.__qualname__ = stage_task.__name__ = f"{name}_task"
    return task(name=name, retries=stage.retries, retry_delay_seconds=[2, 5, 15],
                retry_condition_fn=retry_unless_user_error if stage.resumable else retry_transient,
                persist_result=True, result_serializer="json", cache_key_fn=_cache_key)(stage_task)


def _cache_key(context: Any, parameters: dict[str, Any]) -> str:
    return parameters["plan"].cache_key
