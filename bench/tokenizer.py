"""Benchmark of the tokenize stage on the books corpus: tokenizer training time and packing throughput.

Run it as a module from the repository root, never by its path:

    python -m bench.tokenizer                # first ~60 MB of ../shared/data/books, 2 threads
    python -m bench.tokenizer --full         # all 331 MB
    python -m bench.tokenizer --max-mb 20 --repeat 2

(`python bench/tokenizer.py` would put bench/ first on sys.path, where this file shadows the standard
library's `tokenize` module and breaks unrelated imports.)

What it measures, all in one run on the same texts:
  * training: `train_tokenizer` streaming the Parquet shards (the stage's code path), and, for scale,
    `Tokenizer.train_from_iterator` on the whole documents held in memory;
  * ceiling: `Tokenizer.encode_batch` on the whole documents in memory (the target's baseline), and
    `encode_batch_fast` on the same ~8 KB pieces the stage encodes (isolates the stage's own overhead);
  * packing: `pack_documents` end to end, Parquet shards in -> token shards and counts out.
The books are first converted to Parquet document shards in a temporary directory (not timed).
Rounds alternate the measurements; best and median of the rounds are printed with their ratios.
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

REPO = Path(__file__).resolve().parents[1]


def default_books_dir() -> Path:
    root = os.environ.get("LLMPIPE_DATA") or REPO / ".." / "shared" / "data"
    return Path(root).resolve() / "books"


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


def encode_in_groups(encode, texts: list[str], group_bytes: int = 64 << 20) -> tuple[int, float, float]:
    """Encode `texts` in calls of about group_bytes (bounds the memory of the Encoding objects).

    Returns (tokens, wall seconds, CPU seconds) where the times cover the encode calls alone: counting
    the ids afterwards is Python work the ceiling must not be charged for.
    """
    tokens, wall, cpu = 0, 0.0, 0.0
    groups, group, size = [], [], 0
    for text in texts:
        group.append(text)
        size += len(text)
        if size >= group_bytes:
            groups.append(group)
            group, size = [], 0
    groups += [group] if group else []
    for group in groups:
        encodings, w, c = timed(encode, group, add_special_tokens=False)
        wall, cpu = wall + w, cpu + c
        tokens += sum(len(e.ids) for e in encodings)
        del encodings
    return tokens, wall, cpu


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=default_books_dir(), help="books directory")
    parser.add_argument("--max-mb", type=float, default=60.0, help="MB of text to use (default 60)")
    parser.add_argument("--full", action="store_true", help="use the whole corpus (331 MB)")
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=2, help="tokenizers (rayon) threads")
    parser.add_argument("--repeat", type=int, default=2, help="rounds of ceiling + packing")
    parser.add_argument("--skip-train-baseline", action="store_true",
                        help="skip training on the in-memory documents")
    return parser.parse_args()


def measure_training(store, uris, texts: list[str], cfg, mb: float, baseline: bool):
    """Train with the stage's streaming path (the tokenizer used below); optionally the in-memory baseline."""
    from tasks.tokenizer.stage import train_tokenizer, training_texts

    sample: dict = {}
    tok, wall, cpu = timed(train_tokenizer, training_texts(store, uris, cfg, sample), cfg)
    used_mb = sample["train_bytes"] / 1e6
    print(f"train (stage, streamed from Parquet): {wall:.2f} s wall, {cpu:.1f} s CPU "
          f"({cpu / wall:.2f} cores), {used_mb / wall:.2f} MB/s on {used_mb:.1f} MB (train split), "
          f"vocab {tok.get_vocab_size()}")
    if baseline:
        _, wall, cpu = timed(train_tokenizer, iter(texts), cfg)
        print(f"train (train_from_iterator, whole documents in memory, all {mb:.1f} MB): {wall:.2f} s wall, "
              f"{cpu:.1f} s CPU ({cpu / wall:.2f} cores)")
    return tok


