"""Artifacts for the Prefect UI: keys per pipeline, rounded figures, documents vs passages, the summary."""
from __future__ import annotations

from flows.report import artifact_key, count_units, summary_markdown
from tasks.core.artifacts import rounded


def test_rounded_keeps_four_significant_digits_but_whole_numbers_whole():
    assert rounded(4.697123456789) == 4.697 and rounded(0.000123456) == 0.0001235
    assert rounded(123456.789) == 123457.0 and rounded(7) == 7 and rounded("x") == "x"
    assert rounded({"a": [1.23456789, {"b": 2.0000001}]}) == {"a": [1.235, {"b": 2.0}]}
    assert rounded(float("nan")) != rounded(float("nan"))  # nan passes through


def test_artifact_keys_are_per_pipeline_and_valid():
    assert artifact_key("demo", "pii", "entities") == "demo-pii-entities"
    assert artifact_key("My_Books.v2", "run", "summary") == "my-books-v2-run-summary"
    assert artifact_key("books", "pii", "entities") != artifact_key("demo", "pii", "entities")


def test_counts_say_passages_once_a_stage_split_documents():
    collect = count_units({"docs_in": 5, "docs_out": 5, "rows_out": 5}, [])
    clean = count_units({"docs_in": 5, "docs_out": 4, "rows_out": 9}, [collect])
    dedup = count_units({"docs_in": 9, "docs_out": 8, "rows_out": 8}, [clean])
    pii = count_units({"docs_in": 8, "docs_out": 8, "rows_out": 8}, [dedup])
    assert collect == {"in": "documents", "out": "documents"}
    assert clean == {"in": "documents", "out": "passages"}
    assert dedup == pii == {"in": "passages", "out": "passages"}


def test_summary_markdown_names_the_units():
    md = summary_markdown({"pipeline": "demo", "status": "partial", "stages": {
        "clean": {"status": "completed", "seconds": 1.0, "counts": {"in": "documents", "out": "passages"},
                  "stats": {"docs_in": 1200, "docs_out": 10, "rows_out": 2400}},
        "tokenize": {"status": "cached", "seconds": 0.2, "stats": {"tokens": 5000}},
        "evaluate": {"status": "not_implemented", "stats": {}}}})
    assert "# llmpipe run `demo`: partial" in md
    assert "| clean | completed | 1,200 documents | 2,400 passages | 1.0 |" in md
    assert "| tokenize | cached |  | 5,000 tokens | 0.2 |" in md
