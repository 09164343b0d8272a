"""Tests for the clean stage: normalization, markup, chunking, every filter and reason, account, resume."""
from __future__ import annotations

import gzip
import json
import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from tasks.clean import stage as clean
from tasks.clean.stage import (
    CleanConfig,
    MarkupConfig,
    Passage,
    check_passage,
    check_repeated_ngrams,
    clean_document,
    dup_ngram_char_fraction,
    normalize_text,
    STAGE,
    split_passages,
    strip_html,
    strip_markdown,
    top_ngram_char_fraction,
)
from tasks.core.docs import SCHEMA, read_all
from tasks.core.errors import UserError
from tasks.core.result import StageResult
from tasks.core.stage import RunContext, RunnerConfig, run_stage
from tasks.core.store import Store

FILTER_NAMES = ["word_count", "mean_word_length", "symbol_ratio", "stop_words", "line_punctuation",
                "repeated_lines", "repeated_ngrams"]

PROSE = (
    "The river had risen in the night, and by morning the lower meadow was a sheet of brown water. "
    "Martha stood at the gate with her shawl pulled tight, watching the fence posts disappear one by one. "
    "Her brother came down from the barn carrying two lanterns that he no longer needed. "
    "He said that the bridge at the mill would hold, though nobody believed him. "
    "They waited together while the rain thinned to a drizzle and the crows returned to the elms. "
    "By noon the current had slowed, and a heron was fishing where the cabbages used to grow."
)


def only(name: str, **thresholds) -> CleanConfig:
    """Defaults with every filter off except `name` (whose thresholds may be overridden)."""
    sections = {n: {"enabled": n == name} for n in FILTER_NAMES}
    sections[name].update(thresholds)
    return CleanConfig(**sections)


# --- normalization ------------------------------------------------------------------------------------------

def test_normalize_line_endings_nfc_controls_and_spaces():
    raw = ("\r\n  \r\nCafe\u0301\r\nline\rtwo\u2028three\x0cfour\r\n"
           "a\x00b\x07c\x1b\u200bd\ufeffe\u00adf\r\n"
           "x\u00a0\u00a0y\tz   w   \r\n\r\n\r\n\r\n"
           "    indented  code\t\r\n\r\nend  ")
    out = normalize_text(raw)
    assert out == ("Café\nline\ntwo\nthree\nfour\n"
                   "abcdef\n"
                   "x y z w\n\n"
                   "    indented code\n\n"
                   "end")
    assert "\r" not in out and out == normalize_text(out)  # idempotent


def test_normalize_nfc_can_be_turned_off_and_empty_text_stays_empty():
    assert normalize_text("e\u0301", nfc=False) == "e\u0301"
    assert normalize_text("e\u0301") == "\u00e9"
    assert normalize_text(" \r\n\t\u200b \n") == ""


# --- markup -------------------------------------------------------------------------------------------------

def test_strip_markdown_keeps_text_and_code():
    md = ("# Title: The Book\n\n## Author: Someone ##\n\n-------\n\n"
          "_Following Hard_ and **bold** text, a [link](http://x.org) and ![a picture](img.png).\n"
          "> quoted *line*\n\n[ref]: http://example.com\n\n"
          "Keep __init__, a_b_c, 2*3*4 and `inline *code*` alone.\n\n"
          "```python\nx = _private_\n```\n\\*not emphasis\\*")
    out = strip_markdown(md)
    assert out.startswith("Title: The Book\n\nAuthor: Someone\n\n\n\n"
                          "Following Hard and bold text, a link and .")
    assert "quoted line" in out and "http://example.com" not in out and "-------" not in out
    assert "Keep __init__, a_b_c, 2*3*4 and inline *code* alone." in out
    assert "x = _private_\n" in out and "```" not in out
    assert out.endswith("*not emphasis*")
    dropped = strip_markdown(md, code_blocks="drop")
    assert "x = _private_" not in dropped and "Keep __init__" in dropped


def test_strip_html_tags_entities_scripts():
    page = ("<html><head><style>p {color: red}</style><script>var a = 1 < 2;</script></head>"
            "<body><!-- nav --><p>Fish &amp; chips&nbsp;&#8212; <b>cheap</b></p>"
            "<div>if a < b > c</div></body>")
    out = strip_html(page)
    assert "color" not in out and "var a" not in out and "nav" not in out
    assert "<" not in out.replace("a < b", "")
    assert "Fish & chips\u00a0\u2014 cheap" in out and "if a < b > c" in out
    assert "\n" in out  # block tags separate lines
    cfg = CleanConfig(markup=MarkupConfig(html=True), chunk={"enabled": False})
    # </p><div> make a paragraph break; the no-break space became a plain one
    assert clean.clean_text(page, cfg) == "Fish & chips \u2014 cheap\n\nif a < b > c"