def measure_rounds(store, uris, texts: list[str], tok, cfg, out: Path, repeat: int):
    """Alternate the two in-memory ceilings and the stage's packing, `repeat` times."""
    from tasks.core.result import Account
    from tasks.core.token_shards import dtype_for_vocab
    from tasks.tokenizer.stage import cut_text, pack_documents, special_token_ids, vocab_size_of

    eot_id, _ = special_token_ids(tok, cfg, "bench tokenizer")
    dtype = dtype_for_vocab(vocab_size_of(tok), "auto")
    pieces = [p for t in texts for p in cut_text(t)]
    runs: dict[str, list[tuple[float, float]]] = {"ceiling_whole": [], "ceiling_pieces": [], "pack": []}
    counts: dict[str, int] = {}
    for round_no in range(repeat):
        counts["whole"], wall, cpu = encode_in_groups(tok.encode_batch, texts)
        runs["ceiling_whole"].append((wall, cpu))
        counts["pieces"], wall, cpu = encode_in_groups(tok.encode_batch_fast, pieces)
        runs["ceiling_pieces"].append((wall, cpu))
        shutil.rmtree(out, ignore_errors=True)
        packer, wall, cpu = timed(pack_documents, store, uris, tok, out, cfg, dtype=dtype, eot_id=eot_id,
                                  account=Account())
        runs["pack"].append((wall, cpu))
        counts["packed"] = sum(t["tokens"] for t in packer.totals.values())
        print(f"round {round_no + 1}: " + ", ".join(f"{k} {v[-1][0]:.1f} s wall / {v[-1][1]:.1f} s CPU"
                                                    for k, v in runs.items()), flush=True)
    return runs, counts


def main() -> None:
    args = parse_args()
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)  # before the pool's first use below

    from tasks.core.docs import iter_docs
    from tasks.tokenizer.stage import TokenizeConfig

    work = Path(tempfile.mkdtemp(prefix="bench-tokenize-"))
    try:
        max_bytes = None if args.full else int(args.max_mb * 1e6)
        store, uris, text_bytes, docs = convert_books(args.data, work / "docs", max_bytes)
        mb = text_bytes / 1e6
        print(f"corpus: {docs} books, {mb:.1f} MB of text, {len(uris)} Parquet shards; "
              f"{args.threads} threads on {os.cpu_count()} cores", flush=True)
        texts = [d["text"] for d in iter_docs(store, uris, batch_rows=64)
                 if d["text"] and not d["text"].isspace()]
        cfg = TokenizeConfig(vocab_size=args.vocab_size)
        tok = measure_training(store, uris, texts, cfg, mb, baseline=not args.skip_train_baseline)
        runs, counts = measure_rounds(store, uris, texts, tok, cfg, work / "tokens", args.repeat)
        report(runs, mb, counts, len(texts))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(runs: dict[str, list[tuple[float, float]]], mb: float, counts: dict[str, int], docs: int) -> None:
    labels = {"ceiling_whole": "encode_batch, whole docs in memory (ceiling)",
              "ceiling_pieces": "encode_batch_fast, same 8 KB pieces in memory",
              "pack": "stage packing, Parquet -> token shards"}
    best = {k: mb / min(w for w, _ in v) for k, v in runs.items()}
    median = {k: mb / statistics.median(w for w, _ in v) for k, v in runs.items()}
    print(f"\n{'':48s} {'best MB/s':>10s} {'median MB/s':>12s} {'CPU s (best)':>13s}")
    for key, label in labels.items():
        cpu = min(runs[key], key=lambda r: r[0])[1]
        print(f"{label:48s} {best[key]:10.2f} {median[key]:12.2f} {cpu:13.1f}")
    print(f"\npacking / encode_batch ceiling: {best['pack'] / best['ceiling_whole']:.2f}x best-to-best, "
          f"{median['pack'] / median['ceiling_whole']:.2f}x median (target >= 0.8x)")
    print(f"packing / same-pieces encode: {best['pack'] / best['ceiling_pieces']:.2f}x best-to-best, "
          f"{median['pack'] / median['ceiling_pieces']:.2f}x median (the stage's own I/O and bookkeeping)")
    cpu = {k: min(c for _, c in v) for k, v in runs.items()}
    print(f"by CPU time (less sensitive to other load on the machine): packing / encode_batch ceiling "
          f"{cpu['ceiling_whole'] / cpu['pack']:.2f}x, packing / same-pieces encode "
          f"{cpu['ceiling_pieces'] / cpu['pack']:.2f}x")
    same = counts["whole"] + docs == counts["packed"] and counts["pieces"] == counts["whole"]
    print(f"check: whole-doc tokens {counts['whole']} + {docs} eot == packed {counts['packed']}, "
          f"pieces {counts['pieces']}: {'OK' if same else 'MISMATCH'}")


if __name__ == "__main__":
    main()
