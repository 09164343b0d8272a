"""Benchmark of the tokenize stage on the books corpus: tokenizer training time and packing throughput.

Run it as a module from the repository root, never by its path:

    python -m bench.tokenizer                # first ~60 MB of the shared books, 2 threads, 3 rounds
    python -m bench.tokenizer --full         # all of them
    python -m bench.tokenizer --max-mb 20 --repeat 2 --whole-docs

(`python bench/tokenizer.py` would put bench/ first on sys.path, where this file shadows the standard
library's `tokenize` module and breaks unrelated imports.)

Measured in one process, on the same documents, with the same number of encode threads:
  * training: `train_tokenizer` streaming the Parquet shards (the stage's code path), and, for scale,
    `train_from_iterator` on the whole documents held in memory (skip with --skip-train-baseline);
  * baseline: `Tokenizer.encode_batch_fast` (ids only, no offsets) on the very ~8 KB pieces the stage cuts
    the documents into, held in memory, in calls of the stage's batch size; only the encode calls are
    timed (no id conversion, no output): the ceiling a packing loop built on `tokenizers` can reach;
  * a plain packing loop over those in-memory pieces: encode_batch_fast, ids to a uint16/uint32 array,
    write one file (what a user would write without our stage);
  * packing: the tokenize stage itself (`run_tokenize`, given the trained tokenizer as a file): its split
    calibration pass, then its resumable units from Parquet document shards to token shards (read, cut,
    encode, convert, write, unit markers with shard hashes) and the index;
  * with --whole-docs, `encode_batch_fast` on the whole documents (what the stage avoids by cutting them).
The books are converted to Parquet document shards in a temporary directory first (not timed). Rounds
alternate the measurements; best and median wall times and the CPU seconds of all threads are printed,
with ratios. Wall-clock ratios suffer from other load on the machine; the CPU-time ratio does less.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from bench.common import shared_data


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process, Rust pool included
    return usage.ru_utime + usage.ru_stime


def convert_books(books_dir: Path, out_dir: Path, max_bytes: int | None):
    """Books JSONL.gz -> Parquet document shards (file order, stopping past max_bytes of UTF-8 text)."""
    from tasks.core.docs import DocWriter
    from tasks.core.store import Store

    files = sorted(books_dir.glob("*.jsonl.gz"))
    if not files:
        raise SystemExit(f"no books-*.jsonl.gz under {books_dir}; pass --data or set LLMPIPE_DATA")
    store, total, docs = Store(out_dir), 0, 0
    with DocWriter(store, str(out_dir), "books", max_bytes=64 << 20) as writer:
        for path in files:
            with gzip.open(path, "rt", encoding="utf-8") as lines:
                for line in lines:
                    book = json.loads(line)
                    writer.write(book["id"], book["text"], "books", {"title": book["title"]})
                    total += len(book["text"].encode())
                    docs += 1
                    if max_bytes and total >= max_bytes:
                        break
            if max_bytes and total >= max_bytes:
                break
    return store, [f"{out_dir}/{name}" for name in writer.files], total, docs


def timed(fn, *args, **kwargs):
    """(result, wall seconds, CPU seconds) of one call."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - wall, cpu_seconds() - cpu


def in_groups(texts: list[str], group_chars: int) -> list[list[str]]:
    """Consecutive texts in lists of about `group_chars` characters (the stage's batch size)."""
    groups, group, size = [], [], 0
    for text in texts:
        group.append(text)
        size += len(text)
        if size >= group_chars:
            groups.append(group)
            group, size = [], 0
    return groups + ([group] if group else [])


def encode_only(encode, groups: list[list[str]]) -> tuple[int, float, float]:
    """(tokens, wall, CPU) where the times cover the encode calls alone: counting the ids afterwards and
    freeing the Encoding objects is work the ceiling is not charged for."""
    tokens, wall, cpu = 0, 0.0, 0.0
    for group in groups:
        encodings, w, c = timed(encode, group, add_special_tokens=False)
        wall, cpu = wall + w, cpu + c
        tokens += sum(map(len, encodings))
        del encodings
    return tokens, wall, cpu


