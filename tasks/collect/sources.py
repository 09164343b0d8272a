"""Readers for collect's sources: local files of every supported format, HTTP(S) URLs, hub datasets, demo text.

Each reader yields `RawRecord`s (or `BadRecord`s for input that cannot become a document) one at a
time, so memory stays flat whatever the file size (except one-document-per-file formats, which hold
one document).
"""
from __future__ import annotations

import ast
import codecs
import csv
import glob
import gzip
import io
import json
import os
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from tasks.core.errors import UserError

FORMATS = ("txt", "md", "jsonl", "json", "parquet", "csv")
_EXT = {".txt": "txt", ".text": "txt", ".md": "md", ".markdown": "md", ".jsonl": "jsonl", ".ndjson": "jsonl",
        ".json": "json", ".parquet": "parquet", ".csv": "csv"}
GLOB_CHARS = set("*?[")
# csv's default cap is 128 KiB per cell; a cell is a document like a whole text file is, and long ones
# are split later, so allow any cell that fits a C long on every platform
CSV_FIELD_LIMIT = 2**31 - 1
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what errors="surrogateescape" makes of an invalid byte


@dataclass
class RawRecord:
    """One document as read: `item` names it within its source (path, path:line, row)."""

    item: str
    data: bytes | str  # bytes where the encoding is still to be checked
    meta: dict[str, Any] = field(default_factory=dict)
    utf8_repaired: bool = False  # the reader replaced invalid UTF-8 in it with U+FFFD


@dataclass
class BadRecord:
    """Input that cannot become a document: quarantined with its reason, never dropped silently."""

    item: str
    reason: str
    detail: str = ""
    raw: str | None = None  # the offending input where there is one (it is part of the corpus itself)
    raw_bytes: bytes | None = None  # the offending input as bytes, where they are not valid UTF-8
    line: int | None = None  # the line of the file it starts at, where the format has lines


# --- resolving a files source ------------------------------------------------------------------------

def format_of(path: str, declared: str = "auto") -> str | None:
    """File format from the declared one or the extension (a trailing .gz is looked through)."""
    if declared != "auto":
        return declared
    name = path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return _EXT.get(os.path.splitext(name)[1])


def expand_files(pattern: str, declared_format: str = "auto", key: str = "path") -> tuple[Path, list[Path]]:
    """A file, a glob or a directory tree -> (base directory, sorted files of known formats).

    The base directory makes item names relative, so moving a corpus does not change its ids.
    """
    raw = os.path.expanduser(pattern)
    if any(c in raw for c in GLOB_CHARS):
        base = Path(_glob_base(raw))
        files = [Path(p) for p in glob.glob(raw, recursive=True) if os.path.isfile(p)]
        if not files:
            raise UserError(f"{key} '{pattern}' matches no files. Check the pattern, or the variable it uses.")
    elif os.path.isdir(raw):
        base = Path(raw)
        files = [p for p in base.rglob("*") if p.is_file() and not p.name.startswith(".")]
        files = [p for p in files if format_of(str(p), declared_format)]
        if not files:
            raise UserError(f"{key} '{pattern}' is a directory with no files of a known format "
                            f"({', '.join(FORMATS)}, optionally .gz). Set `format:` or point at the files.")
    elif os.path.isfile(raw):
        base, files = Path(raw).parent, [Path(raw)]
    else:
        raise UserError(f"{key} '{pattern}' does not exist. Check the path (relative paths are relative "
                        f"to the directory you run llmpipe from: {os.getcwd()}){_hub_hint(pattern)}.")
    for p in files:
        if format_of(str(p), declared_format) is None:
            raise UserError(f"cannot tell the format of '{p}' from its name; set `format:` on the source "
                            f"to one of {', '.join(FORMATS)}.")
    return base.resolve(), sorted(p.resolve() for p in files)


