"""The data stages' quality and speed, each against a baseline measured in the same run, plus the
whole-corpus figure (wall time and peak RSS of clean + dedup + pii on the books corpus).

    python -m bench.data_stages                 # everything (about 15-25 minutes on 2 cores)
    python -m bench.data_stages --skip-corpus   # the per-stage benchmarks only
    python -m bench.data_stages --only corpus   # the whole-corpus run only

Per stage (each is also runnable alone, with more options):
    python -m bench.clean    filters and normalization: docs/s and MB/s per core vs the same rules written plainly
    python -m bench.dedup    near-duplicate precision/recall on a labeled set from the books; docs/s per core
                             end to end (Parquet in and out) vs datasketch's best usage on the same documents
                             (MinHash.bulk with xxh32, MinHashLSH, exact Jaccard check)
    python -m bench.pii      recall/precision per entity on planted PII; docs/s per core vs presidio's
                             AnalyzerEngine with its default recognizers
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.common import measure, shared_data


def corpus_run(data: Path, store: Path, workers: int) -> dict[str, Any]:
    """`llmpipe run books --until collect`, then `--until pii` on the same store (collect cached)."""
    env = {"LLMPIPE_DATA": str(data)}
    figures: dict[str, Any] = {}
    for until in ("collect", "pii"):
        summary = store / f"summary-{until}.json"
        cmd = [sys.executable, "-m", "flows.cli", "run", "books", "--until", until, "--set", f"store={store}",
               "--set", f"runner.workers={workers}", "--summary", str(summary)]
        wall, peak, _ = measure(cmd, env)
        s = json.loads(summary.read_text())
        stages = {name: {"status": e["status"], "seconds": e["seconds"], "docs_in": e["stats"].get("docs_in"),
                         "docs_out": e["stats"].get("docs_out"), "rows_out": e["stats"].get("rows_out"),
                         "dropped": e["stats"].get("dropped")} for name, e in s["stages"].items()}
        figures[until] = {"wall_s": wall, "peak_rss_mb": peak, "stages": stages}
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["clean", "dedup", "pii", "corpus"], action="append")
    ap.add_argument("--skip-corpus", action="store_true")
    ap.add_argument("--workers", type=int, default=2, help="processes for the whole-corpus run")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args(argv)
    parts = args.only or ["clean", "dedup", "pii"] + ([] if args.skip_corpus else ["corpus"])
    data = shared_data()
    figures: dict[str, Any] = {}
    for part in parts:
        print(f"\n=== {part} ===", flush=True)
        if part == "corpus":
            with tempfile.TemporaryDirectory(prefix="bench-corpus-") as tmp:
                figures["corpus"] = corpus_run(data, Path(tmp), args.workers)
            _print_corpus(figures["corpus"])
        else:
            module = __import__(f"bench.{part}", fromlist=["main"])
            figures[part] = module.main([])
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return figures


def _print_corpus(fig: dict[str, Any]) -> None:
    col = fig["collect"]
    print(f"collect alone: {col['wall_s']:.1f}s wall (Prefect start included), peak RSS {col['peak_rss_mb']:.0f} MB")
    run = fig["pii"]
    data_s = sum(run["stages"][s]["seconds"] for s in ("clean", "dedup", "pii"))
    print(f"clean+dedup+pii: {data_s:.1f}s in the stages, {run['wall_s']:.1f}s wall for the command "
          f"(collect cached), peak RSS of the process tree {run['peak_rss_mb']:.0f} MB")
    for name, st in run["stages"].items():
        print(f"  {name:<8} {st['status']:<10} {st['seconds']:8.1f}s  docs {st['docs_in']} -> {st['docs_out']} "
              f"(rows {st['rows_out']}) dropped {st['dropped']}")


if __name__ == "__main__":
    main(sys.argv[1:])
