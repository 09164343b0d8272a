"""The Redis index survives connection blips: transient Redis errors are retried, then left to the stage retry.

The end-to-end test runs the stage against the real Redis (127.0.0.1:6379) through a TCP proxy that cuts
every open connection at set points of the traffic (part of a pipeline reaches the server, part does not)
and refuses the next connections, and checks that the result is the one of a run without blips.
"""
from __future__ import annotations

import logging
import random
import socket
import threading
import uuid

import pyarrow.parquet as pq
import pytest
import redis

from tasks.core.config import stable_hash
from tasks.core.docs import DocWriter, read_all
from tasks.core.retry import is_transient
from tasks.core.result import StageResult
from tasks.core.stage import RunContext, RunnerConfig, run_stage
from tasks.core.store import Store
from tasks.dedup import index as dedup_index
from tasks.dedup.index import redis_retry
from tasks.dedup.stage import STAGE, DedupConfig

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


def _redis_skip_reason() -> str | None:
    try:
        redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        return f"Redis at {REDIS_HOST}:{REDIS_PORT} is not reachable ({exc}); the blip test needs a server"
    return None


# --- the classification: what is retried, what is raised ----------------------------------------------------


@pytest.fixture
def no_sleep(monkeypatch):
    monkeypatch.setattr(dedup_index, "REDIS_RETRY_DELAYS", (0.0, 0.0, 0.0))


@pytest.mark.parametrize("error", [redis.exceptions.ConnectionError("reset"),
                                   redis.exceptions.TimeoutError("slow"),
                                   redis.exceptions.BusyLoadingError("loading")])
def test_transient_redis_errors_are_retried(no_sleep, error):
    attempts = []

    def flaky(attempt: int) -> str:
        attempts.append(attempt)
        if attempt < 2:
            raise error
        return "done"

    assert redis_retry("test op", flaky) == "done"
    assert attempts == [0, 1, 2]


def test_exhausted_retries_become_pythons_connection_error(no_sleep):
    def down(attempt: int) -> None:
        raise redis.exceptions.ConnectionError("Connection refused")

    with pytest.raises(ConnectionError, match="Redis test op failed 4 times") as info:
        redis_retry("test op", down)
    assert type(info.value) is ConnectionError  # Python's: the stage-level retry condition knows it
    assert is_transient(info.value)
    assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)


def test_other_redis_errors_are_not_retried(no_sleep):
    attempts = []

    def wrong_type(attempt: int) -> None:
        attempts.append(attempt)
        raise redis.exceptions.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")

    with pytest.raises(redis.exceptions.ResponseError):
        redis_retry("test op", wrong_type)
    assert attempts == [0]


# --- end to end through a proxy that drops connections ------------------------------------------------------


class BlipProxy:
    """Forwards TCP connections to Redis. At each byte count in `cuts` (counted over everything the clients
    sent) it forwards only the start of the current chunk, closes every open connection, and closes the
    next `refuse` connections as soon as they are accepted."""

    def __init__(self, cuts: list[int] = (), refuse: int = 2):
        self.cuts, self.refuse_each = sorted(cuts), refuse
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.lock = threading.Lock()
        self.open: list[socket.socket] = []
        self.sent = self.refusing = self.blips = self.refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def close(self) -> None:
        self.server.close()
        self._cut_all()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            with self.lock:
                if self.refusing:
                    self.refusing -= 1
                    self.refused += 1
                    client.close()
                    continue
                upstream = socket.create_connection((REDIS_HOST, REDIS_PORT))
                self.open += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        while True:
            try:
                data = src.recv(65536)
                if not data:
                    break
                if from_client:
                    data, cut = self._count(data)
                    dst.sendall(data)
                    if cut:
                        self._cut_all()
                        break
                else:
                    dst.sendall(data)
            except OSError:
                break
        for s in (src, dst):
            s.close()

    def _count(self, data: bytes) -> tuple[bytes, bool]:
        with self.lock:
            before, self.sent = self.sent, self.sent + len(data)
            if self.cuts and self.sent >= self.cuts[0]:
                keep = self.cuts.pop(0) - before
                while self.cuts and self.cuts[0] <= self.sent:
                    self.cuts.pop(0)
                self.blips += 1
                self.refusing = self.refuse_each
                return data[:keep], True
            return data, False

    def _cut_all(self) -> None:
        with self.lock:
            conns, self.open = self.open, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def _corpus(tmp_path) -> StageResult:
    """120 documents in two shards: originals, near copies (one word changed) and exact copies."""
    rng = random.Random(5)
    vocab = [f"w{i}" for i in range(400)]
    base = [" ".join(rng.choice(vocab) for _ in range(60)) for _ in range(80)]
    docs = [(f"o{i}", t) for i, t in enumerate(base)]
    for i in range(0, 80, 4):
        words = base[i].split()
        words[30] = "changed"
        docs.append((f"n{i}", " ".join(words)))
        docs.append((f"c{i}", base[i].upper()))
    rng.shuffle(docs)
    store = Store(tmp_path / "in")
    files = []
    for s, part in enumerate((docs[:60], docs[60:])):
        with DocWriter(store, f"{store.root}/docs", prefix=f"s{s}") as writer:
            for doc_id, text in part:
                writer.write(doc_id, text, "test")
        files += writer.files
    return StageResult(stage="clean", key="in", uri=f"{store.root}/docs", outputs={"docs": files},
                       digest=stable_hash(docs))


