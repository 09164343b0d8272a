"""The maintenance flow end to end on real stages under Prefect: nothing new trains nothing; new data is
folded into the champion (continued pretraining with replay) and the gate promotes or rejects it by its
rules; a failing stage leaves the champion untouched; every run leaves a record."""
from __future__ import annotations

import json
from pathlib import Path
from pydoc_data.topics import topics

import pytest

from flows.cli import main
from tasks.register.maintenance import records
from tasks.register.registry import Registry
from tests.flows.tiny import TOPICS, tiny_config, write_batch


@pytest.fixture
def setup(tmp_path, prefect_server):
    src, store = tmp_path / "src", tmp_path / "store"
    src.mkdir()
    write_batch(src, "a", 0, 40)
    config = tiny_config(tmp_path / "pipelines.yaml", store, {"docs": src},
                         maintenance="{max_steps: 6, replay_ratio: 0.5, min_new_docs: 1}")
    return src, store, config


def run(config: Path, tmp_path: Path, *args: str) -> tuple[int, dict]:
    out = tmp_path / f"s{len(list(tmp_path.glob('s*.json')))}.json"
    code = main([*args[:1], "mt", "-c", str(config), *args[1:], "--summary", str(out)])
    return code, (json.loads(out.read_text()) if out.exists() else {})


def test_maintenance_trains_only_on_new_data_and_gates_by_the_rules(setup, tmp_path):
    src, store, config = setup
    code, first = run(config, tmp_path, "run")
    assert code == 0 and first["stages"]["register"]["stats"]["decision"] == "promote"
    reg = Registry(store, "mt")
    assert reg.alias() == "v1"

    # nothing new: no stage after pii runs, nothing is registered
    code, idle = run(config, tmp_path, "maintenance")
    m = idle["maintenance"]
    assert code == 0 and m["outcome"] == "nothing_new" and m["new"]["documents"] == 0
    assert "pretrain" not in idle["stages"] and reg.versions() == ["v1"] and reg.alias() == "v1"

    # new documents, a lenient gate: continued pretraining of v1 with replay, promoted
    write_batch(src, "b", 40, 12)
    code, second = run(config, tmp_path, "maintenance", "--set", "register.gate.val_loss_margin=10")
    m = second["maintenance"]
    assert code == 0 and m["mode"] == "continue" and m["outcome"] == "promote", m
    assert m["new"]["collected"] == 12 and m["new"]["documents"] >= 1
    pre = second["stages"]["pretrain"]["stats"]
    assert pre["steps"] == 6 and pre["replay_ratio"] == 0.5 and pre["previous_train_tokens"] > 0
    assert pre["windows_from_previous"] > 0 and pre["windows_from_new"] > 0
    assert second["stages"]["collect"]["stats"]["docs_out"] == 12, "only the new file is collected"
    assert reg.alias() == "v2" and reg.info("v2")["lineage"]["parent"] == "v1"
    assert len(reg.info("v2")["lineage"]["dedup_generations"]) == 2

    # new documents, a gate that demands a 90% lower loss: rejected, v2 stays champion
    write_batch(src, "c", 52, 12)
    code, third = run(config, tmp_path, "maintenance", "--set", "register.gate.val_loss_margin=-0.9")
    m = third["maintenance"]
    assert code == 0 and m["outcome"] == "reject" and reg.alias() == "v2"
    assert m["decision"]["champion"] == "v2" and any("val_loss vs champion" in r for r in m["decision"]["reasons"])
    assert m["new"]["collected"] == 12, "compared with the champion's ledger"

    # a stage that fails (the warm start's shape differs): the champion is untouched, the run is recorded
    code, _ = run(config, tmp_path, "maintenance", "--set", "pretrain.n_layer=3")
    assert code != 0 and reg.alias() == "v2"
    last = records(reg)[-1]
    assert last["outcome"] == "failed" and "n_layer" in last["error"] and last["champion_after"] == "v2"

    # the rejected run's documents were not trained on by the champion: they come again, with what is newer
    write_batch(src, "d", 64, 5)
    code, fourth = run(config, tmp_path, "maintenance", "--set", "register.gate.val_loss_margin=10")
    m = fourth["maintenance"]
    assert code == 0 and m["new"]["collected"] == 17 and m["outcome"] == "promote" and reg.alias() == "v4"
    assert [r["outcome"] for r in records(reg)] == ["nothing_new", "promote", "reject", "failed", "promote"]


SECRET = ["The lighthouse keeper Ambrose Quillfeather counted nine herons at dawn.",
          "Marigold tea was served to Ambrose Quillfeather every Tuesday in the tower."]


def test_after_forget_the_next_maintenance_retrains_without_the_source(tmp_path, prefect_server):
    docs, secret, store = tmp_path / "docs", tmp_path / "secret", tmp_path / "store"
    docs.mkdir()
    secret.mkdir()
    write_batch(docs, "a", 0, 30)
    (secret / "s.jsonl").write_text("".join(  # real prose around the secret sentences, so clean keeps them
        json.dumps({"id": f"s{i}", "text": f"{SECRET[0]}\n\n{topics[t]}\n\n{SECRET[1]}"}) + "\n"
        for i, t in enumerate(TOPICS[-6:])))
    config = tiny_config(tmp_path / "pipelines.yaml", store, {"docs": docs, "secret": secret}, steps=10,
                         register="{gate: {below_unigram: false, val_loss_margin: -0.9}}")

    code, first = run(config, tmp_path, "run")
    reg = Registry(store, "mt")
    assert code == 0 and reg.alias() == "v1" and reg.info("v1")["lineage"]["sources"]["secret"]["docs_out"] == 6
    pii = first["stages"]["pii"]
    assert any("Quillfeather" in t for t in _texts(Path(pii["uri"]))), "the secret reached the trained data"
    old_digests = {d["digest"] for d in reg.info("v1")["lineage"]["data"].values()}
    assert main(["forget", "mt", "-c", str(config), "--source", "secret", "--reason", "erasure request"]) == 0
    assert reg.state()["versions"]["v1"]["status"] == "tainted" and reg.needs_retrain()["champion"] == "v1"

    # nothing new was added, and the gate demands a 90% lower loss: the tainted champion is retrained anyway
    # and replaced by a model that passes the absolute rules
    code, second = run(config, tmp_path, "maintenance")
    m = second["maintenance"]
    assert code == 0 and m["mode"] == "retrain" and "erasure request" in m["retrain_because"]
    assert m["outcome"] == "promote" and reg.alias() == "v2" and reg.needs_retrain() is None
    lineage = reg.info("v2")["lineage"]
    assert "secret" not in lineage["sources"] or not lineage["sources"]["secret"].get("docs_out")
    assert lineage["parent"] is None and not old_digests & {d["digest"] for d in lineage["data"].values()}
    text = "\n".join(p.read_text(errors="replace") for p in reg.version_dir("v2").rglob("*")
                     if p.is_file() and p.suffix in (".json", ".md"))
    assert "Quillfeather" not in text


def _texts(stage_dir: Path) -> list[str]:
    import pyarrow.parquet as pq

    return [t for f in sorted(stage_dir.glob("docs/*.parquet")) for t in pq.read_table(f).column("text").to_pylist()]
