"""The dedup stage's persistent index: in-memory and Redis LSH indexes, sketch files, generations.

The documents kept by a finished run are published as a "generation" of the index of their scope
(`ctx.incremental_scope` or the pipeline name, plus a hash of the sketch parameters, so incompatible
signatures never mix): files under `<store>/dedup/_index/<index_id>/gens/<gen>/` for the `local` backend,
keys under `llmpipe:dedup:<store hash>:<index_id>` for `redis`. A generation becomes visible only once the
stage completes. With `incremental: true` a run also removes documents that duplicate any committed
generation (reason `seen_before`), except generations made from the same input (a forced rerun of the same
corpus must not find itself). Without it earlier runs are ignored, so re-running a changed dedup config over
the same corpus does not remove everything as seen before.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import redis
from datasketch import MinHashLSH
from redis.backoff import NoBackoff
from redis.retry import Retry

from tasks.core.config import stable_hash
from tasks.core.docs import iter_batches
from tasks.core.errors import UserError
from tasks.core.stage import RunContext
from tasks.core.store import Store
from tasks.dedup.minhash import Sketches, band_hashes, band_keys, lsh_params, sketch_params

if TYPE_CHECKING:  # for annotations only: tasks.dedup.stage imports this module
    from tasks.dedup.stage import DedupConfig

WORK = "_work"  # the stage's scratch folder under its output, deleted once every unit is done
log = logging.getLogger(__name__)
T = TypeVar("T")


# --- sketch files: phase 1's output and a local generation's format ----------------------------------------


def sketch_schema(num_perm: int) -> pa.Schema:
    """Columns of a sketch table: one row per document, its shingles located in the matching `.u32` file."""
    return pa.schema([("id", pa.string()), ("exact", pa.binary(16)), ("n_words", pa.int64()),
                      ("sh_start", pa.int64()), ("sh_count", pa.int64()),
                      ("sig", pa.binary(4 * num_perm))])  # little-endian uint32 (num_perm,)


def sketch_writer(handle: Any, schema: pa.Schema) -> pq.ParquetWriter:
    # signatures and hashes are random: dictionary encoding, statistics and compression only cost time
    packed = ("id", "n_words", "sh_start", "sh_count")
    return pq.ParquetWriter(handle, schema, use_dictionary=["id"], write_statistics=["id"],
                            compression={n: "zstd" if n in packed else "none" for n in schema.names})


def sketch_table(ids: list[str], sk: Sketches, sh_base: int, schema: pa.Schema) -> pa.Table:
    """A batch of sketches as rows; `sh_base` is the number of shingles already in the `.u32` file."""
    starts = sh_base + np.cumsum(sk.shingle_counts) - sk.shingle_counts
    raw = np.ascontiguousarray(sk.signatures, dtype="<u4").tobytes()
    sig = pa.FixedSizeBinaryArray.from_buffers(schema.field("sig").type, len(ids),
                                               [None, pa.py_buffer(raw)])
    return pa.table([pa.array(ids, pa.string()), pa.array(sk.exact, pa.binary(16)), pa.array(sk.n_words),
                     pa.array(starts), pa.array(sk.shingle_counts), sig], schema=schema)


def signature_matrix(column: pa.Array, num_perm: int) -> np.ndarray:
    """(rows, num_perm) uint32 view of a signature column, without copying."""
    width = 4 * num_perm
    return np.frombuffer(column.buffers()[1], dtype="<u4", count=len(column) * num_perm,
                         offset=column.offset * width).reshape(-1, num_perm)


def shingle_source(store: Store, uri: str) -> np.ndarray:
    """A flat uint32 array of a `.u32` file: memory-mapped from a local store, read into memory otherwise."""
    if store.local:
        if store.fs.size(uri) == 0:
            return np.zeros(0, np.uint32)
        return np.asarray(np.memmap(uri, dtype="<u4", mode="r"))  # a plain view: slices skip memmap's hooks
    with store.open(uri, "rb") as f:
        return np.frombuffer(f.read(), dtype="<u4")


class AtomicFile:
    """A store file written under a temporary name and published on close."""

    def __init__(self, store: Store, uri: str):
        self.store, self.uri = store, uri
        head, _, name = uri.rpartition("/")
        self.tmp = f"{head}/.{name}.tmp-{uuid.uuid4().hex[:8]}"
        self.handle = store.open(self.tmp, "wb")

    def close(self) -> None:
        self.handle.close()
        self.store.commit(self.tmp, self.uri)

    def abort(self) -> None:
        self.handle.close()
        self.store.rm(self.tmp)


# --- indexes ------------------------------------------------------------------------------------------------


@dataclass
class KeptBatch:
    """Documents of one block that were kept, as the index and the pending generation store them."""

    ids: list[str]
    exact: list[bytes]
    n_words: np.ndarray  # (k,)
    signatures: np.ndarray  # (k, num_perm) uint32
    band_hashes: np.ndarray  # (k, bands) uint64, see minhash.band_hashes
    shingles: np.ndarray  # (sum of counts,) uint32, each document's shingle hashes in turn; empty when
    #                       verify is "signature"
    locations: np.ndarray  # (k, 3) int64: shingle source number, start, count (local backend)


class _Rows:
    """A growable (n, width) array in fixed-size chunks: appends never copy what is already there."""

    def __init__(self, width: int, dtype: Any, chunk: int = 1 << 15):
        self.width, self.dtype, self.chunk = width, dtype, chunk
        self.chunks: list[np.ndarray] = []
        self.size = 0

    def extend(self, rows: np.ndarray) -> None:
        done = 0
        while done < len(rows):
            if self.size == len(self.chunks) * self.chunk:
                self.chunks.append(np.empty((self.chunk, self.width), dtype=self.dtype))
            at = self.size % self.chunk
            n = min(len(rows) - done, self.chunk - at)
            self.chunks[-1][at:at + n] = rows[done:done + n]
            done += n
            self.size += n

    def __getitem__(self, i: int) -> np.ndarray:
        return self.chunks[i // self.chunk][i % self.chunk]


class LocalIndex:
    """An in-memory LSH index plus what verification needs. Keys are ints in the order documents were kept;
    keys below `n_previous` are documents of earlier runs, loaded from the store.

    The banding is MinHashLSH's (a document is a candidate when all `rows` values of one of its `bands`
    equal the query's), but each band's buckets are one dict from the band's 64-bit hash to a key, or to a
    list of keys when several documents share it. datasketch's dict storage keeps a set per bucket under a
    bytes key: building and freeing those took ~8 us per document, a fifth of the stage's time, against
    ~1.5 us here, and bench.dedup measures this index (signatures and ids included) at about half the
    memory of datasketch's buckets alone. The Redis backend stays a datasketch MinHashLSH (shared with
    other workers and runs).
    """

    def __init__(self, num_perm: int, bands: int, rows: int):
        self.buckets: list[dict[int, Any]] = [{} for _ in range(bands)]  # band hash -> key | [keys]
        self.signatures = _Rows(num_perm, np.uint32)
        self.locations = _Rows(3, np.int64)  # (source, start, count) of each key's shingles
        self.sources: list[np.ndarray] = []
        self.ids: list[str] = []
        self.exact: dict[bytes, int] = {}
        self.n_previous = 0

    def __len__(self) -> int:
        return len(self.ids)

    def find_exact(self, keys: list[bytes]) -> list[int | None]:
        return list(map(self.exact.get, keys))

    def candidates(self, signatures: np.ndarray, hashes: np.ndarray) -> list[set[int]]:
        """Keys sharing at least one band with each document (K,), from its band hashes (K, bands)."""
        found: list[set[int]] = [set() for _ in range(len(hashes))]
        for bucket, column in zip(self.buckets, hashes.T.tolist()):
            for doc, held in enumerate(map(bucket.get, column)):
                if held is None:
                    continue
                if type(held) is list:
                    found[doc].update(held)
                else:
                    found[doc].add(held)
        return found

    def signature_rows(self, keys: list[int]) -> np.ndarray:
        if not keys:
            return np.zeros((0, self.signatures.width), np.uint32)
        return np.stack([self.signatures[k] for k in keys])

    def shingles(self, keys: list[int]) -> dict[int, np.ndarray]:
        out = {}
        for k in keys:
            source, start, count = self.locations[k]
            out[k] = self.sources[source][start:start + count]
        return out

    def doc_ids(self, keys: list[int]) -> dict[int, str]:
        return {k: self.ids[k] for k in keys}

    def is_previous(self, key: int) -> bool:
        return key < self.n_previous

    def rank(self, key: int) -> Any:
        return key

    def add_source(self, shingles: np.ndarray) -> int:
        self.sources.append(shingles)
        return len(self.sources) - 1

    def add(self, batch: KeptBatch) -> list[int]:
        """Insert kept documents into every band's buckets; returns their keys."""
        keys = list(range(len(self.ids), len(self.ids) + len(batch.ids)))
        for bucket, column in zip(self.buckets, batch.band_hashes.T.tolist()):
            for band, key, held in zip(column, keys, map(bucket.setdefault, column, keys)):
                if held is key:  # a new bucket (the usual case)
                    continue
                if type(held) is list:
                    held.append(key)
                else:
                    bucket[band] = [held, key]
        for key, exact in zip(keys, batch.exact):
            self.exact.setdefault(exact, key)
        self.ids.extend(batch.ids)
        self.signatures.extend(batch.signatures)
        self.locations.extend(batch.locations)
        return keys

    def close(self) -> None:
        """Free the buckets (the largest part) as soon as the decide phase is done with them."""
        for bucket in self.buckets:
            bucket.clear()


