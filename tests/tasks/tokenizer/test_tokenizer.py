"""Tests for the tokenize stage: tokenizer round trip, packing, index, splits, incremental runs, loader."""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

from tasks.core.docs import DocWriter
from tasks.core.errors import ConfigError, UserError
from tasks.core.result import StageResult
from tasks.core.stage import RunContext, RunnerConfig, run_stage
from tasks.core.store import Store
from tasks.core.token_shards import TokenSplit, TokenWindows, dtype_for_vocab, read_index
from tasks.tokenizer import stage as stage_module
from tasks.tokenizer.stage import (
    STAGE,
    TokenizeConfig,
    calibrate_val_threshold,
    cut_text,
    cuts_between_words,
    new_tokenizer,
    split_key,
    split_of,
    stats_table,
    tokenize_artifacts,
    tokenize_key_extra,
    train_tokenizer,
    training_texts,
)

VARIED = [
    "plain ASCII, with punctuation!? (and [brackets]) {braces} 'quotes' \"double\"",
    "Windows line endings\r\nsecond line\r\n\r\nnew paragraph\r\n",
    "café naïve résumé — “curly quotes” ‘single’ … «guillemets»",
    "東京は日本の首都です。漢字とひらがなとカタカナ",
    "emoji 😀👍🏽 family 👨‍👩‍👧‍👦 flags 🇫🇷🇯🇵 keycap 1️⃣",
    "combining e\u0301 a\u0308 o\u0302, zero\u200bwidth\u200d joiner, BOM \ufeff",
    "RTL: שלום עולם مرحبا بالعالم",
    "controls \x00 nul \x07 bell \t tab \x0b vtab \x0c ff \x1f unit \x7f del",
    "literal specials <|endoftext|> and <|pad|> inside a document",
    "   leading and trailing spaces   ",
    "unicode spaces\u00a0nbsp\u2003em\u3000ideographic\u2028line\u2029para \u0085nel",
    "math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∑∫√∞ and digits ١٢٣ ๑๒๓ 12345 3.14159",
]
WORD_LIST = (
    "the of and to in that is was he for it with as his on be at by had not are but from or have an they "
    "which one you were all her she there would their we him been has when who will more no if out so said "
    "what up its about into than them can only other new some could time these two may then do first any my "
    "now such like our over man me even most made after also did many before must through Öl straße élan "
    "東京 😀 ✓"
)
WORDS = WORD_LIST.split()
SEPARATORS = [" "] * 12 + ["  ", "\r\n ", "\n  ", "\r\n   ", " \t ", "\u3000 ", ",  ", "\n"]


