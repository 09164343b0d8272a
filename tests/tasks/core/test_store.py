"""Store keys, completion manifests and the stage contract's skip-if-complete behaviour."""
from __future__ import annotations

import json

from tasks.core.config import StageConfig
from tasks.core.stage import Stage, StageOutput, plan_stage, run_stage
from tasks.core.store import MANIFEST, Store, stage_key


class ToyConfig(StageConfig):
    n: int = 1


CALLS = []


def run_toy(upstream, out_uri, cfg, ctx):
    CALLS.append(cfg.n)
    store = ctx.open_store()
    with store.open(f"{out_uri}/out.txt", "wb") as f:
        f.write(str(cfg.n).encode())
    return StageOutput(outputs={"data": ["out.txt"]}, stats={"n": cfg.n})


TOY = Stage("toy", "a toy stage", config=ToyConfig, run=run_toy)
TOY2 = Stage("toy2", "reads toy", config=ToyConfig, run=run_toy, reads=("toy",))


def test_key_changes_with_config_inputs_and_code():
    base = stage_key("toy", ToyConfig(), ["a"], "code1")
    assert base == stage_key("toy", ToyConfig(), ["a"], "code1")
    assert base != stage_key("toy", ToyConfig(n=2), ["a"], "code1")
    assert base != stage_key("toy", ToyConfig(), ["b"], "code1")
    assert base != stage_key("toy", ToyConfig(), ["a"], "code2")
    assert base != stage_key("other", ToyConfig(), ["a"], "code1")


def test_run_stage_writes_manifest_last_and_skips_when_complete(ctx):
    CALLS.clear()
    first = run_stage(TOY, ToyConfig(n=3), {}, ctx)
    assert not first.cached and CALLS == [3]
    store = Store(ctx.store)
    manifest = json.loads(open(f"{first.uri}/{MANIFEST}").read())
    assert manifest["files"][0]["path"] == "out.txt" and manifest["files"][0]["bytes"] == 1
    assert len(manifest["files"][0]["sha256"]) == 64 and manifest["digest"] == first.digest
    again = run_stage(TOY, ToyConfig(n=3), {}, ctx)
    assert again.cached and CALLS == [3] and again.digest == first.digest
    other = run_stage(TOY, ToyConfig(n=4), {}, ctx)
    assert other.uri != first.uri and CALLS == [3, 4]
    assert store.is_complete(first.uri) and store.is_complete(other.uri)


def test_partial_output_is_not_complete_and_reruns(ctx):
    CALLS.clear()
    plan = plan_stage(TOY, ToyConfig(n=5), {}, ctx)
    store = Store(ctx.store)
    with store.open(f"{plan.uri}/out.txt", "wb") as f:  # a killed run left a file but no manifest
        f.write(b"partial")
    assert not plan.complete and not store.is_complete(plan.uri)
    result = run_stage(TOY, ToyConfig(n=5), {}, ctx)
    assert not result.cached and CALLS == [5]
    assert open(f"{result.uri}/out.txt").read() == "5"


def test_downstream_key_follows_upstream_digest(ctx):
    up = run_stage(TOY, ToyConfig(n=1), {}, ctx)
    plan_a = plan_stage(TOY2, ToyConfig(), {"toy": up}, ctx)
    changed = up.model_copy(update={"digest": "something-else"})
    plan_b = plan_stage(TOY2, ToyConfig(), {"toy": changed}, ctx)
    assert plan_a.key != plan_b.key


def test_write_json_is_atomic_and_leaves_no_temp(tmp_path):
    store = Store(tmp_path)
    store.write_json(f"{store.root}/a/b.json", {"x": 1})
    store.write_json(f"{store.root}/a/b.json", {"x": 2})
    assert json.loads((tmp_path / "a" / "b.json").read_text()) == {"x": 2}
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.json"]


def test_fsspec_url_store(tmp_path):
    store = Store(f"file://{tmp_path}/st")
    assert store.local and store.root == f"{tmp_path}/st"
    mem = Store("memory://llmpipe-test")
    mem.write_json(mem.join("x", "y.json"), {"ok": True})
    assert mem.read_json(mem.join("x", "y.json")) == {"ok": True} and not mem.local


def test_data_stages_run_on_a_non_local_fsspec_store():
    """collect -> clean -> dedup -> pii through fsspec only (an in-memory filesystem, one process)."""
    from tasks.clean.stage import STAGE as CLEAN
    from tasks.clean.stage import CleanConfig
    from tasks.collect.stage import STAGE as COLLECT
    from tasks.collect.stage import CollectConfig, SourceConfig
    from tasks.core.docs import read_all
    from tasks.core.stage import RunContext, RunnerConfig
    from tasks.dedup.stage import STAGE as DEDUP
    from tasks.dedup.stage import DedupConfig
    from tasks.pii.stage import STAGE as PII
    from tasks.pii.stage import PiiConfig

    ctx = RunContext(store="memory://llmpipe-stages", pipeline="m", run_id="r", runner=RunnerConfig(workers=1))
    result = run_stage(COLLECT, CollectConfig(sources=[SourceConfig(name="d", kind="demo")], max_docs=30), {}, ctx)
    for stage, cfg in [(CLEAN, CleanConfig()), (DEDUP, DedupConfig()), (PII, PiiConfig(nlp_model=None))]:
        result = run_stage(stage, cfg, {stage.reads[0]: result}, ctx)
        assert result.stats["balanced"] and result.stats["docs_out"] > 0
    store = Store(ctx.store)
    assert not store.local and store.is_complete(result.uri)
    assert len(read_all(store, result.files("docs"))) == result.stats["rows_out"]