def plain_packing_loop(tok, groups: list[list[str]], dtype, eot_id: int, path: Path) -> int:
    """A user's straightforward packer over pieces in memory (every piece taken as a whole document)."""
    import numpy as np

    tokens = 0
    with open(path, "wb") as out:
        for group in groups:
            for encoding in tok.encode_batch_fast(group, add_special_tokens=False):
                ids = np.array(encoding.ids + [eot_id], dtype=dtype)
                ids.tofile(out)
                tokens += ids.size
    return tokens


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="books directory (default: the shared data's)")
    parser.add_argument("--max-mb", type=float, default=60.0, help="MB of text to use (default 60)")
    parser.add_argument("--full", action="store_true", help="use the whole corpus")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2, help="tokenizers (rayon) threads")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of the packing measurements")
    parser.add_argument("--skip-train-baseline", action="store_true",
                        help="skip training on the in-memory documents")
    parser.add_argument("--whole-docs", action="store_true",
                        help="also time encode_batch_fast on whole documents (slow: ~2.5x the pieces' time)")
    return parser.parse_args()


def measure_training(store, uris, texts: list[str], cfg, mb: float, baseline: bool):
    """Train with the stage's streaming path (the tokenizer used below); optionally the in-memory baseline."""
    from tasks.tokenizer.stage import train_tokenizer, training_texts

    sample: dict = {}
    threshold = cfg.val_fraction  # the split rule does not change the training cost
    tok, wall, cpu = timed(train_tokenizer, training_texts(store, uris, cfg, threshold, sample), cfg)
    used_mb = sample["train_bytes"] / 1e6
    print(f"train (stage, streamed from Parquet): {wall:.2f} s wall, {cpu:.1f} s CPU "
          f"({cpu / wall:.2f} cores), {used_mb / wall:.2f} MB/s on {used_mb:.1f} MB (train split), "
          f"vocab {tok.get_vocab_size()}")
    if baseline:
        _, wall, cpu = timed(train_tokenizer, iter(texts), cfg)
        print(f"train (train_from_iterator, whole documents in memory, all {mb:.1f} MB): {wall:.2f} s wall, "
              f"{cpu:.1f} s CPU ({cpu / wall:.2f} cores)")
    return tok


def stage_packing(store, uris, tok, out: Path, cfg) -> int:
    """The tokenize stage itself (`run_tokenize`) with the tokenizer given as a file, so it does not train:
    split calibration, packing in resumable units with their markers and shard hashes, the index.
    Returns the tokens written."""
    from tasks.core.result import StageResult
    from tasks.core.stage import RunContext, RunnerConfig
    from tasks.tokenizer.stage import STAGE

    tokenizer_file = out.parent / "bench-tokenizer.json"
    if not tokenizer_file.exists():
        tok.save(str(tokenizer_file))
    docs = StageResult(stage="pii", key="bench", uri=store.root, digest="bench",
                       outputs={"docs": [u[len(store.root) + 1:] for u in uris]})
    ctx = RunContext(store=str(out), pipeline="bench", run_id="bench", runner=RunnerConfig(workers=1))
    result = STAGE.run({"pii": docs}, f"{out}/tokenize", cfg.model_copy(update={"tokenizer_file": str(tokenizer_file)}),
                       ctx)
    return result.stats["tokens"]