def redis_connection_kwargs(url: str) -> dict[str, Any]:
    """redis.Redis keyword arguments from a redis:// URL (what datasketch's storage_config takes)."""
    parsed = urlparse(url)
    if parsed.scheme not in ("redis", "rediss"):
        raise UserError(f"dedup.redis_url '{url}' is not a redis:// URL; use e.g. redis://127.0.0.1:6379/0.")
    kwargs: dict[str, Any] = {"host": parsed.hostname or "127.0.0.1", "port": parsed.port or 6379,
                              "db": int((parsed.path or "/0").strip("/") or 0)}
    if parsed.password:
        kwargs["password"] = unquote(parsed.password)
    if parsed.username:
        kwargs["username"] = unquote(parsed.username)
    if parsed.scheme == "rediss":
        kwargs["ssl"] = True
    return kwargs


# --- Redis: transient errors retried here, then handed to the stage's retry ---------------------------------

# Redis errors a retry can fix: the connection dropped or timed out, or the server is loading its dataset
# (BusyLoadingError is a ConnectionError in redis-py; named for the reader). None of them is an OSError, so
# the stage-level retry, which retries Python's ConnectionError/TimeoutError/OSError, would not see them.
REDIS_TRANSIENT = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                   redis.exceptions.BusyLoadingError)
REDIS_RETRY_DELAYS = (0.05, 0.2, 0.5, 1.0, 2.0)  # seconds before attempts 2..6: under 4 s in all