def _run(tmp_path, name: str, upstream: StageResult, url: str, scope: str) -> tuple[list, list]:
    cfg = DedupConfig(backend="redis", redis_url=url, batch_rows=8)
    ctx = RunContext(store=str(tmp_path / name), pipeline="test", run_id=name, runner=RunnerConfig(workers=1),
                     incremental_scope=scope)
    result = run_stage(STAGE, cfg, {"clean": upstream}, ctx)
    kept = sorted(d["id"] for d in read_all(Store(result.uri), result.files("docs")))
    removed = sorted((r["removed_id"], r["kept_id"], r["reason"])
                     for r in pq.read_table(f"{result.uri}/removed.parquet").to_pylist())
    return kept, removed


@pytest.fixture
def scopes():
    names = [f"blip-{uuid.uuid4().hex[:8]}-{k}" for k in range(3)]
    yield names
    conn = redis.Redis(host=REDIS_HOST, port=REDIS_PORT)
    for name in names:
        for key in conn.scan_iter(match=f"llmpipe:dedup:*:{name}*", count=1000):
            conn.delete(key)


@pytest.mark.skipif(_redis_skip_reason() is not None, reason=str(_redis_skip_reason()))
def test_dedup_result_survives_redis_blips(tmp_path, scopes, monkeypatch, caplog):
    monkeypatch.setattr(dedup_index, "REDIS_RETRY_DELAYS", (0.01, 0.02, 0.05, 0.1, 0.2))
    upstream = _corpus(tmp_path)
    counting = BlipProxy()  # no blips: the expected result, and how much the clients send in a whole run
    expected = _run(tmp_path, "counted", upstream, counting.url, scopes[0])
    counting.close()
    total = counting.sent
    assert len(expected[1]) == 40  # 20 near and 20 exact copies removed

    # cuts spread over the run (from the initial check to publication), each refusing two reconnections
    cuts = [int(total * f) for f in (0.1, 0.3, 0.45, 0.6, 0.75, 0.9)]
    proxy = BlipProxy(cuts=cuts, refuse=2)
    with caplog.at_level(logging.WARNING, logger="tasks.dedup.index"):
        try:
            assert _run(tmp_path, "blips", upstream, proxy.url, scopes[1]) == expected
        finally:
            proxy.close()
    assert proxy.blips == 6 and proxy.refused >= 6
    assert sum("retrying" in r.getMessage() for r in caplog.records) >= 6

    # the same blips without local retries fail the run, with the error the stage-level retry retries
    monkeypatch.setattr(dedup_index, "REDIS_RETRY_DELAYS", ())
    proxy = BlipProxy(cuts=cuts, refuse=2)
    try:
        with pytest.raises(ConnectionError, match="dedup: Redis"):
            _run(tmp_path, "no-retry", upstream, proxy.url, scopes[2])
    finally:
        proxy.close()
