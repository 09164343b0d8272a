"""`llmpipe forget` end to end: the command starts a temporary Prefect server (as `llmpipe run` does), runs the
`forget` flow on a small real store, prints what it removed; `--lift` takes the source off the tombstone."""
from __future__ import annotations

import json

from flows.cli import main
from tests.tasks.forget.conftest import GONE_DOCS, KEEP_DOCS, gone_sentence, pipeline
from tests.tasks.forget.grep import grep_store


def test_forget_command_end_to_end(tmp_path, capsys):
    built = pipeline(tmp_path)
    built.run("dedup")
    store = built.root
    needles = [gone_sentence(i) for i in range(GONE_DOCS)]
    assert set(grep_store(store, needles)) == set(needles)
    common = ["demo", "--set", f"store={store}", "--set", "pii.nlp_model=null"]

    assert main(["forget", "--source", "gone", *common, "--reason", "erasure request 7"]) == 0

    out = capsys.readouterr().out
    assert f"removed {3 * (GONE_DOCS + 1) - 1} document rows and 1 quarantined records of source 'gone'" in out
    assert "audit record:" in out and "Zephyrine" not in out
    assert grep_store(store, needles) == {}
    (audit,) = (store / "audit").glob("forget-*.json")
    record = json.loads(audit.read_text())
    assert record["reason"] == "erasure request 7" and record["source"] == "gone"
    assert json.loads((store / "forgotten.json").read_text())["sources"]["gone"]["audit"] == record["audit"]

    assert main(["forget", "--lift", "--source", "gone", *common]) == 0
    assert "no longer forgotten" in capsys.readouterr().out
    again = built.run("collect", run_id="r2")
    assert again["collect"].stats["docs_out"] == KEEP_DOCS + GONE_DOCS + 1


def test_forget_needs_a_source(capsys):
    assert main(["forget", "demo", "--source", " "]) == 2
    assert "give the name of the source" in capsys.readouterr().err