def make_docs(n: int, seed: int, prefix: str = "d") -> list[tuple[str, str]]:
    """n (id, text) pairs; every text starts with its id, so texts are unique; a few are long."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        length = rng.choice([5, 40, 120, 400]) if i % 25 else 5000  # every 25th ~ 30 KB: cut into pieces
        # mostly single spaces, sometimes whitespace runs that end in a space (no cut may split those)
        body = "".join(rng.choice(WORDS) + rng.choice(SEPARATORS) for _ in range(length))
        extra = rng.choice(VARIED) if i % 3 == 0 else ""
        docs.append((f"{prefix}{i}", f"{prefix}{i}: {body}.\r\n{extra}"))
    return docs


def write_upstream(root: Path, name: str, docs: list[tuple[str, str]],
                   max_bytes: int = 128 << 20, metas: dict[str, dict] | None = None) -> StageResult:
    out = root / name
    with DocWriter(Store(root), str(out), "part", max_bytes=max_bytes, batch_rows=64) as writer:
        for doc_id, text in docs:
            writer.write(doc_id, text, "test", (metas or {}).get(doc_id, {}))
    return StageResult(stage="collect", key=name, uri=str(out), outputs={"docs": writer.files}, digest=name)


def context(root: Path) -> RunContext:
    return RunContext(store=str(root / "store"), pipeline="test", run_id="t1", runner=RunnerConfig(workers=1))


def tokenize(root: Path, upstream: StageResult, **cfg) -> StageResult:
    cfg.setdefault("vocab_size", 400)
    return run_stage(STAGE, TokenizeConfig(**cfg), {"pii": upstream}, context(root))


def split_streams(index_path: str | Path) -> dict[str, np.ndarray]:
    index = read_index(index_path)
    return {s: TokenSplit(index_path, s).slice(0, e["tokens"]) if e["tokens"] else np.empty(0, np.int64)
            for s, e in index["splits"].items()}


def threshold_of(result: StageResult) -> float:
    return read_index(result.files("index")[0])["val_threshold"]


def decoded_docs(result: StageResult) -> dict[str, list[str]]:
    """The documents of each split, decoded from the shards (split at the end-of-text ids)."""
    index_path = result.files("index")[0]
    index = read_index(index_path)
    tok = Tokenizer.from_file(result.files("tokenizer")[0])
    out = {}
    for split, stream in split_streams(index_path).items():
        ends = np.flatnonzero(stream == index["eot_id"])
        starts = np.concatenate([[0], ends[:-1] + 1])
        out[split] = [tok.decode(stream[a:b].tolist(), skip_special_tokens=False)
                      for a, b in zip(starts, ends)]
    return out


UNIT_BYTES = 120_000  # the corpus (~400 KB of text in 3 Parquet shards) packs in a few units
PACKED_CFG = {"val_fraction": 0.2, "shard_tokens": 20_000, "unit_bytes": UNIT_BYTES}  # the `packed` fixture's


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    docs = make_docs(300, seed=1)
    return root, docs, write_upstream(root, "docs", docs, max_bytes=200_000)


@pytest.fixture(scope="module")
def packed(corpus):
    root, _, upstream = corpus
    return tokenize(root, upstream, **PACKED_CFG)


def test_round_trip_on_varied_unicode(packed):
    tok = Tokenizer.from_file(packed.files("tokenizer")[0])
    texts = VARIED + ["".join(VARIED), "x" * 20_000, "   ", ""]
    for text in texts:
        assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text
    tok.encode_special_tokens = True  # how the stage encodes: literal specials are plain text
    ids = tok.encode(VARIED[8]).ids
    assert tok.token_to_id("<|endoftext|>") not in ids
    assert tok.decode(ids, skip_special_tokens=False) == VARIED[8]


def test_shards_decode_to_the_input_documents_in_order(corpus, packed):
    _, docs, _ = corpus
    expected = {"train": [], "val": []}
    for doc_id, text in docs:
        expected[split_of(doc_id, threshold_of(packed))].append(text)
    assert decoded_docs(packed) == expected
    # and the ids are exactly those of encoding each whole document (long ones were encoded in pieces)
    tok = Tokenizer.from_file(packed.files("tokenizer")[0])
    tok.encode_special_tokens = True
    eot = tok.token_to_id("<|endoftext|>")
    streams = split_streams(packed.files("index")[0])
    for split, texts in expected.items():
        ids = [i for text in texts for i in [*tok.encode(text, add_special_tokens=False).ids, eot]]
        np.testing.assert_array_equal(streams[split], ids)
    assert packed.stats["docs_with_special_token_text"] == sum("<|endoftext|>" in t for _, t in docs) > 0
    assert packed.stats["encoded_in_pieces"] is True


def test_index_and_shards_are_consistent(tmp_path, corpus, packed):
    index_path = Path(packed.files("index")[0])
    index = read_index(index_path)
    dtype = np.dtype(index["dtype"])
    assert dtype == np.uint16 and index["vocab_size"] == 400
    for split, entry in index["splits"].items():
        assert entry["tokens"] == sum(s["tokens"] for s in entry["shards"])
        assert entry["docs"] == sum(s["docs"] for s in entry["shards"])
        assert entry["docs"] == packed.stats["docs_by_split"][split]
        names = [s["file"] for s in entry["shards"]]
        assert all(re.fullmatch(rf"{split}-u\d{{5}}-\d{{4}}\.bin", n) for n in names) and names == sorted(names)
        for k, shard in enumerate(entry["shards"]):
            tokens = np.fromfile(index_path.parent / shard["file"], dtype=dtype)
            assert tokens.size == shard["tokens"] and tokens[-1] == index["eot_id"]
            eots = np.flatnonzero(tokens == index["eot_id"])
            assert eots.size == shard["docs"]  # literal "<|endoftext|>" in text never became an eot id
            unit, number = shard["file"].split("-")[1:]
            if f"{split}-{unit}-{int(number[:4]) + 1:04d}.bin" in names:  # not the unit's last shard: closed
                last_doc_start = eots[-2] + 1 if eots.size > 1 else 0  # right after the document that
                assert tokens.size >= 20_000 > last_doc_start  # reached the limit
    assert len(index["splits"]["train"]["shards"]) > 2 and packed.stats["units"] >= 3
    assert index["documents"] == packed.stats["docs"] == packed.stats["docs_out"] == len(corpus[1])
    on_disk = sorted(p.name for p in index_path.parent.iterdir())
    listed = sorted([Path(f).name for f in packed.outputs["tokens"]] + ["index.json"])
    assert on_disk == listed  # no temporary files left behind
    stats = packed.stats
    assert stats["tokens"] == sum(e["tokens"] for e in index["splits"].values())
    assert stats["tokens_by_split"] == {s: e["tokens"] for s, e in index["splits"].items()}
    assert stats["bytes"] == sum(len(t.encode()) for _, t in corpus[1])
    text_tokens = stats["tokens"] - stats["docs"]  # one eot per document
    assert stats["bytes_per_token"] == pytest.approx(stats["bytes"] / text_tokens, rel=1e-3)
    assert stats["balanced"] and stats["tokenizer_origin"] == "trained" and stats["train_seconds"] > 0


def test_output_is_deterministic_and_independent_of_batching(tmp_path, corpus, packed):
    _, _, upstream = corpus
    again = tokenize(tmp_path, upstream, val_fraction=0.2, shard_tokens=20_000, batch_docs=3,
                     batch_bytes=5000, unit_bytes=UNIT_BYTES)
    for rel in ["tokenizer.json", *packed.outputs["tokens"]]:
        assert Path(again.uri, rel).read_bytes() == Path(packed.uri, rel).read_bytes(), rel


def test_cut_text_pieces_encode_to_the_same_ids():
    rng = random.Random(7)
    pool = list("ab  xyZ09.,!'-\n\r\t") + ["\u00a0", "\u3000", "é", "東", "😀", "\u2028", "'s", " 's", "  "]
    tok = train_tokenizer(iter(VARIED * 3 + [" ".join(WORDS)] * 3), TokenizeConfig(vocab_size=320))
    tok.encode_special_tokens = True
    assert cuts_between_words(tok)
    cut_somewhere = 0
    for _ in range(300):
        text = "".join(rng.choice(pool) for _ in range(rng.randint(0, 200)))
        pieces = cut_text(text, piece_chars=rng.randint(1, 12))
        assert "".join(pieces) == text and (all(pieces) or pieces == [""])
        cut_somewhere += len(pieces) > 1
        whole = tok.encode(text, add_special_tokens=False).ids
        assert [i for p in pieces for i in tok.encode(p, add_special_tokens=False).ids] == whole, repr(text)
    assert cut_somewhere > 200


def test_only_plain_byte_level_bpe_is_encoded_in_pieces():
    assert cuts_between_words(new_tokenizer())
    prefixed = new_tokenizer()
    prefixed.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    normalized = new_tokenizer()
    normalized.normalizer = normalizers.NFKC()
    wordlevel = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    for tok in (prefixed, normalized, wordlevel):
        assert not cuts_between_words(tok)


def test_split_is_stable_when_the_corpus_grows(tmp_path, corpus, packed):
    docs = corpus[1]
    more = docs + make_docs(150, seed=2, prefix="new")
    grown = tokenize(tmp_path, write_upstream(tmp_path, "grown", more), val_fraction=0.2, shard_tokens=20_000,
                     tokenizer_file=packed.files("tokenizer")[0], val_threshold=threshold_of(packed))
    before, after = decoded_docs(packed), decoded_docs(grown)
    for split in ("train", "val"):
        assert set(before[split]) <= set(after[split])
    assert grown.stats["val_threshold_origin"] == "config"
    assert 0.1 < grown.stats["val_token_fraction"] < 0.3  # the pinned threshold keeps about the fraction


def test_val_holds_the_asked_share_of_tokens_when_a_few_documents_dominate(tmp_path, packed):
    rng = random.Random(21)
    docs = [(f"small{i}", " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))) for i in range(300)]
    docs += [(f"big{i}", " ".join(rng.choice(WORDS) for _ in range(6000))) for i in range(6)]
    counted_by_docs = sum(len(t) for i, t in docs if split_of(i, 0.1) == "val") / sum(len(t) for _, t in docs)
    result = tokenize(tmp_path, write_upstream(tmp_path, "skewed", docs), val_fraction=0.1,
                      tokenizer_file=packed.files("tokenizer")[0])
    assert abs(counted_by_docs - 0.1) > 0.05  # drawing documents with probability 0.1 misses by far here
    assert result.stats["val_threshold_origin"] == "calibrated"
    assert result.stats["val_token_fraction"] == pytest.approx(0.1, rel=0.3)
    assert threshold_of(result) == result.stats["val_threshold"] != 0.1


def test_calibrated_threshold_takes_whole_keys_in_hash_order():
    hashes = np.array([0.5, 0.1, 0.1, 0.9, 0.3])  # two documents share key 0.1
    sizes = np.array([10.0, 30.0, 30.0, 10.0, 20.0])  # key 0.1 holds 60 of 100
    assert calibrate_val_threshold(hashes, sizes, 0.6) == 0.3  # exactly key 0.1: the next key is the bound
    assert calibrate_val_threshold(hashes, sizes, 0.65) == 0.3  # 60 is nearer 65 than 80 (0.1 and 0.3) is
    assert calibrate_val_threshold(hashes, sizes, 0.72) == 0.5  # 80 is nearer 72
    assert calibrate_val_threshold(hashes, sizes, 0.01) == 0.3  # never empty while keys remain for train
    assert calibrate_val_threshold(hashes, sizes, 0.99) == 0.9  # never takes every key
    assert calibrate_val_threshold(hashes, sizes, 0.0) == 0.0
    assert calibrate_val_threshold(np.array([0.4]), np.array([5.0]), 0.5) == 0.4  # one key: all train
    assert calibrate_val_threshold(np.empty(0), np.empty(0), 0.05) == 0.05


def test_split_key_is_the_parent_when_there_is_one():
    assert split_key("book-3", json.dumps({"parent": "book", "piece": 3})) == "book"
    assert split_key("d1", "{}") == split_key("d1", None) == split_key("d1", "") == "d1"
    assert split_key("d1", json.dumps({"parent": ""})) == "d1"  # no parent named
    assert split_key("d1", json.dumps({"info": {"parent": "x"}})) == "d1"  # only the top-level key counts
    assert split_key("d1", '"parent" but not JSON') == "d1"
    assert split_key("d1", json.dumps(["parent"])) == "d1"


def test_pieces_of_one_parent_share_a_split(tmp_path, corpus, packed):
    rng = random.Random(11)
    docs, metas = [], {}
    for p in range(40):  # 40 books of 5 pieces each, as clean/collect's keep_pieces write them
        for k in range(5):
            doc_id = f"book{p}-{k}"
            docs.append((doc_id, f"{doc_id}: " + " ".join(rng.choice(WORDS) for _ in range(30))))
            metas[doc_id] = {"parent": f"book{p}", "piece": k, "source_file": "b.txt"}
    whole = make_docs(100, seed=12, prefix="w")
    upstream = write_upstream(tmp_path, "pieces", docs + whole, metas=metas)
    result = tokenize(tmp_path, upstream, val_fraction=0.3, tokenizer_file=packed.files("tokenizer")[0])
    split_of_text = {text: split for split, texts in decoded_docs(result).items() for text in texts}
    assert len(split_of_text) == len(docs) + len(whole)
    books: dict[str, set[str]] = {}
    for doc_id, text in docs:
        books.setdefault(metas[doc_id]["parent"], set()).add(split_of_text[text])
    assert all(len(splits) == 1 for splits in books.values())  # no book has passages in both splits
    threshold = threshold_of(result)
    assert {split_of(parent, threshold) for parent in books} == {"train", "val"}  # both got whole books
    assert all(splits == {split_of(parent, threshold)} for parent, splits in books.items())
    assert [split_of_text[t] for _, t in whole] == [split_of(i, threshold) for i, _ in whole]  # by id
    # the training sample never sees a passage of a validation book
    cfg = TokenizeConfig(val_fraction=0.3)
    seen = "".join(training_texts(Store(tmp_path), upstream.files("docs"), cfg, threshold, {}))
    assert not [t for i, t in docs if split_of(metas[i]["parent"], threshold) == "val" and t in seen]


def test_training_reads_the_train_split_only_and_respects_the_sample_cap(corpus):
    root, docs, upstream = corpus
    store, cfg, sample = Store(root), TokenizeConfig(val_fraction=0.2), {}
    seen = "".join(training_texts(store, upstream.files("docs"), cfg, 0.2, sample))
    val_docs = [t for i, t in docs if split_of(i, 0.2) == "val"]
    assert val_docs and not any(t in seen for t in val_docs)
    assert sample["train_docs"] == len(docs) - len(val_docs) and sample["train_sample_fraction"] == 1.0
    cap, total = 150_000, sum(len(t.encode()) for _, t in docs)
    capped_cfg, capped = TokenizeConfig(val_fraction=0.2, max_train_bytes=cap), {}
    used = list(training_texts(store, upstream.files("docs"), capped_cfg, 0.2, capped))
    assert 0.6 * cap < capped["train_bytes"] < cap + max(len(t.encode()) for _, t in docs)
    assert capped["train_sample_fraction"] == pytest.approx(cap / (0.8 * total), rel=0.1)
    assert sum(len(p.encode()) for p in used) == capped["train_bytes"]


def test_append_tokenizes_only_new_docs_with_the_earlier_tokenizer(tmp_path, corpus, packed):
    _, docs, _ = corpus
    new_docs = make_docs(120, seed=3, prefix="m")
    appended = tokenize(tmp_path, write_upstream(tmp_path, "new", new_docs), val_fraction=0.2,
                        shard_tokens=20_000, vocab_size=999, append_to=packed.files("index")[0])
    assert appended.stats["tokenizer_origin"] == "file" and appended.stats["docs"] == len(new_docs)
    assert Path(appended.files("tokenizer")[0]).read_bytes() == \
        Path(packed.files("tokenizer")[0]).read_bytes()
    old, new = read_index(packed.files("index")[0]), read_index(appended.files("index")[0])
    for split in ("train", "val"):
        n_old = len(old["splits"][split]["shards"])
        files = [s["file"] for s in new["splits"][split]["shards"]]
        assert all(f.startswith("../../") for f in files[:n_old])
        assert files[n_old:] == [f"{split}-u00000-{k:04d}.bin" for k in range(len(files) - n_old)]
    assert new["documents"] == len(docs) + len(new_docs)
    # the same as tokenizing old + new documents in one run with that tokenizer
    full = tokenize(tmp_path, write_upstream(tmp_path, "all", docs + new_docs), val_fraction=0.2,
                    shard_tokens=20_000, tokenizer_file=packed.files("tokenizer")[0],
                    val_threshold=threshold_of(packed))
    assert new["val_threshold"] == threshold_of(packed) and appended.stats["val_threshold_origin"] == "append_to"
    appended_streams = split_streams(appended.files("index")[0])
    full_streams = split_streams(full.files("index")[0])
    for split in ("train", "val"):
        np.testing.assert_array_equal(appended_streams[split], full_streams[split])


def test_append_records_how_many_shards_are_earlier_ones_through_a_chain(tmp_path, packed):
    """pretrain.replay_ratio reads `previous_shards`: after a chain of appends, every shard that came
    before the last append counts as earlier. A run from scratch writes no such key."""
    assert "previous_shards" not in read_index(packed.files("index")[0])
    old = read_index(packed.files("index")[0])
    first = tokenize(tmp_path, write_upstream(tmp_path, "m", make_docs(60, seed=4, prefix="m")),
                     **PACKED_CFG, append_to=packed.files("index")[0])
    once = read_index(first.files("index")[0])
    assert once["previous_shards"] == {s: len(old["splits"][s]["shards"]) for s in ("train", "val")}
    second = tokenize(tmp_path, write_upstream(tmp_path, "n", make_docs(60, seed=5, prefix="n")),
                      **PACKED_CFG, append_to=first.files("index")[0])
    twice = read_index(second.files("index")[0])
    for split in ("train", "val"):
        n_before = len(once["splits"][split]["shards"])
        assert n_before > once["previous_shards"][split]  # the first append added shards of its own
        assert twice["previous_shards"][split] == n_before
        earlier = [Path(second.files("index")[0]).parent / s["file"] for s in twice["splits"][split]["shards"]]
        assert [p.resolve() for p in earlier[:n_before]] == [
            (Path(first.files("index")[0]).parent / s["file"]).resolve() for s in once["splits"][split]["shards"]]
        assert all(p.resolve().parent == Path(second.files("index")[0]).parent.resolve()
                   for p in earlier[n_before:])


def test_append_refuses_another_tokenizer_or_split(tmp_path, corpus, packed):
    other = train_tokenizer(iter(VARIED), TokenizeConfig(vocab_size=300))
    other.save(str(tmp_path / "other.json"))
    upstream = write_upstream(tmp_path, "new", make_docs(10, seed=4, prefix="m"))
    index = packed.files("index")[0]
    with pytest.raises(UserError, match="same tokenizer as the model"):
        tokenize(tmp_path, upstream, val_fraction=0.2, append_to=index,
                 tokenizer_file=str(tmp_path / "other.json"))
    with pytest.raises(UserError, match="val_fraction"):
        tokenize(tmp_path, upstream, val_fraction=0.1, append_to=index)
    with pytest.raises(UserError, match="val_threshold: 0.5 differs"):
        tokenize(tmp_path, upstream, val_fraction=0.2, append_to=index, val_threshold=0.5)
    # a copy of the run whose index says it was written before splits followed meta parents
    shutil.copytree(Path(index).parent, tmp_path / "old" / "tokens")
    shutil.copyfile(packed.files("tokenizer")[0], tmp_path / "old" / "tokenizer.json")
    old_index = tmp_path / "old" / "tokens" / "index.json"
    old_rule = json.loads(old_index.read_text())
    assert old_rule.pop("split_by") == "parent_or_id"
    old_index.write_text(json.dumps(old_rule))
    with pytest.raises(UserError, match="split documents by 'id'"):
        tokenize(tmp_path, upstream, val_fraction=0.2, append_to=str(old_index))
    # an index from before calibration split by hash < val_fraction: appending keeps that rule
    old_rule.update(split_by="parent_or_id")
    del old_rule["val_threshold"]
    old_index.write_text(json.dumps(old_rule))
    appended = tokenize(tmp_path, upstream, val_fraction=0.2, append_to=str(old_index))
    assert appended.stats["val_threshold"] == 0.2
    with pytest.raises(UserError, match="does not exist"):
        tokenize(tmp_path, upstream, append_to=str(tmp_path / "nope" / "index.json"))


def test_key_extra_follows_the_named_files(tmp_path, packed):
    assert tokenize_key_extra(TokenizeConfig()) == {}
    path = tmp_path / "tok.json"
    path.write_bytes(Path(packed.files("tokenizer")[0]).read_bytes())
    cfg = TokenizeConfig(tokenizer_file=str(path), append_to=packed.files("index")[0])
    before = tokenize_key_extra(cfg)
    path.write_text(path.read_text().replace('"<|pad|>"', '"<|padding|>"'))
    after = tokenize_key_extra(cfg)
    assert before["append_to"] == after["append_to"] and before["tokenizer_file"] != after["tokenizer_file"]


def big_vocab_tokenizer(path: Path, size: int = 70_000) -> Path:
    """A byte-level BPE whose vocabulary needs uint32 ids, with an eot token and no pad token."""
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({f"tok{i}": 256 + i for i in range(size - 257)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(path))
    return path


def test_dtype_follows_the_vocabulary(tmp_path):
    assert dtype_for_vocab(4096) == np.uint16 and dtype_for_vocab(1 << 16) == np.uint16
    assert dtype_for_vocab((1 << 16) + 1) == np.uint32
    big = big_vocab_tokenizer(tmp_path / "big.json")
    upstream = write_upstream(tmp_path, "docs", make_docs(20, seed=5))
    result = tokenize(tmp_path, upstream, tokenizer_file=str(big))
    assert result.stats["dtype"] == "uint32" and result.stats["vocab_size"] == 70_000
    assert result.stats["pad_id"] == result.stats["eot_id"] == 69_999  # no pad token: padding uses eot
    shard = Path(result.uri, result.outputs["tokens"][0])
    first_shard = read_index(result.files("index")[0])["splits"]["train"]["shards"][0]
    assert shard.stat().st_size == 4 * first_shard["tokens"]
    with pytest.raises(ConfigError, match="uint32 or auto"):
        tokenize(tmp_path, upstream, tokenizer_file=str(big), dtype="uint16")
    with pytest.raises(ValidationError, match="does not fit dtype uint16"):
        TokenizeConfig(vocab_size=70_000, dtype="uint16")


def test_bad_inputs_give_clear_errors_and_empty_docs_are_counted(tmp_path):
    docs = make_docs(30, seed=6) + [("e1", ""), ("e2", "  \r\n\t "), ("e3", "")]
    upstream = write_upstream(tmp_path, "docs", docs)
    result = tokenize(tmp_path, upstream)
    assert result.stats["dropped"] == {"empty": 3} and result.stats["docs"] == 30 and result.stats["balanced"]
    (tmp_path / "broken.json").write_text('{"version": "1.0", "model": ')
    with pytest.raises(UserError, match=r"broken\.json is not a tokenizer\.json"):
        tokenize(tmp_path, upstream, tokenizer_file=str(tmp_path / "broken.json"))
    with pytest.raises(UserError, match="does not exist"):
        tokenize(tmp_path, upstream, tokenizer_file=str(tmp_path / "missing.json"))
    with pytest.raises(UserError, match="has no token '<\\|eos\\|>'"):
        tokenize(tmp_path, upstream, tokenizer_file=result.files("tokenizer")[0], eot_token="<|eos|>")
    with pytest.raises(UserError, match="no non-empty training documents"):
        tokenize(tmp_path, write_upstream(tmp_path, "empty", [("a", ""), ("b", " ")]))
    with pytest.raises(ValidationError):
        TokenizeConfig(vocab_size=100)


def test_loader_windows_and_resume(packed):
    pytest.importorskip("torch")
    index_path = packed.files("index")[0]
    stream = split_streams(index_path)["train"].astype(np.int64)
    loader = TokenWindows(index_path, "train", seq_len=16, batch_size=4, n_future=2, seed=3)
    x, y = loader.next_batch()
    assert tuple(x.shape) == (4, 16) and tuple(y.shape) == (4, 17)
    assert (y[:, :15] == x[:, 1:]).all()
    windows = np.lib.stride_tricks.sliding_window_view(stream, 18)
    for row in np.concatenate([x[:, :1].numpy(), y.numpy()], axis=1):
        assert (windows == row).all(axis=1).any()  # a real window of the packed stream
    for _ in range(2):
        loader.next_batch()
    state = json.loads(json.dumps(loader.state_dict()))  # checkpoints may hold it as JSON
    expected = [loader.next_batch() for _ in range(3)]
    resumed = TokenWindows(index_path, "train", seq_len=16, batch_size=4, n_future=2, seed=3)
    resumed.load_state_dict(state)
    for (ex, ey), (rx, ry) in zip(expected, [resumed.next_batch() for _ in range(3)]):
        assert (ex == rx).all() and (ey == ry).all()


def test_loader_sequential_pass_and_ranks(packed):
    pytest.importorskip("torch")
    index_path = packed.files("index")[0]
    stream = split_streams(index_path)["val"].astype(np.int64)
    seq = TokenWindows(index_path, "val", seq_len=32, batch_size=8, mode="sequential")
    batches = list(seq)
    xs = np.concatenate([b[0].numpy() for b in batches])
    assert xs.shape == (seq.num_windows, 32) and seq.num_windows == (stream.size - 1) // 32
    np.testing.assert_array_equal(xs.reshape(-1), stream[:xs.size])
    part = TokenWindows(index_path, "val", seq_len=32, batch_size=8, mode="sequential")
    part.next_batch()
    resumed = TokenWindows(index_path, "val", seq_len=32, batch_size=8, mode="sequential")
    resumed.load_state_dict(part.state_dict())
    assert (resumed.next_batch()[0] == batches[1][0]).all()
    whole = TokenWindows(index_path, "train", seq_len=16, batch_size=6, seed=9).next_batch()[0]
    ranks = [TokenWindows(index_path, "train", seq_len=16, batch_size=3, seed=9, rank=r,
                          world_size=2).next_batch()[0] for r in (0, 1)]
    assert (np.concatenate([r.numpy() for r in ranks]) == whole.numpy()).all()


def test_transformers_loads_the_tokenizer(packed):
    transformers = pytest.importorskip("transformers")
    path = packed.files("tokenizer")[0]
    fast = transformers.PreTrainedTokenizerFast(tokenizer_file=path, eos_token="<|endoftext|>",
                                                pad_token="<|pad|>")
    tok = Tokenizer.from_file(path)
    for text in VARIED:
        ids = fast(text, add_special_tokens=False)["input_ids"]
        assert ids == tok.encode(text, add_special_tokens=False).ids
        assert fast.decode(ids) == text
    assert fast.eos_token_id == 0 and fast.pad_token_id == 1


def test_artifact_table(packed):
    table = stats_table(packed.stats)
    assert {"metric": "tokens_by_split.train", "value": str(packed.stats["tokens_by_split"]["train"])} in table
    assert {"metric": "bytes_per_token", "value": str(packed.stats["bytes_per_token"])} in table
    (artifact,) = tokenize_artifacts(packed)
    assert artifact.name == "stats" and artifact.rows == table


# resuming after a kill -----------------------------------------------------------------------------------

def output_bytes(result: StageResult) -> dict[str, bytes]:
    """Every file the index and the tokenizer consist of, by path relative to the stage directory."""
    rels = ["tokenizer.json", "tokens/index.json", *result.outputs["tokens"]]
    return {rel: Path(result.uri, rel).read_bytes() for rel in rels}


def kill_at_unit(monkeypatch, unit_id: str) -> None:
    """Make the pack unit `unit_id` die as a killed process would (KeyboardInterrupt is no Exception)."""
    real = stage_module.pack_unit

    def pack_or_die(unit):
        if unit.unit_id == unit_id:
            raise KeyboardInterrupt("killed")
        return real(unit)

    monkeypatch.setattr(stage_module, "pack_unit", pack_or_die)


def killed_run(root, upstream, monkeypatch, unit_id: str = "u00001"):
    """A packed-config run killed at `unit_id`; returns its (unfinished) output directory."""
    kill_at_unit(monkeypatch, unit_id)
    with pytest.raises(KeyboardInterrupt):
        tokenize(root, upstream, **PACKED_CFG)
    monkeypatch.undo()
    return next((root / "store" / "tokenize").iterdir())


def test_a_killed_run_resumes_by_unit_and_equals_an_uninterrupted_run(tmp_path, corpus, packed, monkeypatch):
    _, _, upstream = corpus
    cfg = PACKED_CFG
    kill_at_unit(monkeypatch, "u00002")
    with pytest.raises(KeyboardInterrupt):
        tokenize(tmp_path, upstream, **cfg)
    out = next((tmp_path / "store" / "tokenize").iterdir())
    assert sorted(p.name for p in (out / "_units").glob("u*.json")) == ["u00000.json", "u00001.json"]
    assert not list(out.rglob("*.tmp-*")), "the killed unit's half-written shard is swept"
    monkeypatch.undo()

    def no_training(*args, **kwargs):
        raise AssertionError("the rerun retrained the tokenizer instead of reusing tokenizer.json")

    monkeypatch.setattr(stage_module, "train_tokenizer", no_training)
    resumed = tokenize(tmp_path, upstream, **cfg)
    assert resumed.stats["units_resumed"] == 2 and resumed.stats["units"] == packed.stats["units"]
    assert resumed.stats["tokenizer_resumed"] is True and packed.stats["tokenizer_resumed"] is False
    assert resumed.stats["train_seconds"] > 0  # the figure of the run that trained it, from its marker
    assert resumed.outputs == packed.outputs and output_bytes(resumed) == output_bytes(packed)
    for stat in ("tokens", "docs", "bytes", "tokens_by_split", "docs_by_split", "val_threshold", "docs_in",
                 "docs_out", "dropped", "train_docs", "train_bytes"):
        assert resumed.stats[stat] == packed.stats[stat], stat


def test_a_resumed_unit_is_redone_when_its_shard_changed(tmp_path, corpus, monkeypatch):
    """Unit markers check sizes; tokenize also checks the SHA-256 of a resumed unit's shards, so a byte
    changed in place (what `llmpipe verify` finds) is re-tokenized, not carried into the new output."""
    _, _, upstream = corpus
    cfg = PACKED_CFG
    whole = tokenize(tmp_path / "a", upstream, **cfg)
    out = killed_run(tmp_path / "b", upstream, monkeypatch)
    victim = out / "tokens" / "train-u00000-0000.bin"
    data = bytearray(victim.read_bytes())
    data[10] ^= 0x01
    victim.write_bytes(bytes(data))
    resumed = tokenize(tmp_path / "b", upstream, **cfg)
    assert resumed.stats["units_resumed"] == 0
    assert output_bytes(resumed) == output_bytes(whole)


def test_units_of_another_packing_plan_are_not_reused(tmp_path, corpus, monkeypatch):
    _, _, upstream = corpus
    cfg = PACKED_CFG
    out = killed_run(tmp_path, upstream, monkeypatch)
    plan = json.loads((out / "_units" / "pack-plan.json").read_text())
    plan["val_threshold"] = 0.5  # as if the finished unit had been packed with another split
    (out / "_units" / "pack-plan.json").write_text(json.dumps(plan))
    (out / "tokens" / "val-u00000-0099.bin").write_bytes(b"\0\0")  # a stray shard of that plan
    resumed = tokenize(tmp_path, upstream, **cfg)
    assert resumed.stats["units_resumed"] == 0
    assert not (out / "tokens" / "val-u00000-0099.bin").exists()


def test_a_replaced_tokenizer_json_is_retrained_not_trusted(tmp_path, corpus, monkeypatch):
    _, _, upstream = corpus
    cfg = PACKED_CFG
    out = killed_run(tmp_path, upstream, monkeypatch)
    trained = (out / "tokenizer.json").read_bytes()
    (out / "tokenizer.json").write_text((out / "tokenizer.json").read_text().replace('"<|pad|>"', '"<|pud|>"'))
    resumed = tokenize(tmp_path, upstream, **cfg)
    assert resumed.stats["tokenizer_resumed"] is False and resumed.stats["train_seconds"] > 0
    assert (out / "tokenizer.json").read_bytes() == trained  # training is deterministic
    assert resumed.stats["units_resumed"] == 1  # same tokenizer again, so the finished unit stands


def test_units_follow_row_groups_and_unit_bytes(tmp_path, corpus):
    _, docs, upstream = corpus
    cfg = TokenizeConfig(unit_bytes=UNIT_BYTES)
    ctx = context(tmp_path)
    units = stage_module.plan_pack_units(Store(ctx.store), upstream.files("docs"), "out", cfg, ctx, extra={})
    one = stage_module.plan_pack_units(Store(ctx.store), upstream.files("docs"), "out",
                                       TokenizeConfig(), ctx, extra={})
    assert len(one) == 1 and len(one[0].inputs) == 3  # the default unit holds this whole corpus
    assert [u.unit_id for u in units] == [f"u{k:05d}" for k in range(len(units))] and len(units) >= 3
    ids = [row["id"] for u in units for batch in stage_module.unit_documents(Store(ctx.store), u)
           for row in batch.to_pylist()]
    assert ids == [doc_id for doc_id, _ in docs]  # every row group once, in input order