def redis_retry(what: str, op: Callable[[int], T]) -> T:
    """`op(attempt)`, retried after each transient Redis error with a short backoff. When every attempt
    fails, Python's ConnectionError is raised (chained to the last Redis error), which the stage's Prefect
    retry treats as transient. `op` must be safe to repeat: every Redis write here is idempotent, or undone
    by `op` itself when `attempt` > 0."""
    delays = REDIS_RETRY_DELAYS
    for attempt in range(len(delays) + 1):
        try:
            return op(attempt)
        except REDIS_TRANSIENT as exc:
            if attempt == len(delays):
                raise ConnectionError(f"dedup: Redis {what} failed {attempt + 1} times in {sum(delays):.1f} s, "
                                      f"last with {type(exc).__name__}: {exc}. If this lasts, check that the "
                                      "server at dedup.redis_url is up and reachable.") from exc
            log.warning("dedup: Redis %s failed (%s: %s); retrying in %.2f s", what, type(exc).__name__, exc,
                        delays[attempt])
            time.sleep(delays[attempt])
    raise AssertionError("unreachable")


def redis_client_kwargs(url: str) -> dict[str, Any]:
    """Connection settings of the index's clients: redis-py's own retries are off (it would resend a
    pipeline blindly, which appends twice to datasketch's band lists); `redis_retry` retries instead,
    knowing which operations are safe to repeat. Timeouts turn a silent server into a retried error."""
    return {**redis_connection_kwargs(url), "retry": Retry(NoBackoff(), 0), "socket_connect_timeout": 5,
            "socket_timeout": 60}


