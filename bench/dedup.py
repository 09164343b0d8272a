"""Dedup benchmark: near-duplicate precision/recall on a labeled set built from real books, and speed per core
against the best usage of datasketch, both end to end on the same Parquet files, measured in the same run.

    python -m bench.dedup                      # defaults: about a minute on 2 cores
    python -m bench.dedup --pairs 3000 --speed-docs 50000 --json out.json

Quality: 1 KB passages cut from the books under bench.common.shared_data(); each "original" gets one
variant made by random word edits (replace, delete, insert, swap neighbours) applied until the shingle-set
Jaccard with the original reaches a target level (1.0, 0.95, ..., 0.3), plus reformatting that must not matter
(case, line wrapping, quote and dash styles); unrelated passages are added as negatives. Everything is
shuffled and deduplicated by the real stage and by the datasketch baseline. Truth is the exact Jaccard of word
n-gram sets computed from the texts in pure Python (tasks.dedup.minhash.shingle_set), independently of the
stage's hashing.
Precision = removals whose (removed, kept) pair really has Jaccard >= threshold; recall = labeled pairs with
Jaccard >= 0.85 where the later document was removed.

Speed: the same job done both ways on the same 1 KB passages plus 10% exact and near copies (`--dup-rate`):
the same Parquet shards in, the kept documents written as Parquet out, one process each, best of `--repeat`,
interleaved. Per-core docs/s come from CPU seconds of the process (all its threads), which other load on a
shared machine does not inflate; wall seconds are printed too.
- ours: the whole dedup stage (`run_stage`, one worker), reports and manifest included;
- datasketch: what a competent user writes (`datasketch_dedup` below): read the shards with pyarrow, the same
  word normalization and 5-gram shingles, `MinHash.bulk(..., hashfunc=xxhash.xxh32_intdigest)` per batch,
  exact duplicates by xxh3-128 of the word sequence, `MinHashLSH` with the same bands x rows,
  `query` then `insert` per document, candidates confirmed by the exact Jaccard of the shingle sets (as the
  stage does), the kept rows written with pyarrow, the cyclic GC off (as in the stage's decide phase).
"""
from __future__ import annotations

import argparse
import gc
import gzip
import itertools
import json
import random
import shutil
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import redis
import xxhash
from datasketch import MinHash, MinHashLSH

from bench.common import shared_data
from tasks.core.config import stable_hash
from tasks.core.docs import SCHEMA, DocWriter
from tasks.core.result import StageResult
from tasks.core.stage import RunContext, RunnerConfig, run_stage
from tasks.core.store import Store
from tasks.dedup.index import KeptBatch, LocalIndex
from tasks.dedup.minhash import Sketcher, band_hashes, lsh_params, normalize_words, shingle_set
from tasks.dedup.stage import STAGE, DedupConfig

TARGETS = [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5, 0.3]
BINS = [0.0, 0.5, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.01]
PASSAGE_CHARS = 1000


def load_passages(books_dir: Path, count: int, seed: int, shards: int = 2) -> list[str]:
    """`count` ~1 KB passages, cut at whitespace from random places in random books (no two overlap)."""
    files = sorted(books_dir.glob("books-*.jsonl.gz"))[:shards]
    if not files:
        raise SystemExit(f"no books-*.jsonl.gz under {books_dir}: set LLMPIPE_DATA or pass --books")
    texts = []
    for path in files:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            texts.extend(json.loads(line)["text"] for line in f)
    rng = random.Random(seed)
    slots = [(b, s) for b, t in enumerate(texts) for s in range(2000, len(t) - 2 * PASSAGE_CHARS, PASSAGE_CHARS)]
    passages = []
    for b, s in rng.sample(slots, min(len(slots), 3 * count)):
        text = texts[b]
        start = text.find(" ", s) + 1
        end = text.rfind(" ", start, start + PASSAGE_CHARS)
        passage = text[start:end].strip()
        if len(normalize_words(passage)) >= 120:  # skip tables of contents, verse fragments, markup runs
            passages.append(passage)
        if len(passages) == count:
            break
    return passages


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def reformat(text: str, rng: random.Random) -> str:
    """Formatting changes that dedup must ignore: case, line wrapping, quote and dash styles."""
    words = text.split()
    words = [w.upper() if rng.random() < 0.05 else w.capitalize() if rng.random() < 0.05 else w for w in words]
    lines, line = [], []
    for w in words:
        line.append(w)
        if sum(map(len, line)) > rng.randint(50, 90):
            lines.append(" ".join(line))
            line = []
    out = "\r\n".join(lines + [" ".join(line)])
    return out.replace('"', "\u201c", 1).replace("--", "\u2014")


