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
import re
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import redis
from datasketch import MinHashLSH
from datasketch.storage import DictListStorage, DictSetStorage
from redis.backoff import NoBackoff
from redis.retry import Retry

from tasks.core.config import stable_hash
from tasks.core.docs import iter_batches
from tasks.core.errors import UserError
from tasks.core.stage import RunContext
from tasks.core.store import Store
from tasks.dedup.minhash import Sketches, band_keys, lsh_params, sketch_params

if TYPE_CHECKING:  # for annotations only: tasks.dedup.stage imports this module
    from tasks.dedup.stage import DedupConfig

WORK = "_work"  # the stage's scratch folder under its output, deleted once every unit is done


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
    bands: list[list[bytes]]
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


def _dict_storages(lsh: MinHashLSH) -> tuple[dict, list[dict]]:
    """The dicts inside an in-memory MinHashLSH: key -> its band keys, and per band: band key -> set of keys.

    LocalIndex reads and writes them directly: a storage method call per band and document costs more
    than the dict operation itself, and a block touches 16 of them per document.
    """
    if not isinstance(lsh.keys, DictListStorage) or not all(isinstance(t, DictSetStorage) for t in lsh.hashtables):
        raise TypeError("LocalIndex needs MinHashLSH's in-memory dict storage")
    return lsh.keys._dict, [table._dict for table in lsh.hashtables]


class LocalIndex:
    """A datasketch MinHashLSH in memory (dict storage) plus what verification needs. Keys are ints in the
    order documents were kept; keys below `n_previous` are documents of earlier runs, loaded from the store.

    Bucket lookups and inserts go straight to the LSH's storage dicts, with the same bucket keys
    MinHashLSH computes (see `band_keys`), a block at a time, so the index stays a plain datasketch index
    (`lsh.query` and `lsh.insert` work on it).
    """

    def __init__(self, num_perm: int, bands: int, rows: int):
        self.lsh = MinHashLSH(num_perm=num_perm, params=(bands, rows))
        self.key_bands, self.buckets = _dict_storages(self.lsh)
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

    def candidates(self, bands: list[list[bytes]]) -> list[set[int]]:
        found: list[set[int]] = [set() for _ in bands]
        for bucket, column in zip(self.buckets, zip(*bands)):
            for doc, hits in enumerate(map(bucket.get, column)):
                if hits:
                    found[doc] |= hits
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
        """Insert kept documents (what MinHashLSH.insert does, per block); returns their keys."""
        keys = list(range(len(self.ids), len(self.ids) + len(batch.ids)))
        buckets = self.buckets
        for key, bands in zip(keys, batch.bands):
            self.key_bands[key] = list(bands)
            for band, bucket in zip(bands, buckets):
                bucket[band].add(key)
        for key, exact in zip(keys, batch.exact):
            self.exact.setdefault(exact, key)
        self.ids.extend(batch.ids)
        self.signatures.extend(batch.signatures)
        self.locations.extend(batch.locations)
        return keys

    def close(self) -> None:
        """Free the buckets now. MinHashLSH holds a reference cycle (it stores a bound method of itself),
        so without this the whole index waits for the cyclic GC, which then walks every bucket."""
        self.key_bands.clear()
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


class RedisIndex:
    """A datasketch MinHashLSH on Redis (storage_config), shared by every worker and by later runs, plus
    Redis hashes holding each key's signature, shingles, document id, and exact key -> key.

    Keys are `<generation>:<n>`. A key is visible when its generation is this run's or one of `visible`
    (committed earlier generations, for incremental runs); anything else (a run in progress elsewhere, a
    killed one) is ignored. Lookups for a block are pipelined: one round trip per band, not per document.
    """

    def __init__(self, cfg: DedupConfig, base: bytes, gen: str, visible: set[str]):
        bands, rows = lsh_params(cfg)
        self.conn_kwargs = redis_connection_kwargs(cfg.redis_url)
        self.redis = redis.Redis(**self.conn_kwargs)
        self.base, self.gen = base, gen.encode()
        self.visible = {g.encode() for g in visible} | {self.gen}
        self.num_perm = cfg.num_perm
        self.lsh = MinHashLSH(num_perm=cfg.num_perm, params=(bands, rows), prepickle=False, storage_config={
            "type": "redis", "basename": base, "redis": self.conn_kwargs})
        self.count = 0

    def name(self, what: str) -> bytes:
        return self.base + b":" + what.encode()

    def _visible(self, key: bytes | None) -> bool:
        return key is not None and key.split(b":", 1)[0] in self.visible

    def find_exact(self, keys: list[bytes]) -> list[bytes | None]:
        found = self.redis.hmget(self.name("exact"), keys) if keys else []
        return [k if self._visible(k) else None for k in found]

    def candidates(self, bands: list[list[bytes]]) -> list[set[bytes]]:
        found: list[set[bytes]] = [set() for _ in bands]
        for j, table in enumerate(self.lsh.hashtables):
            for doc, hits in enumerate(table.getmany(*[b[j] for b in bands])):
                found[doc].update(k for k in hits if self._visible(k))
        return found

    def signature_rows(self, keys: list[bytes]) -> np.ndarray:
        if not keys:
            return np.zeros((0, self.num_perm), np.uint32)
        return np.stack([np.frombuffer(v, dtype="<u4") for v in self.redis.hmget(self.name("sig"), keys)])

    def shingles(self, keys: list[bytes]) -> dict[bytes, np.ndarray]:
        values = self.redis.hmget(self.name("shingles"), keys) if keys else []
        return {k: np.frombuffer(v, dtype="<u4") for k, v in zip(keys, values)}

    def doc_ids(self, keys: list[bytes]) -> dict[bytes, str]:
        values = self.redis.hmget(self.name("id"), keys) if keys else []
        return {k: v.decode() for k, v in zip(keys, values)}

    def is_previous(self, key: bytes) -> bool:
        return not key.startswith(self.gen + b":")

    def rank(self, key: bytes) -> Any:
        gen, _, n = key.partition(b":")
        return (gen == self.gen, gen, int(n))

    def add_source(self, shingles: np.ndarray) -> int:
        return -1

    def add(self, batch: KeptBatch) -> list[bytes]:
        """Insert kept documents: buckets through datasketch's buffered storage, the rest in one pipeline."""
        keys = [self.gen + b":" + str(self.count + i).encode() for i in range(len(batch.ids))]
        self.count += len(keys)
        if not keys:
            return keys
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
        for key, bands in zip(keys, batch.bands):
            self.lsh.keys.insert(key, *bands, buffer=True)
            for band, table in zip(bands, self.lsh.hashtables):
                table.insert(band, key, buffer=True)
        for storage in [self.lsh.keys, *self.lsh.hashtables]:
            storage.empty_buffer()
        return keys

    def close(self) -> None:
        self.redis.close()

    def remove_generation(self, gen: str) -> int:
        """Delete every key a generation inserted (a killed attempt, or a run that must not publish)."""
        keys = sorted(self.redis.smembers(self.name(f"gen:{gen}")))
        with self.lsh.deletion_session() as session:
            for key in keys:
                if key in self.lsh:
                    session.remove(key)
        exact_keys = list(self.redis.smembers(self.name(f"genexact:{gen}")))
        owners = self.redis.hmget(self.name("exact"), exact_keys) if exact_keys else []
        mine = [e for e, o in zip(exact_keys, owners) if o is not None and o.startswith(gen.encode() + b":")]
        if mine:
            self.redis.hdel(self.name("exact"), *mine)
        if keys:
            for what in ("sig", "id", "shingles"):
                self.redis.hdel(self.name(what), *keys)
        self.redis.delete(self.name(f"gen:{gen}"), self.name(f"genexact:{gen}"))
        self.redis.hdel(self.name("gens"), gen)
        return len(keys)


