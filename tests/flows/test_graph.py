"""The flow walks the stage graph: inputs by name, independent stages at the same time, blocked stages said."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import pytest

from flows.pipeline import run_graph
from flows.stages import STAGES, needed_for
from tasks.core.config import StageConfig
from tasks.core.stage import RunContext, RunnerConfig, Stage, StageOutput


class Toy(StageConfig):
    sleep: float = 0.0
    fail: bool = False


SPANS: dict[str, tuple[float, float]] = {}
SEEN: dict[str, list[str]] = {}


def toy_run(inputs, out_uri, cfg, ctx):
    name = out_uri.rstrip("/").split("/")[-2]
    SEEN[name] = sorted(inputs)
    start = time.perf_counter()
    time.sleep(cfg.sleep)
    if cfg.fail:
        raise ValueError(f"{name} broke")
    SPANS[name] = (start, time.perf_counter())
    return StageOutput(stats={"thread": threading.current_thread().name})


# a -> (b, c) -> d; e is not built and reads d
GRAPH = [Stage("a", "", Toy, toy_run), Stage("b", "", Toy, toy_run, reads=("a",)),
         Stage("c", "", Toy, toy_run, reads=("a",)), Stage("d", "", Toy, toy_run, reads=("b", "c")),
         Stage("e", "", reads=("d",))]


def _run(tmp_path, until=None, **cfgs):
    from prefect import flow

    cfg = SimpleNamespace(**{s.name: cfgs.get(s.name, Toy()) for s in GRAPH})
    ctx = RunContext(store=str(tmp_path / "store"), pipeline="toy", run_id="r", runner=RunnerConfig(workers=1))
    summary: dict = {"stages": {}}
    events: list = []

    @flow
    def toy_flow():
        run_graph(cfg, ctx, until, summary, lambda ev, info: events.append((ev, info["stage"])), stages=GRAPH)

    toy_flow()
    return summary, events


def test_inputs_by_name_and_independent_stages_overlap(prefect_server, tmp_path):
    SPANS.clear()
    summary, events = _run(tmp_path, b=Toy(sleep=0.5), c=Toy(sleep=0.5))
    assert SEEN["a"] == [] and SEEN["b"] == SEEN["c"] == ["a"] and SEEN["d"] == ["b", "c"]
    (b0, b1), (c0, c1) = SPANS["b"], SPANS["c"]
    assert b0 < c1 and c0 < b1, "b and c read only a: they must run at the same time"
    assert SPANS["d"][0] >= max(b1, c1)
    assert summary["status"] == "partial" and summary["stages"]["e"]["status"] == "not_implemented"
    assert list(summary["stages"]) == ["a", "b", "c", "d", "e"]
    again, _ = _run(tmp_path, b=Toy(sleep=0.5), c=Toy(sleep=0.5))
    assert {n: e["status"] for n, e in again["stages"].items() if n != "e"} == dict.fromkeys("abcd", "cached")


def test_a_failure_stops_what_depends_on_it(prefect_server, tmp_path):
    with pytest.raises(ValueError, match="b broke"):
        _run(tmp_path, b=Toy(fail=True))


def test_until_runs_the_stage_and_what_it_reads(prefect_server, tmp_path):
    summary, _ = _run(tmp_path, until="b")
    assert list(summary["stages"]) == ["a", "b"] and summary["status"] == "completed"
    assert needed_for("d", GRAPH) == ["a", "b", "c", "d"]
    assert needed_for("dedup") == ["collect", "clean", "dedup"]


def test_registry_declarations_read_earlier_stages():
    names = [s.name for s in STAGES]
    for s in STAGES:
        assert all(names.index(r) < names.index(s.name) for r in s.reads), s.name
    built = [s for s in STAGES if s.built]
    assert [s.name for s in built] == ["collect", "clean", "dedup", "pii", "tokenize", "pretrain", "evaluate",
                                             "bias", "register"]
    assert all(s.package == f"tasks.{'tokenizer' if s.name == 'tokenize' else s.name}" for s in built)


def test_flow_parameters_are_typed_for_the_ui_form(tmp_path):
    from flows.pipeline import build_pipeline_flow, pipeline_flow

    props = pipeline_flow.parameters.model_dump()["properties"]
    assert {"demo", "books", "gpt2-small"} <= set(props["pipeline"]["enum"])
    assert props["until"]["anyOf"][0]["enum"][:6] == ["collect", "clean", "dedup", "pii", "tokenize", "pretrain"]
    assert "dotted path" in props["overrides"]["description"]
    own = tmp_path / "mine.yaml"
    own.write_text("pipelines:\n  small: {}\n  big: {}\n")
    props = build_pipeline_flow(str(own)).parameters.model_dump()["properties"]
    assert props["pipeline"]["enum"] == ["small", "big"] and props["config_file"]["default"] == str(own)
