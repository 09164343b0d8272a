"""Forgetting a source on a real store: no trace of its text anywhere in the store, valid manifests, no index
entries, tainted models, an audit record without text; the next run skips it; a crash is recovered."""
from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks.core.docs import read_all
from tasks.core.errors import UserError
from tasks.core.store import MANIFEST, Store
from tasks.forget import remove
from tasks.forget.journal import journal_dir
from tasks.forget.remove import forget_source, manifest_digest
from tasks.register.registry import CHAMPION, Registry, model_digest
from tests.tasks.forget.conftest import GONE_DOCS, KEEP_DOCS, Built, gone_sentence, pipeline
from tests.tasks.forget.grep import grep_store

NEEDLES = [gone_sentence(i) for i in range(GONE_DOCS)] + ["{broken: Zephyrine"]


def finished_outputs(store: Store) -> list[str]:
    return sorted(p.rsplit("/", 1)[0] for p in store.fs.glob(f"{store.root}/*/*/{MANIFEST}"))


def damaged(store: Store) -> dict[str, dict[str, str]]:
    """Every finished output checked against its manifest, SHA-256s included (what `llmpipe verify` does)."""
    return {uri: d for uri in finished_outputs(store) if (d := store.damage(uri, hashes=True))}


def gone_ids(b: Built) -> set[str]:
    return {d["id"] for d in read_all(b.store, b.results["collect"].files("docs")) if d["source"] == "gone"}


def index_ids(root) -> set[str]:
    return {i for p in root.glob("dedup/_index/*/gens/*/kept.parquet") for i in pq.read_table(p)["id"].to_pylist()}


def fake_model(root, seed: int):
    d = root / f"model-{seed}"
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(bytes([seed]) * 64)
    (d / "config.json").write_text("{}")
    return d


def register(reg: Registry, model, digest: str) -> str:
    lineage = {"data": {"tokenize": {"digest": digest, "key": "k"}}, "pipeline": "forgetful", "run_id": "r"}
    return reg.register({"model": model}, {}, lineage, lambda v: f"# {v}\n", model.name, model_digest(model))[0]


def test_forget_leaves_no_trace_and_the_next_run_skips_the_source(tmp_path, caplog):
    b = pipeline(tmp_path)
    first = b.run("tokenize")
    ids = gone_ids(b)
    assert len(ids) == GONE_DOCS + 1 and len(ids & index_ids(b.root)) == GONE_DOCS  # dedup removed the copy
    # the grep finds the source where it is (documents, quarantine, token shards): it can fail
    before = grep_store(b.root, NEEDLES)
    assert set(before) == set(NEEDLES)
    assert any("token shard" in where for where in before[NEEDLES[0]])
    reg = Registry(b.store, "forgetful")
    trained = register(reg, fake_model(tmp_path, 1), first["tokenize"].digest)
    other = register(reg, fake_model(tmp_path, 2), "a-digest-of-other-data")
    reg.set_alias(CHAMPION, trained, "test", "the model trained on the source")

    record = forget_source(b.store, "gone", reason="request 42")

    assert grep_store(b.root, NEEDLES) == {}
    assert grep_store(b.root, sorted(ids)) == {}, "not even the ids of its documents are left"
    assert damaged(b.store) == {}, "every rewritten manifest describes its files"
    assert not (b.root / "tokenize").exists() or not list((b.root / "tokenize").iterdir())
    assert not ids & index_ids(b.root)
    assert reg.info(trained)["status"] == "tainted" and reg.info(other)["status"] == "ok"
    assert reg.needs_retrain()["audit"] == record["audit"]
    assert record["tainted_versions"] == {"forgetful": [trained]}
    by_stage = {r["stage"]: r for r in record["outputs"]}
    assert by_stage["collect"]["rows"] == GONE_DOCS + 1 and by_stage["collect"]["quarantine_records"] == 1
    assert by_stage["collect"]["ledger_items"] == 2 * (GONE_DOCS + 1)  # the output's ledger and its unit's
    assert by_stage["dedup"]["rows"] == GONE_DOCS and by_stage["dedup"]["id_rows"] == 2  # the copy dedup removed,
    #                                                            in removed.parquet and report.json's examples
    assert by_stage["pii"]["rows"] == GONE_DOCS and [d["stage"] for d in record["deleted"]] == ["tokenize"]
    assert first["tokenize"].digest in record["tainted_digests"] and record["index"]["removed"] == GONE_DOCS
    audit = (tmp_path / "store" / "audit").glob("forget-*.json")
    text = "\n".join(p.read_text() for p in audit)
    assert '"request 42"' in text and not any(n in text or "Zephyrine" in text for n in NEEDLES)
    assert not (b.root / "_forget").exists() or not list((b.root / "_forget").iterdir())
    manifest = b.store.read_manifest(first["collect"].uri)
    assert manifest["stats"]["forgotten"]["gone"]["digest_before"] == first["collect"].digest
    assert manifest["digest"] != first["collect"].digest

    with caplog.at_level(logging.WARNING, logger="llmpipe.collect"):
        again = b.run("tokenize", run_id="r2")
    assert "skipping source 'gone'" in caplog.text and "--lift" in caplog.text
    assert again["collect"].stats["sources"] == {"keep": again["collect"].stats["sources"]["keep"]}
    assert again["collect"].stats["docs_out"] == KEEP_DOCS and again["pii"].stats["docs_out"] == KEEP_DOCS
    assert again["tokenize"].stats["docs_in"] == KEEP_DOCS
    assert {d["source"] for d in read_all(b.store, again["pii"].files("docs"))} == {"keep"}
    assert grep_store(b.root, NEEDLES) == {}
    assert damaged(b.store) == {}

    repeat = forget_source(b.store, "gone")
    assert not repeat["found"] and repeat["outputs"] == [] and repeat["tainted_digests"] == []