def _hub_hint(pattern: str) -> str:
    """A missing path that could be a hub dataset's name ('imdb', 'corpus/'): say how to ask for one."""
    name = pattern.rstrip("/")
    if not name or pattern.startswith((".", "/", "~")) or format_of(name) is not None:
        return ""
    return f"; for a hub dataset use hf://{name} (with --source) or `dataset: {name}` (in a source)"


def _glob_base(pattern: str) -> str:
    parts = []
    for part in Path(pattern).parts:
        if any(c in part for c in GLOB_CHARS):
            break
        parts.append(part)
    return str(Path(*parts)) if parts else "."


# --- reading one file -----------------------------------------------------------------------------------

def read_file(path: Path, rel: str, fmt: str, text_field: str,
              invalid_utf8: str = "repair") -> Iterator[RawRecord | BadRecord]:
    """Records of one local file; a corrupt gzip yields what was readable, then one BadRecord.

    invalid_utf8 ("repair" or "quarantine") says what structured formats do with a record holding
    invalid UTF-8: decode it with U+FFFD replacements and flag it, or quarantine it as invalid_utf8.
    (txt/md documents come as bytes and are checked by the caller.)
    """
    line = 0
    try:
        with _open_binary(path) as f:
            if fmt in ("txt", "md"):
                data = f.read()
                if looks_binary(data):
                    yield BadRecord(rel, "binary", "NUL bytes in the first 8 KB: not a text file (an "
                                    "executable or archive with a text name?)")
                else:
                    yield RawRecord(rel, data, {"path": rel})
            elif fmt == "jsonl":
                for line, raw in enumerate(f, start=1):
                    yield _json_line(raw, rel, line, text_field, invalid_utf8)
            elif fmt == "json":
                yield from _json_document(f.read(), rel, text_field, invalid_utf8)
            elif fmt == "csv":
                yield from _csv_rows(f, rel, text_field, path, invalid_utf8)
            elif fmt == "parquet":
                yield from _parquet_rows(f, rel, text_field, path)
            else:
                raise UserError(f"unsupported format {fmt!r} for '{path}'; use one of {', '.join(FORMATS)}")
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:
        where = f" after line {line}" if line else ""
        yield BadRecord(rel, "corrupt_gzip", f"{type(exc).__name__}: {exc}{where}")


def _open_binary(path: Path):
    """The file's bytes as UTF-8: a UTF-16 or UTF-32 file (known by its byte order mark) is transcoded."""
    f = gzip.open(path, "rb") if str(path).lower().endswith(".gz") else open(path, "rb")
    head = f.peek(4)[:4] if hasattr(f, "peek") else b""
    for bom, encoding in _WIDE_BOMS:
        if head.startswith(bom):
            with f:
                text = f.read().decode(encoding, errors="replace")  # the codec drops the BOM itself
            return io.BytesIO(text.encode("utf-8", errors="surrogatepass"))
    return f


