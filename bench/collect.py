"""Collect throughput on the books corpus, against a plain read of the same files in the same run.

    python -m bench.collect [--workers 2] [--files 6]

Prints MB/s of text and peak RSS (whole process tree) for: a plain `gzip` + `json.loads` loop,
`pyarrow.json.read_json`, and llmpipe's collect stage (1 worker and N workers), plus ratios.
Each measurement runs in its own subprocess so imports and memory do not leak between them.
"""
from __future__ import annotations

import argparse
import glob
import gzip
import json
import sys
import tempfile
import time

from bench.common import run_measured, shared_data


def plain_json(files: list[str]) -> dict:
    n = nbytes = 0
    for path in files:
        with gzip.open(path, "rb") as f:
            for line in f:
                rec = json.loads(line)
                n += 1
                nbytes += len(rec["text"].encode())
    return {"docs": n, "bytes": nbytes}


def plain_arrow(files: list[str]) -> dict:
    import pyarrow.compute as pc
    import pyarrow.json as pj

    n = nbytes = 0
    for path in files:
        table = pj.read_json(path, read_options=pj.ReadOptions(block_size=64 << 20))
        n += table.num_rows
        nbytes += pc.sum(pc.binary_length(table.column("text"))).as_py()
    return {"docs": n, "bytes": nbytes}


def llmpipe_collect(files: list[str], workers: int) -> dict:
    from tasks.collect.stage import STAGE, CollectConfig, SourceConfig
    from tasks.core.stage import RunContext, RunnerConfig, run_stage

    store = tempfile.mkdtemp(prefix="bench-collect-")
    sources = [SourceConfig(name=f"books{i}", path=f) for i, f in enumerate(files)]
    cfg = CollectConfig(sources=sources, unit_mb=16)
    ctx = RunContext(store=store, pipeline="bench", run_id="bench", runner=RunnerConfig(workers=workers))
    result = run_stage(STAGE, cfg, {}, ctx)
    return {"docs": result.stats["docs_out"], "bytes": int(result.stats["counters"]["bytes_in"])}


def one(mode: str, files: list[str], workers: int) -> None:
    if mode == "collect":  # the interpreter's imports are not part of the stage's throughput
        import tasks.collect.stage  # noqa: F401
    start = time.perf_counter()
    out = {"plain_json": lambda: plain_json(files), "plain_arrow": lambda: plain_arrow(files),
           "collect": lambda: llmpipe_collect(files, workers)}[mode]()
    out["seconds"] = time.perf_counter() - start
    print(json.dumps(out))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=6, help="how many of the 6 book shards to read")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    files = sorted(glob.glob(str(shared_data() / "books" / "*.jsonl.gz")))[: args.files]
    if args.one:
        one(args.one, files, args.workers)
        return {}
    runs = [("plain_json", 1), ("plain_arrow", 1), ("collect", 1), ("collect", args.workers)]
    figures = {}
    for mode, workers in runs:
        res, _, peak = run_measured(["-m", "bench.collect", "--one", mode, "--files", str(args.files),
                                     "--workers", str(workers)])
        label = mode if mode != "collect" else f"collect_{workers}w"
        figures[label] = {"mb_per_s": res["bytes"] / 1e6 / res["seconds"], "seconds": res["seconds"],
                          "docs": res["docs"], "text_mb": res["bytes"] / 1e6, "peak_rss_mb": peak}
    base = figures["plain_json"]["mb_per_s"]
    print(f"books: {len(files)} files, {figures['plain_json']['text_mb']:.1f} MB of text, "
          f"{figures['plain_json']['docs']} documents")
    print(f"{'reader':<16}{'MB/s':>9}{'seconds':>9}{'peak RSS MB':>13}{'vs gzip+json':>14}")
    for label, f in figures.items():
        f["ratio_vs_plain_json"] = f["mb_per_s"] / base
        f["ratio_vs_plain_arrow"] = f["mb_per_s"] / figures["plain_arrow"]["mb_per_s"]
        print(f"{label:<16}{f['mb_per_s']:>9.1f}{f['seconds']:>9.2f}{f['peak_rss_mb']:>13.0f}"
              f"{f['ratio_vs_plain_json']:>13.2f}x")
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