class RedisIndex:
    """A datasketch MinHashLSH on Redis (storage_config), shared by every worker and by later runs, plus
    Redis hashes holding each key's signature, shingles, document id, and exact key -> key.

    Keys are `<generation>:<n>`. A key is visible when its generation is this run's or one of `visible`
    (committed earlier generations, for incremental runs); anything else (a run in progress elsewhere, a
    killed one) is ignored. Lookups for a block are pipelined: one round trip per band, not per document.
    Every operation is retried on transient errors (`redis_retry`).
    """

    def __init__(self, cfg: DedupConfig, base: bytes, gen: str, visible: set[str]):
        self.params = lsh_params(cfg)
        self.conn_kwargs = redis_client_kwargs(cfg.redis_url)
        self.redis = redis.Redis(**self.conn_kwargs)
        self.base, self.gen = base, gen.encode()
        self.visible = {g.encode() for g in visible} | {self.gen}
        self.num_perm = cfg.num_perm
        self.lsh = self._new_lsh()
        self.count = 0

    def _new_lsh(self) -> MinHashLSH:
        """The LSH over this index's keys; a new one has empty insert buffers and fresh connections."""
        return MinHashLSH(num_perm=self.num_perm, params=self.params, prepickle=False, storage_config={
            "type": "redis", "basename": self.base, "redis": self.conn_kwargs})

    def name(self, what: str) -> bytes:
        return self.base + b":" + what.encode()

    def _visible(self, key: bytes | None) -> bool:
        return key is not None and key.split(b":", 1)[0] in self.visible

    def _hmget(self, what: str, keys: list) -> list:
        if not keys:
            return []
        return redis_retry(f"read of {what}", lambda _: self.redis.hmget(self.name(what), keys))

    def find_exact(self, keys: list[bytes]) -> list[bytes | None]:
        return [k if self._visible(k) else None for k in self._hmget("exact", keys)]

    def candidates(self, signatures: np.ndarray, hashes: np.ndarray) -> list[set[bytes]]:
        """Visible keys sharing a band with each document (K,), from its signature (K, num_perm)."""
        columns = list(zip(*band_keys(signatures, *self.params)))
        hits = redis_retry("bucket lookup", lambda _: [table.getmany(*column) for table, column
                                                       in zip(self.lsh.hashtables, columns)])
        found: list[set[bytes]] = [set() for _ in signatures]
        for table_hits in hits:
            for doc, keys in enumerate(table_hits):
                found[doc].update(k for k in keys if self._visible(k))
        return found

    def signature_rows(self, keys: list[bytes]) -> np.ndarray:
        if not keys:
            return np.zeros((0, self.num_perm), np.uint32)
        return np.stack([np.frombuffer(v, dtype="<u4") for v in self._hmget("sig", keys)])

    def shingles(self, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        return {k: np.frombuffer(v, dtype="<u4") for k, v in zip(keys, self._hmget("shingles", keys))}

    def doc_ids(self, keys: list[bytes]) -> dict[bytes, str]:
        return {k: v.decode() for k, v in zip(keys, self._hmget("id", keys))}

    def is_previous(self, key: bytes) -> bool:
        return not key.startswith(self.gen + b":")

    def rank(self, key: bytes) -> Any:
        gen, _, n = key.partition(b":")
        return (gen == self.gen, gen, int(n))

    def add_source(self, shingles: np.ndarray) -> int:
        return -1

    def mark_pending(self, input_tag: str) -> None:
        """Record this run's generation as in progress (a cleanup of a killed run finds it by this)."""
        record = json.dumps({"gen": self.gen.decode(), "state": "pending", "inputs": input_tag})
        redis_retry("generation record", lambda _: self.redis.hset(self.name("gens"), self.gen, record))

    def add(self, batch: KeptBatch) -> list[bytes]:
        """Insert kept documents: their records in one pipeline, then their buckets through datasketch's
        buffered storage; each step is retried as a whole."""
        keys = [self.gen + b":" + str(self.count + i).encode() for i in range(len(batch.ids))]
        self.count += len(keys)
        if keys:
            redis_retry("write of kept documents", lambda _: self._write_records(keys, batch))
            bands = band_keys(batch.signatures, *self.params)
            redis_retry("bucket insert", lambda attempt: self._insert_buckets(keys, bands, attempt))
        return keys

    def _write_records(self, keys: list[bytes], batch: KeptBatch) -> None:
        """Signatures, ids, shingles and exact keys: set members and hash fields, idempotent."""
        gen = self.gen.decode()
        pipe = self.redis.pipeline(transaction=False)
        pipe.sadd(self.name(f"gen:{gen}"), *keys)  # first, so that a cleanup finds everything
        pipe.sadd(self.name(f"genexact:{gen}"), *batch.exact)
        pipe.hset(self.name("sig"), mapping={k: s.astype("<u4").tobytes()
                                             for k, s in zip(keys, batch.signatures)})
        pipe.hset(self.name("id"), mapping=dict(zip(keys, batch.ids)))
        if len(batch.shingles):
            ends = np.cumsum(batch.locations[:, 2])
            per_doc = np.split(batch.shingles.astype("<u4"), ends[:-1])
            pipe.hset(self.name("shingles"), mapping={k: s.tobytes() for k, s in zip(keys, per_doc)})
        # a kept document's exact key was not visible before: whatever is there belongs to an unfinished run
        pipe.hset(self.name("exact"), mapping=dict(zip(batch.exact, keys)))
        pipe.execute()

    def _insert_buckets(self, keys: list[bytes], bands: list[list[bytes]], attempt: int) -> None:
        """What MinHashLSH's insertion session does for these keys. Bucket sets are idempotent, but each
        key's band list is appended to, so a repeat first drops the lists an earlier attempt may have
        written, with a new LSH object whose buffers hold nothing of that attempt."""
        if attempt:
            self.lsh = self._new_lsh()
            self.lsh.keys.remove(*keys)
        for key, doc_bands in zip(keys, bands):
            self.lsh.keys.insert(key, *doc_bands, buffer=True)
            for band, table in zip(doc_bands, self.lsh.hashtables):
                table.insert(band, key, buffer=True)
        for storage in [self.lsh.keys, *self.lsh.hashtables]:
            storage.empty_buffer()

    def close(self) -> None:
        self.redis.close()

    def remove_generation(self, gen: str) -> int:
        """Delete every key a generation inserted (a killed attempt, or a run that must not publish)."""
        return redis_retry(f"removal of generation {gen}",
                           lambda attempt: self._remove_generation(gen, attempt))

    def _remove_generation(self, gen: str, attempt: int, chunk: int = 10000) -> int:
        """Idempotent: bucket entries go before the band lists that locate them, and the generation's key
        set, which finds everything, goes last; a repeat redoes what is left."""
        if attempt:
            self.lsh = self._new_lsh()
        keys = sorted(self.redis.smembers(self.name(f"gen:{gen}")))
        _remove_keys(self.redis, self.lsh, self.base, keys, chunk)
        exact_keys = list(self.redis.smembers(self.name(f"genexact:{gen}")))
        owners = self.redis.hmget(self.name("exact"), exact_keys) if exact_keys else []
        mine = [e for e, o in zip(exact_keys, owners) if o is not None and o.startswith(gen.encode() + b":")]
        if mine:
            self.redis.hdel(self.name("exact"), *mine)
        self.redis.delete(self.name(f"gen:{gen}"), self.name(f"genexact:{gen}"))
        self.redis.hdel(self.name("gens"), gen)
        return len(keys)


def _remove_keys(conn: redis.Redis, lsh: MinHashLSH, base: bytes, keys: list[bytes], chunk: int = 10000) -> None:
    """Delete index keys from the LSH buckets, then their band lists (which locate the bucket entries), then
    their records, the id last (it is how `forget_redis` finds them): a repeat redoes what is left."""
    for start in range(0, len(keys), chunk):
        part = keys[start:start + chunk]
        for key, doc_bands in zip(part, lsh.keys.getmany(*part)):
            for band, table in zip(doc_bands, lsh.hashtables):
                table.remove_val(band, key, buffer=True)
        for table in lsh.hashtables:
            table.empty_buffer()
        lsh.keys.remove(*part)
        for what in ("sig", "shingles", "id"):
            conn.hdel(base + b":" + what.encode(), *part)


# --- index scope, generations, publication ------------------------------------------------------------------


def index_id(cfg: DedupConfig, ctx: RunContext) -> str:
    """`<scope>-<hash of the sketch parameters>`: one index per pipeline scope and signature layout."""
    scope = re.sub(r"[^A-Za-z0-9_.-]+", "_", ctx.incremental_scope or ctx.pipeline) or "default"
    return f"{scope}-{stable_hash(sketch_params(cfg), 12)}"


def local_index_dir(store: Store, ident: str) -> str:
    return store.join("dedup", "_index", ident)


def redis_base(cfg: DedupConfig, ctx: RunContext) -> bytes:
    """Redis key prefix; it includes the store, so two projects sharing one Redis never see each other."""
    return redis_store_prefix(ctx.open_store()) + index_id(cfg, ctx).encode()


def redis_store_prefix(store: Store) -> bytes:
    """What the Redis keys of every index of one store begin with."""
    return f"llmpipe:dedup:{stable_hash(store.root, 8)}:".encode()


def check_redis(cfg: DedupConfig) -> None:
    """Fail fast when the stage starts and Redis is not there at all: that is a setting to fix (a UserError,
    not retried). Later errors are blips, retried by `redis_retry`."""
    conn = redis.Redis(**redis_client_kwargs(cfg.redis_url))  # no redis-py retries: "refused" at once
    try:
        conn.ping()
    except redis.exceptions.RedisError as exc:
        raise UserError(f"dedup.backend is 'redis' but Redis at {cfg.redis_url} is not reachable ({exc}). "
                        "Start Redis, fix dedup.redis_url, or set dedup.backend: local.") from exc
    finally:
        conn.close()


def redis_client(cfg: DedupConfig) -> redis.Redis:
    """A client for `cfg.redis_url` (it connects on first use); wrap its calls in `redis_retry`."""
    return redis.Redis(**redis_client_kwargs(cfg.redis_url))


def committed_generations(cfg: DedupConfig, ctx: RunContext) -> list[dict[str, Any]]:
    """Records of the index's committed generations, oldest first."""
    if cfg.backend == "redis":
        conn = redis_client(cfg)
        stored = redis_retry("read of generations", lambda _: conn.hgetall(redis_base(cfg, ctx) + b":gens"))
        records = [json.loads(v) for v in stored.values()]
    else:
        store = ctx.open_store()
        gens_dir = f"{local_index_dir(store, index_id(cfg, ctx))}/gens"
        records = [store.read_json(f"{d}/_COMMITTED.json") for d in store.ls(gens_dir)
                   if store.exists(f"{d}/_COMMITTED.json")]
    records = [r for r in records if r.get("state") == "committed"]
    return sorted(records, key=lambda r: (r["committed_at"], r["gen"]))


def clear_index(cfg: DedupConfig, ctx: RunContext) -> None:
    """Forget everything the scope's index remembers (every generation)."""
    if cfg.backend == "redis":
        conn = redis_client(cfg)

        def delete_all(_: int) -> None:
            for key in conn.scan_iter(match=redis_base(cfg, ctx) + b"*", count=1000):
                conn.delete(key)
        redis_retry("index removal", delete_all)
    else:
        store = ctx.open_store()
        store.rm(local_index_dir(store, index_id(cfg, ctx)))


def visible_generations(cfg: DedupConfig, ctx: RunContext, gen: str, input_tag: str) -> list[dict[str, Any]]:
    """Earlier generations an incremental run dedups against: committed, and not made from this input."""
    if not cfg.incremental:
        return []
    return [r for r in committed_generations(cfg, ctx) if r["gen"] != gen and r.get("inputs") != input_tag
            and (cfg.against is None or r["gen"] in cfg.against)]


def load_local_generation(index: LocalIndex, store: Store, gen_dir: str, cfg: DedupConfig) -> None:
    """Insert one committed generation's documents into the in-memory index."""
    bands, rows = lsh_params(cfg)
    source = index.add_source(shingle_source(store, f"{gen_dir}/shingles.u32"))
    for batch in iter_batches(store, [f"{gen_dir}/kept.parquet"], cfg.batch_rows):
        sigs = signature_matrix(batch.column("sig"), cfg.num_perm)
        locations = np.stack([np.full(batch.num_rows, source), batch.column("sh_start").to_numpy(),
                              batch.column("sh_count").to_numpy()], axis=1)
        index.add(KeptBatch(ids=batch.column("id").to_pylist(), exact=batch.column("exact").to_pylist(),
                            n_words=batch.column("n_words").to_numpy(), signatures=sigs,
                            band_hashes=band_hashes(sigs, bands, rows), shingles=np.zeros(0, np.uint32),
                            locations=locations))


class PendingGeneration:
    """This run's kept documents for the local index, published into it when the stage completes."""

    def __init__(self, store: Store, out_uri: str, num_perm: int):
        self.dir = f"{out_uri}/{WORK}/generation"
        self.schema = sketch_schema(num_perm)
        self.table = AtomicFile(store, f"{self.dir}/kept.parquet")
        self.shingle_file = AtomicFile(store, f"{self.dir}/shingles.u32")
        self.writer = sketch_writer(self.table.handle, self.schema)
        self.shingle_total = 0

    def write(self, batch: KeptBatch) -> None:
        if not batch.ids:
            return
        counts = batch.locations[:, 2]
        sk = Sketches(n_words=batch.n_words, exact=batch.exact, signatures=batch.signatures,
                      shingle_counts=counts, shingles=np.zeros(0, np.uint32))
        self.writer.write_table(sketch_table(batch.ids, sk, self.shingle_total, self.schema))
        if len(batch.shingles):
            self.shingle_file.handle.write(batch.shingles.astype("<u4").tobytes())
        self.shingle_total += int(counts.sum())

    def close(self) -> None:
        self.writer.close()
        self.table.close()
        self.shingle_file.close()

    def abort(self) -> None:
        """Drop what was written (a rerun starts the generation over)."""
        self.writer.close()
        self.table.abort()
        self.shingle_file.abort()


def publish_generation(cfg: DedupConfig, ctx: RunContext, out_uri: str, gen: str, input_tag: str,
                       docs: int) -> bool:
    """Make this run's kept documents visible to later runs (idempotent: a resumed run may publish again)."""
    record = {"gen": gen, "state": "committed", "inputs": input_tag, "docs": docs,
              "committed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")}
    if cfg.backend == "redis":
        conn = redis_client(cfg)
        name = redis_base(cfg, ctx) + b":gens"

        def commit(_: int) -> None:
            current = conn.hget(name, gen)
            if current is None or json.loads(current).get("state") != "committed":
                conn.hset(name, gen, json.dumps(record))
        redis_retry("publication of the generation", commit)
        return True
    store = ctx.open_store()
    target = f"{local_index_dir(store, index_id(cfg, ctx))}/gens/{gen}"
    if store.exists(f"{target}/_COMMITTED.json"):
        return True
    store.makedirs(target)
    for name in ("kept.parquet", "shingles.u32"):
        if not store.exists(f"{target}/{name}"):
            store.commit(f"{out_uri}/{WORK}/generation/{name}", f"{target}/{name}")
    store.write_json(f"{target}/_COMMITTED.json", record)
    return True


