"""Tests for the dedup stage: sketches, exact and near dedup, the persistent index (local and Redis), resume."""
from __future__ import annotations

import random
import uuid

import numpy as np
import pyarrow.parquet as pq
import pytest
from datasketch import MinHash
from pydantic import ValidationError

from tasks.core.config import stable_hash
from tasks.core.docs import SCHEMA, DocWriter, read_all
from tasks.core.errors import UserError
from tasks.core.result import StageResult
from tasks.core.stage import RunContext, RunnerConfig, register_executor, run_stage
from tasks.core.store import Store
from tasks.core.units import PoolExecutor
from tasks.dedup import minhash
from tasks.dedup import stage as dedup
from tasks.dedup.stage import (
    DedupConfig,
    LocalIndex,
    Sketcher,
    band_keys,
    lsh_params,
    normalize_words,
    run_dedup,
    shingle_set,
)

REDIS_URL = "redis://127.0.0.1:6379/0"


def _redis_skip_reason() -> str | None:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means the Redis tests cannot run
        return f"Redis at {REDIS_URL} is not reachable ({exc}); the Redis index backend is untested here"
    return None


BACKENDS = ["local", pytest.param("redis", marks=pytest.mark.skipif(_redis_skip_reason() is not None,
                                                                    reason=str(_redis_skip_reason())))]

# --- fixtures ----------------------------------------------------------------------------------------------------

VOCAB = [f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ra", "si", "tu", "ve", "zo")
         for b in ("bar", "cen", "dol", "fim", "gus", "hap", "jet", "kor", "lum", "mos", "nip", "orb")]


def make_text(rng: random.Random, n: int = 90) -> str:
    words = [rng.choice(VOCAB) for _ in range(n)]
    for i in range(12, n, 13):
        words[i] += "."
    return " ".join(words)


def replace_words(text: str, positions: list[int], rng: random.Random) -> str:
    words = text.split()
    for p in positions:
        words[p] = "zz" + rng.choice(VOCAB)
    return " ".join(words)


def jaccard(a: str, b: str, ngram: int = 5) -> float:
    x, y = shingle_set(a, ngram), shingle_set(b, ngram)
    return len(x & y) / len(x | y)


def write_upstream(root, shards: list[list[tuple[str, str]]], name: str = "in") -> StageResult:
    store = Store(root)
    files = []
    for s, docs in enumerate(shards):
        with DocWriter(store, f"{root}/{name}", prefix=f"s{s}") as writer:
            for doc_id, text in docs:
                writer.write(doc_id, text, "test", {"n": doc_id})
        files += writer.files
    digest = stable_hash([name, shards])
    return StageResult(stage="clean", key=name, uri=f"{root}/{name}", outputs={"docs": files}, digest=digest)