# --- chunking -----------------------------------------------------------------------------------------------

def _random_text(rng: random.Random, paragraphs: int) -> str:
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "under", "before", "quietly"]
    paras = []
    for _ in range(paragraphs):
        sentences = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 30))).capitalize()
                     + rng.choice(".!?") for _ in range(rng.randint(1, 40))]
        paras.append(" ".join(sentences))
    return "\n\n".join(paras)


@pytest.mark.parametrize("seed", range(5))
def test_chunks_are_bounded_and_lose_only_whitespace(seed):
    rng = random.Random(seed)
    text = _random_text(rng, 30)
    text += "\n\n" + "x" * 2500 + "\n\n" + " ".join(["word"] * 900)  # no sentence end, no whitespace at all
    target, max_chars = 400, 1000
    chunks = split_passages(text, target, max_chars)
    assert len(chunks) > 5
    assert all(0 < len(c) <= max_chars for c in chunks)
    assert "".join("".join(chunks).split()) == "".join(text.split())
    assert all(c == c.strip() for c in chunks)


def test_chunks_keep_paragraphs_whole_and_merge_a_short_tail():
    paras = ["A" * 300, "B" * 300, "C" * 300, "D" * 20]
    chunks = split_passages("\n\n".join(paras), 650, 1000)
    assert chunks == ["A" * 300 + "\n\n" + "B" * 300, "C" * 300 + "\n\n" + "D" * 20]
    assert split_passages("short text", 650, 1000) == ["short text"]
    long_para = "One sentence here. " * 100  # 1900 chars, cut at sentence ends into pieces <= target
    pieces = split_passages(long_para.strip(), 500, 1000)
    assert all(p.endswith(".") and len(p) <= 500 for p in pieces)


def test_chunk_config_rejects_target_above_max():
    with pytest.raises(ValidationError, match="target_chars"):
        CleanConfig(chunk={"target_chars": 5000, "max_chars": 4000})
    with pytest.raises(ValidationError):
        CleanConfig(repeated_ngrams={"top_ngram_max_char_fraction": {0: 0.1}})
    with pytest.raises(ValidationError):
        CleanConfig(no_such_filter={})


# --- filters: one keep and one drop case per filter and reason ----------------------------------------------

def test_prose_passes_every_default_filter():
    assert check_passage(PROSE, CleanConfig()) is None


@pytest.mark.parametrize("name, thresholds, text, reason", [
    ("word_count", {}, "Too short to be a document.", "too_few_words"),
    ("word_count", {"max_words": 50}, PROSE, "too_many_words"),
    ("mean_word_length", {}, " ".join(["a b c of it to"] * 10), "mean_word_length"),
    ("mean_word_length", {}, " ".join(["internationalization"] * 30), "mean_word_length"),
    ("symbol_ratio", {}, PROSE + " #tag" * 20, "symbol_ratio"),
    ("symbol_ratio", {}, PROSE + " and then..." * 20, "symbol_ratio"),
    ("stop_words", {}, "Apples bananas cherries dates elderberries figs grapes. " * 5, "no_stop_words"),
    ("line_punctuation", {}, "\n".join(["Home", "About us", "Contact", "Shop now", "Login"] * 4),
     "line_punctuation"),
    ("repeated_lines", {}, "\n".join(["Buy cheap watches today at our store."] * 4 + PROSE.split(". ")[:3]),
     "repeated_lines"),
    ("repeated_lines", {}, "\n\n".join([PROSE[:200]] * 2 + [PROSE[200:]]), "repeated_lines"),
    ("repeated_ngrams", {}, PROSE + " really very " * 30, "repeated_ngrams"),  # top 2-gram
    ("repeated_ngrams", {}, PROSE + " " + PROSE, "repeated_ngrams"),  # duplicated n-grams
])
def test_each_filter_keeps_prose_and_drops_its_case(name, thresholds, text, reason):
    cfg = only(name, **thresholds)
    assert check_passage(PROSE, only(name)) is None
    assert check_passage(normalize_text(text), cfg) == reason
    assert check_passage(normalize_text(text), only(name, enabled=False, **thresholds)) is None


