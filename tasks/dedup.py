"""The dedup stage: exact and MinHash-LSH near-duplicate removal, within a run and against earlier runs.

Three phases, each a set of resumable work units on the run's executor:

1. `sketch_unit`, one per input shard, in parallel: every document is normalized (NFKC, lowercase, words
   are runs of letters and digits; punctuation, whitespace and formatting are ignored), hashed for exact
   matching (xxh3-128 of its word sequence) and cut into word n-gram shingles, from which a datasketch
   MinHash signature (scheme `affine32`) is computed for a whole batch of documents at once in numpy.
   Results go to `_work/sketch/<unit>.parquet` (+ the sorted shingle hashes in `<unit>.u32`).
2. `decide_unit`, one unit, sequential in a fixed order (input shard order, then row order): the first
   document of a duplicate cluster is kept. A document is an exact duplicate when its exact hash was
   kept before; otherwise the MinHashLSH index (datasketch, in memory or on Redis) proposes candidates,
   which are checked first by the Jaccard estimated from the signatures and then by the exact Jaccard of
   the two shingle sets (`verify: exact`), so a removal always means Jaccard >= threshold. Candidates are
   looked up and inserted a block at a time (pipelined on Redis), and within a block the decisions are
   replayed in order, so the result is the same as one-by-one processing: it depends neither on the
   executor nor on the number of workers.
3. `keep_unit`, one per input shard, in parallel: writes the kept documents and keeps the account.

Outputs: `docs/` (kept rows, unchanged), `removed.parquet` (removed_id, kept_id, reason, jaccard: ids only,
never text), `report.json` (counts, clusters, parameters, index use, example pairs). Drop reasons:
`exact_duplicate`, `near_duplicate`, `seen_before` (incremental), `empty` (no words). The scratch files
under `_work/` are deleted once every unit is done. Memory: phases 1 and 3 stream in bounded batches;
phase 2 holds the LSH index, about 6-8 KB per kept document with the local backend (datasketch's dict
storage: a set per bucket, 16 buckets per document at the defaults), i.e. 6-8 GB per million documents;
with Redis it moves to the Redis server (~11 KB per document); the process keeps a byte per document
and an entry per duplicate cluster.

The persistent index: the documents kept by a finished run are published as a "generation" of the index
of their scope (`ctx.incremental_scope` or the pipeline name, plus a hash of the sketch parameters, so
incompatible signatures never mix): files under `<store>/dedup/_index/<index_id>/gens/<gen>/` for the
`local` backend, keys under `llmpipe:dedup:<store hash>:<index_id>` for `redis`. A generation becomes
visible only once the stage completes. With `incremental: true` the run also removes documents that
duplicate any committed generation (reason `seen_before`), except generations made from the same input
(a forced rerun of the same corpus must not find itself). Without it earlier runs are ignored, so
re-running a changed dedup config over the same corpus does not remove everything as seen before.
"""
from __future__ import annotations

import datetime as _dt
import gc
import json
import math
import re
import time
import unicodedata
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import unquote, urlparse

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import redis
import xxhash
from datasketch import MinHash, MinHashLSH
from pydantic import field_validator, model_validator
from redis.backoff import NoBackoff
from redis.retry import Retry

from tasks.core.config import StageConfig, stable_hash
from tasks.core.docs import iter_batches
from tasks.core.errors import UserError
from tasks.core.mapstage import UnitWriter
from tasks.core.orchestration import make_stage_task
from tasks.core.result import StageResult
from tasks.core.stage import RunContext, StageOutput
from tasks.core.store import Store
from tasks.core.units import UnitResult, WorkUnit, merge_results

SKETCH_VERSION = 1  # bump when normalization or shingle hashing changes: old index generations stop matching

# --- config ---------------------------------------------------------------------------------------------


class DedupConfig(StageConfig):
    """The `dedup:` section of pipelines.yaml."""

    ngram: int = 5  # words per shingle
    num_perm: int = 128  # MinHash permutations
    threshold: float = 0.8  # shingle-set Jaccard at or above which a document is a near duplicate
    bands: int = 0  # LSH bands; 0 with rows 0 = chosen from threshold and num_perm (see lsh_params)
    rows: int = 0  # LSH rows per band
    seed: int = 1  # MinHash permutation seed
    verify: Literal["exact", "signature"] = "exact"  # how LSH candidates are confirmed
    incremental: bool = False  # also remove documents that duplicate the kept documents of earlier runs
    update_index: bool = True  # publish this run's kept documents to the persistent index when it completes
    backend: Literal["local", "redis"] = "local"  # where the LSH index lives
    redis_url: str = "redis://127.0.0.1:6379/0"
    batch_rows: int = 1024  # documents per sketch batch and per LSH block
    report_examples: int = 20  # removed (id, kept id) pairs listed in report.json

    key_exclude = frozenset({"batch_rows"})  # block size never changes the decisions (tested)

    @field_validator("threshold")
    @classmethod
    def _threshold_in_range(cls, value: float) -> float:
        if not 0.0 < value <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {value}")
        return value

    @field_validator("ngram", "num_perm", "batch_rows")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError(f"must be at least 1, got {value}")
        return value

    @field_validator("ngram")
    @classmethod
    def _ngram_supported(cls, value: int) -> int:
        if value > 64:
            raise ValueError(f"ngram must be at most 64, got {value}")
        return value

    @model_validator(mode="after")
    def _bands_fit(self) -> DedupConfig:
        if (self.bands == 0) != (self.rows == 0):
            raise ValueError("set both bands and rows, or neither (0 = chosen from threshold and num_perm)")
        if self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows = {self.bands * self.rows} exceeds num_perm = {self.num_perm}")
        if self.bands == 1:
            raise ValueError("bands must be at least 2 (datasketch's MinHashLSH needs two)")
        return self


KEEP, EXACT, NEAR, SEEN, EMPTY = 0, 1, 2, 3, 4
REASONS = {EXACT: "exact_duplicate", NEAR: "near_duplicate", SEEN: "seen_before", EMPTY: "empty"}
CANDIDATE_RECALL_AT_THRESHOLD = 0.9  # auto bands/rows: P(pair at Jaccard = threshold becomes a candidate)


