"""Clean-stage throughput on book passages, against the same filters written the straightforward way.

    python -m bench.clean [--books 24] [--passage-chars 4000] [--workers 2] [--repeats 2] [--markdown]

Input: whole books from the shared books corpus (CRLF kept), cut at blank lines into passages of about
`--passage-chars` (not timed). Both implementations run the default CleanConfig:

- core, one process: llmpipe's `clean_document` vs `baseline_clean_document` below, which applies the
  same rules plainly (a regex pass per normalization step, every filter re-splitting the text, n-grams
  as joined strings, every n-gram size counted with no shortcut). Timed in CPU seconds (best of
  `--repeats`, alternating), so other jobs on the machine disturb it less. Outputs are compared: the
  kept text and every drop reason must be identical.
- stage, Parquet in and out through `run_map_stage`: the baseline as a unit function and llmpipe's
  clean stage, each on 1 worker (per core: CPU seconds of the one process, which does all the work),
  then llmpipe's on `--workers` workers in wall seconds, on a pool started (and timed) beforehand:
  each worker imports the stage module, prefect included, which costs seconds on this machine.

Chunking and markup stripping are shared code (not filters; chunking is ~2% of the time).
Prints docs/s and MB/s (MB = 10^6 bytes of UTF-8 input text) and ratios; `main(argv)` returns them.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import tempfile
import time
import unicodedata
from collections import Counter
from typing import Any

from bench.common import shared_data
from tasks.clean.stage import STAGE, CleanConfig, CleanOutcome, clean_document, split_passages, strip_markup
from tasks.core.docs import DocWriter
from tasks.core.mapstage import UnitWriter, iter_unit_docs, run_map_stage
from tasks.core.result import StageResult
from tasks.core.stage import RunContext, RunnerConfig, register_executor, run_stage
from tasks.core.store import Store
from tasks.core.units import PoolExecutor, UnitResult, WorkUnit

# --- the baseline: the same rules, written plainly ----------------------------------------------------------

_BREAKS = re.compile("\r\n|[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
_INVISIBLE = re.compile(
    "[\x00-\x08\x0e-\x1f\x7f-\x9f\u00ad\u180e\u200b\u2060\ufeff\u202a-\u202e\u2066-\u2069]")
_TRAILING = re.compile(r"\s+$")
_INDENT = re.compile(r"[ \t]*")
_SPACES = re.compile(r"\s+")
_BLANKS = re.compile(r"\n{3,}")


def baseline_normalize(text: str, nfc: bool = True) -> str:
    if nfc:
        text = unicodedata.normalize("NFC", text)
    out = []
    for line in _BREAKS.split(text):
        line = _TRAILING.sub("", _INVISIBLE.sub("", line))
        indent = _INDENT.match(line).group()
        body = _SPACES.sub(" ", line[len(indent):]).strip()
        out.append(indent + body if body else "")
    return _BLANKS.sub("\n\n", "\n".join(out)).strip("\n")


def _bl_word_count(text: str, c) -> str | None:
    n = len(text.split())
    return "too_few_words" if n < c.min_words else "too_many_words" if n > c.max_words else None


def _bl_mean_word_length(text: str, c) -> str | None:
    words = text.split()
    if not words:
        return "mean_word_length"
    mean = sum(len(w) for w in words) / len(words)
    return None if c.min_length <= mean <= c.max_length else "mean_word_length"


def _bl_symbol_ratio(text: str, c) -> str | None:
    n_words = max(len(text.split()), 1)
    return "symbol_ratio" if any(text.count(s) / n_words > c.max_ratio for s in c.symbols) else None


def _bl_stop_words(text: str, c) -> str | None:
    forms = {f for w in c.words for f in (w.lower(), w.title(), w.upper())}
    hits = sum(1 for w in text.split() if w in forms)
    return None if hits >= c.min_count else "no_stop_words"


def _bl_line_punctuation(text: str, c) -> str | None:
    lines = [line for line in text.split("\n") if line.strip()]
    if not lines:
        return "line_punctuation"
    ended = sum(1 for line in lines if line.endswith(tuple(c.endings)))
    return None if ended / len(lines) >= c.min_fraction else "line_punctuation"


def _bl_repeated_lines(text: str, c) -> str | None:
    lines = [line for line in text.split("\n") if line.strip()]
    paragraphs = [p.strip() for p in text.split("\n\n") if p.strip()]
    for items, max_frac, max_char_frac in ((lines, c.max_dup_line_fraction, c.max_dup_line_char_fraction),
                                           (paragraphs, c.max_dup_paragraph_fraction,
                                            c.max_dup_paragraph_char_fraction)):
        items = [item for item in items if len(item) >= c.min_chars and any(ch.isalnum() for ch in item)]
        if len(items) < 2:
            continue
        seen, dup_count, dup_chars = set(), 0, 0
        for item in items:
            if item in seen:
                dup_count += 1
                dup_chars += len(item)
            seen.add(item)
        if dup_count / len(items) > max_frac or dup_chars / sum(len(i) for i in items) > max_char_frac:
            return "repeated_lines"
    return None


def _bl_repeated_ngrams(text: str, c) -> str | None:
    words = text.split()
    total = sum(len(w) for w in words)
    if not total:
        return None
    for n, max_frac in c.top_ngram_max_char_fraction.items():
        counts: dict[str, int] = {}
        for i in range(len(words) - n + 1):
            gram = " ".join(words[i:i + n])
            counts[gram] = counts.get(gram, 0) + 1
        if counts:
            gram, count = max(counts.items(), key=lambda kv: kv[1])
            if count > 1 and count * (len(gram) - (n - 1)) / total > max_frac:
                return "repeated_ngrams"
    for n, max_frac in c.dup_ngram_max_char_fraction.items():
        seen, covered = set(), [False] * len(words)
        for i in range(len(words) - n + 1):
            gram = " ".join(words[i:i + n])
            if gram in seen:
                for k in range(i, i + n):
                    covered[k] = True
            seen.add(gram)
        if sum(len(w) for w, cov in zip(words, covered) if cov) / total > max_frac:
            return "repeated_ngrams"
    return None


_BASELINE_FILTERS = (("word_count", _bl_word_count), ("mean_word_length", _bl_mean_word_length),
                     ("symbol_ratio", _bl_symbol_ratio), ("stop_words", _bl_stop_words),
                     ("line_punctuation", _bl_line_punctuation), ("repeated_lines", _bl_repeated_lines),
                     ("repeated_ngrams", _bl_repeated_ngrams))


def baseline_clean_document(text: str, cfg: CleanConfig) -> CleanOutcome:
    cleaned = baseline_normalize(strip_markup(text, cfg.markup), cfg.nfc)
    if not cleaned:
        return CleanOutcome(reason="empty")
    chunks = split_passages(cleaned, cfg.chunk.target_chars, cfg.chunk.max_chars) if cfg.chunk.enabled \
        else [cleaned]
    outcome = CleanOutcome()
    for chunk in chunks:
        reason = None
        for name, check in _BASELINE_FILTERS:
            if getattr(cfg, name).enabled and reason is None:
                reason = check(chunk, getattr(cfg, name))
        (outcome.kept.append(chunk) if reason is None else outcome.chunk_reasons.append(reason))
    if not outcome.kept:
        outcome.reason = Counter(outcome.chunk_reasons).most_common(1)[0][0]
    return outcome


def baseline_unit(unit: WorkUnit) -> UnitResult:
    """The baseline as a work unit, so the stage comparison shares all Parquet I/O with llmpipe's."""
    cfg = CleanConfig.model_validate(unit.config)
    writer = UnitWriter(unit)
    for batch in iter_unit_docs(unit, batch_rows=64):
        for doc in batch:
            if not isinstance(doc.get("text"), str):
                writer.quarantine("text_not_a_string", {"id": doc.get("id")})
                continue
            outcome = baseline_clean_document(doc["text"], cfg)
            writer.keep_pieces(doc, outcome.kept) if outcome.kept else writer.drop(outcome.reason)
    return writer.finish()


