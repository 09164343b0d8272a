"""The dedup stage: exact and MinHash-LSH near-duplicate removal, within a run and against earlier runs.

Three phases, each a set of resumable work units on the run's executor:

1. `sketch_unit`, one per input shard, in parallel: every document is normalized (NFKC, lowercase, words
   are runs of letters and digits; punctuation, whitespace and formatting are ignored), hashed for exact
   matching (xxh3-128 of its word sequence) and cut into word n-gram shingles, from which a datasketch
   MinHash signature (scheme `affine32`) is computed for a whole batch of documents at once in numpy.
   Results go to `_work/sketch/<unit>.parquet` (+ the shingle hashes, in word order, in `<unit>.u32`).
2. `decide_unit`, one unit, sequential in a fixed order (input shard order, then row order): the first
   document of a duplicate cluster is kept. A document is an exact duplicate when its exact hash was
   kept before; otherwise the LSH index (in memory, or datasketch's MinHashLSH on Redis) proposes candidates,
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
phase 2 holds the LSH index, about 3 KB per kept document with the local backend (16 bucket entries,
the signature and the id at the defaults), i.e. about 3 GB per million documents; with Redis it moves
to the Redis server (~11 KB per document); the process keeps a byte per document and an entry per
duplicate cluster.

The persistent index (generations published by finished runs, `incremental`) is in `tasks.dedup.index`;
the sketching functions are in `tasks.dedup.minhash`.
"""
from __future__ import annotations

import gc
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import field_validator, model_validator

