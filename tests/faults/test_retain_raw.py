"""retain_raw: false deletes the text upstream of pii once pii has finished, without breaking caching."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from flows.cli import main

PLANTED = "Cordelia Wrenfield-Abernathy"


def _corpus(tmp_path: Path) -> Path:
    path = tmp_path / "letters.jsonl"
    lines = [json.dumps({"text": f"Letter {i}. Please write to cordelia.w{i}@example.org about the parcel "
                                 f"and the garden; the weather has been mild and the roses are early this "
                                 f"year, which pleases everyone in the village a great deal. {PLANTED}."})
             for i in range(12)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _run(tmp_path: Path, corpus: Path, *extra: str) -> dict:
    out = tmp_path / "s.json"
    args = ["run", "demo", "--source", str(corpus), "--until", "pii", "--set", f"store={tmp_path / 'store'}",
            "--set", "pii.nlp_model=null", "--set", "retain_raw=false", "--set", "runner.workers=1", *extra, "--summary", str(out)]
    assert main(args) == 0
    return json.loads(out.read_text())


def _parquet_emails(root: Path) -> int:
    found = 0
    for path in root.rglob("*.parquet"):
        table = pq.read_table(path)
        if "text" in table.column_names:  # documents (not the ledger's or the index's hash tables)
            found += sum("@example.org" in t for t in table.column("text").to_pylist())
    return found


def test_raw_text_is_deleted_after_pii_and_regenerated_when_needed(prefect_server, tmp_path):
    corpus = _corpus(tmp_path)
    first = _run(tmp_path, corpus)
    assert first["purged_raw"] == ["collect", "clean", "dedup"]
    store = Path(first["store"])
    assert _parquet_emails(store / "pii") == 0
    assert _parquet_emails(store / "collect") == _parquet_emails(store / "clean") == 0
    assert not list((store / "dedup").rglob("docs/*.parquet"))
    again = _run(tmp_path, corpus)
    assert {n: e["status"] for n, e in again["stages"].items()} == dict.fromkeys(
        ["collect", "clean", "dedup", "pii"], "cached")
    # a changed pii config needs the text again: it is regenerated from the sources, then deleted again
    changed = _run(tmp_path, corpus, "--set", "pii.default_operator.type=mask")
    assert changed["stages"]["pii"]["status"] == "completed"
    assert changed["stages"]["pii"]["stats"]["docs_in"] == first["stages"]["pii"]["stats"]["docs_in"]
    assert changed["purged_raw"] == ["collect", "clean", "dedup"]
    assert _parquet_emails(store) == 0
    assert main(["verify", "demo", "--source", str(corpus), "--set", f"store={store}", "--set",
                 "pii.nlp_model=null"]) == 0
