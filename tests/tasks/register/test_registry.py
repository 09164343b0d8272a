"""The registry: versions are immutable and identified by content, aliases change under a lock with their
history, taint marks, concurrent registrations stay consistent."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import pytest

from tasks.core.errors import UserError
from tasks.register.registry import CHAMPION, Registry, model_digest, taint_versions


def fake_model(root: Path, seed: int) -> Path:
    d = root / f"model-{seed}"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(os.urandom(64) if seed < 0 else bytes([seed % 256]) * 64)
    (d / "config.json").write_text(json.dumps({"n_layer": 2}))
    (d / "tokenizer.json").write_text("{}")
    return d


def register(reg: Registry, model: Path, data_digest: str = "d0") -> tuple[str, bool]:
    lineage = {"data": {"pii": {"digest": data_digest, "key": "k"}}, "pipeline": "t", "run_id": "r"}
    return reg.register({"model": model}, {"val_loss": 1.0}, lineage, lambda v: f"# card {v}\n",
                        f"w{model.name}", model_digest(model))


def test_same_model_twice_is_the_same_version(tmp_path):
    reg = Registry(tmp_path / "store", "demo")
    m1, m2 = fake_model(tmp_path, 1), fake_model(tmp_path, 2)
    assert register(reg, m1) == ("v1", True)
    assert register(reg, m1) == ("v1", False)
    assert register(reg, m2) == ("v2", True)
    assert reg.versions() == ["v1", "v2"]
    d = reg.version_dir("v1")
    assert (d / "model" / "model.safetensors").read_bytes() == (m1 / "model.safetensors").read_bytes()
    assert (d / "card.md").read_text() == "# card v1\n"
    assert json.loads((d / "version.json").read_text())["digest"] == model_digest(m1)
    assert not list((reg.root / "versions").glob(".*")), "no temporary directory is left behind"


def test_a_failed_registration_leaves_no_version(tmp_path):
    reg = Registry(tmp_path / "store", "demo")
    m1 = fake_model(tmp_path, 1)
    with pytest.raises(FileNotFoundError):
        reg.register({"model": m1, "missing.json": tmp_path / "nope.json"}, {}, {}, lambda v: "", "w", "dig")
    assert reg.versions() == [] and not list((reg.root / "versions").iterdir())
    assert register(reg, m1) == ("v1", True), "the number was not used up"


def test_aliases_history_and_rollback(tmp_path):
    reg = Registry(tmp_path / "store", "demo")
    for i in (1, 2, 3):
        register(reg, fake_model(tmp_path, i))
    reg.set_alias(CHAMPION, "v1", "gate", "first")
    reg.set_alias(CHAMPION, "v2", "gate", "better")
    reg.set_alias("staging", "v3", "manual (me)", "try it")
    assert reg.alias() == "v2" and reg.alias("staging") == "v3"
    event = reg.rollback("manual (me)", "v2 misbehaves")
    assert (event["from"], event["to"]) == ("v2", "v1") and reg.alias() == "v1"
    hist = reg.history()
    assert [(e["alias"], e["from"], e["to"], e["by"]) for e in hist] == [
        (CHAMPION, None, "v1", "gate"), (CHAMPION, "v1", "v2", "gate"), ("staging", None, "v3", "manual (me)"),
        (CHAMPION, "v2", "v1", "manual (me)")]
    assert all(e["when"] and e["why"] for e in hist)
    with pytest.raises(UserError, match="no earlier version"):
        reg.rollback("me", "again")  # v1 replaced nothing
    with pytest.raises(UserError, match="moved to v1"):
        reg.set_alias(CHAMPION, "v3", "me", "stale view", expect="v2")
    with pytest.raises(UserError, match="no version 'v9'"):
        reg.set_alias(CHAMPION, "v9", "me", "typo")


def test_gate_decision_is_compare_and_set(tmp_path):
    reg = Registry(tmp_path / "store", "demo")
    for i in (1, 2, 3):
        register(reg, fake_model(tmp_path, i))
    reg.set_alias(CHAMPION, "v1", "gate", "first")
    decided_against_v1 = {"decision": "promote", "challenger": "v3", "champion": "v1", "rules": [], "reasons": []}
    reg.set_alias(CHAMPION, "v2", "gate", "another flow promoted v2 meanwhile")
    out = reg.record_decision(decided_against_v1, promote=True, run_id="r")
    assert out["decision"] == "reject" and reg.alias() == "v2"
    assert "changed to v2" in out["reasons"][-1]
    ok = reg.record_decision({**decided_against_v1, "champion": "v2"}, promote=True, run_id="r2")
    assert ok["decision"] == "promote" and reg.alias() == "v3"
    assert [d["challenger"] for d in reg.decisions()] == ["v3", "v3"]
    assert reg.history()[-1]["run_id"] == "r2"


def test_taint_marks_versions_and_the_champion_needs_a_retrain(tmp_path):
    store = tmp_path / "store"
    reg = Registry(store, "demo")
    register(reg, fake_model(tmp_path, 1), data_digest="old")
    register(reg, fake_model(tmp_path, 2), data_digest="other")
    reg.set_alias(CHAMPION, "v1", "gate", "first")
    assert taint_versions(store, {"old", "unrelated"}, "forget books", "audit-1") == {"demo": ["v1"]}
    st = reg.state()
    assert st["versions"]["v1"]["status"] == "tainted" and st["versions"]["v2"]["status"] == "ok"
    assert st["needs_retrain"]["champion"] == "v1" and st["versions"]["v1"]["taint"]["audit"] == "audit-1"
    reg.set_alias(CHAMPION, "v2", "gate", "retrained without it")
    assert reg.needs_retrain() is None
    with pytest.raises(UserError, match="tainted"):
        reg.rollback("me", "back to the tainted one")


def _register_many(store: str, seeds: list[int], out: str) -> None:
    reg = Registry(store, "demo")
    root = Path(out)
    got = [register(reg, fake_model(root, s))[0] for s in seeds]
    (root / "versions.json").write_text(json.dumps(got))


def test_concurrent_registrations_keep_a_consistent_registry(tmp_path):
    store = str(tmp_path / "store")
    ctx = mp.get_context("spawn")
    procs = []
    for p in range(3):
        (tmp_path / f"p{p}").mkdir()
        seeds = [10 * p + i for i in range(4)] + [99]  # 99: the same model from every process
        procs.append(ctx.Process(target=_register_many, args=(store, seeds, str(tmp_path / f"p{p}"))))
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
        assert proc.exitcode == 0
    reg = Registry(store, "demo")
    state = reg.state()
    assert reg.versions() == [f"v{i}" for i in range(1, 14)], "13 distinct models, numbered without gaps"
    digests = [e["digest"] for e in state["versions"].values()]
    assert len(set(digests)) == 13
    same = {json.loads((tmp_path / f"p{p}" / "versions.json").read_text())[-1] for p in range(3)}
    assert len(same) == 1, "the same model got the same version in every process"
    for v in reg.versions():
        d = reg.version_dir(v)
        assert json.loads((d / "version.json").read_text())["digest"] == state["versions"][v]["digest"]