# --- forgetting documents (tasks/forget) ---------------------------------------------------------------------


def forget_local(store: Store, doc_ids: set[str]) -> dict[str, int]:
    """Remove these documents from every local generation of every index of the store, so that later runs
    neither match them nor keep their signatures. Returns {generation directory: documents removed}."""
    removed = {}
    for ident_dir in store.ls(store.join("dedup", "_index")):
        for gen_dir in store.ls(f"{ident_dir}/gens"):
            n = _forget_in_generation(store, gen_dir, doc_ids) if doc_ids else 0
            if n:
                removed[gen_dir] = n
    return removed


def _forget_in_generation(store: Store, gen_dir: str, doc_ids: set[str]) -> int:
    """Zero the documents' shingle hashes in `shingles.u32` (offsets stay valid), then publish `kept.parquet`
    without their rows. Idempotent, and safe to stop anywhere: until the table is replaced, its rows point
    at zeros, which match nothing; a rerun finds the rows again and finishes."""
    table_uri = f"{gen_dir}/kept.parquet"
    if not store.exists(table_uri):
        return 0
    with store.open(table_uri, "rb") as f:
        table = pq.read_table(f, columns=["id", "sh_start", "sh_count"])
    drop = pc.is_in(table.column("id"), value_set=pa.array(sorted(doc_ids), pa.string())).to_numpy(
        zero_copy_only=False)
    if not drop.any():
        return 0
    starts, counts = table.column("sh_start").to_numpy()[drop], table.column("sh_count").to_numpy()[drop]
    _zero_ranges(store, f"{gen_dir}/shingles.u32", starts, counts)
    with store.open(table_uri, "rb") as f:
        full = pq.read_table(f)
    out = AtomicFile(store, table_uri)
    try:
        writer = sketch_writer(out.handle, full.schema)
        writer.write_table(full.filter(pa.array(~drop)))
        writer.close()
    except BaseException:
        out.abort()
        raise
    out.close()
    record_uri = f"{gen_dir}/_COMMITTED.json"
    if store.exists(record_uri):
        store.write_json(record_uri, {**store.read_json(record_uri), "docs": int((~drop).sum())})
    return int(drop.sum())


