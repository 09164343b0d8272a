"""The data stages end to end under Prefect: Dask gives the local result, and no PII leaks out of the documents."""
from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path

import pytest

from flows.cli import main
from tasks.core.docs import read_all
from tasks.core.store import Store

pytestmark = pytest.mark.usefixtures("prefect_server")

EMAILS = ["margaret.hale@northmail.co.uk", "j.thornton@milton-mills.com"]
PHONES = ["(212) 555-0187", "+44 20 7946 0958"]
SSNS = ["536-22-8147"]
CARDS = ["4111 1111 1111 1111"]
PLANTED = EMAILS + PHONES + SSNS + CARDS


TOPICS = ["the harvest", "the new school", "a broken loom", "the winter coal", "the railway strike", "the flood",
          "a wedding in the spring", "the doctor's visit", "the price of cotton", "the church roof", "the election",
          "the long voyage"]


def _pii_corpus(path: Path) -> Path:
    import random

    lines = []
    for i, topic in enumerate(TOPICS):
        rng = random.Random(i)
        words = " ".join(rng.choice(["river", "mill", "letter", "sister", "market", "evening", "garden", "horse",
                                     "window", "bread", "winter", "music", "north", "money", "friend"])
                         for _ in range(40))
        email, phone = EMAILS[i % 2], PHONES[i % 2]
        text = (f"On {topic}: the mill owner wrote that news would come with the morning train, and that the "
                f"family should write to {email} or call {phone} with any question. He added that the account, "
                f"number {SSNS[0]}, was settled with the card {CARDS[0]}. Notes: {words}. That is all for now.")
        lines.append(json.dumps({"text": text, "title": f"letter-{i}"}))
    path.write_text("\n".join(lines) + "\n")
    return path


def _summary(tmp_path: Path, name: str, *args: str) -> dict:
    out = tmp_path / f"{name}.json"
    assert main(["run", *args, "--summary", str(out)]) == 0
    return json.loads(out.read_text())


def _docs(summary: dict, stage: str) -> list[dict]:
    entry = summary["stages"][stage]
    return read_all(Store(summary["store"]), [f"{entry['uri']}/{f}" for f in entry["outputs"]["docs"]])


def test_no_pii_in_summary_logs_artifacts_or_reports(tmp_path):
    corpus = _pii_corpus(tmp_path / "letters.jsonl")
    summary = _summary(tmp_path, "pii", "demo", "--source", str(corpus), "--until", "pii",
                       "--set", f"store={tmp_path / 'store'}", "--set", "pii.nlp_model=null")
    pii = summary["stages"]["pii"]
    assert pii["status"] == "completed" and pii["stats"]["docs_with_pii"] == 12
    assert pii["stats"]["warning"]  # NER off is said loudly
    anonymized = " ".join(d["text"] for d in _docs(summary, "pii"))
    assert "<EMAIL_ADDRESS>" in anonymized and not any(v in anonymized for v in PLANTED)
    # everything a user or the UI sees about the run: summary, Prefect logs and artifacts, pii stage files
    seen = [json.dumps(summary)]
    seen += _prefect_logs_and_artifacts(summary["run_id"])
    for f in Path(pii["uri"]).rglob("*"):
        if f.is_file() and "/docs/" not in str(f):
            seen.append(f.read_bytes().decode("utf-8", "replace"))
    for run_file in (Path(summary["store"]) / "runs" / summary["run_id"]).iterdir():
        seen.append(run_file.read_text())
    blob = "\n".join(seen)
    assert "pii-entities" in blob  # the artifacts were read
    leaked = [v for v in PLANTED if v in blob]
    assert leaked == []


def _prefect_logs_and_artifacts(flow_run_id: str) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        LogFilter,
        LogFilterFlowRunId,
    )

    async def fetch():
        async with get_client() as client:
            logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
            arts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
            return [log.message for log in logs] + [f"{a.key} {a.data} {a.description}" for a in arts]

    return asyncio.run(fetch())


def _redis_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 6379), timeout=1):
            return True
    except OSError:
        return False


@pytest.mark.slow
def test_dask_with_redis_index_equals_local_run(tmp_path):
    if not _redis_up():
        pytest.skip("Redis is not reachable at 127.0.0.1:6379; the Dask run shares its dedup index there")
    common = ["demo", "--until", "pii", "--set", "collect.max_docs=150", "--set", "pii.nlp_model=null",
              "--set", "collect.max_doc_chars=3000"]
    local = _summary(tmp_path, "local", *common, "--set", f"store={tmp_path / 'local'}",
                     "--set", "runner.workers=2")
    # the flow itself, called as a deployment calls it (no CLI): it must open the runner the config asks for
    from flows.pipeline import pipeline_flow

    dask = pipeline_flow(pipeline="demo", until="pii", overrides=[
        "collect.max_docs=150", "pii.nlp_model=null", "collect.max_doc_chars=3000", f"store={tmp_path / 'dask'}",
        "runner.kind=dask", "runner.dask_workers=2", "dedup.backend=redis"])
    assert local["runner"]["task_runner"] == "ThreadPoolTaskRunner"
    assert dask["runner"] == {"kind": "dask", "task_runner": "DaskTaskRunner"}
    try:
        for stage in ("collect", "clean", "dedup", "pii"):
            a, b = local["stages"][stage], dask["stages"][stage]
            assert a["stats"]["docs_out"] == b["stats"]["docs_out"], stage
            assert a["stats"]["dropped"] == b["stats"]["dropped"], stage
        assert _docs(local, "pii") == _docs(dask, "pii")
        assert local["stages"]["dedup"]["stats"]["dropped"]  # the demo has duplicates: the check is not empty
    finally:
        from flows.config import load_pipeline
        from tasks.core.stage import RunContext
        from tasks.dedup.stage import clear_index

        _, cfg = load_pipeline("demo", overrides=["dedup.backend=redis", f"store={tmp_path / 'dask'}"])
        clear_index(cfg.dedup, RunContext(store=cfg.store, pipeline="demo", run_id="cleanup"))