# --- data ---------------------------------------------------------------------------------------------------

_PARAGRAPH_BREAK = re.compile(r"\r?\n[ \t\r]*\n")


def book_passages(n_books: int, passage_chars: int) -> list[str]:
    """Raw passages (CRLF kept) of `n_books` books taken evenly from every shard."""
    shards = sorted((shared_data() / "books").glob("books-*.jsonl.gz"))
    per_shard = max(1, -(-n_books // len(shards)))
    books: list[str] = []
    for path in shards:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for _, line in zip(range(per_shard), f):
                books.append(json.loads(line)["text"])
    passages = []
    for text in books[:n_books]:
        current: list[str] = []
        size = 0
        for para in _PARAGRAPH_BREAK.split(text):
            if current and size + len(para) > passage_chars:
                passages.append("\r\n\r\n".join(current))
                current, size = [], 0
            current.append(para)
            size += len(para) + 4
        if current:
            passages.append("\r\n\r\n".join(current))
    return passages


# --- measurements -------------------------------------------------------------------------------------------

def time_core(fn, passages: list[str], cfg: CleanConfig) -> tuple[float, list[CleanOutcome]]:
    start = time.process_time()
    outcomes = [fn(p, cfg) for p in passages]
    return time.process_time() - start, outcomes


def compare_core(passages: list[str], cfg: CleanConfig, repeats: int) -> dict[str, Any]:
    best = {"baseline": float("inf"), "llmpipe": float("inf")}
    outcomes: dict[str, list[CleanOutcome]] = {}
    for _ in range(repeats):  # alternate, keep the best of each: noise on a shared machine only adds time
        for name, fn in (("baseline", baseline_clean_document), ("llmpipe", clean_document)):
            seconds, outcomes[name] = time_core(fn, passages, cfg)
            best[name] = min(best[name], seconds)
    mismatches = sum(a != b for a, b in zip(outcomes["baseline"], outcomes["llmpipe"]))
    kept = sum(bool(o.kept) for o in outcomes["llmpipe"])
    return {"baseline_cpu_s": best["baseline"], "llmpipe_cpu_s": best["llmpipe"], "mismatches": mismatches,
            "kept_docs": kept,
            "drop_reasons": dict(Counter(o.reason for o in outcomes["llmpipe"] if o.reason))}


def write_upstream(root: str, passages: list[str], shards: int) -> StageResult:
    store = Store(root)
    files = []
    for s in range(shards):
        writer = DocWriter(store, f"{root}/input/docs", prefix=f"shard{s}")
        for i in range(s, len(passages), shards):
            writer.write(f"p{i:07d}", passages[i], "books", {})
        files += [f"docs/{name}" for name in writer.close()]
    return StageResult(stage="collect", key="bench", uri=f"{root}/input", outputs={"docs": files},
                       digest="bench")


def _warm(seconds: float) -> int:
    """Runs in a pool worker: import the stage module (prefect and all) before the timed run."""
    import tasks.clean.stage  # noqa: F401

    time.sleep(seconds)
    return os.getpid()


def warm_pool(workers: int) -> tuple[PoolExecutor, list[int], float]:
    """A started pool whose workers have imported the stage module, their pids, and how long that took."""
    start = time.perf_counter()
    pool = PoolExecutor(workers)
    pids: set[int] = set()
    while len(pids) < workers:  # sleeping tasks spread over the workers
        pids |= set(pool.pool.map(_warm, [0.2] * workers))
    return pool, sorted(pids), time.perf_counter() - start


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def time_stage(root: str, name: str, upstream: StageResult, cfg: CleanConfig, workers: int,
               executor: PoolExecutor | None = None) -> dict[str, Any]:
    """Wall seconds, and CPU seconds of this process (all of the work when units run serially)."""
    run_id = f"{name}-{workers}"
    ctx = RunContext(store=f"{root}/store-{run_id}", pipeline="bench", run_id=run_id,
                     runner=RunnerConfig(workers=workers))
    register_executor(run_id, executor)
    wall, cpu = time.perf_counter(), time.process_time()
    try:
        if name == "baseline":
            stats = run_map_stage("clean_baseline", "bench.clean:baseline_unit", upstream.files("docs"),
                                  f"{ctx.store}/clean_baseline/bench", cfg, ctx)[0].stats
        else:
            stats = run_stage(STAGE, cfg, {"collect": upstream}, ctx).stats
    finally:
        register_executor(run_id, None)
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu,
            "docs_out": stats["docs_out"], "rows_out": stats["rows_out"]}


def stage_runs(passages: list[str], cfg: CleanConfig, workers: int, n: int, mb: float) -> dict[str, Any]:
    stage: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-clean-") as root:
        upstream = write_upstream(root, passages, shards=max(4, 2 * workers))
        print("\nstage, Parquet in/out (per core: 1 worker, CPU seconds of the one process)")
        for name in ("baseline", "llmpipe"):
            run = stage[f"{name}_w1"] = time_stage(root, name, upstream, cfg, 1)
            print(f"  {name:9s} 1 worker   {run['cpu_s']:7.2f} s CPU  {n / run['cpu_s']:8.0f} docs/s  "
                  f"{mb / run['cpu_s']:6.2f} MB/s   ({run['wall_s']:.2f} s wall; docs_out {run['docs_out']}, "
                  f"rows_out {run['rows_out']})")
        stage["speedup_per_core"] = stage["baseline_w1"]["cpu_s"] / stage["llmpipe_w1"]["cpu_s"]
        print(f"  per-core speedup {stage['speedup_per_core']:.2f}x")
        if workers > 1:
            stage[f"llmpipe_w{workers}"] = parallel_run(root, upstream, cfg, workers, n, mb)
            parallel = stage[f"llmpipe_w{workers}"]
            stage["parallel_scaling_wall"] = stage["llmpipe_w1"]["wall_s"] / parallel["wall_s"]
            print(f"  {workers} workers vs 1, wall: {stage['parallel_scaling_wall']:.2f}x (load average now "
                  f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: wall times mean little on a busy "
                  "machine)")
    return stage


def parallel_run(root: str, upstream: StageResult, cfg: CleanConfig, workers: int, n: int, mb: float) -> dict:
    pool, pids, startup = warm_pool(workers)
    try:
        before = [process_cpu_s(pid) for pid in pids]
        run = time_stage(root, "llmpipe", upstream, cfg, workers, pool)
        run["worker_cpu_s"] = [process_cpu_s(pid) - b for pid, b in zip(pids, before)]
    finally:
        pool.shutdown()
    run["pool_startup_s"] = startup
    busiest = max(run["worker_cpu_s"])
    print(f"  llmpipe   {workers} workers {run['wall_s']:7.2f} s wall {n / run['wall_s']:8.0f} docs/s  "
          f"{mb / run['wall_s']:6.2f} MB/s   (worker CPU s {[round(c, 2) for c in run['worker_cpu_s']]}: "
          f"{mb / busiest:.2f} MB/s if each had a core; pool start, excluded: {startup:.1f} s)")
    return run


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--books", type=int, default=24, help="books to cut into passages (default 24, ~10 MB)")
    ap.add_argument("--passage-chars", type=int, default=4000,
                    help="passage size in characters (default 4000)")
    ap.add_argument("--workers", type=int, default=2, help="workers for the parallel stage run (default 2)")
    ap.add_argument("--repeats", type=int, default=2, help="core timings: best of this many (default 2)")
    ap.add_argument("--markdown", action="store_true", help="strip markdown too (same code in both)")
    args = ap.parse_args(argv)

    cfg = CleanConfig(markup={"markdown": args.markdown})
    passages = book_passages(args.books, args.passage_chars)
    n, mb = len(passages), sum(len(p.encode()) for p in passages) / 1e6
    print(f"input: {args.books} books -> {n} passages, {mb:.1f} MB (default CleanConfig, chunking on, "
          f"markdown {'on' if args.markdown else 'off'})")

    core = compare_core(passages, cfg, args.repeats)
    results: dict[str, Any] = {"passages": n, "mb": mb, "core": core}
    print(f"\ncore, 1 process, CPU seconds (best of {args.repeats})")
    for name in ("baseline", "llmpipe"):
        s = core[f"{name}_cpu_s"]
        print(f"  {name:9s} {s:7.2f} s  {n / s:8.0f} docs/s  {mb / s:6.2f} MB/s")
    core["speedup"] = core["baseline_cpu_s"] / core["llmpipe_cpu_s"]
    print(f"  speedup {core['speedup']:.2f}x; outputs differ on {core['mismatches']} of {n} passages; "
          f"kept {core['kept_docs']}, dropped {core['drop_reasons']}")

    stage = stage_runs(passages, cfg, args.workers, n, mb)
    results["stage"] = stage
    return results


if __name__ == "__main__":
    main()
