"""Tests for tasks.dedup.index: the local and Redis indexes' insert/lookup semantics, sketch files, and
generations (persisted, published, visible, cleared)."""
from __future__ import annotations

import random
import uuid

import numpy as np
import pyarrow.parquet as pq
import pytest
import redis

from tasks.core.stage import RunContext
from tasks.core.store import Store
from tasks.dedup.index import (
    KeptBatch,
    LocalIndex,
    PendingGeneration,
    RedisIndex,
    clear_index,
    committed_generations,
    index_id,
    load_local_generation,
    local_index_dir,
    publish_generation,
    redis_base,
    shingle_source,
    signature_matrix,
    sketch_schema,
    sketch_table,
    sketch_writer,
    visible_generations,
)
from tasks.dedup.minhash import Sketcher, band_hashes, band_keys, lsh_params
from tasks.dedup.stage import DedupConfig

CFG = DedupConfig(num_perm=64, bands=8, rows=8)
REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_skip_reason() -> str | None:
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        return f"Redis at {REDIS_URL} is not reachable ({exc}); the Redis index is untested here"
    return None


def texts(n: int, seed: int = 4) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(f"w{rng.randrange(500)}" for _ in range(40)) for _ in range(n)]


def kept_batch(docs: list[str], prefix: str, source: int = 0, with_shingles: bool = True) -> KeptBatch:
    """The documents as phase 2 hands kept ones to an index (shingles located in source `source`)."""
    sk = Sketcher(CFG).sketch(docs)
    starts = np.cumsum(sk.shingle_counts) - sk.shingle_counts
    return KeptBatch(ids=[f"{prefix}{i}" for i in range(len(docs))], exact=sk.exact, n_words=sk.n_words,
                     signatures=sk.signatures, band_hashes=band_hashes(sk.signatures, *lsh_params(CFG)),
                     shingles=sk.shingles if with_shingles else np.zeros(0, np.uint32),
                     locations=np.stack([np.full(len(docs), source), starts, sk.shingle_counts], axis=1))


# --- the local index ----------------------------------------------------------------------------------------


def test_local_index_inserts_and_looks_up():
    docs = texts(12)
    first, second = kept_batch(docs[:8], "a"), kept_batch(docs[8:], "b", source=1)
    index = LocalIndex(64, 8, 8)
    index.add_source(first.shingles)
    index.add(first)
    index.n_previous = len(index)  # as if the first batch came from an earlier run
    index.add_source(second.shingles)
    assert index.add(second) == [8, 9, 10, 11]
    probe = kept_batch([docs[2], docs[10], "brand new words here and there"], "q")
    assert index.candidates(probe.signatures, probe.band_hashes) == [{2}, {10}, set()]
    assert index.find_exact(probe.exact) == [2, 10, None]
    assert index.doc_ids([2, 10]) == {2: "a2", 10: "b2"}
    assert index.is_previous(7) and not index.is_previous(8)
    expected_rows = np.stack([second.signatures[2], first.signatures[2]])
    assert np.array_equal(index.signature_rows([10, 2]), expected_rows)
    start, count = probe.locations[1, 1:]
    assert np.array_equal(index.shingles([10])[10], probe.shingles[start:start + count])
    index.close()
    assert index.candidates(probe.signatures, probe.band_hashes) == [set(), set(), set()]


def test_local_index_buckets_follow_minhashlsh_banding():
    """A document is a candidate when all rows of one band equal the query's, as in datasketch's MinHashLSH;
    buckets shared by several documents (in one batch or across batches) keep them all."""
    rng = np.random.default_rng(6)
    signatures = rng.integers(0, 2 ** 32, size=(6, 64), dtype=np.uint64).astype(np.uint32)
    signatures[1, 8:16] = signatures[0, 8:16]  # band 1 of doc 0
    signatures[2, 8:16] = signatures[0, 8:16]
    signatures[3, 8:15] = signatures[0, 8:15]  # 7 of 8 rows: no shared band
    signatures[4] = signatures[0]
    index = LocalIndex(64, 8, 8)

    def batch(rows: list[int]) -> KeptBatch:
        sigs = signatures[rows]
        return KeptBatch(ids=[f"d{r}" for r in rows], exact=[bytes([r]) * 16 for r in rows],
                         n_words=np.ones(len(rows), np.int64), signatures=sigs,
                         band_hashes=band_hashes(sigs, 8, 8), shingles=np.zeros(0, np.uint32),
                         locations=np.zeros((len(rows), 3), np.int64))

    index.add(batch([0, 1]))
    index.add(batch([2, 3]))  # keys 2, 3
    probe = batch([0, 3, 4, 5])
    assert index.candidates(probe.signatures, probe.band_hashes) == [{0, 1, 2}, {3}, {0, 1, 2}, set()]


def test_sketch_table_round_trip(tmp_path):
    docs = texts(5)
    sk = Sketcher(CFG).sketch(docs)
    schema = sketch_schema(64)
    with open(tmp_path / "s.parquet", "wb") as f:
        writer = sketch_writer(f, schema)
        writer.write_table(sketch_table([f"d{i}" for i in range(5)], sk, 100, schema))
        writer.close()
    back = pq.read_table(tmp_path / "s.parquet")
    assert np.array_equal(signature_matrix(back.column("sig").combine_chunks(), 64), sk.signatures)
    assert back.column("exact").to_pylist() == sk.exact
    assert back.column("sh_count").to_pylist() == sk.shingle_counts.tolist()
    starts = 100 + np.cumsum(sk.shingle_counts) - sk.shingle_counts
    assert back.column("sh_start").to_pylist() == starts.tolist()