def lsh_params(cfg: DedupConfig) -> tuple[int, int]:
    """(bands, rows): configured, or the fewest bands whose S-curve puts a pair at the threshold in a band
    with probability >= 0.9 (>= 0.99 from 0.05 above it at the defaults).

    datasketch's own optimizer balances false positives against false negatives around the threshold,
    which loses about a third of the pairs just above it; here candidates are verified afterwards, so
    false positives cost only time and the curve is shifted towards recall.
    """
    if cfg.bands:
        return cfg.bands, cfg.rows
    for rows in range(cfg.num_perm // 2, 0, -1):
        bands = cfg.num_perm // rows
        if 1.0 - (1.0 - cfg.threshold ** rows) ** bands >= CANDIDATE_RECALL_AT_THRESHOLD:
            return bands, rows
    return cfg.num_perm, 1


def sketch_params(cfg: DedupConfig) -> dict[str, Any]:
    """What makes two signatures comparable and two LSH indexes compatible."""
    bands, rows = lsh_params(cfg)
    return {"version": SKETCH_VERSION, "ngram": cfg.ngram, "num_perm": cfg.num_perm, "seed": cfg.seed,
            "bands": bands, "rows": rows, "scheme": "affine32", "shingles": cfg.verify == "exact"}


# --- text -> words -> shingles -> signatures ---------------------------------------------------------------

# Word characters after NFKC + lowercase: ASCII letters and digits, and every other code point except the
# Latin-1 punctuation/symbols block, General Punctuation (dashes, curly quotes, ellipsis), CJK punctuation.
WORD_RE = re.compile("[0-9a-z\u00c0-\u1fff\u2080-\u2fff\u3040-\U0010ffff]+")


def normalize_words(text: str) -> list[str]:
    """The words dedup compares: the readable definition that the vectorized path below reproduces."""
    return WORD_RE.findall(unicodedata.normalize("NFKC", text).lower())


def shingle_set(text: str, ngram: int) -> set[tuple[str, ...]]:
    """Word n-grams of a text (a short text is one shingle): for tests and the benchmark's ground truth."""
    words = normalize_words(text)
    if 0 < len(words) < ngram:
        return {tuple(words)}
    return {tuple(words[i:i + ngram]) for i in range(len(words) - ngram + 1)}


_U64 = np.uint64
_WORD_BYTE = np.zeros(256, dtype=bool)
_WORD_BYTE[np.frombuffer(b"0123456789abcdefghijklmnopqrstuvwxyz", np.uint8)] = True
_WORD_BYTE[0x80:] = True  # non-ASCII bytes, minus the punctuation blocks masked in _word_mask
_ASCII_SEPARATOR = ~_WORD_BYTE
_ASCII_SEPARATOR[0x80:] = False
_WINDOW = 1 << 20  # bytes tokenized at once: bounds the power tables and temporaries (~40 MB)
_BYTE_MULT = _U64(0x9E3779B97F4A7C15)  # odd, so invertible mod 2^64
_SHINGLE_MULTS = [_U64((0xC2B2AE3D27D4EB4F + 2 * k * 0x165667B19E3779F9) % (1 << 64) | 1)  # odd, distinct
                  for k in range(64)]
_POWERS: dict[str, np.ndarray] = {}


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (an avalanching bijection), elementwise with wraparound."""
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> _U64(33))


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer: what datasketch's affine32 scheme applies to each input hash."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _power_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    """M^i and M^-i mod 2^64 for i < n (n <= one window + 1), computed once per process."""
    if len(_POWERS.get("pow", ())) < n:
        size = max(n, _WINDOW + 1)
        steps = np.full(size, _BYTE_MULT, dtype=_U64)
        steps[0] = 1
        inv = np.full(size, _U64(pow(int(_BYTE_MULT), -1, 1 << 64)), dtype=_U64)
        inv[0] = 1
        _POWERS["pow"], _POWERS["inv"] = np.cumprod(steps, dtype=_U64), np.cumprod(inv, dtype=_U64)
    return _POWERS["pow"], _POWERS["inv"]


def _word_mask(buf: np.ndarray) -> np.ndarray:
    """True for bytes inside words of a UTF-8 buffer (the byte-level form of WORD_RE)."""
    word = _WORD_BYTE[buf]
    lead = np.flatnonzero(buf[:-1] == 0xC2)  # U+0080..U+00BF
    word[lead] = False
    word[lead + 1] = False
    lead = np.flatnonzero((buf[:-2] == 0xE2) & ((buf[1:-1] & 0xFE) == 0x80))  # U+2000..U+207F
    lead3 = np.flatnonzero((buf[:-2] == 0xE3) & (buf[1:-1] == 0x80))  # U+3000..U+303F
    for starts in (lead, lead3):
        word[starts] = False
        word[starts + 1] = False
        word[starts + 2] = False
    return word


def _window_word_hashes(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes (n_words,) and byte offsets (n_words,) of the words of one buffer.

    A word's hash is a polynomial over its bytes, made position-independent with prefix sums and inverse
    powers so the whole buffer is hashed in a few vectorized passes, then avalanched with fmix64.
    """
    edges = np.diff(_word_mask(buf).view(np.int8), prepend=np.int8(0), append=np.int8(0))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    pw, inv = _power_tables(len(buf) + 1)
    prefix = np.zeros(len(buf) + 1, dtype=_U64)
    np.cumsum((buf.astype(_U64) + _U64(1)) * pw[:len(buf)], out=prefix[1:])
    return _fmix64((prefix[ends] - prefix[starts]) * inv[starts]), starts


def _word_hashes(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Word hashes and offsets of a buffer of any size, in windows cut just after an ASCII separator."""
    hashes, offsets, pos = [], [], 0
    while pos < len(buf):
        end = min(pos + _WINDOW, len(buf))
        if end < len(buf):
            tail = max(pos, end - (_WINDOW >> 2))
            seps = np.flatnonzero(_ASCII_SEPARATOR[buf[tail:end]])
            end = tail + int(seps[-1]) + 1 if len(seps) else end  # no separator: cut the giant "word"
        h, s = _window_word_hashes(buf[pos:end])
        hashes.append(h)
        offsets.append(s + pos)
        pos = end
    if not hashes:
        return np.zeros(0, _U64), np.zeros(0, np.int64)
    return np.concatenate(hashes), np.concatenate(offsets)


@dataclass
class Sketches:
    """Per-document results of sketching a batch of D texts."""

    n_words: np.ndarray  # (D,) int64
    exact: list[bytes]  # D 16-byte exact keys (zeros for empty documents)
    signatures: np.ndarray  # (D, num_perm) uint32, datasketch affine32 hash values
    shingle_counts: np.ndarray  # (D,) int64, distinct shingles per document
    shingles: np.ndarray  # (sum of counts,) uint32, each document's sorted distinct shingle hashes in turn


def _batch_words(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """All word hashes of a batch (n_words,) and each document's word count (D,)."""
    encoded = [unicodedata.normalize("NFKC", t).lower().encode("utf-8", "surrogatepass") for t in texts]
    lengths = np.fromiter((len(e) + 1 for e in encoded), dtype=np.int64, count=len(encoded))
    doc_starts = np.cumsum(lengths) - lengths  # documents joined by b"\n", a separator
    buf = np.frombuffer(b"\n".join(encoded), dtype=np.uint8)
    hashes, offsets = _word_hashes(buf)
    doc_of_word = np.searchsorted(doc_starts, offsets, side="right") - 1
    return hashes, np.bincount(doc_of_word, minlength=len(texts))


def _shingle_hashes(words: np.ndarray, n_words: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of every word n-gram (n_shingles,) and the document of each (n_shingles,).

    A document shorter than `ngram` words gives one shingle of all its words.
    """
    doc_of_word = np.repeat(np.arange(len(n_words)), n_words)
    doc_end = np.repeat(np.cumsum(n_words), n_words)  # (n_words,) one past each word's document
    positions = np.arange(len(words))
    padded = np.concatenate([words, np.zeros(ngram, _U64)])
    combined = padded[:len(words)] * _SHINGLE_MULTS[0]
    for k in range(1, ngram):  # words past the document's end contribute nothing
        combined += np.where(positions + k < doc_end, padded[k:k + len(words)], _U64(0)) * _SHINGLE_MULTS[k]
    last_start = doc_end - np.maximum(ngram, 1)
    is_start = (positions <= last_start) | (positions == doc_end - np.repeat(n_words, n_words))
    hashes = (_fmix64(combined[is_start]) >> _U64(32)).astype(np.uint32)
    return hashes, doc_of_word[is_start]


class Sketcher:
    """Turns batches of texts into exact keys, shingle sets and MinHash signatures (datasketch-compatible)."""

    def __init__(self, cfg: DedupConfig):
        self.ngram, self.num_perm = cfg.ngram, cfg.num_perm
        a, b = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, scheme="affine32").permutations
        self.a, self.b = a.astype(np.uint32), b.astype(np.uint32)

    def sketch(self, texts: list[str]) -> Sketches:
        words, n_words = _batch_words(texts)
        offsets = np.concatenate([[0], np.cumsum(n_words)])
        exact = [xxhash.xxh3_128_digest(words[offsets[i]:offsets[i + 1]].tobytes()) if n_words[i]
                 else bytes(16) for i in range(len(texts))]
        hashes, doc = _shingle_hashes(words, n_words, self.ngram)
        # distinct shingles, sorted within each document: one sort of (document, hash) keys
        keyed = np.sort((doc.astype(_U64) << _U64(32)) | hashes.astype(_U64))
        if len(keyed):  # np.unique's hash-based path is ~10x slower than sort + neighbour compare here
            keyed = keyed[np.concatenate([[True], keyed[1:] != keyed[:-1]])]
        shingles = (keyed & _U64(0xFFFFFFFF)).astype(np.uint32)
        counts = np.bincount((keyed >> _U64(32)).astype(np.int64), minlength=len(texts))
        return Sketches(n_words=n_words, exact=exact, signatures=self.signatures(shingles, counts),
                        shingle_counts=counts, shingles=shingles)

    def signatures(self, shingles: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """(D, num_perm) minimum of a_k * fmix32(h) + b_k mod 2^32 over each document's shingles h.

        Equal to datasketch's `MinHash(num_perm, seed).update_batch(hashes)` with an identity hashfunc.
        Permutations run in the outer loop: each pass is one contiguous multiply-add over every shingle
        of the batch and one segmented minimum, which stays in cache (~10x faster than (S, P) blocks).
        """
        out = np.full((self.num_perm, len(counts)), np.iinfo(np.uint32).max, dtype=np.uint32)  # (P, D)
        present = np.flatnonzero(counts)
        if len(present):
            hv = _fmix32(shingles)
            starts = (np.cumsum(counts) - counts)[present]
            tmp = np.empty_like(hv)
            for k in range(self.num_perm):
                np.multiply(hv, self.a[k], out=tmp)
                tmp += self.b[k]
                out[k, present] = np.minimum.reduceat(tmp, starts)
        return np.ascontiguousarray(out.T)


# --- LSH band keys and Jaccard ------------------------------------------------------------------------------


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> list[list[bytes]]:
    """Each document's LSH bucket keys: byte for byte what MinHashLSH computes (big-endian band values)."""
    width = rows * 4
    raw = np.ascontiguousarray(signatures[:, :bands * rows]).astype(">u4").tobytes()
    stride = bands * width
    return [[raw[d * stride + j * width: d * stride + (j + 1) * width] for j in range(bands)]
            for d in range(len(signatures))]


def estimated_jaccard(signature: np.ndarray, others: np.ndarray) -> np.ndarray:
    """datasketch's MinHash.jaccard of one signature (P,) with many (C, P): the share of equal values."""
    return (others == signature).mean(axis=1)


def exact_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard of two sorted distinct shingle-hash arrays."""
    inter = np.intersect1d(a, b, assume_unique=True).size
    union = a.size + b.size - inter
    return inter / union if union else 1.0


# --- work files ---------------------------------------------------------------------------------------------

WORK = "_work"


def _sketch_uri(out_uri: str, unit_id: str, suffix: str) -> str:
    return f"{out_uri}/{WORK}/sketch/{unit_id}.{suffix}"


def _decisions_uri(out_uri: str, unit_id: str) -> str:
    return f"{out_uri}/{WORK}/decisions/{unit_id}.npy"


def _sketch_schema(num_perm: int) -> pa.Schema:
    return pa.schema([("id", pa.string()), ("exact", pa.binary(16)), ("n_words", pa.int64()),
                      ("sh_start", pa.int64()), ("sh_count", pa.int64()),
                      ("sig", pa.binary(4 * num_perm))])  # little-endian uint32 (num_perm,)


def _sketch_writer(handle: Any, schema: pa.Schema) -> pq.ParquetWriter:
    # signatures and hashes are random: dictionary encoding, statistics and compression only cost time
    packed = ("id", "n_words", "sh_start", "sh_count")
    return pq.ParquetWriter(handle, schema, use_dictionary=["id"], write_statistics=["id"],
                            compression={n: "zstd" if n in packed else "none" for n in schema.names})


def _sketch_table(ids: list[str], sk: Sketches, sh_base: int, schema: pa.Schema) -> pa.Table:
    starts = sh_base + np.cumsum(sk.shingle_counts) - sk.shingle_counts
    raw = np.ascontiguousarray(sk.signatures, dtype="<u4").tobytes()
    sig = pa.FixedSizeBinaryArray.from_buffers(schema.field("sig").type, len(ids),
                                               [None, pa.py_buffer(raw)])
    return pa.table([pa.array(ids, pa.string()), pa.array(sk.exact, pa.binary(16)), pa.array(sk.n_words),
                     pa.array(starts), pa.array(sk.shingle_counts), sig], schema=schema)


def _signature_matrix(column: pa.Array, num_perm: int) -> np.ndarray:
    """(rows, num_perm) uint32 view of a signature column, without copying."""
    width = 4 * num_perm
    return np.frombuffer(column.buffers()[1], dtype="<u4", count=len(column) * num_perm,
                         offset=column.offset * width).reshape(-1, num_perm)


class _AtomicFile:
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


def _batch_rows(store: Store, uri: str, limit: int, target_bytes: int = 32 << 20) -> int:
    """Rows per read batch: `limit`, or fewer when documents are large (whole books): bounded memory."""
    with store.open(uri, "rb") as f:
        meta = pq.ParquetFile(f).metadata
    rows = max(meta.num_rows, 1)
    size = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    return int(max(1, min(limit, target_bytes * rows // max(size, 1))))


# --- phase 1: sketch ----------------------------------------------------------------------------------------


def sketch_unit(unit: WorkUnit) -> UnitResult:
    """Phase 1 for one input shard: exact keys, shingle sets and signatures of every document."""
    cfg = DedupConfig.model_validate(unit.config)
    store = Store(unit.store_root)
    sketcher, schema = Sketcher(cfg), _sketch_schema(cfg.num_perm)
    table_file = _AtomicFile(store, _sketch_uri(unit.out_uri, unit.unit_id, "parquet"))
    shingle_file = _AtomicFile(store, _sketch_uri(unit.out_uri, unit.unit_id, "u32"))
    writer = _sketch_writer(table_file.handle, schema)
    rows = shingles = 0
    try:
        batch_rows = _batch_rows(store, unit.inputs[0], cfg.batch_rows)
        for batch in iter_batches(store, unit.inputs, batch_rows, columns=["id", "text"]):
            ids, texts = batch.column("id").to_pylist(), batch.column("text").to_pylist()
            sk = sketcher.sketch([t or "" for t in texts])
            writer.write_table(_sketch_table(ids, sk, shingles, schema))
            if cfg.verify == "exact":
                shingle_file.handle.write(sk.shingles.astype("<u4").tobytes())
                shingles += len(sk.shingles)
            rows += len(ids)
        writer.close()
    except BaseException:
        writer.close()
        table_file.abort()
        shingle_file.abort()
        raise
    table_file.close()
    shingle_file.close()
    return UnitResult(unit_id=unit.unit_id, info={"rows": rows, "shingles": shingles})


# --- indexes ------------------------------------------------------------------------------------------------


@dataclass
class KeptBatch:
    """Documents of one block that were kept, as the index and the pending generation store them."""

    ids: list[str]
    exact: list[bytes]
    n_words: np.ndarray  # (k,)
    signatures: np.ndarray  # (k, num_perm) uint32
    bands: list[list[bytes]]
    shingles: list[np.ndarray]  # sorted distinct shingle hashes; empty when verify is "signature"
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


def _shingle_source(store: Store, uri: str) -> np.ndarray:
    """A flat uint32 array of a `.u32` file: memory-mapped from a local store, read into memory otherwise."""
    if store.local:
        if store.fs.size(uri) == 0:
            return np.zeros(0, np.uint32)
        return np.memmap(uri, dtype="<u4", mode="r")
    with store.open(uri, "rb") as f:
        return np.frombuffer(f.read(), dtype="<u4")


class LocalIndex:
    """A datasketch MinHashLSH in memory (dict storage) plus what verification needs. Keys are ints in the
    order documents were kept; keys below `n_previous` are documents of earlier runs, loaded from the store.

    Bucket lookups and inserts go through the LSH's storages with the same bucket keys MinHashLSH computes
    (see `band_keys`), a block at a time, so the index stays a plain datasketch index (`lsh.query` works).
    """

    def __init__(self, num_perm: int, bands: int, rows: int):
        self.lsh = MinHashLSH(num_perm=num_perm, params=(bands, rows))
        self.signatures = _Rows(num_perm, np.uint32)
        self.locations = _Rows(3, np.int64)  # (source, start, count) of each key's shingles
        self.sources: list[np.ndarray] = []
        self.ids: list[str] = []
        self.exact: dict[bytes, int] = {}
        self.n_previous = 0

    def __len__(self) -> int:
        return len(self.ids)

    def find_exact(self, keys: list[bytes]) -> list[int | None]:
        return [self.exact.get(k) for k in keys]

    def candidates(self, bands: list[list[bytes]]) -> list[set[int]]:
        found: list[set[int]] = [set() for _ in bands]
        for j, table in enumerate(self.lsh.hashtables):
            for doc, hits in enumerate(table.getmany(*[b[j] for b in bands])):
                if hits:
                    found[doc].update(hits)
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
        tables = self.lsh.hashtables
        for key, bands in zip(keys, batch.bands):
            self.lsh.keys.insert(key, *bands)
            for band, table in zip(bands, tables):
                table.insert(band, key)
        for key, exact in zip(keys, batch.exact):
            self.exact.setdefault(exact, key)
        self.ids.extend(batch.ids)
        self.signatures.extend(batch.signatures)
        self.locations.extend(batch.locations)
        return keys


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
        if batch.shingles:
            pipe.hset(self.name("shingles"), mapping={k: s.astype("<u4").tobytes()
                                                      for k, s in zip(keys, batch.shingles)})
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


def _open_redis(cfg: DedupConfig) -> redis.Redis:
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
        conn = _open_redis(cfg)
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
        conn = _open_redis(cfg)
        for key in conn.scan_iter(match=redis_base(cfg, ctx) + b"*", count=1000):
            conn.delete(key)
    else:
        store = ctx.open_store()
        store.rm(local_index_dir(store, index_id(cfg, ctx)))


def _visible_generations(cfg: DedupConfig, ctx: RunContext, gen: str, input_tag: str) -> list[dict[str, Any]]:
    """Earlier generations an incremental run dedups against: committed, and not made from this input."""
    if not cfg.incremental:
        return []
    return [r for r in committed_generations(cfg, ctx) if r["gen"] != gen and r.get("inputs") != input_tag]


def _load_local_generation(index: LocalIndex, store: Store, gen_dir: str, cfg: DedupConfig) -> None:
    """Insert one committed generation's documents into the in-memory index."""
    bands, rows = lsh_params(cfg)
    source = index.add_source(_shingle_source(store, f"{gen_dir}/shingles.u32"))
    for batch in iter_batches(store, [f"{gen_dir}/kept.parquet"], cfg.batch_rows):
        sigs = _signature_matrix(batch.column("sig"), cfg.num_perm)
        locations = np.stack([np.full(batch.num_rows, source), batch.column("sh_start").to_numpy(),
                              batch.column("sh_count").to_numpy()], axis=1)
        index.add(KeptBatch(ids=batch.column("id").to_pylist(), exact=batch.column("exact").to_pylist(),
                            n_words=batch.column("n_words").to_numpy(), signatures=sigs,
                            bands=band_keys(sigs, bands, rows), shingles=[], locations=locations))


# --- phase 2: decide ----------------------------------------------------------------------------------------

Match = tuple[Any, float]  # (key of a kept document, Jaccard)


@dataclass
class Block:
    """One block of sketched documents in decision order, with its unit's shingle source."""

    ids: list[str]
    exact: list[bytes]
    n_words: np.ndarray  # (K,)
    signatures: np.ndarray  # (K, num_perm)
    sh_start: np.ndarray  # (K,)
    sh_count: np.ndarray  # (K,)
    source: np.ndarray  # the unit's flat shingle array
    source_id: int  # its number among the index's sources (local backend)
    bands: list[list[bytes]]

    def shingles(self, i: int) -> np.ndarray:
        return self.source[self.sh_start[i]:self.sh_start[i] + self.sh_count[i]]

    def kept(self, docs: list[int], with_shingles: bool) -> KeptBatch:
        locations = np.stack([np.full(len(docs), self.source_id), self.sh_start[docs], self.sh_count[docs]],
                             axis=1)
        return KeptBatch(ids=[self.ids[d] for d in docs], exact=[self.exact[d] for d in docs],
                         n_words=self.n_words[docs], signatures=self.signatures[docs],
                         bands=[self.bands[d] for d in docs],
                         shingles=[self.shingles(d) for d in docs] if with_shingles else [],
                         locations=locations)


@dataclass
class Decision:
    code: int
    match: Any = None  # the kept document's key: an index key, or ("block", i) for this block's document i
    jaccard: float = 1.0
    by_exact_key: bool = False


class Verifier:
    """Confirms LSH candidates: signature estimate first (cheap), then exact shingle-set Jaccard."""

    def __init__(self, cfg: DedupConfig):
        self.threshold, self.exact = cfg.threshold, cfg.verify == "exact"
        # before the exact check, drop candidates whose estimate is 4 standard deviations below the
        # threshold: a pair at the threshold falls that low with probability < 1e-4
        sigma = math.sqrt(cfg.threshold * (1 - cfg.threshold) / cfg.num_perm)
        self.prefilter = cfg.threshold - 4 * sigma - 1.0 / cfg.num_perm if self.exact else cfg.threshold

    def survivors(self, signature: np.ndarray, keys: list[Any], rows: np.ndarray) -> list[Match]:
        if not keys:
            return []
        est = estimated_jaccard(signature, rows)
        return [(k, float(e)) for k, e in zip(keys, est) if e >= self.prefilter]

    def confirm(self, shingles: np.ndarray | None, survivors: list[Match],
                other_shingles: dict[Any, np.ndarray]) -> list[Match]:
        if not self.exact:
            return survivors
        scored = [(k, exact_jaccard(shingles, other_shingles[k])) for k, _ in survivors]
        return [(k, j) for k, j in scored if j >= self.threshold]


def _index_matches(block: Block, index: Any, verifier: Verifier) -> tuple[list[Any], list[list[Match]]]:
    """For every document of the block: its exact match in the index and its confirmed near matches there.

    The lookups for the whole block are batched (a few pipelined round trips on Redis).
    """
    exact_hits = index.find_exact(block.exact)
    candidates = [sorted(c, key=index.rank) for c in index.candidates(block.bands)]
    keys = sorted({k for c in candidates for k in c}, key=index.rank)
    position = {k: i for i, k in enumerate(keys)}
    rows = index.signature_rows(keys)
    survivors = [verifier.survivors(block.signatures[d], c, rows[[position[k] for k in c]]) if c else []
                 for d, c in enumerate(candidates)]
    need = sorted({k for s in survivors for k, _ in s}, key=index.rank)
    others = index.shingles(need) if verifier.exact else {}
    matches = [verifier.confirm(block.shingles(d) if verifier.exact else None, s, others) if s else []
               for d, s in enumerate(survivors)]
    return exact_hits, matches


def _shared_bands(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(K, bands) number of the group of block documents sharing each document's band value, -1 if none do.

    Found with one sort per band over 64-bit hashes of the band values (a rare hash collision only adds a
    candidate that verification then rejects), so documents sharing nothing cost nothing in the loop.
    """
    k = len(signatures)
    values = signatures[:, :bands * rows].astype(_U64).reshape(k, bands, rows)
    h = np.zeros((k, bands), dtype=_U64)
    for i in range(rows):
        h = h * _U64(0x100000001B3) + values[:, :, i]
    h = _fmix64(h)
    groups = np.full((k, bands), -1, dtype=np.int64)
    for j in range(bands):
        order = np.argsort(h[:, j], kind="stable")
        sorted_h = h[order, j]
        same_as_next = np.flatnonzero(sorted_h[1:] == sorted_h[:-1])
        if len(same_as_next):
            run_start = np.concatenate([[True], sorted_h[1:] != sorted_h[:-1]])
            run_id = np.cumsum(run_start) - 1 + j * k  # unique across bands
            members = np.union1d(same_as_next, same_as_next + 1)
            groups[order[members], j] = run_id[members]
    return groups


def _best(matches: list[Match], rank: Any) -> Match | None:
    """The most similar match; ties go to the document kept first."""
    if not matches:
        return None
    return min(matches, key=lambda m: (-m[1], rank(m[0])))


def _block_rank(index: Any):
    """Index keys come before this block's documents (they were kept earlier), then each in its own order."""
    def rank(key: Any) -> Any:
        return (1, key[1]) if isinstance(key, tuple) else (0, index.rank(key))
    return rank


def _block_matches(block: Block, d: int, earlier: list[int], verifier: Verifier) -> list[Match]:
    """Confirmed near matches of document d among the documents kept before it in its block."""
    keys = [("block", e) for e in earlier]
    survivors = verifier.survivors(block.signatures[d], keys, block.signatures[earlier])
    shingles = {k: block.shingles(k[1]) for k, _ in survivors} if verifier.exact else {}
    return verifier.confirm(block.shingles(d) if verifier.exact else None, survivors, shingles)


def _decide_block(block: Block, index: Any, verifier: Verifier,
                  groups: np.ndarray) -> tuple[list[Decision], list[int]]:
    """Decisions for a block, in order, the same as checking and inserting documents one by one."""
    exact_hits, index_matches = _index_matches(block, index, verifier)
    shared = (groups >= 0).any(axis=1)
    kept_in_group: dict[int, list[int]] = {}
    block_exact: dict[bytes, int] = {}
    rank = _block_rank(index)
    decisions, kept = [], []
    for d in range(len(block.ids)):
        hit = exact_hits[d]
        if block.n_words[d] == 0:
            decisions.append(Decision(EMPTY, None, 0.0))
        elif hit is not None:
            decisions.append(Decision(SEEN if index.is_previous(hit) else EXACT, hit, by_exact_key=True))
        elif block.exact[d] in block_exact:
            decisions.append(Decision(EXACT, ("block", block_exact[block.exact[d]]), by_exact_key=True))
        else:
            matches = index_matches[d]
            my_groups = [g for g in groups[d].tolist() if g >= 0] if shared[d] else []
            earlier = sorted({e for g in my_groups for e in kept_in_group.get(g, ())})
            if earlier:
                matches = matches + _block_matches(block, d, earlier, verifier)
            best = _best(matches, rank)
            if best is None:
                decisions.append(Decision(KEEP))
                kept.append(d)
                block_exact[block.exact[d]] = d
                for g in my_groups:
                    kept_in_group.setdefault(g, []).append(d)
            else:
                previous = not isinstance(best[0], tuple) and index.is_previous(best[0])
                decisions.append(Decision(SEEN if previous else NEAR, best[0], best[1]))
    return decisions, kept


@dataclass
class DecideState:
    """Counts and outputs of phase 2 across blocks."""

    counts: dict[str, int] = field(default_factory=lambda: {r: 0 for r in ["kept", *REASONS.values()]})
    clusters: set = field(default_factory=set)
    examples: list[dict[str, Any]] = field(default_factory=list)
    seen_exact: int = 0


REMOVED_SCHEMA = pa.schema([("removed_id", pa.string()), ("kept_id", pa.string()), ("reason", pa.string()),
                            ("jaccard", pa.float32())])


def _record_block(block: Block, decisions: list[Decision], block_keys: dict[int, Any], index: Any,
                  state: DecideState, removed: pq.ParquetWriter, max_examples: int) -> None:
    """Count a block's decisions, note the clusters and write the removed pairs (ids only)."""
    outside = {dec.match for dec in decisions if dec.match is not None and not isinstance(dec.match, tuple)}
    outside = sorted(outside, key=index.rank)
    names = index.doc_ids(outside)
    rows: dict[str, list] = {n: [] for n in REMOVED_SCHEMA.names}
    for d, dec in enumerate(decisions):
        state.counts["kept" if dec.code == KEEP else REASONS[dec.code]] += 1
        if dec.code in (KEEP, EMPTY):
            continue
        inside = isinstance(dec.match, tuple)
        kept_id = block.ids[dec.match[1]] if inside else names[dec.match]
        state.clusters.add(block_keys[dec.match[1]] if inside else dec.match)
        state.seen_exact += dec.code == SEEN and dec.by_exact_key
        pair = (block.ids[d], kept_id, REASONS[dec.code], dec.jaccard)
        for name, value in zip(REMOVED_SCHEMA.names, pair):
            rows[name].append(value)
        if len(state.examples) < max_examples:
            state.examples.append(dict(zip(REMOVED_SCHEMA.names, pair[:3]), jaccard=round(dec.jaccard, 4)))
    if rows["removed_id"]:
        removed.write_table(pa.table(rows, schema=REMOVED_SCHEMA))


class PendingGeneration:
    """This run's kept documents for the local index, published into it when the stage completes."""

    def __init__(self, store: Store, out_uri: str, num_perm: int):
        self.dir = f"{out_uri}/{WORK}/generation"
        self.schema = _sketch_schema(num_perm)
        self.table = _AtomicFile(store, f"{self.dir}/kept.parquet")
        self.shingle_file = _AtomicFile(store, f"{self.dir}/shingles.u32")
        self.writer = _sketch_writer(self.table.handle, self.schema)
        self.shingle_total = 0

    def write(self, batch: KeptBatch) -> None:
        if not batch.ids:
            return
        counts = batch.locations[:, 2]
        sk = Sketches(n_words=batch.n_words, exact=batch.exact, signatures=batch.signatures,
                      shingle_counts=counts, shingles=np.zeros(0, np.uint32))
        self.writer.write_table(_sketch_table(batch.ids, sk, self.shingle_total, self.schema))
        if batch.shingles:
            self.shingle_file.handle.write(np.concatenate(batch.shingles).astype("<u4").tobytes())
        self.shingle_total += int(counts.sum())

    def close(self) -> None:
        self.writer.close()
        self.table.close()
        self.shingle_file.close()


def _iter_blocks(store: Store, unit_ids: list[str], out_uri: str, cfg: DedupConfig,
                 index: Any) -> Iterator[tuple[str, Block]]:
    """Sketched documents of every unit, in unit order then row order, one block at a time."""
    bands, rows = lsh_params(cfg)
    for unit_id in unit_ids:
        source = (_shingle_source(store, _sketch_uri(out_uri, unit_id, "u32")) if cfg.verify == "exact"
                  else np.zeros(0, np.uint32))
        source_id = index.add_source(source)
        for batch in iter_batches(store, [_sketch_uri(out_uri, unit_id, "parquet")], cfg.batch_rows):
            sigs = _signature_matrix(batch.column("sig"), cfg.num_perm)
            yield unit_id, Block(ids=batch.column("id").to_pylist(), exact=batch.column("exact").to_pylist(),
                                 n_words=batch.column("n_words").to_numpy(), signatures=sigs,
                                 sh_start=batch.column("sh_start").to_numpy(),
                                 sh_count=batch.column("sh_count").to_numpy(), source=source,
                                 source_id=source_id, bands=band_keys(sigs, bands, rows))


def _open_index(cfg: DedupConfig, unit: WorkUnit, store: Store) -> Any:
    """What this run decides against: earlier committed generations (incremental) plus its own documents."""
    extra = unit.extra
    if cfg.backend == "redis":
        _open_redis(cfg)
        index = RedisIndex(cfg, extra["redis_base"].encode(), extra["gen"], set(extra["visible"]))
        index.remove_generation(extra["gen"])  # left by a killed earlier attempt of this very run
        index.redis.hset(index.name("gens"), extra["gen"], json.dumps(
            {"gen": extra["gen"], "state": "pending", "inputs": extra["input_tag"]}))
        return index
    index = LocalIndex(cfg.num_perm, *lsh_params(cfg))
    for gen in extra["visible"]:
        _load_local_generation(index, store, f"{extra['index_dir']}/gens/{gen}", cfg)
    index.n_previous = len(index)
    return index


def decide_unit(unit: WorkUnit) -> UnitResult:
    """Phase 2: walk every sketched document in order: keep it, or drop it as exact/near/seen_before/empty."""
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of small containers (LSH buckets) would make the cyclic GC rescan them constantly
    try:
        return _decide(unit)
    finally:
        if gc_was_enabled:
            gc.enable()


def _decide(unit: WorkUnit) -> UnitResult:
    cfg = DedupConfig.model_validate(unit.config)
    store, (bands, rows) = Store(unit.store_root), lsh_params(cfg)
    start = time.perf_counter()
    index = _open_index(cfg, unit, store)
    verifier, state = Verifier(cfg), DecideState()
    outputs = _DecideOutputs(store, unit.out_uri, cfg)
    codes: dict[str, list[np.ndarray]] = {u: [] for u in unit.extra["units"]}
    try:
        for unit_id, block in _iter_blocks(store, unit.extra["units"], unit.out_uri, cfg, index):
            groups = _shared_bands(block.signatures, bands, rows)
            decisions, kept = _decide_block(block, index, verifier, groups)
            batch = block.kept(kept, verifier.exact)
            keys = index.add(batch)
            if outputs.pending is not None:
                outputs.pending.write(batch)
            _record_block(block, decisions, dict(zip(kept, keys)), index, state, outputs.removed,
                          cfg.report_examples)
            codes[unit_id].append(np.array([dec.code for dec in decisions], dtype=np.int8))
    except BaseException:
        outputs.abort()
        raise
    outputs.close()
    for unit_id, parts in codes.items():
        with store.open(_decisions_uri(unit.out_uri, unit_id), "wb") as f:
            np.save(f, np.concatenate(parts) if parts else np.zeros(0, np.int8))
    info = dict(state.counts, clusters=len(state.clusters), seen_before_exact=state.seen_exact,
                examples=state.examples, bands=bands, rows=rows,
                seconds=round(time.perf_counter() - start, 3))
    return UnitResult(unit_id=unit.unit_id, info=info)


class _DecideOutputs:
    """Files phase 2 writes as it goes: removed pairs, and (local index) this run's pending generation."""

    def __init__(self, store: Store, out_uri: str, cfg: DedupConfig):
        self.removed_file = _AtomicFile(store, f"{out_uri}/removed.parquet")
        self.removed = pq.ParquetWriter(self.removed_file.handle, REMOVED_SCHEMA, compression="zstd")
        publish_locally = cfg.backend == "local" and cfg.update_index
        self.pending = PendingGeneration(store, out_uri, cfg.num_perm) if publish_locally else None

    def close(self) -> None:
        self.removed.close()
        self.removed_file.close()
        if self.pending is not None:
            self.pending.close()

    def abort(self) -> None:
        """Leave no temporary files behind when the phase dies (a rerun starts it over)."""
        self.removed.close()
        self.removed_file.abort()
        if self.pending is not None:
            self.pending.writer.close()
            self.pending.table.abort()
            self.pending.shingle_file.abort()


# --- phase 3: keep ------------------------------------------------------------------------------------------


def keep_unit(unit: WorkUnit) -> UnitResult:
    """Phase 3 for one input shard: write the documents phase 2 kept; account for the others by reason."""
    store = Store(unit.store_root)
    with store.open(unit.extra["decisions"], "rb") as f:
        codes = np.load(f)
    writer = UnitWriter(unit)
    pos = 0
    for batch in iter_batches(store, unit.inputs, _batch_rows(store, unit.inputs[0], 4096)):
        part = codes[pos:pos + batch.num_rows]
        pos += batch.num_rows
        writer.docs.write_batch(batch.filter(pa.array(part == KEEP)))
        for code, n in zip(*np.unique(part, return_counts=True)):
            for _ in range(int(n)):
                if code == KEEP:
                    writer.account.keep(1)
                else:
                    writer.drop(REASONS[int(code)])
    if pos != len(codes):
        raise UserError(f"dedup: input shard {unit.inputs[0]} has {pos} rows but {len(codes)} were sketched; "
                        "it changed during the run. Rerun the upstream stage, then dedup.")
    return writer.finish()


# --- the stage ----------------------------------------------------------------------------------------------


def _publish(cfg: DedupConfig, ctx: RunContext, out_uri: str, gen: str, input_tag: str, docs: int) -> bool:
    """Make this run's kept documents visible to later runs (idempotent: a resumed run may publish again)."""
    record = {"gen": gen, "state": "committed", "inputs": input_tag, "docs": docs,
              "committed_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="microseconds")}
    if cfg.backend == "redis":
        conn = _open_redis(cfg)
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


def run_dedup(upstream: list[StageResult], out_uri: str, cfg: DedupConfig, ctx: RunContext) -> StageOutput:
    """Sketch in parallel, decide in order, write the kept documents in parallel, then publish the index."""
    if not upstream:
        raise UserError("dedup needs an upstream stage with documents (collect or clean) and got none.")
    if cfg.backend == "redis":
        _open_redis(cfg)
    store, executor, timings = ctx.open_store(), ctx.executor(), {}
    inputs = [uri for result in upstream for uri in result.files("docs")]
    gen, input_tag = out_uri.rstrip("/").rsplit("/", 1)[-1], stable_hash(sorted(r.digest for r in upstream))
    shards = [WorkUnit(stage="dedup", unit_id=f"u{i:05d}", inputs=[uri], out_uri=out_uri,
                       store_root=ctx.store, config=cfg.canonical()) for i, uri in enumerate(inputs)]
    sketch_ids = [f"sketch-{u.unit_id}" for u in shards]
    start = time.perf_counter()
    sketched = executor.map_units("tasks.dedup:sketch_unit", [
        u.model_copy(update={"unit_id": i}) for u, i in zip(shards, sketch_ids)])
    timings["sketch"], start = time.perf_counter() - start, time.perf_counter()
    visible = _visible_generations(cfg, ctx, gen, input_tag)
    decide = WorkUnit(stage="dedup", unit_id="decide", inputs=inputs, out_uri=out_uri, store_root=ctx.store,
                      config=cfg.canonical(), extra={
                          "units": sketch_ids, "gen": gen, "input_tag": input_tag,
                          "visible": [r["gen"] for r in visible],
                          "index_dir": local_index_dir(store, index_id(cfg, ctx)),
                          "redis_base": redis_base(cfg, ctx).decode()})
    decided = executor.map_units("tasks.dedup:decide_unit", [decide])[0]
    timings["decide"], start = time.perf_counter() - start, time.perf_counter()
    kept = executor.map_units("tasks.dedup:keep_unit", [u.model_copy(update={
        "extra": {"decisions": _decisions_uri(out_uri, i)}}) for u, i in zip(shards, sketch_ids)])
    timings["keep"] = time.perf_counter() - start
    account, outputs = merge_results(kept)
    account.check("dedup")
    outputs.setdefault("docs", [])
    if cfg.update_index:
        _publish(cfg, ctx, out_uri, gen, input_tag, decided.info["kept"])
    elif cfg.backend == "redis":
        RedisIndex(cfg, redis_base(cfg, ctx), gen, set()).remove_generation(gen)
    store.rm(f"{out_uri}/{WORK}")  # every unit has its marker now; the sketches are not needed again
    summary = {"results": [*sketched, decided, *kept], "timings": timings, "visible": visible}
    return _stage_output(cfg, ctx, out_uri, account, outputs, decided, summary)


def _stage_output(cfg: DedupConfig, ctx: RunContext, out_uri: str, account: Any,
                  outputs: dict[str, list[str]], decided: UnitResult, summary: dict[str, Any]) -> StageOutput:
    """Stats for the manifest, and report.json (ids only, never text)."""
    info = decided.info
    consulted = summary["visible"]
    figures = {k: info[k] for k in ("kept", "exact_duplicate", "near_duplicate", "seen_before", "empty",
                                    "clusters", "seen_before_exact", "bands", "rows")}
    figures["index_docs_before"] = sum(r.get("docs", 0) for r in consulted)
    report = {
        "docs_in": account.docs_in, "docs_out": account.docs_out, "dropped": account.dropped,
        "exact_duplicates": info["exact_duplicate"], "near_duplicates": info["near_duplicate"],
        "seen_before": info["seen_before"], "empty": info["empty"], "clusters": info["clusters"],
        "params": {"ngram": cfg.ngram, "num_perm": cfg.num_perm, "threshold": cfg.threshold,
                   "bands": info["bands"], "rows": info["rows"], "verify": cfg.verify},
        "index": {"backend": cfg.backend, "id": index_id(cfg, ctx), "incremental": cfg.incremental,
                  "generations_consulted": [r["gen"] for r in consulted],
                  "docs_consulted": figures["index_docs_before"],
                  "published": cfg.update_index},
        "examples": info["examples"],
    }
    ctx.open_store().write_json(f"{out_uri}/report.json", report)
    stats = account.as_stats()
    stats["dedup"] = figures
    stats["phase_seconds"] = {k: round(v, 3) for k, v in summary["timings"].items()}
    stats["units"] = len(summary["results"])
    stats["units_resumed"] = sum(r.resumed for r in summary["results"])
    outputs = dict(outputs, report="report.json", removed="removed.parquet")
    return StageOutput(outputs=outputs, stats=stats)


dedup_task = make_stage_task("dedup", run_dedup, retries=2)