def edit_to_target(text: str, target: float, vocab: list[str], ngram: int,
                   rng: random.Random) -> tuple[str, float]:
    """Random word edits until the Jaccard with `text` reaches `target`; returns the closer of the two texts
    around the crossing, and its exact Jaccard."""
    original = shingle_set(text, ngram)
    words = text.split()
    current, current_j = text, 1.0
    previous, previous_j = text, 1.0
    while current_j > target:
        previous, previous_j = current, current_j
        op, i = rng.randrange(4), rng.randrange(len(words))
        if op == 0:
            words[i] = rng.choice(vocab)
        elif op == 1 and len(words) > 2 * ngram:
            del words[i]
        elif op == 2:
            words.insert(i, rng.choice(vocab))
        elif i + 1 < len(words):
            words[i], words[i + 1] = words[i + 1], words[i]
        current = " ".join(words)
        current_j = jaccard(original, shingle_set(current, ngram))
    if previous_j < 1.0 and abs(previous_j - target) < abs(current_j - target):
        return previous, previous_j
    return current, current_j


def build_labeled_set(passages: list[str], n_pairs: int, ngram: int, seed: int) -> tuple[list[tuple[str, str]],
                                                                                          list[dict[str, Any]]]:
    """Documents (id, text) in shuffled order, and the labeled (original, variant) pairs."""
    rng = random.Random(seed)
    vocab = [w for p in passages[:200] for w in p.split() if w.isalpha()]
    docs, pairs = [], []
    for k, passage in enumerate(passages[:n_pairs]):
        target = TARGETS[k % len(TARGETS)]
        variant, j = edit_to_target(passage, target, vocab, ngram, rng)
        docs += [(f"orig-{k}", passage), (f"var-{k}", reformat(variant, rng))]
        pairs.append({"a": f"orig-{k}", "b": f"var-{k}", "target": target, "jaccard": j})
    docs += [(f"neg-{k}", p) for k, p in enumerate(passages[n_pairs:])]
    rng.shuffle(docs)
    return docs, pairs


def with_duplicates(passages: list[str], rate: float, seed: int) -> list[str]:
    """The passages plus `rate` times as many copies of random ones, shuffled: half reformatted exact
    copies, half with 1-3 words replaced (Jaccard about 0.85-0.95), so both sides also verify candidates."""
    rng = random.Random(seed)
    vocab = [w for p in passages[:200] for w in p.split() if w.isalpha()]
    copies = []
    for k in range(int(len(passages) * rate)):
        words = rng.choice(passages).split()
        if k % 2:
            for _ in range(rng.randint(1, 3)):
                words[rng.randrange(len(words))] = rng.choice(vocab)
        copies.append(reformat(" ".join(words), rng))
    docs = passages + copies
    rng.shuffle(docs)
    return docs