# UTF-32 first: its little-endian mark begins with UTF-16's
_WIDE_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
              (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def looks_binary(data: bytes) -> bool:
    """Text in any 8-bit encoding or UTF-8 has no NUL bytes; executables, archives and images do."""
    return b"\x00" in data[:8192]


def decode_text(data: bytes, encoding: str = "utf-8") -> tuple[str, int | None]:
    """(text, offset of the first invalid byte or None); invalid bytes become U+FFFD."""
    try:
        return data.decode(encoding), None
    except UnicodeDecodeError as exc:
        return data.decode(encoding, errors="replace"), exc.start


def _json_line(raw: bytes, rel: str, line: int, text_field: str, invalid_utf8: str) -> RawRecord | BadRecord:
    item = f"{rel}:{line}"
    if not raw.strip():
        return RawRecord(item, b"", {"path": rel, "line": line})
    text, bad_at = decode_text(raw, "utf-8-sig")  # -sig: a byte order mark opening the file is no content
    if bad_at is not None and invalid_utf8 == "quarantine":
        return BadRecord(item, "invalid_utf8", f"line {line}: invalid UTF-8 at byte {bad_at} of the line",
                         raw_bytes=raw, line=line)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return BadRecord(item, "malformed_json", f"line {line}: {exc}", text, line=line)
    rec = _from_object(obj, item, text_field, {"path": rel, "line": line})
    if bad_at is not None and isinstance(rec, RawRecord):
        rec.utf8_repaired = True
    return rec


def _from_object(obj: Any, item: str, text_field: str, meta: dict[str, Any]) -> RawRecord | BadRecord:
    if not isinstance(obj, dict):
        return BadRecord(item, "not_an_object", f"expected a JSON object, got {type(obj).__name__}",
                         json.dumps(obj, ensure_ascii=False)[:10000])
    if text_field not in obj:
        return BadRecord(item, "missing_field", f"no field {text_field!r}; fields: {sorted(obj)[:20]}")
    text = obj[text_field]
    if text is None:
        text = ""
    if not isinstance(text, str):
        return BadRecord(item, "text_not_a_string", f"field {text_field!r} is {type(text).__name__}")
    extra = {k: v for k, v in obj.items() if k != text_field and isinstance(v, (str, int, float, bool))}
    return RawRecord(item, text, meta | extra)


def _json_document(data: bytes, rel: str, text_field: str, invalid_utf8: str) -> Iterator[RawRecord | BadRecord]:
    encoding = json.detect_encoding(data)  # JSON may be UTF-16/32 too; json.loads(bytes) allowed it
    text, bad_at = decode_text(data, encoding)
    if bad_at is not None and invalid_utf8 == "quarantine":
        yield BadRecord(rel, "invalid_utf8", f"invalid {encoding} at byte {bad_at}", raw_bytes=data)
        return
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        yield BadRecord(rel, "malformed_json", str(exc), text[:10000])
        return
    records = obj if isinstance(obj, list) else [obj]
    for i, obj_i in enumerate(records):
        rec = _from_object(obj_i, f"{rel}#{i}", text_field, {"path": rel, "index": i})
        if bad_at is not None and isinstance(rec, RawRecord):
            rec.utf8_repaired = True
        yield rec


class _LineTap:
    """Feeds a text stream to csv.reader line by line, keeping the lines of the row being read."""

    def __init__(self, stream: io.TextIOBase):
        self.stream = stream
        self.pending: list[str] = []

    def __iter__(self) -> "_LineTap":
        return self

    def __next__(self) -> str:
        line = next(self.stream)
        self.pending.append(line)
        return line

    def take(self) -> str:
        """The raw text of the row just read (several lines where a quoted cell holds newlines)."""
        text = "".join(self.pending)
        self.pending.clear()
        return text


def _csv_rows(f, rel: str, text_field: str, path: Path, invalid_utf8: str) -> Iterator[RawRecord | BadRecord]:
    """Rows as csv.DictReader sees them (row 1 the header, blank lines skipped), read by hand so that a
    row's invalid UTF-8 is found exactly (surrogateescape keeps each bad byte) and a parse error
    becomes a quarantined record."""
    csv.field_size_limit(CSV_FIELD_LIMIT)
    tap = _LineTap(io.TextIOWrapper(f, encoding="utf-8-sig", errors="surrogateescape", newline=""))
    reader = csv.reader(tap)
    header: list[str] | None = None
    row_no = 0
    while True:
        first_line = reader.line_num + 1
        try:
            values = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            yield _csv_rest_of_file(tap, rel, row_no + 1, first_line, exc)
            return
        raw = tap.take()
        if not values:
            continue
        row_no += 1
        if header is None:
            header = [_repaired(v) for v in values]
            _check_column(header, text_field, path)
            continue
        yield _csv_record(header, values, raw, rel, row_no, first_line, text_field, invalid_utf8)
    if header is None:
        _check_column(None, text_field, path)


def _check_column(header: list[str] | None, text_field: str, path: Path) -> None:
    if header is None or text_field not in header:
        raise UserError(f"'{path}' has no column {text_field!r} (columns: {header}); "
                        "set `text_field:` on the source to the column holding the text.")


def _csv_record(header: list[str], values: list[str], raw: str, rel: str, row_no: int, line: int,
                text_field: str, invalid_utf8: str) -> RawRecord | BadRecord:
    item = f"{rel}:{row_no}"
    repaired = any(_ESCAPED_BYTE.search(v) for v in values)
    if repaired:
        raw_bytes = raw.encode("utf-8", "surrogateescape")
        if invalid_utf8 == "quarantine":
            _, bad_at = decode_text(raw_bytes)
            return BadRecord(item, "invalid_utf8", f"row {row_no} (line {line}): invalid UTF-8 at byte "
                             f"{bad_at} of the row", raw_bytes=raw_bytes, line=line)
        values = [_repaired(v) for v in values]
    # as csv.DictReader: missing cells are None, cells past the header's columns are left out
    row = dict(zip(header, values + [None] * (len(header) - len(values))))
    text = row.get(text_field)
    if text is None:
        return BadRecord(item, "short_row", f"row {row_no} (line {line}) has fewer columns than the header",
                         line=line)
    extra = {k: v for k, v in row.items() if k != text_field}
    return RawRecord(item, text, {"path": rel, "line": row_no} | extra, utf8_repaired=repaired)


def _repaired(value: str) -> str:
    """A cell decoded with surrogateescape, its invalid bytes replaced by U+FFFD as errors="replace" would."""
    if not _ESCAPED_BYTE.search(value):
        return value
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _csv_rest_of_file(tap: _LineTap, rel: str, row_no: int, first_line: int, exc: csv.Error) -> BadRecord:
    """After a parse error csv.reader has lost track of quoting, so the rows it would read next are not
    trustworthy: the failed row and everything after it become one record (rows before it are kept)."""
    last_line = first_line + len(tap.pending) - 1
    kept = [tap.take()]
    size = len(kept[0])
    for line in tap.stream:  # not through the tap: the rest of a huge file is counted, not held
        last_line += 1
        if size < 10000:
            kept.append(line)
            size += len(line)
    return BadRecord(f"{rel}:{row_no}", "malformed_csv",
                     f"row {row_no} (line {first_line}): {exc}; the CSV reader cannot tell where the next row "
                     f"starts after this, so lines {first_line}-{last_line} are quarantined "
                     "as one record", _repaired("".join(kept)[:10000]), line=first_line)


def _parquet_rows(f, rel: str, text_field: str, path: Path) -> Iterator[RawRecord | BadRecord]:
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(f)
    names = pf.schema_arrow.names
    if text_field not in names:
        raise UserError(f"'{path}' has no column {text_field!r} (columns: {names}); "
                        "set `text_field:` on the source to the column holding the text.")
    row = 0
    for batch in pf.iter_batches(batch_size=1024):
        for rec in batch.to_pylist():
            yield _from_object(rec, f"{rel}#{row}", text_field, {"path": rel, "row": row})
            row += 1


# --- HTTP(S) --------------------------------------------------------------------------------------------

RETRY_STATUS = {429, 500, 502, 503, 504}


def download(url: str, dest: Path, *, retries: int = 3, timeout: float = 30.0, backoff: float = 1.0) -> Path:
    """Stream a URL to `dest`, retrying only 429 and 5xx (and connection errors), honouring Retry-After."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    attempt = 0
    while True:
        attempt += 1
        try:
            req = urllib.request.Request(url, headers={"User-Agent": "llmpipe/0.1"})
            with urllib.request.urlopen(req, timeout=timeout) as resp, open(tmp, "wb") as out:
                while block := resp.read(1 << 20):
                    out.write(block)
            os.replace(tmp, dest)
            return dest
        except urllib.error.HTTPError as exc:
            if exc.code not in RETRY_STATUS or attempt > retries:
                raise UserError(f"GET {url} failed with HTTP {exc.code} ({exc.reason})"
                                + (f" after {attempt} attempts" if attempt > 1 else "")
                                + ". Check the URL, or download the file and use a path source.") from exc
            delay = _retry_after(exc) or backoff * 2 ** (attempt - 1)
        except (urllib.error.URLError, socket.timeout, ConnectionError) as exc:
            if attempt > retries:
                raise UserError(f"GET {url} failed: {getattr(exc, 'reason', exc)} after {attempt} attempts. "
                                "Check the network, or download the file and use a path source.") from exc
            delay = backoff * 2 ** (attempt - 1)
        time.sleep(min(delay, 60.0))


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    value = exc.headers.get("Retry-After") if exc.headers else None
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def url_filename(url: str) -> str:
    path = urllib.parse.urlparse(url).path
    return os.path.basename(path) or "index.txt"


# --- Hugging Face hub -----------------------------------------------------------------------------------

def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP check, so an offline machine fails in seconds instead of retrying for ~23 s."""
    endpoint = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        with socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


def read_hub(name: str, config: str | None, split: str, text_field: str,
             revision: str | None = None) -> Iterator[RawRecord | BadRecord]:
    """Rows of a hub dataset, streamed; offline this fails at once with what to do instead."""
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
    local = os.path.exists(os.path.expanduser(name))  # a dataset saved on disk needs no hub
    if not offline and not local and not hub_reachable():
        raise UserError(_hub_help(name, "the Hugging Face hub is not reachable from this machine"))
    import datasets

    if offline:  # honour the variable even when datasets was imported before it was set
        import huggingface_hub.constants

        datasets.config.HF_HUB_OFFLINE = True
        huggingface_hub.constants.HF_HUB_OFFLINE = True
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=not offline, revision=revision)
    except Exception as exc:  # datasets raises many types; all mean the same thing to the user
        raise UserError(_hub_help(name, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")) from exc
    for row, rec in enumerate(ds):
        yield _from_object(rec, f"{name}/{config or 'default'}/{split}#{row}", text_field, {"row": row})


def _hub_help(name: str, why: str) -> str:
    return (f"cannot load hub dataset '{name}': {why}. To use a local copy, download it on a machine with "
            "network access (e.g. `datasets.load_dataset(...).to_json('data.jsonl')` or the dataset's "
            "files) and pass the files instead: `--source /path/to/data.jsonl` or a source with `path:`. "
            "With a populated Hugging Face cache, set HF_HUB_OFFLINE=1 to read from it.")


# --- the built-in demo corpus ---------------------------------------------------------------------------

def read_demo(max_modules: int | None = None) -> Iterator[RawRecord]:
    """Documentation that ships with the interpreter: pydoc topics, then one document per stdlib module
    (its docstring and those of its classes and functions). Needs no download; deterministic for a
    given Python version."""
    from pydoc_data.topics import topics

    for name in sorted(topics):
        yield RawRecord(f"pydoc:{name}", topics[name], {"kind": "pydoc_topic", "topic": name})
    stdlib = Path(os.__file__).parent
    skip = {"site-packages", "test", "tests", "idlelib", "__pycache__", "lib2to3", "turtledemo", "ensurepip",
            "pydoc_data"}
    modules = []
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in skip)
        modules.extend(Path(root) / f for f in sorted(files) if f.endswith(".py"))
    for path in modules[:max_modules]:
        rel = path.relative_to(stdlib).as_posix()
        text = _module_docs(path)
        if text is not None:
            yield RawRecord(f"stdlib:{rel}", text, {"kind": "stdlib_docstrings", "module": rel})


def _module_docs(path: Path) -> str | None:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return None
    parts = []
    module_doc = ast.get_docstring(tree)
    if module_doc:
        parts.append(module_doc)
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            doc = ast.get_docstring(node)
            if doc and not node.name.startswith("_"):
                parts.append(f"{node.name}\n\n{doc}")
    return "\n\n".join(parts) if parts else None