def _zero_ranges(store: Store, uri: str, starts: np.ndarray, counts: np.ndarray) -> None:
    if not store.exists(uri) or not counts.sum():
        return
    if store.local:
        data = np.memmap(uri, dtype="<u4", mode="r+")
        for start, n in zip(starts.tolist(), counts.tolist()):
            data[start:start + n] = 0
        data.flush()
        del data
        return
    with store.open(uri, "rb") as f:
        data = np.frombuffer(f.read(), dtype="<u4").copy()
    for start, n in zip(starts.tolist(), counts.tolist()):
        data[start:start + n] = 0
    out = AtomicFile(store, uri)
    out.handle.write(data.tobytes())
    out.close()


def forget_redis(redis_url: str, store: Store, doc_ids: set[str]) -> dict[str, int]:
    """Remove these documents from every Redis index of the store at `redis_url`, whatever generation
    (committed or pending) holds them. Returns {index key prefix: documents removed}."""
    conn = redis_client_kwargs(redis_url)
    client = redis.Redis(**conn)
    prefix = redis_store_prefix(store)
    bases = redis_retry("listing of indexes", lambda _: sorted(
        key[:-len(b":id")] for key in client.scan_iter(match=prefix + b"*:id", count=1000)
        if client.type(key) == b"hash"))
    removed = {}
    for base in bases:
        n = redis_retry("removal of forgotten documents", lambda _: _forget_in_redis(client, conn, base, doc_ids))
        if n:
            removed[base.decode()] = n
    client.close()
    return removed