def write_corpus(root: Path, docs: list[tuple[str, str]], shards: int) -> StageResult:
    """The documents as Parquet shards (`id, text, source, meta`), as an upstream stage leaves them."""
    store = Store(root)
    files = []
    per_shard = -(-len(docs) // shards)
    for s in range(shards):
        with DocWriter(store, f"{store.root}/input", prefix=f"shard{s}") as writer:
            for doc_id, text in docs[s * per_shard:(s + 1) * per_shard]:
                writer.write(doc_id, text, "books")
        files += writer.files
    digest = stable_hash([d for d, _ in docs])
    return StageResult(stage="clean", key="bench", uri=f"{store.root}/input", outputs={"docs": files},
                       digest=digest)


def timed(fn: Any, *args: Any) -> tuple[Any, float, float]:
    """fn(*args), its wall seconds and its CPU seconds (all threads of this process: pyarrow's too).

    Garbage left by whatever ran before is collected first, outside the measurement.
    """
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    return out, time.perf_counter() - wall, time.process_time() - cpu


def run_ours(workdir: Path, name: str, upstream: StageResult, cfg: DedupConfig, workers: int = 1,
             scope: str = "") -> tuple[StageResult, list[dict[str, Any]], float, float]:
    """The dedup stage on the shards: its result, its removed pairs, its wall and CPU seconds."""
    root = workdir / name
    shutil.rmtree(root, ignore_errors=True)
    ctx = RunContext(store=str(root), pipeline="bench", run_id=name, runner=RunnerConfig(workers=workers),
                     incremental_scope=scope)
    result, wall, cpu = timed(run_stage, STAGE, cfg, {"clean": upstream}, ctx)
    return result, pq.read_table(f"{result.uri}/removed.parquet").to_pylist(), wall, cpu


def datasketch_dedup(inputs: list[str], out_path: Path, cfg: DedupConfig) -> list[dict[str, Any]]:
    """The same job written with datasketch as a competent user would: returns the removed pairs.

    Same normalization, shingles and LSH bands as the stage; signatures with `MinHash.bulk` and xxh32;
    exact duplicates by xxh3-128 of the word sequence; candidates confirmed by exact Jaccard of the
    shingle sets; kept rows written to one Parquet file. The cyclic GC is off while it runs, as in the
    stage's decide phase (millions of small sets would make it rescan them constantly).
    """
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        with pq.ParquetWriter(out_path, SCHEMA, compression="zstd") as writer:
            return _datasketch_dedup(inputs, writer, cfg)
    finally:
        if gc_was_enabled:
            gc.enable()


def _datasketch_dedup(inputs: list[str], writer: pq.ParquetWriter, cfg: DedupConfig) -> list[dict[str, Any]]:
    bands, rows = lsh_params(cfg)
    lsh = MinHashLSH(num_perm=cfg.num_perm, params=(bands, rows))
    n = cfg.ngram
    seen: dict[bytes, str] = {}
    kept: dict[str, tuple[int, set[bytes]]] = {}  # id -> (order kept, shingle set)
    removed: list[dict[str, Any]] = []
    for path in inputs:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=cfg.batch_rows):
            ids, texts = batch.column("id").to_pylist(), batch.column("text").to_pylist()
            words = [normalize_words(t or "") for t in texts]
            shingles = [set(map(str.encode, map(" ".join, zip(*(w[k:] for k in range(n))))))
                        if len(w) >= n else {" ".join(w).encode()} if w else set() for w in words]
            minhashes = MinHash.bulk(shingles, num_perm=cfg.num_perm, seed=cfg.seed,
                                     hashfunc=xxhash.xxh32_intdigest)
            keep = [False] * len(ids)
            for i, (doc_id, w, sh, m) in enumerate(zip(ids, words, shingles, minhashes)):
                if not w:
                    removed.append({"removed_id": doc_id, "kept_id": None, "reason": "empty"})
                    continue
                exact = xxhash.xxh3_128_digest(" ".join(w).encode())
                if exact in seen:
                    removed.append({"removed_id": doc_id, "kept_id": seen[exact],
                                    "reason": "exact_duplicate"})
                    continue
                best = None  # (Jaccard, -order, id): the most similar kept document, the earliest on ties
                for key in lsh.query(m):
                    order, other = kept[key]
                    j = len(sh & other) / len(sh | other)
                    if j >= cfg.threshold and (best is None or (j, -order) > best[:2]):
                        best = (j, -order, key)
                if best is not None:
                    removed.append({"removed_id": doc_id, "kept_id": best[2], "reason": "near_duplicate"})
                    continue
                lsh.insert(doc_id, m, check_duplication=False)
                kept[doc_id] = (len(kept), sh)
                seen[exact] = doc_id
                keep[i] = True
            writer.write_batch(batch.filter(pa.array(keep)))
    return removed


def run_datasketch(workdir: Path, name: str, upstream: StageResult,
                   cfg: DedupConfig) -> tuple[list[dict[str, Any]], float, float]:
    """The datasketch baseline on the shards: its removed pairs, its wall and CPU seconds."""
    out = workdir / name / "kept.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    removed, wall, cpu = timed(datasketch_dedup, upstream.files("docs"), out, cfg)
    kept_rows = pq.ParquetFile(out).metadata.num_rows
    if kept_rows + len(removed) != sum(pq.ParquetFile(f).metadata.num_rows for f in upstream.files("docs")):
        raise RuntimeError("datasketch baseline: kept + removed does not add up to the input")
    return removed, wall, cpu


