"""The readers of tasks/collect/sources.py on their own: formats, globs, records, downloads."""
from __future__ import annotations

import gzip
import http.server
import json
import threading

import pytest

from tasks.collect import sources
from tasks.collect.sources import BadRecord, RawRecord, decode_text, expand_files, format_of, read_file
from tasks.core.errors import UserError


def test_format_from_name_looks_through_gz():
    assert format_of("a/b.JSONL.gz") == "jsonl" and format_of("x.md") == "md" and format_of("x.csv") == "csv"
    assert format_of("x.bin") is None and format_of("x.bin", "txt") == "txt"


def test_expand_files_glob_directory_and_errors(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    for name in ("d/a.txt", "d/sub/b.jsonl", "d/.hidden.txt", "d/skip.bin"):
        (tmp_path / name).write_text("x")
    base, files = expand_files(str(tmp_path / "d"))
    assert base == (tmp_path / "d").resolve() and [f.name for f in files] == ["a.txt", "b.jsonl"]
    base, files = expand_files(str(tmp_path / "d" / "**" / "*.jsonl"))
    assert base == (tmp_path / "d").resolve() and [f.name for f in files] == ["b.jsonl"]
    with pytest.raises(UserError, match="matches no files"):
        expand_files(str(tmp_path / "*.parquet"))
    with pytest.raises(UserError, match="hf://corpus"):
        expand_files("corpus")
    with pytest.raises(UserError, match="cannot tell the format"):
        expand_files(str(tmp_path / "d" / "skip.bin"))


def test_jsonl_records_name_file_and_line(tmp_path):
    path = tmp_path / "x.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"text": "one", "title": "t"}) + "\n{broken\n" + json.dumps({"body": "no text"}) + "\n")
    recs = list(read_file(path, "x.jsonl.gz", "jsonl", "text"))
    assert isinstance(recs[0], RawRecord) and recs[0].item == "x.jsonl.gz:1" and recs[0].meta["title"] == "t"
    assert isinstance(recs[1], BadRecord) and recs[1].reason == "malformed_json" and recs[1].line == 2
    assert isinstance(recs[2], BadRecord) and recs[2].item == "x.jsonl.gz:3"


def test_corrupt_gzip_keeps_what_was_readable(tmp_path):
    good = gzip.compress(b"".join(json.dumps({"text": f"doc {i}"}).encode() + b"\n" for i in range(200)))
    path = tmp_path / "cut.jsonl.gz"
    path.write_bytes(good[: len(good) // 2])
    recs = list(read_file(path, "cut.jsonl.gz", "jsonl", "text"))
    assert isinstance(recs[-1], BadRecord) and recs[-1].reason == "corrupt_gzip"
    assert all(isinstance(r, RawRecord) for r in recs[:-1]) and recs[:-1]


def test_decode_text_reports_the_first_bad_byte():
    assert decode_text("héllo".encode()) == ("héllo", None)
    text, at = decode_text(b"ab\xffcd")
    assert at == 2 and text == "ab\ufffdcd"


class _Flaky(http.server.BaseHTTPRequestHandler):
    calls = 0

    def do_GET(self):  # noqa: N802 - the stdlib's name
        type(self).calls += 1
        if type(self).calls == 1:
            self.send_response(503)
            self.send_header("Retry-After", "0")
            self.end_headers()
            return
        body = b"hello\n" if self.path == "/ok.txt" else b""
        self.send_response(200 if self.path == "/ok.txt" else 404)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_download_retries_503_then_fails_fast_on_404(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        assert sources.download(f"{url}/ok.txt", tmp_path / "ok.txt", backoff=0.01).read_text() == "hello\n"
        assert _Flaky.calls == 2  # one 503, then the file
        with pytest.raises(UserError, match="HTTP 404"):
            sources.download(f"{url}/missing.txt", tmp_path / "m.txt", backoff=0.01)
        assert _Flaky.calls == 3 and not (tmp_path / "m.txt").exists()
    finally:
        server.shutdown()
    assert sources.url_filename("https://x.org/a/b.jsonl?x=1") == "b.jsonl"
    assert sources.url_filename("https://x.org/") == "index.txt"


def test_demo_reader_needs_no_network():
    recs = list(sources.read_demo(max_modules=3))
    assert recs and all(isinstance(r, RawRecord) for r in recs)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32", "utf-32-be"])
def test_utf16_and_utf32_files_with_a_bom_are_decoded_as_such(tmp_path, encoding):
    bom = {"utf-16-be": b"\xfe\xff", "utf-32-be": b"\x00\x00\xfe\xff"}.get(encoding, b"")
    text = "Crème brûlée — naïve café\nsecond line"
    (tmp_path / "a.txt").write_bytes(bom + text.encode(encoding))
    (tmp_path / "b.jsonl").write_bytes(bom + (json.dumps({"text": text}, ensure_ascii=False) + "\n").encode(encoding))
    (rec,) = read_file(tmp_path / "a.txt", "a.txt", "txt", "text")
    assert decode_text(rec.data) == (text, None)
    (rec,) = read_file(tmp_path / "b.jsonl", "b.jsonl", "jsonl", "text")
    assert rec.data == text and not rec.utf8_repaired


def test_a_binary_file_with_a_text_name_is_quarantined_as_binary(tmp_path):
    (tmp_path / "lib.txt").write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)) * 4)
    (rec,) = read_file(tmp_path / "lib.txt", "lib.txt", "txt", "text")
    assert isinstance(rec, BadRecord) and rec.reason == "binary"