# --- index scope, generations, publication ------------------------------------------------------------------


def index_id(cfg: DedupConfig, ctx: RunContext) -> str:
    """`<scope>-<hash of the sketch parameters>`: one index per pipeline scope and signature layout."""
    scope = re.sub(r"[^A-Za-z0-9_.-]+", "_", ctx.incremental_scope or ctx.pipeline) or "default"
    return f"{scope}-{stable_hash(sketch_params(cfg), 12)}"


def local_index_dir(store: Store, ident: str) -> str:
    return store.join("dedup", "_index", ident)


def redis_base(cfg: DedupConfig, ctx: RunContext) -> bytes:
    """Redis key prefix; it includes the store, so two projects sharing one Redis never see each other."""
    return f"llmpipe:dedup:{stable_hash(ctx.open_store().root, 8)}:{index_id(cfg, ctx)}".encode()


def open_redis(cfg: DedupConfig) -> redis.Redis:
    """A connection to `cfg.redis_url`, checked at once: an unreachable server is a UserError."""
    conn = redis.Redis(**redis_connection_kwargs(cfg.redis_url), socket_connect_timeout=10,
                       retry=Retry(NoBackoff(), 1))  # redis-py's default backoff waits ~3 s to say "refused"
    try:
        conn.ping()
    except redis.exceptions.RedisError as exc:
        raise UserError(f"dedup.backend is 'redis' but Redis at {cfg.redis_url} is not reachable ({exc}). "
                        "Start Redis, fix dedup.redis_url, or set dedup.backend: local.") from exc
    return conn


def committed_generations(cfg: DedupConfig, ctx: RunContext) -> list[dict[str, Any]]:
    """Records of the index's committed generations, oldest first."""
    if cfg.backend == "redis":
        conn = open_redis(cfg)
        records = [json.loads(v) for v in conn.hgetall(redis_base(cfg, ctx) + b":gens").values()]
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
        conn = open_redis(cfg)
        for key in conn.scan_iter(match=redis_base(cfg, ctx) + b"*", count=1000):
            conn.delete(key)
    else:
        store = ctx.open_store()
        store.rm(local_index_dir(store, index_id(cfg, ctx)))


def visible_generations(cfg: DedupConfig, ctx: RunContext, gen: str, input_tag: str) -> list[dict[str, Any]]:
    """Earlier generations an incremental run dedups against: committed, and not made from this input."""
    if not cfg.incremental:
        return []
    return [r for r in committed_generations(cfg, ctx) if r["gen"] != gen and r.get("inputs") != input_tag]


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
                            bands=band_keys(sigs, bands, rows), shingles=np.zeros(0, np.uint32),
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


def publish_generation(cfg: DedupConfig, ctx: RunContext, out_uri: str, gen: str, input_tag: str,
                       docs: int) -> bool:
    """Make this run's kept documents visible to later runs (idempotent: a resumed run may publish again)."""
    record = {"gen": gen, "state": "committed", "inputs": input_tag, "docs": docs,
              "committed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")}
    if cfg.backend == "redis":
        conn = open_redis(cfg)
        name = redis_base(cfg, ctx) + b":gens"
        current = conn.hget(name, gen)
        if current is None or json.loads(current).get("state") != "committed":
            conn.hset(name, gen, json.dumps(record))
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