def evaluate_quality(removed: list[dict[str, Any]], docs: list[tuple[str, str]], pairs: list[dict[str, Any]],
                     cfg: DedupConfig) -> dict[str, Any]:
    """Precision of the removals and recall of the labeled pairs, plus removal rate per Jaccard bin."""
    text = dict(docs)
    order = {doc_id: i for i, (doc_id, _) in enumerate(docs)}
    removed = [r for r in removed if r["reason"] != "empty"]
    removed_ids = {r["removed_id"] for r in removed}
    shingles = {}

    def sh(doc_id: str) -> set:
        if doc_id not in shingles:
            shingles[doc_id] = shingle_set(text[doc_id], cfg.ngram)
        return shingles[doc_id]

    true_removals = sum(jaccard(sh(r["removed_id"]), sh(r["kept_id"])) >= cfg.threshold for r in removed)
    near = [r for r in removed if r["reason"] == "near_duplicate"]
    true_near = sum(jaccard(sh(r["removed_id"]), sh(r["kept_id"])) >= cfg.threshold for r in near)
    detected = [max(p["a"], p["b"], key=order.get) in removed_ids for p in pairs]
    positives = [d for d, p in zip(detected, pairs) if p["jaccard"] >= 0.85]
    bins = []
    for lo, hi in itertools.pairwise(BINS):
        hits = [d for d, p in zip(detected, pairs) if lo <= p["jaccard"] < hi]
        if hits:
            bins.append({"jaccard": f"[{lo:.2f},{min(hi, 1.0):.2f}{']' if hi > 1 else ')'}", "pairs": len(hits),
                         "removed": round(sum(hits) / len(hits), 4)})
    return {"docs": len(docs), "removed": len(removed), "near_removed": len(near),
            "precision": round(true_removals / len(removed), 4) if removed else 1.0,
            "precision_near": round(true_near / len(near), 4) if near else 1.0,
            "recall_j085": round(sum(positives) / len(positives), 4) if positives else None,
            "positive_pairs": len(positives), "bins": bins}


def quality(workdir: Path, docs: list[tuple[str, str]], pairs: list[dict[str, Any]],
            cfg: DedupConfig) -> dict[str, Any]:
    """Precision/recall of the stage (both verify modes) and of the datasketch baseline on the labeled set."""
    upstream = write_corpus(workdir / "labeled", docs, shards=4)
    figures = {}
    for verify in ("exact", "signature"):
        vcfg = cfg.model_copy(update={"verify": verify})
        _, removed, _, _ = run_ours(workdir, f"quality-{verify}", upstream, vcfg)
        figures[f"verify_{verify}"] = evaluate_quality(removed, docs, pairs, vcfg)
    removed, _, _ = run_datasketch(workdir, "quality-datasketch", upstream, cfg)
    figures["datasketch"] = evaluate_quality(removed, docs, pairs, cfg)
    return figures


def local_index_bytes_per_doc(texts: list[str], cfg: DedupConfig) -> dict[str, float]:
    """Python heap per kept document of the local backend's in-memory index (buckets, signatures, ids), and of
    a datasketch MinHashLSH (dict storage) holding the same signatures, for comparison."""
    sk = Sketcher(cfg).sketch(texts)
    bands, rows = lsh_params(cfg)
    batch = KeptBatch(ids=[f"doc-{i:09d}" for i in range(len(texts))], exact=sk.exact, n_words=sk.n_words,
                      signatures=sk.signatures, band_hashes=band_hashes(sk.signatures, bands, rows),
                      shingles=np.zeros(0, np.uint32), locations=np.zeros((len(texts), 3), np.int64))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    index = LocalIndex(cfg.num_perm, bands, rows)
    index.add(batch)
    ours = tracemalloc.get_traced_memory()[0] - before
    before = tracemalloc.get_traced_memory()[0]
    lsh = MinHashLSH(num_perm=cfg.num_perm, params=(bands, rows))
    for i, signature in enumerate(sk.signatures):
        lsh.insert(batch.ids[i], MinHash(num_perm=cfg.num_perm, seed=cfg.seed, hashvalues=signature,
                                         scheme="affine32"), check_duplication=False)
    theirs = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    return {"ours": ours / len(texts), "datasketch_lsh": theirs / len(texts)}