@pytest.fixture
def scope():
    """A unique index scope; its Redis keys (they really live in Redis) are deleted afterwards."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    if _redis_skip_reason() is None:
        import redis

        conn = redis.Redis.from_url(REDIS_URL)
        for key in conn.scan_iter(match=f"llmpipe:dedup:*:{name}*", count=1000):
            conn.delete(key)


def context(tmp_path, scope: str, workers: int = 1, run_id: str = "t1") -> RunContext:
    return RunContext(store=str(tmp_path / "store"), pipeline="test", run_id=run_id,
                      runner=RunnerConfig(workers=workers), incremental_scope=scope)


def kept_ids(result: StageResult) -> list[str]:
    return [d["id"] for d in read_all(Store(result.uri), result.files("docs"))]


def removed_pairs(result: StageResult) -> list[dict]:
    return pq.read_table(f"{result.uri}/removed.parquet").to_pylist()


@pytest.fixture
def corpus():
    """Two shards: originals, exact duplicates (one reformatted) and near duplicates, in the same block, in
    another block and in the other shard; a far variant that must stay, and an empty document."""
    rng = random.Random(7)
    base = [make_text(rng) for _ in range(12)]
    near = replace_words(base[2], [45], rng)  # one word replaced: Jaccard ~0.9
    far = replace_words(base[3], [10, 25, 40, 55, 70], rng)  # five words: Jaccard ~0.6
    near_other_shard = replace_words(base[8], [30], rng)
    reformatted = base[5].upper().replace(" ", "\n  ").replace(".", " ,")
    assert jaccard(base[2], near) >= 0.85 and jaccard(base[3], far) < 0.7
    shard0 = [("b0", base[0]), ("b1", base[1]), ("b2", base[2]), ("near2", near),  # block 1 (of 4 rows)
              ("b3", base[3]), ("b4", base[4]), ("b4copy", base[4]), ("b5", base[5]),  # block 2
              ("far3", far), ("b1copy", base[1])]  # block 3
    shard1 = [(f"b{i}", t) for i, t in enumerate(base[6:], start=6)] + [
        ("exact5", reformatted), ("near8", near_other_shard), ("empty", " ... -- !! ")]
    return [shard0, shard1]


EXPECTED_PAIRS = {"near2": ("b2", "near_duplicate"), "b4copy": ("b4", "exact_duplicate"),
                  "b1copy": ("b1", "exact_duplicate"), "exact5": ("b5", "exact_duplicate"),
                  "near8": ("b8", "near_duplicate")}
EXPECTED_DROPS = {"exact_duplicate": 3, "near_duplicate": 2, "empty": 1}


# --- sketches --------------------------------------------------------------------------------------------------


def test_vectorized_words_follow_the_readable_definition():
    rng = np.random.default_rng(3)
    alphabet = list("abcXYZ019 _-.,;:!?'\"\n\t") + ["é", "ß", "Ω", "東", "—", "“", "”", "…", "«", "\u00a0",
                                                      "\u3001", "ﬁ", "²", "İ", "\U0001F600"]
    texts = ["".join(rng.choice(alphabet, size=rng.integers(0, 80))) for _ in range(300)]
    texts += ["Hello, World!", "", "   ", "naïve café—“quoted”… done"]
    hashes, counts = minhash._batch_words(texts)
    assert counts.tolist() == [len(normalize_words(t)) for t in texts]
    # equal words get equal hashes, different words different ones, wherever they occur in the batch
    words = [w for t in texts for w in normalize_words(t)]
    by_word = {}
    for w, h in zip(words, hashes.tolist()):
        assert by_word.setdefault(w, h) == h
    assert len(set(by_word.values())) == len(by_word)


def test_large_documents_are_tokenized_in_windows(monkeypatch):
    rng = random.Random(1)
    text = " ".join(rng.choice(VOCAB) for _ in range(3000))
    whole, counts = minhash._batch_words([text, "tail words here"])
    monkeypatch.setattr(minhash, "_WINDOW", 1000)  # forces ~20 windows, cut at separators
    windowed, windowed_counts = minhash._batch_words([text, "tail words here"])
    assert np.array_equal(whole, windowed) and counts.tolist() == windowed_counts.tolist() == [3000, 3]


def test_signatures_equal_datasketch_minhash_and_shingle_counts_match():
    rng = random.Random(2)
    texts = [make_text(rng, n) for n in (1, 3, 4, 5, 6, 40, 200)] + ["", "same same same same same same"]
    cfg = DedupConfig(ngram=5, num_perm=64, seed=9)
    sk = Sketcher(cfg).sketch(texts)
    offsets = np.concatenate([[0], np.cumsum(sk.shingle_counts)])
    for i, text in enumerate(texts):
        assert sk.shingle_counts[i] == len(shingle_set(text, 5))
        reference = MinHash(num_perm=64, seed=9, hashfunc=lambda h: h)
        reference.update_batch(sk.shingles[offsets[i]:offsets[i + 1]].tolist())
        assert np.array_equal(reference.hashvalues, sk.signatures[i])


def test_exact_key_ignores_formatting_only():
    sk = Sketcher(DedupConfig()).sketch(["The cat sat, on the mat.", "the CAT  sat on\r\nthe mat!!", "the cat sat"])
    assert sk.exact[0] == sk.exact[1] != sk.exact[2]


def test_band_keys_are_datasketch_bucket_keys():
    """Our block-wise inserts and lookups and datasketch's own query/insert see the same index."""
    rng = random.Random(4)
    texts = [make_text(rng) for _ in range(30)]
    cfg = DedupConfig(num_perm=64, bands=8, rows=8)
    sk = Sketcher(cfg).sketch(texts)
    keys = band_keys(sk.signatures, 8, 8)
    index = LocalIndex(64, 8, 8)
    index.add(dedup.KeptBatch(ids=[f"d{i}" for i in range(20)], exact=sk.exact[:20], n_words=sk.n_words[:20],
                              signatures=sk.signatures[:20], bands=keys[:20], shingles=[],
                              locations=np.zeros((20, 3), np.int64)))
    probe = MinHash(num_perm=64, seed=cfg.seed, hashvalues=sk.signatures[3], scheme="affine32")
    assert 3 in index.lsh.query(probe)
    index.lsh.insert("theirs", MinHash(num_perm=64, seed=cfg.seed, hashvalues=sk.signatures[25],
                                       scheme="affine32"))
    assert "theirs" in index.candidates([keys[25]])[0]


def test_lsh_params_auto_and_validation():
    assert lsh_params(DedupConfig()) == (16, 8)
    bands, rows = lsh_params(DedupConfig(threshold=0.8, num_perm=128))
    assert 1 - (1 - 0.8 ** rows) ** bands >= 0.9 and 1 - (1 - 0.85 ** rows) ** bands >= 0.99
    assert lsh_params(DedupConfig(bands=20, rows=5)) == (20, 5)
    for bad in ({"bands": 4}, {"bands": 20, "rows": 7}, {"threshold": 0}, {"ngram": 0}, {"colour": "red"}):
        with pytest.raises(ValidationError):
            DedupConfig(**bad)