def test_repeated_lines_ignores_short_lines_and_table_borders_and_stop_words_count_any_case():
    table = "\n".join(f"+--------------------------------+\n| row {i} | The value of the cell is {i}. |"
                      for i in range(8))
    assert check_passage(table, only("repeated_lines")) is None
    play = "\n\n".join(f"Nora.\n{sentence}." for sentence in PROSE.split(". "))
    assert check_passage(play, only("repeated_lines")) is None
    assert check_passage(play, only("repeated_lines", min_chars=0)) == "repeated_lines"
    assert check_passage("THE CAT AND THE DOG " * 5, only("stop_words")) is None


def _brute_top(words, n, total):
    counts: dict[str, int] = {}
    for i in range(len(words) - n + 1):
        gram = " ".join(words[i:i + n])
        counts[gram] = counts.get(gram, 0) + 1
    if not counts:
        return 0.0
    gram, count = max(counts.items(), key=lambda kv: kv[1])  # first seen on ties
    return count * (len(gram) - (n - 1)) / total if count > 1 else 0.0


def _brute_dup(words, n, total):
    seen, covered = set(), [False] * len(words)
    for i in range(len(words) - n + 1):
        gram = " ".join(words[i:i + n])
        if gram in seen:
            covered[i:i + n] = [True] * n
        seen.add(gram)
    return sum(len(w) for w, c in zip(words, covered) if c) / total


@pytest.mark.parametrize("seed", range(30))
def test_ngram_fractions_and_shortcuts_match_brute_force(seed):
    rng = random.Random(seed)
    vocab = [f"w{i}" * rng.randint(1, 3) for i in range(rng.choice([3, 8, 40, 400]))]
    words = [rng.choice(vocab) for _ in range(rng.randint(1, 300))]
    if seed % 3 == 0:  # plant a repeated run so the dup path is exercised
        start = rng.randrange(len(words))
        words += words[start:start + rng.randint(5, 40)]
    total = sum(map(len, words))
    for n in (2, 3, 4):
        assert top_ngram_char_fraction(words, n, total) == _brute_top(words, n, total)
    fracs = [dup_ngram_char_fraction(words, n, total) for n in range(5, 11)]
    assert fracs == [_brute_dup(words, n, total) for n in range(5, 11)]
    assert fracs == sorted(fracs, reverse=True)  # the property the early exit relies on
    cfg = CleanConfig().repeated_ngrams
    expected = any(_brute_top(words, n, total) > f for n, f in cfg.top_ngram_max_char_fraction.items()) or \
        any(_brute_dup(words, n, total) > f for n, f in cfg.dup_ngram_max_char_fraction.items())
    assert (check_repeated_ngrams(Passage(" ".join(words)), cfg) == "repeated_ngrams") == expected


def test_document_reason_when_every_passage_fails():
    cfg = CleanConfig(chunk={"target_chars": 150, "max_chars": 400})
    menu = ("Home of the shop\nAbout the team\nContact the staff\nLog in to the site\n"
            "Read the blog posts\nSee the offers")
    few_words = "Extraordinarily long vocabulary makes this passage rather short when counted in words."
    outcome = clean_document(f"{menu}\n\n{menu.upper()}\n\n{few_words}", cfg)
    assert outcome.kept == [] and outcome.n_chunks == 3
    assert outcome.chunk_reasons == ["line_punctuation", "line_punctuation", "too_few_words"]
    assert outcome.reason == "line_punctuation"  # the most common passage reason
    assert clean_document(f"{few_words}\n\n{menu}", cfg).reason == "too_few_words"  # ties: first seen
    tight = CleanConfig(chunk={"target_chars": len(PROSE), "max_chars": len(PROSE) + 5})  # no room to merge
    mixed = clean_document(PROSE + "\n\nShort bit.", tight)
    assert mixed.reason is None and mixed.kept == [PROSE] and mixed.chunk_reasons == ["too_few_words"]
    assert clean_document(" \r\n \u200b ", cfg).reason == "empty"


# --- the stage ----------------------------------------------------------------------------------------------

def _context(tmp_path: Path, workers: int = 1) -> RunContext:
    return RunContext(store=str(tmp_path / "store"), pipeline="test", run_id="t1",
                      runner=RunnerConfig(workers=workers))