def speed(workdir: Path, passages: list[str], cfg: DedupConfig, repeat: int, dup_rate: float,
          seed: int) -> dict[str, Any]:
    """Seconds of the stage and of the datasketch baseline on the same shards, one process each, best of
    `repeat` (wall and CPU separately); docs/s per core from CPU seconds, which other load on the machine
    does not inflate."""
    texts = with_duplicates(passages, dup_rate, seed)
    docs = [(f"p{i}", t) for i, t in enumerate(texts)]
    upstream = write_corpus(workdir / "speed", docs, shards=4)
    best = {"ours": [float("inf")] * 2, "datasketch": [float("inf")] * 2}
    phases: dict[str, float] = {}
    removed: dict[str, int] = {}
    for r in range(repeat):  # interleaved: the machine is shared and noisy
        base_removed, wall, cpu = run_datasketch(workdir, f"speed-datasketch{r}", upstream, cfg)
        best["datasketch"] = [min(best["datasketch"][0], wall), min(best["datasketch"][1], cpu)]
        result, ours_removed, wall, cpu = run_ours(workdir, f"speed-ours{r}", upstream, cfg, workers=1)
        if wall < best["ours"][0]:
            phases = result.stats["phase_seconds"]
        best["ours"] = [min(best["ours"][0], wall), min(best["ours"][1], cpu)]
        removed = {"ours": len(ours_removed), "datasketch": len(base_removed)}
        shutil.rmtree(workdir / f"speed-datasketch{r}")
        shutil.rmtree(workdir / f"speed-ours{r}")
    figures: dict[str, Any] = {"docs": len(docs), "avg_chars": round(sum(map(len, texts)) / len(texts)),
                               "duplicates_added": len(texts) - len(passages), "repeat": repeat,
                               "ours_phase_seconds": phases, "removed": removed}
    for side, (wall, cpu) in best.items():
        figures[side] = {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3),
                         "docs_per_s_per_core": round(len(docs) / cpu),
                         "docs_per_s_wall": round(len(docs) / wall)}
    figures["ratio_cpu"] = round(best["datasketch"][1] / best["ours"][1], 2)
    figures["ratio_wall"] = round(best["datasketch"][0] / best["ours"][0], 2)
    return figures


def redis_backend(workdir: Path, passages: list[str], cfg: DedupConfig, url: str) -> dict[str, Any]:
    """The same stage with the index on Redis: docs/s (one core here, plus the Redis server) and Redis memory."""
    try:
        conn = redis.Redis.from_url(url, socket_connect_timeout=2)
        conn.ping()
    except redis.RedisError as exc:
        return {"skipped": f"Redis at {url} not reachable: {exc}"}
    rcfg = cfg.model_copy(update={"backend": "redis", "redis_url": url})
    scope = f"bench-{uuid.uuid4().hex[:8]}"
    upstream = write_corpus(workdir / "redis-input", [(f"r{i}", t) for i, t in enumerate(passages)], shards=4)
    before = conn.info("memory")["used_memory"]
    result, _, seconds, _ = run_ours(workdir, "redis", upstream, rcfg, scope=scope)
    used = conn.info("memory")["used_memory"] - before
    for key in conn.scan_iter(match=f"llmpipe:dedup:*:{scope}-*", count=1000):
        conn.delete(key)
    return {"docs": len(passages), "docs_per_s": round(len(passages) / seconds),
            "phase_seconds": result.stats["phase_seconds"],
            "redis_bytes_per_doc": round(used / max(result.stats["docs_out"], 1))}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--books", type=Path, default=None,
                   help="directory of books-*.jsonl.gz (default: books/ under bench.common.shared_data())")
    p.add_argument("--pairs", type=int, default=1500, help="labeled (original, variant) pairs")
    p.add_argument("--negatives", type=int, default=1500, help="unrelated passages added to the labeled set")
    p.add_argument("--speed-docs", type=int, default=20000, help="1 KB passages for the speed run (each side)")
    p.add_argument("--dup-rate", type=float, default=0.1,
                   help="exact and near copies added to the speed run, as a share of --speed-docs")
    p.add_argument("--repeat", type=int, default=3, help="speed runs of each; the best counts")
    p.add_argument("--threshold", type=float, default=DedupConfig().threshold)
    p.add_argument("--num-perm", type=int, default=DedupConfig().num_perm)
    p.add_argument("--ngram", type=int, default=DedupConfig().ngram)
    p.add_argument("--redis-docs", type=int, default=5000, help="passages for the Redis-backend run (0: skip)")
    p.add_argument("--redis-url", default=DedupConfig().redis_url)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a temporary one)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    args.books = args.books or shared_data() / "books"
    cfg = DedupConfig(threshold=args.threshold, num_perm=args.num_perm, ngram=args.ngram)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-dedup-"))
    try:
        figures = run(args, cfg, workdir)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print_figures(figures)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