def _forget_in_redis(client: redis.Redis, conn: dict[str, Any], base: bytes, doc_ids: set[str]) -> int:
    """Idempotent: what is found by its id is removed from the exact keys and generation sets first, then
    from the buckets and records with the id last (`_remove_keys`), so a repeat finds whatever is left."""
    keys = sorted(k for k, v in client.hscan_iter(base + b":id", count=1000) if v.decode() in doc_ids)
    if not keys:
        return 0
    mine = set(keys)
    exact = [e for e, k in client.hscan_iter(base + b":exact", count=1000) if k in mine]
    if exact:
        client.hdel(base + b":exact", *exact)
    by_gen: dict[bytes, list[bytes]] = {}
    for key in keys:
        by_gen.setdefault(key.split(b":", 1)[0], []).append(key)
    for gen, gen_keys in sorted(by_gen.items()):
        members = base + b":gen:" + gen
        if exact:
            client.srem(base + b":genexact:" + gen, *exact)
        client.srem(members, *gen_keys)
        record = client.hget(base + b":gens", gen)
        if record is not None and json.loads(record).get("state") == "committed":
            client.hset(base + b":gens", gen, json.dumps({**json.loads(record), "docs": client.scard(members)}))
    bands = _bands(conn, base, keys[0]) or 2  # none left: the bucket entries are gone already
    lsh = MinHashLSH(num_perm=bands, params=(bands, 1), prepickle=False,
                     storage_config={"type": "redis", "basename": base, "redis": conn})
    _remove_keys(client, lsh, base, keys)
    return len(keys)


def _bands(conn: dict[str, Any], base: bytes, key: bytes) -> int:
    """How many bands an index has: the length of a key's band list (no config needed to remove keys)."""
    from datasketch.storage import ordered_storage

    return len(ordered_storage({"type": "redis", "redis": conn}, name=base + b"_keys").get(key))