# --- generations of the local index -------------------------------------------------------------------------


def test_local_generation_persists_publishes_and_loads(tmp_path):
    ctx = RunContext(store=str(tmp_path / "store"), pipeline="test", run_id="r1", incremental_scope="idx")
    store = ctx.open_store()
    out_uri = store.join("dedup", "run1")
    docs = texts(10)
    pending = PendingGeneration(store, out_uri, 64)
    for part in (kept_batch(docs[:6], "a"), kept_batch(docs[6:], "b")):
        pending.write(part)
    pending.close()
    assert committed_generations(CFG, ctx) == []  # written, not published: invisible
    publish_generation(CFG, ctx, out_uri, "run1", "input-1", docs=10)
    publish_generation(CFG, ctx, out_uri, "run1", "input-1", docs=10)  # a resumed run publishes again
    records = committed_generations(CFG, ctx)
    assert [(r["gen"], r["inputs"], r["docs"]) for r in records] == [("run1", "input-1", 10)]

    loaded = LocalIndex(64, *lsh_params(CFG))
    load_local_generation(loaded, store, f"{local_index_dir(store, index_id(CFG, ctx))}/gens/run1", CFG)
    assert len(loaded) == 10 and loaded.doc_ids([0, 9]) == {0: "a0", 9: "b3"}
    fresh = kept_batch(docs, "x")
    assert loaded.find_exact(fresh.exact) == list(range(10))
    assert all(d in hits for d, hits in enumerate(loaded.candidates(fresh.signatures, fresh.band_hashes)))
    assert np.array_equal(loaded.signature_rows(list(range(10))), fresh.signatures)
    for d in (0, 7):  # shingles come back from the generation's shingles.u32
        start, count = fresh.locations[d, 1:]
        assert np.array_equal(loaded.shingles([d])[d], fresh.shingles[start:start + count])

    incremental = CFG.model_copy(update={"incremental": True})
    assert visible_generations(CFG, ctx, "run2", "input-2") == []  # not incremental: earlier runs ignored
    assert [r["gen"] for r in visible_generations(incremental, ctx, "run2", "input-2")] == ["run1"]
    assert visible_generations(incremental, ctx, "run2", "input-1") == []  # the same input never finds itself
    clear_index(CFG, ctx)
    assert committed_generations(CFG, ctx) == []


def test_empty_shingle_file_is_an_empty_source(tmp_path):
    store = Store(tmp_path)
    (tmp_path / "empty.u32").write_bytes(b"")
    (tmp_path / "three.u32").write_bytes(np.array([3, 1, 2], "<u4").tobytes())
    assert len(shingle_source(store, f"{store.root}/empty.u32")) == 0
    assert shingle_source(store, f"{store.root}/three.u32").tolist() == [3, 1, 2]


# --- the Redis index ----------------------------------------------------------------------------------------


@pytest.fixture
def redis_ctx(tmp_path):
    ctx = RunContext(store=str(tmp_path / "store"), pipeline="test", run_id="r",
                     incremental_scope=f"index-{uuid.uuid4().hex[:8]}")
    yield ctx
    conn = redis.Redis.from_url(REDIS_URL)
    for key in conn.scan_iter(match=redis_base(CFG, ctx) + b"*", count=1000):
        conn.delete(key)


@pytest.mark.skipif(_redis_skip_reason() is not None, reason=str(_redis_skip_reason()))
def test_redis_index_visibility_repeats_and_removal(redis_ctx):
    cfg = CFG.model_copy(update={"backend": "redis", "redis_url": REDIS_URL})
    base = redis_base(cfg, redis_ctx)
    docs = texts(6)
    batch = kept_batch(docs, "d")
    first = RedisIndex(cfg, base, "g1", set())
    keys = first.add(batch)
    assert keys == [b"g1:0", b"g1:1", b"g1:2", b"g1:3", b"g1:4", b"g1:5"]
    assert first.find_exact(batch.exact[:2]) == keys[:2]
    assert all(keys[d] in hits for d, hits in enumerate(first.candidates(batch.signatures, None)))
    assert first.doc_ids(keys[:1]) == {b"g1:0": "d0"}
    assert np.array_equal(first.signature_rows(keys), batch.signatures)
    start, count = batch.locations[4, 1:]
    assert np.array_equal(first.shingles([keys[4]])[keys[4]], batch.shingles[start:start + count])

    # a repeated bucket insert (after a dropped connection) leaves one band list per key, not two
    first._insert_buckets(keys, band_keys(batch.signatures, 8, 8), attempt=1)
    assert [len(b) for b in first.lsh.keys.getmany(*keys)] == [8] * 6

    # another run sees generation g1 only when it is told to (a committed generation, incremental runs)
    blind, seeing = RedisIndex(cfg, base, "g2", set()), RedisIndex(cfg, base, "g2", {"g1"})
    assert blind.find_exact(batch.exact) == [None] * 6
    assert blind.candidates(batch.signatures, None) == [set()] * 6
    assert seeing.find_exact(batch.exact) == keys and seeing.is_previous(keys[0])
    assert seeing.rank(b"g1:3") < seeing.rank(b"g2:0")  # earlier generations rank first

    assert first.remove_generation("g1") == 6
    assert first.remove_generation("g1") == 0  # idempotent: a retried removal finds nothing left
    assert seeing.find_exact(batch.exact) == [None] * 6
    assert seeing.candidates(batch.signatures, None) == [set()] * 6
    assert first.lsh.keys.getmany(*keys) == [[]] * 6