from tasks.core.config import StageConfig, stable_hash
from tasks.core.docs import iter_batches
from tasks.core.errors import UserError
from tasks.core.mapstage import UnitWriter
from tasks.core.result import Account
from tasks.core.stage import Inputs, RunContext, Stage, StageOutput
from tasks.core.store import Store
from tasks.core.units import UnitResult, WorkUnit, merge_results
from tasks.dedup.index import (
    WORK,
    AtomicFile,
    KeptBatch,
    LocalIndex,
    PendingGeneration,
    RedisIndex,
    check_redis,
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
from tasks.dedup.minhash import (
    Sketcher,
    band_hashes,
    estimated_jaccard,
    jaccard_of_set,
    gather_ranges,
    lsh_params,
    shared_bands,
)

__all__ = [  # the stage; `clear_index` and `committed_generations` for code managing the persistent index
    "DedupConfig", "STAGE", "clear_index", "committed_generations", "decide_unit", "keep_unit",
    "run_dedup", "sketch_unit",
]

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
    # with incremental: only these generations (dedup store keys) count as seen; default every committed one.
    # The maintenance flow passes those of the champion's data, so a rejected run's documents come again
    against: tuple[str, ...] | None = None
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


# --- work files ---------------------------------------------------------------------------------------------


def _sketch_uri(out_uri: str, unit_id: str, suffix: str) -> str:
    return f"{out_uri}/{WORK}/sketch/{unit_id}.{suffix}"


def _decisions_uri(out_uri: str, unit_id: str) -> str:
    return f"{out_uri}/{WORK}/decisions/{unit_id}.npy"


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
    sketcher, schema = Sketcher(cfg), sketch_schema(cfg.num_perm)
    table_file = AtomicFile(store, _sketch_uri(unit.out_uri, unit.unit_id, "parquet"))
    shingle_file = AtomicFile(store, _sketch_uri(unit.out_uri, unit.unit_id, "u32"))
    writer = sketch_writer(table_file.handle, schema)
    rows = shingles = 0
    try:
        batch_rows = _batch_rows(store, unit.inputs[0], cfg.batch_rows)
        for batch in iter_batches(store, unit.inputs, batch_rows, columns=["id", "text"]):
            ids, texts = batch.column("id").to_pylist(), batch.column("text").to_pylist()
            sk = sketcher.sketch([t or "" for t in texts])
            writer.write_table(sketch_table(ids, sk, shingles, schema))
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
    band_hashes: np.ndarray  # (K, bands) uint64

    def shingles(self, i: int) -> np.ndarray:
        return self.source[self.sh_start[i]:self.sh_start[i] + self.sh_count[i]]

    def kept(self, docs: list[int], with_shingles: bool) -> KeptBatch:
        locations = np.stack([np.full(len(docs), self.source_id), self.sh_start[docs], self.sh_count[docs]],
                             axis=1)
        shingles = (gather_ranges(self.source, self.sh_start[docs], self.sh_count[docs]) if with_shingles
                    else np.zeros(0, np.uint32))
        return KeptBatch(ids=[self.ids[d] for d in docs], exact=[self.exact[d] for d in docs],
                         n_words=self.n_words[docs], signatures=self.signatures[docs],
                         band_hashes=self.band_hashes[docs], shingles=shingles, locations=locations)


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
        if not survivors:
            return []
        mine = np.unique(shingles)  # once, not once per candidate
        scored = [(k, jaccard_of_set(mine, other_shingles[k])) for k, _ in survivors]
        return [(k, j) for k, j in scored if j >= self.threshold]


def _index_matches(block: Block, index: Any, verifier: Verifier) -> tuple[list[Any], list[list[Match]]]:
    """For every document of the block: its exact match in the index and its confirmed near matches there.

    The lookups for the whole block are batched (a few pipelined round trips on Redis).
    """
    exact_hits = index.find_exact(block.exact)
    candidates = [sorted(c, key=index.rank) if c else []
                  for c in index.candidates(block.signatures, block.band_hashes)]
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


def _iter_blocks(store: Store, unit_ids: list[str], out_uri: str, cfg: DedupConfig,
                 index: Any) -> Iterator[tuple[str, Block]]:
    """Sketched documents of every unit, in unit order then row order, one block at a time."""
    bands, rows = lsh_params(cfg)
    for unit_id in unit_ids:
        source = (shingle_source(store, _sketch_uri(out_uri, unit_id, "u32")) if cfg.verify == "exact"
                  else np.zeros(0, np.uint32))
        source_id = index.add_source(source)
        for batch in iter_batches(store, [_sketch_uri(out_uri, unit_id, "parquet")], cfg.batch_rows):
            sigs = signature_matrix(batch.column("sig"), cfg.num_perm)
            yield unit_id, Block(ids=batch.column("id").to_pylist(), exact=batch.column("exact").to_pylist(),
                                 n_words=batch.column("n_words").to_numpy(), signatures=sigs,
                                 sh_start=batch.column("sh_start").to_numpy(),
                                 sh_count=batch.column("sh_count").to_numpy(), source=source,
                                 source_id=source_id, band_hashes=band_hashes(sigs, bands, rows))


def _open_index(cfg: DedupConfig, unit: WorkUnit, store: Store) -> Any:
    """What this run decides against: earlier committed generations (incremental) plus its own documents."""
    extra = unit.extra
    if cfg.backend == "redis":
        index = RedisIndex(cfg, extra["redis_base"].encode(), extra["gen"], set(extra["visible"]))
        index.remove_generation(extra["gen"])  # left by a killed earlier attempt of this very run
        index.mark_pending(extra["input_tag"])
        return index
    index = LocalIndex(cfg.num_perm, *lsh_params(cfg))
    for gen in extra["visible"]:
        load_local_generation(index, store, f"{extra['index_dir']}/gens/{gen}", cfg)
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
            groups = shared_bands(block.band_hashes)
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
    finally:
        index.close()
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
        self.removed_file = AtomicFile(store, f"{out_uri}/removed.parquet")
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
            self.pending.abort()


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
    if pos != len(codes):
        raise UserError(f"dedup: input shard {unit.inputs[0]} has {pos} rows but {len(codes)} were sketched; "
                        "it changed during the run. Rerun the upstream stage, then dedup.")
    tally = np.bincount(codes, minlength=len(REASONS) + 1)  # one document per row: kept rows = kept docs
    writer.account = Account(docs_in=len(codes), docs_out=int(tally[KEEP]), rows_out=int(tally[KEEP]),
                             dropped={REASONS[c]: int(n) for c, n in enumerate(tally) if c != KEEP and n})
    return writer.finish()


# --- the stage ----------------------------------------------------------------------------------------------


def run_dedup(inputs_by_stage: Inputs, out_uri: str, cfg: DedupConfig, ctx: RunContext) -> StageOutput:
    """Sketch in parallel, decide in order, write the kept documents in parallel, then publish the index."""
    upstream = list(inputs_by_stage.values())
    if cfg.backend == "redis":
        check_redis(cfg)
    store, executor, timings = ctx.open_store(), ctx.executor(), {}
    inputs = [uri for result in upstream for uri in result.files("docs")]
    gen, input_tag = out_uri.rstrip("/").rsplit("/", 1)[-1], stable_hash(sorted(r.digest for r in upstream))
    shards = [WorkUnit(stage="dedup", unit_id=f"u{i:05d}", inputs=[uri], out_uri=out_uri,
                       store_root=ctx.store, config=cfg.canonical()) for i, uri in enumerate(inputs)]
    sketch_ids = [f"sketch-{u.unit_id}" for u in shards]
    start = time.perf_counter()
    sketched = executor.map_units("tasks.dedup.stage:sketch_unit", [
        u.model_copy(update={"unit_id": i}) for u, i in zip(shards, sketch_ids)])
    timings["sketch"], start = time.perf_counter() - start, time.perf_counter()
    visible = visible_generations(cfg, ctx, gen, input_tag)
    decide = WorkUnit(stage="dedup", unit_id="decide", inputs=inputs, out_uri=out_uri, store_root=ctx.store,
                      config=cfg.canonical(), extra={
                          "units": sketch_ids, "gen": gen, "input_tag": input_tag,
                          "visible": [r["gen"] for r in visible],
                          "index_dir": local_index_dir(store, index_id(cfg, ctx)),
                          "redis_base": redis_base(cfg, ctx).decode()})
    decided = executor.map_units("tasks.dedup.stage:decide_unit", [decide])[0]
    timings["decide"], start = time.perf_counter() - start, time.perf_counter()
    kept = executor.map_units("tasks.dedup.stage:keep_unit", [u.model_copy(update={
        "extra": {"decisions": _decisions_uri(out_uri, i)}}) for u, i in zip(shards, sketch_ids)])
    timings["keep"] = time.perf_counter() - start
    account, outputs = merge_results(kept)
    account.check("dedup")
    outputs.setdefault("docs", [])
    if cfg.update_index:
        publish_generation(cfg, ctx, out_uri, gen, input_tag, decided.info["kept"])
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


def check_backend(cfg: DedupConfig) -> None:
    """With `backend: redis`, Redis must answer before the run starts (a UserError names the URL)."""
    if cfg.backend == "redis":
        check_redis(cfg)


STAGE = Stage(name="dedup", config=DedupConfig, run=run_dedup, reads=("clean",), preflight=check_backend,
              raw_text=True,
              summary="remove exact and MinHash-LSH near duplicates, against a persistent index")
