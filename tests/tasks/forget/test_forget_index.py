"""The dedup index forgets a source: its documents leave every generation (local files, Redis keys), so a
later incremental run neither matches them nor keeps their signatures."""
from __future__ import annotations

import json
import random
import uuid

import numpy as np
import pyarrow.parquet as pq
import pytest

from tasks.core.config import stable_hash
from tasks.core.docs import DocWriter, read_all
from tasks.core.errors import UserError
from tasks.core.result import StageResult
from tasks.core.stage import RunContext, RunnerConfig, run_stage
from tasks.core.store import Store
from tasks.dedup.index import redis_store_prefix
from tasks.dedup.stage import STAGE, DedupConfig
from tasks.forget.journal import journal_dir
from tasks.forget.remove import forget_source

REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_skip_reason() -> str | None:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means the Redis test cannot run
        return f"Redis at {REDIS_URL} is not reachable ({exc}); forgetting from the Redis index is untested here"
    return None


BACKENDS = ["local", pytest.param("redis", marks=pytest.mark.skipif(_redis_skip_reason() is not None,
                                                                    reason=str(_redis_skip_reason())))]
WORDS = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ra") for b in ("bar", "cen", "dol", "fim", "gus", "jet")]


def _texts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(80)) for _ in range(n)]


def _upstream(root, name: str, docs: list[tuple[str, str, str]]) -> StageResult:
    store = Store(root)
    with DocWriter(store, f"{root}/{name}", batch_rows=4) as w:
        for doc_id, text, source in docs:
            w.write(doc_id, text, source, {})
    return StageResult(stage="clean", key=name, uri=f"{root}/{name}", outputs={"docs": w.files},
                       digest=stable_hash([name, docs]))


@pytest.fixture
def scope():
    name = f"forget-{uuid.uuid4().hex[:10]}"
    yield name
    if _redis_skip_reason() is None:
        import redis

        conn = redis.Redis.from_url(REDIS_URL)
        for key in conn.scan_iter(match=f"llmpipe:dedup:*:{name}*", count=1000):
            conn.delete(key)


@pytest.mark.parametrize("backend", BACKENDS)
def test_forgotten_documents_leave_the_index_and_match_nothing_later(tmp_path, backend, scope):
    ctx = RunContext(store=str(tmp_path / "store"), pipeline="t", run_id="r1", runner=RunnerConfig(workers=1),
                     incremental_scope=scope)
    cfg = DedupConfig(backend=backend, incremental=True)
    keep, gone = _texts(6, 1), _texts(5, 2)
    first = _upstream(tmp_path, "in1", [(f"k{i}", t, "keep") for i, t in enumerate(keep)]
                      + [(f"g{i}", t, "gone") for i, t in enumerate(gone)])
    run_stage(STAGE, cfg, {"clean": first}, ctx)
    store = Store(ctx.store)
    before = _index_entries(store, backend, scope)
    assert {f"g{i}" for i in range(5)} <= before["ids"]

    record = forget_source(store, "gone")  # the Redis server is found in the dedup output's config

    after = _index_entries(store, backend, scope)
    assert after["ids"] == {f"k{i}" for i in range(6)} and record["index"]["removed"] == 5
    assert after["docs"] == 6 and after["signatures"] == 6, "no signature of the source is kept"
    if backend == "redis":
        assert after["exact"] == 6 and after["dangling_exact"] == 0
    else:
        assert after["nonzero_shingles"] < before["nonzero_shingles"]
    # a later incremental run: copies of the kept documents are seen before, the forgotten ones are not
    second = _upstream(tmp_path, "in2", [(f"k{i}-again", t, "keep") for i, t in enumerate(keep[:3])]
                       + [(f"g{i}-again", t, "other") for i, t in enumerate(gone)])
    result = run_stage(STAGE, cfg, {"clean": second}, ctx.model_copy(update={"run_id": "r2"}))
    assert result.stats["dropped"] == {"seen_before": 3}
    assert {d["id"] for d in read_all(store, result.files("docs"))} == {f"g{i}-again" for i in range(5)}


def _index_entries(store: Store, backend: str, scope: str) -> dict:
    if backend == "local":
        (gen,) = (store.local_path(store.root) / "dedup" / "_index").glob(f"{scope}-*/gens/*")
        table = pq.read_table(gen / "kept.parquet")
        shingles = np.fromfile(gen / "shingles.u32", dtype="<u4")
        return {"ids": set(table["id"].to_pylist()), "signatures": table.num_rows,
                "docs": json.loads((gen / "_COMMITTED.json").read_text())["docs"],
                "nonzero_shingles": int((shingles != 0).sum())}
    import redis

    conn = redis.Redis.from_url(REDIS_URL)
    (base,) = [k[:-3] for k in conn.scan_iter(match=redis_store_prefix(store) + scope.encode() + b"*:id")]
    keys = set(conn.hkeys(base + b":id"))
    (record,) = [json.loads(v) for v in conn.hvals(base + b":gens")]
    owners = conn.hvals(base + b":exact")
    return {"ids": {v.decode() for v in conn.hvals(base + b":id")}, "signatures": conn.hlen(base + b":sig"),
            "docs": record["docs"], "exact": len(owners), "dangling_exact": sum(o not in keys for o in owners)}


def test_an_unreachable_redis_of_the_pipeline_stops_the_forget_which_resumes_later(tmp_path):
    store = Store(tmp_path / "store")
    _upstream(tmp_path / "store" / "clean", "k0", [("g0", "some words of the forgotten source", "gone")])
    bad = "redis://127.0.0.1:1/0"
    with pytest.raises(UserError, match="127.0.0.1:1/0.*rerun `llmpipe forget`"):
        forget_source(store, "gone", redis_urls={bad}, required_redis={bad})
    assert store.exists(f"{journal_dir(store, 'gone')}/journal.json")
    record = forget_source(store, "gone")
    assert record["resumed"] and record["document_ids"] == 1
    assert not store.exists(journal_dir(store, "gone"))