def test_a_crash_midway_is_recovered_by_running_it_again(tmp_path, monkeypatch):
    b = pipeline(tmp_path)
    b.run("tokenize")
    ids = gone_ids(b)
    real, calls = remove.rewrite_manifest, []

    def crash_after_one(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:  # one output finished, the second's files rewritten but not its manifest
            raise OSError("disk went away")
        real(*args, **kwargs)

    monkeypatch.setattr(remove, "rewrite_manifest", crash_after_one)
    with pytest.raises(OSError, match="disk went away"):
        forget_source(b.store, "gone")
    assert b.store.exists(f"{journal_dir(b.store, 'gone')}/journal.json")
    assert damaged(b.store), "the crash left a manifest that does not match its rewritten files"
    assert len(ids & index_ids(b.root)) == GONE_DOCS, "the index was not reached"
    monkeypatch.setattr(remove, "rewrite_manifest", real)

    record = forget_source(b.store, "gone")  # the rerun knows the ids from the journal

    assert record["resumed"] and damaged(b.store) == {} and not ids & index_ids(b.root)
    assert grep_store(b.root, NEEDLES) == {}
    rows = {r["stage"]: r["rows"] for r in record["outputs"]}
    assert rows == {"collect": GONE_DOCS + 1, "clean": GONE_DOCS + 1, "dedup": GONE_DOCS, "pii": GONE_DOCS}, \
        "the first attempt's counts stand"
    assert record["deleted"] == [{"stage": "tokenize", "key": b.results["tokenize"].key,
                                  "why": "token shards made from the source"}], "deleted by the first attempt"
    assert not b.store.exists(journal_dir(b.store, "gone"))


def test_unfinished_outputs_their_work_files_and_temporary_files(built, tmp_path):
    """A killed run's leftovers: unit files without a manifest, `_work` sketches, half-written temp files."""
    built.run("clean")
    clean = built.results["clean"]
    store, killed = built.store, f"{built.root}/clean/killedrun0000000"
    for rel in clean.outputs["docs"]:
        store.fs.makedirs(f"{killed}/docs", exist_ok=True)
        store.fs.copy(f"{clean.uri}/{rel}", f"{killed}/{rel}")
    store.fs.copy(f"{clean.uri}/_units", f"{killed}/_units", recursive=True)
    half = f"{killed}/docs/.u00009-0000-00000.parquet.tmp-1a2b3c4d"
    store.fs.copy(f"{clean.uri}/{clean.outputs['docs'][-1]}", half)  # as a killed writer leaves it
    work = f"{built.root}/dedup/killedrun0000000/_work/sketch"
    store.fs.makedirs(work, exist_ok=True)
    table = pq.read_table(f"{clean.uri}/{clean.outputs['docs'][-1]}", columns=["id"])
    pq.write_table(table, f"{work}/u00001.parquet")
    (tmp_path / "store/dedup/killedrun0000000/_units").mkdir()
    (tmp_path / "store/dedup/killedrun0000000/_units/sketch-u00001.json").write_text(json.dumps({"unit_id": "x"}))

    record = forget_source(store, "gone")

    assert grep_store(built.root, NEEDLES) == {}
    assert not store.exists(half) and not store.exists(f"{built.root}/dedup/killedrun0000000/_work")
    assert not list((tmp_path / "store/dedup/killedrun0000000/_units").iterdir()), "markers of deleted work"
    killed_docs = read_all(store, [f"{killed}/{r}" for r in clean.outputs["docs"] if store.exists(f"{killed}/{r}")])
    assert len(killed_docs) == KEEP_DOCS and {d["source"] for d in killed_docs} == {"keep"}
    markers = [json.loads(p.read_text()) for p in (tmp_path / "store/clean/killedrun0000000/_units").iterdir()]
    vouched = {rel: size for m in markers for rel, size in m["sizes"].items()}
    assert vouched and all(store.fs.size(f"{killed}/{rel}") == size for rel, size in vouched.items()), \
        "a marker left in place vouches for a file as it is"
    assert [m["unit_id"] for m in markers] == ["u00000-0000"], "the unit of the source's documents is redone"
    assert {r["key"] for r in record["outputs"]} >= {"killedrun0000000"}
    assert damaged(store) == {}


def test_lift_collects_the_source_again(built):
    built.run("collect")
    forget_source(built.store, "gone")
    with pytest.raises(UserError, match="not forgotten"):
        remove.lift_source(built.store, "keep")
    record = remove.lift_source(built.store, "gone")
    assert record["withdrawn"] == [f"collect/{built.results['collect'].key}"]
    again = built.run("collect", run_id="r2")
    assert again["collect"].key == built.results["collect"].key, "the store key of a config with the source"
    assert again["collect"].stats["sources"]["gone"]["docs_out"] == GONE_DOCS + 1 and not again["collect"].cached
    assert set(grep_store(built.root, NEEDLES[:GONE_DOCS])) == set(NEEDLES[:GONE_DOCS])


def test_every_source_forgotten_is_an_error_naming_the_way_back(built):
    built.run("collect")
    forget_source(built.store, "gone")
    forget_source(built.store, "keep")
    with pytest.raises(UserError, match="every configured source is forgotten.*--lift"):
        built.run("collect", run_id="r2")


def test_the_manifest_digest_is_the_stores(tmp_path):
    store = Store(tmp_path)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.bin").write_bytes(np.arange(10, dtype=np.uint8).tobytes())
    m = store.write_manifest(str(tmp_path / "out"), stage="s", key="k", config={}, inputs=[],
                             outputs={"a": ["a.bin"]}, stats={}, code_version="c")
    assert manifest_digest(m["files"], m["outputs"]) == m["digest"]


def test_outputs_whose_raw_text_was_purged(built):
    """retain_raw: false deleted collect's, clean's and dedup's documents after pii: collect's per-source counts
    still say it held the source (its manifest is marked), pii's documents are filtered, a repeat finds nothing."""
    from flows.pipeline import purge_raw
    from flows.stages import STAGES

    results = built.run("pii")
    assert purge_raw(STAGES, results, built.ctx) == ["collect", "clean", "dedup"]

    record = forget_source(built.store, "gone")

    assert grep_store(built.root, NEEDLES) == {} and damaged(built.store) == {}
    by_stage = {r["stage"]: r for r in record["outputs"]}
    assert by_stage["pii"]["rows"] == GONE_DOCS and by_stage["collect"]["rows"] == 0
    collect = built.store.read_manifest(results["collect"].uri)
    assert collect["purged"] and collect["stats"]["forgotten"]["gone"]["counted"] == GONE_DOCS + 2
    assert {f"{s}/{results[s].key}" for s in ("collect", "clean", "dedup", "pii")} <= set(record["held"]) | set(
        record["derived"])
    assert not forget_source(built.store, "gone")["found"]