def measure_rounds(store, uris, texts: list[str], tok, cfg, out: Path, repeat: int, whole_docs: bool):
    """Alternate the baseline, the plain loop and the stage's packing `repeat` times (order rotates)."""
    from tasks.core.token_shards import dtype_for_vocab
    from tasks.tokenizer.stage import cut_text, special_token_ids, vocab_size_of

    tok.encode_special_tokens = True  # as the stage encodes: every measurement gets the same ids
    eot_id, _ = special_token_ids(tok, cfg, "bench tokenizer")
    dtype = dtype_for_vocab(vocab_size_of(tok), "auto")
    piece_groups = in_groups([p for t in texts for p in cut_text(t)], cfg.batch_bytes)
    counts: dict[str, int] = {}

    def baseline():
        counts["pieces"], wall, cpu = encode_only(tok.encode_batch_fast, piece_groups)
        return wall, cpu

    def plain():
        out.mkdir(parents=True, exist_ok=True)
        counts["plain"], wall, cpu = timed(plain_packing_loop, tok, piece_groups, dtype, eot_id, out / "p.bin")
        return wall, cpu

    def pack():
        shutil.rmtree(out, ignore_errors=True)
        counts["packed"], wall, cpu = timed(stage_packing, store, uris, tok, out, cfg)
        return wall, cpu

    def whole():
        counts["whole"], wall, cpu = encode_only(tok.encode_batch_fast, in_groups(texts, 64 << 20))
        return wall, cpu

    steps = {"baseline": baseline, "plain": plain, "pack": pack, **({"whole": whole} if whole_docs else {})}
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in steps}
    names = list(steps)
    for round_no in range(repeat):
        order = names[round_no % len(names):] + names[:round_no % len(names)]
        for name in order:
            runs[name].append(steps[name]())
        print(f"round {round_no + 1}: " + ", ".join(f"{k} {v[-1][0]:.1f} s wall / {v[-1][1]:.1f} s CPU"
                                                    for k, v in runs.items()), flush=True)
        shutil.rmtree(out, ignore_errors=True)
    return runs, counts


def main() -> None:
    args = parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # before the pool's first use below

    from tasks.core.docs import iter_docs
    from tasks.tokenizer.stage import TokenizeConfig

    books = args.data or shared_data() / "books"
    work = Path(tempfile.mkdtemp(prefix="bench-tokenize-"))
    try:
        max_bytes = None if args.full else int(args.max_mb * 1e6)
        store, uris, text_bytes, docs = convert_books(books, work / "docs", max_bytes)
        mb = text_bytes / 1e6
        print(f"corpus: {docs} books, {mb:.1f} MB of text, {len(uris)} Parquet shards; "
              f"{args.threads} threads on {os.cpu_count()} cores", flush=True)
        texts = [d["text"] for d in iter_docs(store, uris, batch_rows=64)
                 if d["text"] and not d["text"].isspace()]
        cfg = TokenizeConfig(vocab_size=args.vocab_size, val_fraction=0.05)
        tok = measure_training(store, uris, texts, cfg, mb, baseline=not args.skip_train_baseline)
        runs, counts = measure_rounds(store, uris, texts, tok, cfg, work / "tokens", args.repeat,
                                      args.whole_docs)
        report(runs, mb, counts, len(texts))
    finally:
        shutil.rmtree(work, ignore_errors=True)


LABELS = {"baseline": "encode_batch_fast, same pieces, encode calls only",
          "plain": "plain loop: encode_batch_fast + ids -> .bin",
          "pack": "stage (run_tokenize): calibrate + units, Parquet -> shards",
          "whole": "encode_batch_fast, whole documents, encode calls only"}


def report(runs: dict[str, list[tuple[float, float]]], mb: float, counts: dict[str, int], docs: int) -> None:
    best = {k: mb / min(w for w, _ in v) for k, v in runs.items()}
    median = {k: mb / statistics.median(w for w, _ in v) for k, v in runs.items()}
    cpu = {k: min(c for _, c in v) for k, v in runs.items()}
    print(f"\n{'':52s} {'best MB/s':>10s} {'median MB/s':>12s} {'CPU s (min)':>12s}")
    for key in runs:
        print(f"{LABELS[key]:52s} {best[key]:10.2f} {median[key]:12.2f} {cpu[key]:12.1f}")
    for key, what in (("baseline", "encode_batch_fast on the same pieces"), ("plain", "the plain loop"),
                      ("whole", "encode_batch_fast on whole documents")):
        if key in runs:
            print(f"packing / {what}: {best['pack'] / best[key]:.2f}x best-to-best, "
                  f"{median['pack'] / median[key]:.2f}x median, {cpu[key] / cpu['pack']:.2f}x by CPU time")
    pieces_ok = counts["pieces"] + docs == counts["packed"]
    print(f"check: same-piece tokens {counts['pieces']} + {docs} eot == packed {counts['packed']}: "
          f"{'OK' if pieces_ok else 'MISMATCH'}"
          + (f"; whole-document tokens {counts['whole']}: "
             f"{'OK' if counts['whole'] == counts['pieces'] else 'MISMATCH'}" if "whole" in counts else ""))


if __name__ == "__main__":
    main()
