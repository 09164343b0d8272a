"""The tombstone: which configured sources collect skips, and store keys that do not move without a forget."""
from __future__ import annotations

from tasks.collect.stage import STAGE, CollectConfig, SourceConfig, collect_key
from tasks.core.stage import RunContext, RunnerConfig, plan_stage
from tasks.core.store import Store
from tasks.forget.tombstone import forgotten_match, location, skipped_sources, write_tombstone


def test_names_match_but_made_up_cli_names_only_by_location(tmp_path):
    a, b = str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")
    tomb = {"forum": {"locations": [location({"path": a})]}, "cli-0": {"locations": [location({"path": b})]}}
    assert forgotten_match({"name": "forum", "path": str(tmp_path / "elsewhere")}, tomb) == "forum"
    assert forgotten_match({"name": "renamed", "path": a}, tomb) == "forum", "the same files under a new name"
    assert forgotten_match({"name": "cli-0", "path": str(tmp_path / "other.txt")}, tomb) is None
    assert forgotten_match({"name": "cli-3", "path": b}, tomb) == "cli-0"
    assert forgotten_match({"name": "web", "url": "https://example.org/x.jsonl"}, tomb) is None
    assert location({"kind": "demo"}) == "demo" and location({"dataset": "o/d", "config_name": "en"}) == "hub:o/d:en"


def test_collect_keys_move_only_for_pipelines_with_a_forgotten_source(tmp_path):
    (tmp_path / "a.txt").write_text("some text")
    (tmp_path / "b.txt").write_text("more text")
    cfg = CollectConfig(sources=[SourceConfig(name="a", path=str(tmp_path / "a.txt")),
                                 SourceConfig(name="b", path=str(tmp_path / "b.txt"))])
    ctx = RunContext(store=str(tmp_path / "store"), pipeline="p", run_id="r", runner=RunnerConfig(workers=1))
    store = Store(ctx.store)
    plain = plan_stage(STAGE, cfg, {}, ctx).key
    assert set(collect_key(cfg, ctx)) == {"sources", "scope"}
    write_tombstone(store, {"elsewhere": {"when": "t", "audit": "x", "locations": ["path:/nowhere"]}})
    assert plan_stage(STAGE, cfg, {}, ctx).key == plain, "a forget of another pipeline's source changes nothing"
    write_tombstone(store, {"b": {"when": "t", "audit": "x", "locations": []}})
    assert skipped_sources([s.model_dump() for s in cfg.sources], store) == {"b": "b"}
    assert collect_key(cfg, ctx)["forgotten"] == ["b"] and plan_stage(STAGE, cfg, {}, ctx).key != plain
    (tmp_path / "b.txt").unlink()  # a forgotten source's files may go: they are not read for the key
    assert collect_key(cfg, ctx)["forgotten"] == ["b"]