def _upstream(tmp_path: Path, shards: list[list[tuple]]) -> StageResult:
    """A collect-like result: one Parquet shard per list of (id, text, source, meta) rows.

    Written with pyarrow directly (not DocWriter) so that rows may hold nulls a bad source could produce.
    """
    out = tmp_path / "collect"
    (out / "docs").mkdir(parents=True)
    files = []
    for i, rows in enumerate(shards):
        columns = dict(zip(SCHEMA.names, map(list, zip(*rows))))
        columns["meta"] = [m if m is None or isinstance(m, str) else json.dumps(m) for m in columns["meta"]]
        pq.write_table(pa.table(columns, schema=SCHEMA), out / "docs" / f"s{i}.parquet")
        files.append(f"docs/s{i}.parquet")
    return StageResult(stage="collect", key="k", uri=str(out), outputs={"docs": files}, digest="d")


def _mixed_corpus() -> list[tuple]:
    long_book = "\r\n\r\n".join([PROSE] * 1 + [PROSE.replace("river", f"river{i}").replace("Martha", f"M{i}")
                                                for i in range(12)])
    return [
        ("good", PROSE, "s", {"k": 1}),
        ("crlf", PROSE.replace(". ", ".\r\n"), "s", None),
        ("book", long_book, "s", {"title": "t"}),
        ("empty", " \r\n\t ", "s", None),
        ("short", "Just a few words.", "s", None),
        ("spam", "Buy it now and save! " * 100, "s", None),
        ("menu", "\n".join(["Home", "About the shop", "Contact us", "Log in to the site"] * 10), "s", None),
        ("nulltext", None, "s", None),
        (None, PROSE, "s", None),
        ("badmeta", long_book, "s", "not json"),
        ("boom", PROSE + " boom", "s", None),
    ]


def test_stage_account_balances_on_a_corpus_with_every_kind_of_bad_record(tmp_path, monkeypatch):
    real_check = clean.check_passage

    def exploding_check(text, cfg):
        if text.endswith("boom"):
            raise RuntimeError("filter crashed")
        return real_check(text, cfg)

    monkeypatch.setattr(clean, "check_passage", exploding_check)
    cfg = CleanConfig(chunk={"target_chars": 1000, "max_chars": 2000})
    upstream = _upstream(tmp_path, [_mixed_corpus()[:6], _mixed_corpus()[6:]])
    result = run_stage(STAGE, cfg, {"collect": upstream}, _context(tmp_path))
    s = result.stats
    assert s["docs_in"] == 11
    assert s["docs_in"] == s["docs_out"] + sum(s["dropped"].values()) + s["quarantined"]
    assert s["docs_out"] == 3  # good, crlf, book
    assert s["dropped"] == {"empty": 1, "too_few_words": 1, "repeated_ngrams": 1, "line_punctuation": 1}
    assert s["quarantine_reasons"] == {"text_not_a_string": 1, "missing_id": 1,
                                       "meta_not_a_json_object": 1, "clean_error": 1}
    counters = s["counters"]
    dropped_chunks = sum(v for k, v in counters.items() if k.startswith("chunks_dropped."))
    assert counters["chunks_in"] == counters["chunks_kept"] + dropped_chunks
    assert s["rows_out"] == counters["chunks_kept"] > s["docs_out"]

    store = Store(tmp_path / "store")
    docs = read_all(store, result.files("docs"))
    assert len(docs) == s["rows_out"]
    assert all("\r" not in d["text"] and len(d["text"]) <= 2000 for d in docs)
    book = [d for d in docs if d["id"].startswith("book-")]
    assert len(book) > 1 and all(json.loads(d["meta"])["parent"] == "book" for d in book)
    assert "".join("".join(d["text"] for d in book).split()) == \
        "".join(normalize_text(_mixed_corpus()[2][1]).split())
    quarantined = [json.loads(line) for uri in result.files("quarantine")
                   for line in store.open(uri, "rb").read().decode().splitlines()]
    assert {q["reason"]: q["id"] for q in quarantined} == {
        "text_not_a_string": "nulltext", "missing_id": None, "meta_not_a_json_object": "badmeta",
        "clean_error": "boom"}


