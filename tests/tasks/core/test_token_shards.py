"""Tests for the packed token shard format: writer, index, memory-mapped reader and their errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tasks.core.token_shards import FORMAT, ShardWriter, TokenSplit, dtype_for_vocab, read_index, write_index


def write_split(out: Path, docs: list[np.ndarray], dtype=np.uint16, max_tokens: int = 10, **index_extra):
    """Write `docs` (each ending in its eot) to 'train' shards of about max_tokens; returns the index path."""
    writer = ShardWriter(out, "train", dtype, max_tokens)
    for doc in docs:
        writer.append(doc)
    index_path = out / "index.json"
    write_index(index_path, dtype=dtype, vocab_size=70_000 if dtype == np.uint32 else 500, eot_id=0,
                tokenizer_sha256="ab" * 32, splits={"train": writer.close(), "val": []}, extra=index_extra)
    return index_path


DOCS = [np.array([5, 6, 7, 0]), np.array([8, 0]), np.array([9] * 9 + [0]), np.array([4, 3, 0])]


def test_round_trip_across_shard_boundaries(tmp_path):
    index_path = write_split(tmp_path, DOCS, max_tokens=5)
    index = read_index(index_path)
    shards = index["splits"]["train"]["shards"]
    # a shard closes after the document that reaches max_tokens, never inside one
    assert [(s["file"], s["tokens"], s["docs"]) for s in shards] == [
        ("train-00000.bin", 6, 2), ("train-00001.bin", 10, 1), ("train-00002.bin", 3, 1)]
    assert index["splits"]["train"]["tokens"] == 19 and index["splits"]["val"] == {
        "tokens": 0, "docs": 0, "shards": []}
    split = TokenSplit(index_path, "train")
    stream = np.concatenate(DOCS)
    assert split.total == 19
    np.testing.assert_array_equal(split.slice(0, 19), stream)
    np.testing.assert_array_equal(split.slice(4, 12), stream[4:16])  # spans three shards
    assert sorted(p.name for p in tmp_path.iterdir()) == [  # no temporary file left behind
        "index.json", "train-00000.bin", "train-00001.bin", "train-00002.bin"]


def test_dtype_is_uint16_while_the_vocabulary_fits(tmp_path):
    assert dtype_for_vocab(1 << 16) == np.uint16 and dtype_for_vocab((1 << 16) + 1) == np.uint32
    assert dtype_for_vocab(100, "uint32") == np.uint32
    with pytest.raises(ValueError, match="does not fit uint16"):
        dtype_for_vocab(70_000, "uint16")
    with pytest.raises(ValueError, match="uint16, uint32 or auto"):
        dtype_for_vocab(100, "int64")
    big = [np.array([69_999, 65_536, 0])]
    index_path = write_split(tmp_path, big, dtype=np.uint32)
    assert (tmp_path / "train-00000.bin").stat().st_size == 3 * 4
    split = TokenSplit(index_path, "train")
    assert split.dtype == np.uint32 and split.vocab_size == 70_000
    np.testing.assert_array_equal(split.slice(0, 3), big[0])  # ids above 65535 survive


def test_index_format_and_extra_keys(tmp_path):
    index_path = write_split(tmp_path, DOCS, val_threshold=0.05, pad_id=1)
    raw = json.loads(index_path.read_text())
    assert raw["format"] == FORMAT and raw["dtype"] == "uint16" and raw["eot_id"] == 0
    assert raw["val_threshold"] == 0.05 and raw["pad_id"] == 1
    assert raw["splits"]["train"]["docs"] == len(DOCS)


def test_unreadable_or_foreign_index_is_refused(tmp_path):
    path = tmp_path / "index.json"
    path.write_text('{"format": "llmpipe-tokens/1", "dtype": ')
    with pytest.raises(ValueError, match="index.json is not valid JSON"):
        read_index(path)
    path.write_text(json.dumps({"format": "other/2"}))
    with pytest.raises(ValueError, match="not a token index of format llmpipe-tokens/1 .found 'other/2'"):
        read_index(path)
    path.write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="found 'list'"):
        read_index(path)
    path.write_text(json.dumps({"format": FORMAT, "dtype": "uint16"}))
    with pytest.raises(ValueError, match="lacks vocab_size, eot_id, splits"):
        read_index(path)
    path.write_text(json.dumps({"format": FORMAT, "dtype": "int8", "vocab_size": 9, "eot_id": 0, "splits": {}}))
    with pytest.raises(ValueError, match="dtype 'int8' is not uint16 or uint32"):
        read_index(path)


def test_shards_that_do_not_match_the_index_are_refused(tmp_path):
    index_path = write_split(tmp_path, DOCS, max_tokens=5)
    with pytest.raises(ValueError, match="has no split 'test'"):
        TokenSplit(index_path, "test")
    shard = tmp_path / "train-00001.bin"
    shard.write_bytes(shard.read_bytes()[:-2])  # one uint16 token short
    with pytest.raises(ValueError, match=r"train-00001\.bin holds 18 bytes, but .* says 10 uint16 tokens"):
        TokenSplit(index_path, "train")
    shard.unlink()
    with pytest.raises(ValueError, match=r"lists .*train-00001\.bin, which is missing"):
        TokenSplit(index_path, "train")


def test_unit_stems_name_shards_and_entries_keep_one_key_order(tmp_path):
    writer = ShardWriter(tmp_path, "val", np.uint16, max_tokens=3, stem="u00007")
    for doc in DOCS[:2]:
        writer.append(doc)
    shards = writer.close()
    assert [s["file"] for s in shards] == ["val-u00007-0000.bin", "val-u00007-0001.bin"]
    sorted_keys = [dict(sorted(s.items())) for s in shards]  # as a JSON marker with sort_keys returns them
    a = write_index(tmp_path / "a.json", dtype=np.uint16, vocab_size=10, eot_id=0, tokenizer_sha256="x",
                    splits={"val": shards})
    b = write_index(tmp_path / "b.json", dtype=np.uint16, vocab_size=10, eot_id=0, tokenizer_sha256="x",
                    splits={"val": sorted_keys})
    assert a == b and (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert list(a["splits"]["val"]["shards"][0]) == ["file", "tokens", "docs"]
