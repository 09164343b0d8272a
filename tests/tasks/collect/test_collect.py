"""The collect stage: every format, every bad-input case, incremental runs, URLs, hub datasets, demo text."""
from __future__ import annotations

import base64
import gzip
import http.server
import json
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from tasks.collect import sources
from tasks.collect.stage import STAGE, CollectConfig, SourceConfig, source_from_arg, split_text
from tasks.core.docs import read_all
from tasks.core.errors import UserError
from tasks.core.stage import run_stage
from tasks.core.store import Store


def collect(ctx, tmp_path, path, **kw):
    src_kw = {k: kw.pop(k) for k in ("text_field", "format") if k in kw}
    cfg = CollectConfig(sources=[SourceConfig(name="s", path=str(path), **src_kw)], **kw)
    result = run_stage(STAGE, cfg, {}, ctx)
    assert result.stats["balanced"], result.stats
    s = result.stats
    assert s["docs_in"] == s["docs_out"] + sum(s["dropped"].values()) + s["quarantined"]
    return result, read_all(Store(ctx.store), result.files("docs"))


def quarantine_records(result) -> list[dict]:
    out = []
    for uri in result.files("quarantine"):
        out += [json.loads(line) for line in Path(uri).read_text().splitlines()]
    return out


def test_every_format(ctx, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.txt").write_text("plain text document")
    (d / "b.md").write_text("# Title\n\nmarkdown body")
    (d / "c.jsonl").write_text('{"text": "line one", "author": "x"}\n{"text": "line two"}\n')
    (d / "d.json").write_text(json.dumps([{"text": "json one"}, {"text": "json two"}]))
    with gzip.open(d / "e.jsonl.gz", "wt") as f:
        f.write('{"text": "gzipped line"}\n')
    (d / "f.csv").write_text("id,text\n1,csv row one\n2,\"csv, row two\"\n")
    pq.write_table(pa.table({"text": ["parquet row"], "n": [1]}), d / "g.parquet")
    with gzip.open(d / "h.txt.gz", "wt") as f:
        f.write("gzipped text file")
    result, docs = collect(ctx, tmp_path, d)
    texts = sorted(doc["text"] for doc in docs)
    assert texts == sorted(["plain text document", "# Title\n\nmarkdown body", "line one", "line two", "json one",
                            "json two", "gzipped line", "csv row one", "csv, row two", "parquet row",
                            "gzipped text file"])
    by_text = {doc["text"]: json.loads(doc["meta"]) for doc in docs}
    assert by_text["line one"]["author"] == "x" and by_text["line one"]["item"] == "c.jsonl:1"
    assert result.stats["sources"]["s"]["docs_out"] == 11


def test_ids_are_stable_and_depend_on_content(ctx, tmp_path, tmp_path_factory):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.jsonl").write_text('{"text": "same"}\n{"text": "other"}\n')
    _, docs1 = collect(ctx, tmp_path, d)
    ctx2 = ctx.model_copy(update={"store": str(tmp_path_factory.mktemp("s2"))})
    _, docs2 = collect(ctx2, tmp_path, d)
    assert [x["id"] for x in docs1] == [x["id"] for x in docs2]
    assert len({x["id"] for x in docs1}) == 2


def test_invalid_utf8_repaired_and_counted(ctx, tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"good start \xff\xfe bad bytes")
    result, docs = collect(ctx, tmp_path, p)
    assert docs[0]["text"] == "good start \ufffd\ufffd bad bytes"
    assert result.stats["counters"]["utf8_repaired"] == 1


def test_invalid_utf8_quarantined_when_configured(ctx, tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    result, docs = collect(ctx, tmp_path, p, invalid_utf8="quarantine", quarantine_raw=True)
    assert [d["text"] for d in docs] == ["fine"]
    # the line is checked before it is parsed: invalid_utf8, with its line and its bytes
    recs = quarantine_records(result)
    assert [(r["item"], r["reason"], r["line"]) for r in recs] == [("bad.jsonl:2", "invalid_utf8", 2)]
    assert base64.b64decode(recs[0]["raw_base64"]) == b'{"text": "caf\xe9"}\n'
    p2 = tmp_path / "bad2.txt"
    p2.write_bytes(b"caf\xe9 au lait")
    result2, docs2 = collect(ctx, tmp_path, p2, invalid_utf8="quarantine")
    assert docs2 == [] and result2.stats["quarantine_reasons"] == {"invalid_utf8": 1}
    rec = quarantine_records(result2)[0]
    assert rec["reason"] == "invalid_utf8" and "byte 3" in rec["detail"] and "raw_base64" not in rec
    assert rec["excerpt"] == "xxx\ufffd xx xxxx" and rec["bytes"] == 12 and len(rec["sha256"]) == 64


def test_invalid_utf8_in_jsonl_repaired_and_counted(ctx, tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9 au lait"}\n{"text": "also fine", "k": "\xff"}\n')
    result, docs = collect(ctx, tmp_path, p)
    assert [d["text"] for d in docs] == ["fine", "caf\ufffd au lait", "also fine"]
    assert result.stats["counters"]["utf8_repaired"] == 2 and result.stats["quarantined"] == 0


def test_csv_field_over_128_kib_is_read(ctx, tmp_path):
    p = tmp_path / "big.csv"
    big = "word " * 40_000  # 200 KB, over csv's default field limit
    p.write_text(f"id,text\n1,\"{big}\"\n2,after\n")
    result, docs = collect(ctx, tmp_path, p)
    assert [d["text"] for d in docs] == [big, "after"] and result.stats["quarantined"] == 0


def test_csv_parse_error_quarantines_the_rest_keeps_rows_before(ctx, tmp_path, monkeypatch):
    monkeypatch.setattr(sources, "CSV_FIELD_LIMIT", 50)  # the error a cell over the limit raises
    p = tmp_path / "x.csv"
    p.write_text('id,text\n1,before\n2,"' + "x" * 60 + '\nstill in the quote"\n3,after\n4,end\n')
    result, docs = collect(ctx, tmp_path, p)
    assert [d["text"] for d in docs] == ["before"]
    recs = quarantine_records(result)
    assert [(r["item"], r["reason"], r["line"]) for r in recs] == [("x.csv:3", "malformed_csv", 3)]
    assert "field larger than field limit" in recs[0]["detail"] and "lines 3-6" in recs[0]["detail"]
    assert recs[0]["excerpt"].startswith('9,"xxx') and "raw_base64" not in recs[0]
    assert result.stats["docs_in"] == 2


def test_csv_invalid_utf8_repaired_per_row_or_quarantined(ctx, tmp_path):
    p = tmp_path / "u.csv"
    p.write_bytes(b'id,text\n1,caf\xe9\n2,"two\nlines \xff\xfe"\n3,clean\n\xff,clean too\n')
    result, docs = collect(ctx, tmp_path, p)
    assert [d["text"] for d in docs] == ["caf\ufffd", "two\nlines \ufffd\ufffd", "clean", "clean too"]
    assert json.loads(docs[3]["meta"])["id"] == "\ufffd"
    assert result.stats["counters"]["utf8_repaired"] == 3  # rows, not bytes or cells
    result2, docs2 = collect(ctx, tmp_path, p, invalid_utf8="quarantine", quarantine_raw=True)
    assert [d["text"] for d in docs2] == ["clean"]
    recs = quarantine_records(result2)
    assert [(r["item"], r["line"]) for r in recs] == [("u.csv:2", 2), ("u.csv:3", 3), ("u.csv:5", 6)]
    assert {r["reason"] for r in recs} == {"invalid_utf8"}
    assert base64.b64decode(recs[1]["raw_base64"]) == b'2,"two\nlines \xff\xfe"\n'


def test_malformed_jsonl_lines_quarantined_rest_kept(ctx, tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text('{"text": "one"}\n{"text": broken\n{"text": "three"}\n[1, 2]\n')
    result, docs = collect(ctx, tmp_path, p)
    assert [d["text"] for d in docs] == ["one", "three"]
    recs = quarantine_records(result)
    assert [(r["item"], r["reason"]) for r in recs] == [("m.jsonl:2", "malformed_json"), ("m.jsonl:4", "not_an_object")]
    assert recs[0]["excerpt"].startswith('{"xxxx": xxxxxx')
    assert result.stats["quarantined"] == 2 and result.stats["docs_in"] == 4


def test_empty_files_and_documents_dropped(ctx, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "empty.txt").write_text("")
    (d / "blank.txt").write_text("  \n\n ")
    (d / "e.jsonl").write_text('{"text": ""}\n{"text": null}\n\n{"text": "kept"}\n')
    (d / "nothing.jsonl").write_text("")
    result, docs = collect(ctx, tmp_path, d)
    assert [x["text"] for x in docs] == ["kept"]
    assert result.stats["dropped"] == {"empty": 5}


def test_missing_field_is_a_clear_error(ctx, tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"body": "a"}\n{"body": "b"}\n')
    with pytest.raises(UserError, match=r"no record has the field 'text' \(first: x.jsonl:1\).*text_field"):
        collect(ctx, tmp_path, p)


def test_missing_field_is_judged_per_source_not_per_unit(ctx, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    # a.jsonl alone fills a 1 MB unit, so b.jsonl is a unit of its own
    (d / "a.jsonl").write_text(json.dumps({"body": "x" * 1_100_000}) + "\n")
    (d / "b.jsonl").write_text('{"text": "has it"}\n')
    result, docs = collect(ctx, tmp_path, d, unit_mb=1)
    assert result.stats["units"] == 2 and [x["text"] for x in docs] == ["has it"]
    assert result.stats["quarantine_reasons"] == {"missing_field": 1}
    (d / "b.jsonl").write_text('{"body": "not it"}\n')
    with pytest.raises(UserError, match=r"no record has the field 'text' \(first: a.jsonl:1\).*"
                                        r"collect.sources\[0\].text_field"):
        collect(ctx, tmp_path, d, unit_mb=1)


def test_limits_must_be_positive():
    for bad in ({"unit_mb": 0}, {"max_docs": 0}, {"max_docs": -1}):
        with pytest.raises(ValidationError):
            CollectConfig(**bad)
    assert CollectConfig(max_docs=1, unit_mb=1).max_docs == 1


def test_some_records_missing_field_are_quarantined(ctx, tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"text": "a"}\n{"body": "b"}\n')
    result, docs = collect(ctx, tmp_path, p)
    assert len(docs) == 1 and result.stats["quarantine_reasons"] == {"missing_field": 1}


def test_missing_column_is_a_clear_error(ctx, tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("id,body\n1,hello\n")
    with pytest.raises(UserError, match=r"has no column 'text' \(columns: \['id', 'body'\]\)"):
        collect(ctx, tmp_path, p)


def test_missing_path_is_a_clear_error(ctx, tmp_path):
    with pytest.raises(UserError, match=r"collect.sources\[0\].path \(s\) '.*nope.jsonl' does not exist"):
        collect(ctx, tmp_path, tmp_path / "nope.jsonl")
    with pytest.raises(UserError, match=r"collect.sources\[0\].path \(s\) '.*' matches no files"):
        collect(ctx, tmp_path, tmp_path / "*.jsonl")


def test_corrupt_gzip_quarantined_run_continues(ctx, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    import random

    rng = random.Random(0)
    lines = "".join(json.dumps({"text": " ".join(str(rng.random()) for _ in range(50))}) + "\n" for _ in range(2000))
    good = gzip.compress(lines.encode())
    (d / "cut.jsonl.gz").write_bytes(good[: len(good) // 2])  # truncated
    (d / "garbage.jsonl.gz").write_bytes(b"this is not gzip at all")
    (d / "fine.jsonl").write_text('{"text": "fine"}\n')
    result, docs = collect(ctx, tmp_path, d)
    reasons = result.stats["quarantine_reasons"]
    assert reasons == {"corrupt_gzip": 2}
    assert "fine" in {x["text"] for x in docs} and len(docs) > 100  # lines before the cut are kept
    recs = {r["item"]: r for r in quarantine_records(result)}
    assert set(recs) == {"cut.jsonl.gz", "garbage.jsonl.gz"} and "after line" in recs["cut.jsonl.gz"]["detail"]


def test_oversize_split_or_drop(ctx, tmp_path):
    p = tmp_path / "big.txt"
    paragraphs = [f"paragraph {i} " + "word " * 30 for i in range(50)]
    text = "\n\n".join(paragraphs)
    p.write_text(text)
    result, docs = collect(ctx, tmp_path, p, max_doc_chars=1000)
    assert result.stats["docs_out"] == 1 and result.stats["rows_out"] == len(docs) > 1
    assert all(len(x["text"]) <= 1000 for x in docs)
    assert "".join(x["text"] for x in docs) == text
    assert json.loads(docs[1]["meta"])["piece"] == 1
    result2, docs2 = collect(ctx, tmp_path, p, max_doc_chars=1000, oversize="drop")
    assert docs2 == [] and result2.stats["dropped"] == {"oversize": 1}


def test_split_text_bounds():
    text = "abc " * 1000
    pieces = split_text(text, 97)
    assert "".join(pieces) == text and all(len(p) <= 97 for p in pieces)
    assert split_text("x" * 250, 100) == ["x" * 100, "x" * 100, "x" * 50]


def test_incremental_collects_only_new_or_changed(ctx, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "a.txt").write_text("first document")
    (d / "b.txt").write_text("second document")
    first, docs = collect(ctx, tmp_path, d, incremental=True)
    assert first.stats["new_docs"] == 2
    time.sleep(0.01)
    (d / "c.txt").write_text("third document")
    (d / "b.txt").write_text("second document, changed")
    second, docs2 = collect(ctx, tmp_path, d, incremental=True)
    assert sorted(x["text"] for x in docs2) == ["second document, changed", "third document"]
    assert second.stats["dropped"] == {"already_collected": 1} and second.stats["new_docs"] == 2
    again, docs3 = collect(ctx, tmp_path, d, incremental=True)  # compared with the second run's ledger
    assert docs3 == [] and again.stats["dropped"] == {"already_collected": 3}
    plain, _ = collect(ctx, tmp_path, d)  # not incremental: everything, and its ledger covers it all
    assert plain.stats["docs_out"] == 3


def test_incremental_history_survives_a_full_run(ctx, tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for name in "abc":
        (d / f"{name}.txt").write_text(f"document {name}")
    first, _ = collect(ctx, tmp_path, d, incremental=True)
    assert first.stats["new_docs"] == 3
    subset, _ = collect(ctx, tmp_path, d / "a.txt")  # a full run on part of the corpus
    assert subset.stats["docs_out"] == 1 and subset.stats["ledger_generation"] == 2
    again, docs = collect(ctx, tmp_path, d, incremental=True)
    assert docs == [] and again.stats["new_docs"] == 0 and again.stats["dropped"] == {"already_collected": 3}


def test_max_docs_caps_in_source_order(ctx, tmp_path):
    p = tmp_path / "n.jsonl"
    p.write_text("".join(json.dumps({"text": f"doc {i}"}) + "\n" for i in range(20)))
    result, docs = collect(ctx, tmp_path, p, max_docs=7)
    assert [x["text"] for x in docs] == [f"doc {i}" for i in range(7)]


def test_demo_source_needs_no_download(ctx):
    cfg = CollectConfig(sources=[SourceConfig(name="demo", kind="demo")], max_docs=30)
    result = run_stage(STAGE, cfg, {}, ctx)
    docs = read_all(Store(ctx.store), result.files("docs"))
    assert len(docs) == 30 and all(x["text"].strip() for x in docs)


def test_source_from_arg_kinds(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert source_from_arg("demo", 0).kind == "demo"
    assert source_from_arg("https://x.org/a.txt", 0).kind == "url"
    assert source_from_arg(str(tmp_path), 0).kind == "files"
    assert source_from_arg("./data/*.jsonl", 0).kind == "files"
    assert source_from_arg("nyu-mll/glue", 0).kind == "hub"  # org/name, not here: the hub
    assert source_from_arg("hf://org/name", 0).dataset == "org/name"
    assert source_from_arg("hf://imdb", 0).dataset == "imdb"
    # no "/", a trailing "/", deeper paths or a file extension: local paths, even when missing
    for arg in ("imdb", "corpus/", "a/b/c", "org/name.jsonl"):
        assert source_from_arg(arg, 0).path == arg, arg
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").mkdir()
    assert source_from_arg("org/name", 0).kind == "files"  # org/name that exists here: the directory


def test_missing_bare_name_suggests_hub_syntax(ctx, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = CollectConfig(sources=[source_from_arg("imdb", 1)])
    with pytest.raises(UserError, match=r"collect.sources\[0\].path \(cli-1\) 'imdb' does not exist.*hf://imdb"):
        run_stage(STAGE, cfg, {}, ctx)


# --- URLs ----------------------------------------------------------------------------------------------------

class Handler(http.server.BaseHTTPRequestHandler):
    hits: dict[str, int] = {}

    def do_GET(self):
        n = Handler.hits[self.path] = Handler.hits.get(self.path, 0) + 1
        if self.path == "/flaky.jsonl" and n <= 2:
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.end_headers()
            return
        if self.path in ("/flaky.jsonl", "/ok.jsonl"):
            body = b'{"text": "from the web"}\n{"text": "second"}\n'
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def http_base():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Handler.hits = {}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_url_source_retries_5xx(ctx, http_base):
    cfg = CollectConfig(sources=[SourceConfig(name="web", url=f"{http_base}/flaky.jsonl")], http_retries=3,
                        http_backoff=0.05)
    result = run_stage(STAGE, cfg, {}, ctx)
    docs = read_all(Store(ctx.store), result.files("docs"))
    assert [x["text"] for x in docs] == ["from the web", "second"]
    assert Handler.hits["/flaky.jsonl"] == 3
    assert json.loads(docs[0]["meta"])["item"].endswith("/flaky.jsonl#flaky.jsonl:1")


def test_url_404_is_not_retried(ctx, http_base):
    cfg = CollectConfig(sources=[SourceConfig(name="web", url=f"{http_base}/missing.jsonl")], http_retries=3)
    with pytest.raises(UserError, match="HTTP 404"):
        run_stage(STAGE, cfg, {}, ctx)
    assert Handler.hits["/missing.jsonl"] == 1


def test_dataset_source_reads_through_the_datasets_library(ctx, tmp_path, monkeypatch):
    """The hub code path (datasets.load_dataset, split, text field) on a dataset directory on disk."""
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # proves nothing is fetched
    d = tmp_path / "my_dataset"
    d.mkdir()
    (d / "train.jsonl").write_text("".join(json.dumps({"body": f"row {i}", "label": i}) + "\n" for i in range(5)))
    (d / "test.jsonl").write_text(json.dumps({"body": "held out"}) + "\n")
    cfg = CollectConfig(sources=[SourceConfig(name="ds", dataset=str(d), split="train", text_field="body")])
    result = run_stage(STAGE, cfg, {}, ctx)
    docs = read_all(Store(ctx.store), result.files("docs"))
    assert [x["text"] for x in docs] == [f"row {i}" for i in range(5)]
    assert json.loads(docs[2]["meta"])["label"] == 2


def test_hub_dataset_offline_fails_fast_with_help(ctx, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: as offline as it gets
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cfg = CollectConfig(sources=[SourceConfig(name="hub", dataset="nyu-mll/glue", config_name="sst2")])
    start = time.perf_counter()
    with pytest.raises(UserError, match=r"cannot load hub dataset 'nyu-mll/glue'.*--source /path/to/data.jsonl"):
        run_stage(STAGE, cfg, {}, ctx)
    assert time.perf_counter() - start < 10


def test_hub_dataset_with_offline_flag_fails_fast(ctx, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", "/nonexistent-llmpipe-cache")
    cfg = CollectConfig(sources=[SourceConfig(name="hub", dataset="nyu-mll/glue", config_name="sst2")])
    start = time.perf_counter()
    with pytest.raises(UserError, match="cannot load hub dataset"):
        run_stage(STAGE, cfg, {}, ctx)
    assert time.perf_counter() - start < 15