def test_without_chunking_documents_keep_their_ids(tmp_path):
    cfg = CleanConfig(chunk={"enabled": False})
    upstream = _upstream(tmp_path, [_mixed_corpus()[:3]])
    result = run_stage(STAGE, cfg, {"collect": upstream}, _context(tmp_path))
    docs = read_all(Store(tmp_path / "store"), result.files("docs"))
    assert [d["id"] for d in docs] == ["good", "crlf"]
    assert result.stats["rows_out"] == result.stats["docs_out"] == 2
    # the book repeats its paragraph with small changes: whole, it repeats n-grams; its passages did not
    assert result.stats["dropped"] == {"repeated_ngrams": 1}


class Killed(BaseException):
    """Stands in for SIGKILL: not an Exception, so nothing on the way catches it."""


def test_resume_after_a_kill_redoes_only_the_unfinished_shard(tmp_path, monkeypatch):
    shards = [[(f"d{i}-{j}", PROSE.replace("river", f"river {i} {j}"), "s", None) for j in range(3)]
              for i in range(3)]
    upstream = _upstream(tmp_path, shards)
    cfg = CleanConfig()
    ctx = _context(tmp_path)
    reference = run_stage(STAGE, cfg, {"collect": upstream}, _context(tmp_path / "ref"))

    real_unit, calls = clean.clean_unit, []

    def dies_on_the_last_shard(unit):
        calls.append(unit.unit_id)
        if unit.unit_id == "u00002-0000":
            raise Killed()
        return real_unit(unit)

    monkeypatch.setattr(clean, "clean_unit", dies_on_the_last_shard)
    with pytest.raises(Killed):
        run_stage(STAGE, cfg, {"collect": upstream}, ctx)
    stage_dir = Store(ctx.store).ls(str(tmp_path / "store" / "clean"))[0]
    assert not os.path.exists(f"{stage_dir}/_SUCCESS.json")
    assert sorted(os.listdir(f"{stage_dir}/_units")) == ["u00000-0000.json", "u00001-0000.json"]

    calls.clear()
    monkeypatch.setattr(clean, "clean_unit", lambda unit: calls.append(unit.unit_id) or real_unit(unit))
    result = run_stage(STAGE, cfg, {"collect": upstream}, ctx)
    assert calls == ["u00002-0000"]
    assert result.stats["units_resumed"] == 2
    store = Store(ctx.store)
    assert read_all(store, result.files("docs")) == read_all(Store(tmp_path / "ref" / "store"),
                                                             reference.files("docs"))
    assert {k: v for k, v in result.stats.items() if k not in ("units_resumed", "seconds")} == \
        {k: v for k, v in reference.stats.items() if k not in ("units_resumed", "seconds")}


def test_two_workers_give_the_same_output_as_one(tmp_path):
    shards = [[(f"d{i}-{j}", PROSE.replace("river", f"river {i} {j}"), "s", None) for j in range(2)]
              for i in range(2)]
    upstream = _upstream(tmp_path, shards)
    one = run_stage(STAGE, CleanConfig(), {"collect": upstream}, _context(tmp_path / "a", workers=1))
    two = run_stage(STAGE, CleanConfig(), {"collect": upstream}, _context(tmp_path / "b", workers=2))
    assert read_all(Store(tmp_path / "a" / "store"), one.files("docs")) == \
        read_all(Store(tmp_path / "b" / "store"), two.files("docs"))
    assert two.stats["docs_out"] == 4


def test_clean_without_its_input_says_what_to_do(tmp_path):
    with pytest.raises(UserError, match="reads collect but got no result for collect"):
        run_stage(STAGE, CleanConfig(), {}, _context(tmp_path))


# --- real text ----------------------------------------------------------------------------------------------

def test_defaults_keep_the_python_documentation_topics():
    from pydoc_data.topics import topics

    kept = sum(bool(clean_document(text, CleanConfig()).kept) for text in topics.values())
    assert kept >= 0.95 * len(topics)


def _data_dir() -> Path:
    env = os.environ.get("LLMPIPE_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[3] / ".." / "shared" / "data"


@pytest.mark.shared_data
def test_books_passages_are_clean_and_almost_all_kept():
    path = _data_dir() / "books" / "books-00000.jsonl.gz"
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set LLMPIPE_DATA to the data directory)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        books = [json.loads(next(f))["text"] for _ in range(2)]
    cfg = CleanConfig(markup=MarkupConfig(markdown=True))
    for text in books:
        assert "\r\n" in text
        outcome = clean_document(text, cfg)
        assert len(outcome.kept) >= 0.95 * outcome.n_chunks
        assert all("\r" not in p and "## " not in p and len(p) <= cfg.chunk.max_chars for p in outcome.kept)
