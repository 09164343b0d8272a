"""A full disk is not transient: no retry, one clear error with the path, no temporary files left."""
from __future__ import annotations

import errno
from pathlib import Path

import pytest

from tasks.clean.stage import STAGE as CLEAN
from tasks.clean.stage import CleanConfig
from tasks.collect.stage import STAGE as COLLECT
from tasks.collect.stage import CollectConfig, SourceConfig
from tasks.core.errors import UserError
from tasks.core.retry import retry_transient, retry_unless_user_error
from tasks.core.stage import RunContext, RunnerConfig, run_stage
from tasks.core.store import Store


class Failed:
    def __init__(self, exc):
        self.exc = exc

    def result(self):
        raise self.exc


def test_enospc_fails_once_with_the_path_and_leaves_no_temp_files(tmp_path, monkeypatch):
    ctx = RunContext(store=str(tmp_path / "store"), pipeline="t", run_id="r", runner=RunnerConfig(workers=1))
    col = run_stage(COLLECT, CollectConfig(sources=[SourceConfig(name="d", kind="demo")], max_docs=30), {}, ctx)
    calls = []

    def full_disk(self, tmp_uri, final_uri):  # the write of a finished part file hits a full disk
        calls.append(final_uri)
        raise OSError(errno.ENOSPC, "No space left on device", final_uri)

    monkeypatch.setattr(Store, "commit", full_disk)
    with pytest.raises(UserError, match=r"no space left on the device holding .*clean.*Free space") as info:
        run_stage(CLEAN, CleanConfig(), {"collect": col}, ctx)
    assert len(calls) == 1
    leftovers = [p for p in (tmp_path / "store" / "clean").rglob("*") if ".tmp" in p.name]
    assert leftovers == []
    assert not retry_transient(None, None, Failed(info.value))
    assert not retry_transient(None, None, Failed(OSError(errno.ENOSPC, "No space left on device")))
    assert not retry_unless_user_error(None, None, Failed(OSError(errno.ENOSPC, "No space left on device")))


def test_temp_files_of_a_killed_attempt_are_swept_before_the_rerun(tmp_path):
    store = Store(tmp_path)
    (tmp_path / "clean" / "k" / "docs").mkdir(parents=True)
    for name in ("docs/.part-00000.parquet.tmp-1a2b3c4d", ".x.json.tmp", "keep.parquet", "docs/f.part"):
        (tmp_path / "clean" / "k" / name).write_text("x")
    (tmp_path / "clean" / "k" / ".step-000010.tmp").mkdir()
    assert store.sweep_temp(str(tmp_path / "clean" / "k")) == 4
    assert sorted(p.name for p in (tmp_path / "clean" / "k").rglob("*")) == ["docs", "keep.parquet"]


def test_unreachable_redis_is_reported_before_the_run_starts(capsys):
    from flows.cli import main

    code = main(["run", "demo", "--set", "dedup.backend=redis", "--set", "dedup.redis_url=redis://127.0.0.1:1/0"])
    err = capsys.readouterr()
    assert code == 2 and "redis://127.0.0.1:1/0 is not reachable" in err.err
    assert "starting Prefect" not in err.out  # found by the preflight, in a second


def test_a_prefect_server_that_is_not_there_is_one_paragraph(monkeypatch, capsys):
    from flows.cli import main

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")
    assert main(["run", "demo", "--until", "collect"]) == 2
    err = capsys.readouterr().err
    assert "PREFECT_API_URL is set to http://127.0.0.1:1/api" in err and "unset PREFECT_API_URL" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_quarantine_files_hold_no_raw_personal_data(tmp_path):
    from tasks.core.docs import read_all  # noqa: F401 - the stage's own reader is not needed here

    src = tmp_path / "people.jsonl"
    planted = ["Margaret Thornbury", "margaret.thornbury@example.org", "4111 1111 1111 1111", "+44 20 7946 0958"]
    src.write_text('{"text": "fine"}\n'
                   f'{{"text": "Dear {planted[0]}, mail {planted[1]}, card {planted[2]}, call {planted[3]}"\n'
                   + '{"text": "also fine"}\n')
    ctx = RunContext(store=str(tmp_path / "store"), pipeline="t", run_id="r", runner=RunnerConfig(workers=1))
    result = run_stage(COLLECT, CollectConfig(sources=[SourceConfig(name="p", path=str(src))]), {}, ctx)
    assert result.stats["quarantined"] == 1
    text = "".join(p.read_text() for p in (Path(result.uri) / "quarantine").glob("*.jsonl"))
    assert '"line": 2' in text and "malformed_json" in text and "sha256" in text
    for value in planted + ["Thornbury", "7946", "1111"]:
        assert value not in text, f"raw personal data in quarantine: {value}"


def test_a_checkpoint_that_would_not_fit_stops_training_with_the_figures(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from tasks.pretrain import checkpoint
    from tasks.pretrain.data import phrase_tokens, write_token_index
    from tasks.pretrain.lm import train
    from tasks.pretrain.stage import PretrainConfig, build_train_config

    tokens = phrase_tokens(20_000, 200, n_phrases=16, phrase_len=8, seed=1)
    index = write_token_index(tmp_path / "tokens", tokens[:18_000], tokens[18_000:], 200)
    cfg = build_train_config(PretrainConfig(block_size=16, n_layer=2, n_head=2, n_embd=16, micro_batch=2,
                                            max_steps=6, checkpoint_every=3, eval_every=0, log_every=3, seed=0),
                             str(index), None, tmp_path / "run", {})
    usage = namedtuple("usage", "total used free")
    real = shutil.disk_usage
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(UserError, match=r"not enough disk space for a checkpoint .* 0 MB are free"):
        train(cfg)
    assert not list((tmp_path / "run" / "checkpoints").glob(".step-*"))  # nothing half-written
    monkeypatch.setattr(checkpoint.shutil, "disk_usage", real)