# --- the stage ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_and_near_dedup(tmp_path, corpus, scope, backend):
    cfg = DedupConfig(backend=backend, batch_rows=4)  # small blocks: duplicates inside and across blocks
    result = run_stage("dedup", run_dedup, cfg, [write_upstream(tmp_path / "up", corpus)], context(tmp_path, scope))
    stats = result.stats
    assert stats["docs_in"] == 19 and stats["balanced"]
    assert stats["docs_in"] == stats["docs_out"] + sum(stats["dropped"].values()) + stats["quarantined"]
    assert stats["dropped"] == EXPECTED_DROPS
    assert sorted(kept_ids(result)) == sorted([f"b{i}" for i in range(12)] + ["far3"])
    pairs = {p["removed_id"]: (p["kept_id"], p["reason"]) for p in removed_pairs(result)}
    assert pairs == EXPECTED_PAIRS
    report = Store(result.uri).read_json(f"{result.uri}/report.json")
    assert (report["exact_duplicates"], report["near_duplicates"], report["clusters"]) == (3, 2, 5)
    assert {e["removed_id"] for e in report["examples"]} == set(pairs)
    assert all(set(e) == {"removed_id", "kept_id", "reason", "jaccard"} for e in report["examples"])
    assert all(e["jaccard"] >= cfg.threshold for e in report["examples"])
    kept_docs = read_all(Store(result.uri), result.files("docs"))
    assert kept_docs[0]["meta"] == '{"n": "b0"}'  # rows are copied as they were
    assert not Store(result.uri).exists(f"{result.uri}/_work")  # scratch files are gone once complete


def brute_force(docs: list[tuple[str, str]], threshold: float, ngram: int) -> set[str]:
    """The definition: keep a document unless its exact key or a kept document within `threshold` came first."""
    kept, seen = [], set()
    for doc_id, text in docs:
        words = tuple(normalize_words(text))
        sh = shingle_set(text, ngram)
        if not words or words in seen:
            continue
        if any(len(sh & k) / len(sh | k) >= threshold for _, k in kept):
            continue
        seen.add(words)
        kept.append((doc_id, sh))
    return {d for d, _ in kept}