def run(args: argparse.Namespace, cfg: DedupConfig, workdir: Path) -> dict[str, Any]:
    start = time.perf_counter()
    passages = load_passages(args.books, args.pairs + args.negatives + args.speed_docs, args.seed)
    labeled, speed_passages = passages[:args.pairs + args.negatives], passages[args.pairs + args.negatives:]
    docs, pairs = build_labeled_set(labeled, args.pairs, cfg.ngram, args.seed)
    bands, rows = lsh_params(cfg)
    figures: dict[str, Any] = {"config": {"threshold": cfg.threshold, "num_perm": cfg.num_perm, "ngram": cfg.ngram,
                                          "bands": bands, "rows": rows}}
    figures["quality"] = quality(workdir, docs, pairs, cfg)
    figures["speed"] = speed(workdir, speed_passages, cfg, args.repeat, args.dup_rate, args.seed)
    per_doc = local_index_bytes_per_doc(speed_passages[:10000], cfg)
    figures["memory"] = {"local_index_bytes_per_doc": round(per_doc["ours"]),
                         "local_index_gb_per_million_docs": round(per_doc["ours"] * 1e6 / 1e9, 2),
                         "datasketch_lsh_bytes_per_doc": round(per_doc["datasketch_lsh"])}
    if args.redis_docs:
        figures["redis"] = redis_backend(workdir, speed_passages[:args.redis_docs], cfg, args.redis_url)
    figures["seconds"] = round(time.perf_counter() - start, 1)
    return figures


def print_figures(f: dict[str, Any]) -> None:
    c = f["config"]
    print(f"dedup benchmark  threshold={c['threshold']} num_perm={c['num_perm']} ngram={c['ngram']} "
          f"bands x rows={c['bands']}x{c['rows']}")
    labels = {"verify_exact": "ours, verify=exact", "verify_signature": "ours, verify=signature",
              "datasketch": "datasketch (exact Jaccard check)"}
    for name, label in labels.items():
        q = f["quality"][name]
        print(f"\nquality, {label}: {q['docs']} docs, {q['removed']} removed ({q['near_removed']} near)")
        print(f"  precision {q['precision']:.4f} (near only {q['precision_near']:.4f})   "
              f"recall(J>=0.85) {q['recall_j085']:.4f} over {q['positive_pairs']} pairs   "
              f"[targets: recall >= 0.95, precision >= 0.99]")
        print("  removal rate by true Jaccard: " + "  ".join(f"{b['jaccard']}:{b['removed']:.3f}(n={b['pairs']})"
                                                            for b in q["bins"]))
    s = f["speed"]
    print(f"\nspeed, end to end (Parquet in, kept Parquet out) on the same {s['docs']} passages of "
          f"~{s['avg_chars']} chars ({s['duplicates_added']} of them copies), one process each, "
          f"best of {s['repeat']}:")
    for side, label in (("ours", "llmpipe dedup stage"), ("datasketch", "datasketch, best usage")):
        x = s[side]
        print(f"  {label:<24} {x['docs_per_s_per_core']:>7} docs/s per core (CPU {x['cpu_s']:.2f} s)   "
              f"{x['docs_per_s_wall']:>7} docs/s wall ({x['wall_s']:.2f} s)")
    print(f"  ratio                    {s['ratio_cpu']:>7}x CPU time, {s['ratio_wall']}x wall   "
          "[target >= 3x]")
    print(f"  ours by phase (s): {s['ours_phase_seconds']}   removed: {s['removed']}")
    m = f["memory"]
    print(f"\nlocal index memory: {m['local_index_bytes_per_doc']} B/doc "
          f"= {m['local_index_gb_per_million_docs']} GB per million docs "
          f"(datasketch MinHashLSH, dict storage: {m['datasketch_lsh_bytes_per_doc']} B/doc)")
    r = f.get("redis")
    if r and "skipped" in r:
        print(f"redis backend: skipped ({r['skipped']})")
    elif r:
        print(f"redis backend: {r['docs_per_s']} docs/s on {r['docs']} passages, phases {r['phase_seconds']}, "
              f"Redis memory {r['redis_bytes_per_doc']} B/doc")
    print(f"total {f['seconds']} s")


if __name__ == "__main__":
    main(sys.argv[1:])
