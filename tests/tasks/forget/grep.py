"""A `grep` of a whole store for some sentences: raw bytes of every file, and what the bytes hide (Parquet
string columns, gzip, JSON strings with escapes or in base64, token shards decoded with every tokenizer.json
in the store)."""
from __future__ import annotations

import base64
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})+(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")


def grep_store(root: Path, needles: list[str]) -> dict[str, list[str]]:
    """{needle: [files holding it, as `path (how)`]} for the needles found anywhere under `root`."""
    tokenizers = _tokenizers(root)
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        for how, text in _views(path, tokenizers):
            for needle in needles:
                if needle in text:
                    found.setdefault(needle, []).append(f"{path.relative_to(root)} ({how})")
    return found


def _views(path: Path, tokenizers: list) -> list[tuple[str, str]]:
    data = path.read_bytes()
    views = [("bytes", data.decode("utf-8", "replace"))]
    if data[:2] == b"\x1f\x8b":
        views.append(("gzip", gzip.decompress(data).decode("utf-8", "replace")))
    if data[:4] == b"PAR1":
        table = pq.read_table(path)
        for name in table.column_names:
            column = table.column(name)
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
                views.append((f"parquet column {name}", "\n".join(v for v in column.to_pylist() if v)))
    if path.suffix in (".json", ".jsonl"):
        views.append(("json strings", _json_strings(data)))
    if path.suffix == ".bin":
        for dtype in (np.uint16, np.uint32):
            ids = np.frombuffer(data[: len(data) // np.dtype(dtype).itemsize * np.dtype(dtype).itemsize], dtype)
            for tok in tokenizers:
                ids_ok = ids[ids < tok.get_vocab_size()].tolist()
                views.append((f"token shard as {np.dtype(dtype).name}", tok.decode(ids_ok)))
    return views


def _json_strings(data: bytes) -> str:
    """Every string of a JSON (or JSON lines) file, unescaped (`\\u00e9` hides an é from a byte grep)."""
    out: list[str] = []

    def walk(value) -> None:
        if isinstance(value, str):
            out.append(value)
            if len(value) >= 8 and _BASE64.fullmatch(value):  # quarantine's raw_base64, say
                out.append(base64.b64decode(value).decode("utf-8", "replace"))
        elif isinstance(value, dict):
            for k, v in value.items():
                out.append(k)
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for line in data.decode("utf-8", "replace").splitlines() or [""]:
        try:
            walk(json.loads(line))
        except ValueError:
            try:
                walk(json.loads(data))
            except ValueError:
                pass
            break
    return "\n".join(out)


def _tokenizers(root: Path) -> list:
    from tokenizers import Tokenizer

    return [Tokenizer.from_file(str(p)) for p in sorted(root.rglob("tokenizer.json"))
            if p.stat().st_size > 1000]  # vocabularies, not the tokenize stage's small unit marker