def test_blocks_and_workers_do_not_change_the_result(tmp_path, scope):
    """Same decisions as one-by-one processing, for any block size and worker count (process pool)."""
    rng = random.Random(11)
    base = [make_text(rng, 60) for _ in range(40)]
    docs = []
    for i, t in enumerate(base):
        docs.append((f"o{i}", t))
        if i % 3 == 0:  # J ~ 0.9 near copies, chains of them, and copies of copies
            docs.append((f"n{i}", replace_words(t, [30], rng)))
        if i % 5 == 0:
            docs.append((f"c{i}", t.lower()))
    rng.shuffle(docs)
    shards = [docs[k::3] for k in range(3)]
    ordered = [d for shard in shards for d in shard]
    expected = brute_force(ordered, 0.8, 5)
    results = []
    pool = PoolExecutor(2, preload=["tasks.dedup.stage"])  # import once in the forkserver, not in every worker
    for run, (rows, workers) in enumerate([(1024, 1), (5, 1), (7, 2)]):
        ctx = context(tmp_path / f"r{run}", scope, workers=workers, run_id=f"run{run}")
        up = write_upstream(tmp_path / f"r{run}" / "up", shards)
        register_executor(ctx.run_id, pool if workers > 1 else None)
        try:
            result = run_stage("dedup", run_dedup, DedupConfig(batch_rows=rows), [up], ctx)
        finally:
            register_executor(ctx.run_id, None)
        results.append((sorted(kept_ids(result)), sorted(map(tuple, map(dict.items, removed_pairs(result))))))
    pool.shutdown()
    assert set(results[0][0]) == expected
    assert results[0] == results[1] == results[2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_incremental_run_removes_what_was_kept_before(tmp_path, corpus, scope, backend):
    rng = random.Random(9)
    first = write_upstream(tmp_path / "up", corpus, name="first")
    cfg = DedupConfig(backend=backend)
    ctx = context(tmp_path, scope)
    run_stage("dedup", run_dedup, cfg, [first], ctx)
    old = dict(d for shard in corpus for d in shard)
    fresh = make_text(rng)
    new_docs = [("new-exact", old["b4"].title()), ("new-near", replace_words(old["b6"], [50], rng)),
                ("fresh", fresh), ("fresh-copy", fresh)]
    second = write_upstream(tmp_path / "up", [new_docs], name="second")

    inc = run_stage("dedup", run_dedup, cfg.model_copy(update={"incremental": True}), [second], ctx)
    assert inc.stats["dropped"] == {"seen_before": 2, "exact_duplicate": 1}
    assert kept_ids(inc) == ["fresh"]
    pairs = {p["removed_id"]: p["kept_id"] for p in removed_pairs(inc)}
    assert pairs == {"new-exact": "b4", "new-near": "b6", "fresh-copy": "fresh"}
    assert inc.stats["dedup"]["index_docs_before"] == 13
    assert inc.stats["dedup"]["seen_before_exact"] == 1

    # an incremental rerun of an input that is already in the index does not find itself there
    again = run_stage("dedup", run_dedup, cfg.model_copy(update={"incremental": True, "report_examples": 5}),
                      [first], ctx)
    assert again.stats["dropped"] == EXPECTED_DROPS
    # without `incremental` earlier runs are ignored: a changed config over old data removes nothing extra
    plain = run_stage("dedup", run_dedup, cfg.model_copy(update={"report_examples": 3}), [second], ctx)
    assert plain.stats["dropped"] == {"exact_duplicate": 1}
    assert len(dedup.committed_generations(cfg, ctx)) == 4


@pytest.mark.parametrize("backend", BACKENDS)
def test_resume_after_a_kill_mid_stage(tmp_path, corpus, scope, backend, monkeypatch):
    cfg = DedupConfig(backend=backend, batch_rows=3, incremental=True)
    ctx = context(tmp_path, scope)
    up = write_upstream(tmp_path / "up", corpus)
    real_record, calls = dedup._record_block, {"n": 0}

    def die_on_third_block(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real_record(*args, **kwargs)

    monkeypatch.setattr(dedup, "_record_block", die_on_third_block)
    with pytest.raises(KeyboardInterrupt):  # the decide phase dies after inserting two blocks
        run_stage("dedup", run_dedup, cfg, [up], ctx)
    monkeypatch.setattr(dedup, "_record_block", real_record)
    real_keep = dedup.keep_unit

    def die_on_second_shard(unit):
        if unit.unit_id == "u00001":
            raise KeyboardInterrupt("killed")
        return real_keep(unit)

    monkeypatch.setattr(dedup, "keep_unit", die_on_second_shard)
    with pytest.raises(KeyboardInterrupt):  # the rerun redoes the decisions, then dies writing shard 2
        run_stage("dedup", run_dedup, cfg, [up], ctx)
    assert not dedup.committed_generations(cfg, ctx)  # nothing published by unfinished runs
    monkeypatch.setattr(dedup, "keep_unit", real_keep)
    result = run_stage("dedup", run_dedup, cfg, [up], ctx)
    assert result.stats["units_resumed"] == 4  # two sketch units, decide, the first keep unit
    clean = run_stage("dedup", run_dedup, cfg.model_copy(update={"incremental": False}), [up],
                      context(tmp_path / "clean", scope + "-clean"))
    assert sorted(kept_ids(result)) == sorted(kept_ids(clean))
    assert result.stats["dropped"] == clean.stats["dropped"]
    assert len(dedup.committed_generations(cfg, ctx)) == 1


def test_empty_shard_and_empty_input(tmp_path, scope):
    ctx = context(tmp_path, scope)
    up = write_upstream(tmp_path / "up", [[("a", "x y")]])
    pq.write_table(SCHEMA.empty_table(), f"{up.uri}/empty.parquet")  # a shard with no rows
    up = up.model_copy(update={"outputs": {"docs": ["empty.parquet", *up.outputs["docs"]]}})
    result = run_stage("dedup", run_dedup, DedupConfig(), [up], ctx)
    assert kept_ids(result) == ["a"] and result.stats["docs_in"] == 1 and result.stats["units"] == 5
    nothing = run_stage("dedup", run_dedup, DedupConfig(), [write_upstream(tmp_path / "none", [])], ctx)
    assert nothing.outputs["docs"] == [] and nothing.stats["docs_in"] == 0


def test_signature_verification_and_no_index_update(tmp_path, corpus, scope):
    cfg = DedupConfig(verify="signature", update_index=False)
    ctx = context(tmp_path, scope)
    result = run_stage("dedup", run_dedup, cfg, [write_upstream(tmp_path / "up", corpus)], ctx)
    assert result.stats["dropped"] == EXPECTED_DROPS
    assert dedup.committed_generations(cfg, ctx) == []


def test_unreachable_redis_is_a_user_error(tmp_path, corpus, scope):
    cfg = DedupConfig(backend="redis", redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(UserError, match="not reachable"):
        run_stage("dedup", run_dedup, cfg, [write_upstream(tmp_path / "up", corpus)], context(tmp_path, scope))
    with pytest.raises(UserError, match="redis://"):
        dedup.redis_connection_kwargs("http://localhost")
