"""End to end under a real (temporary) Prefect server: the CLI, caching on rerun, resume after SIGKILL."""
from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flows.cli import main
from tasks.core.docs import read_all
from tasks.core.store import Store

pytestmark = pytest.mark.usefixtures("prefect_server")


def run_cli(*args: str) -> int:
    return main(list(args))


def test_demo_until_collect_then_cached(tmp_path, capsys, prefect_server):
    store = tmp_path / "store"
    summary1, summary2 = tmp_path / "s1.json", tmp_path / "s2.json"
    common = ["--set", f"store={store}", "--set", "collect.max_docs=40", "--until", "collect"]
    assert run_cli("run", "demo", *common, "--summary", str(summary1)) == 0
    first = json.loads(summary1.read_text())
    assert first["status"] == "completed" and first["pipeline"] == "demo"
    col = first["stages"]["collect"]
    assert col["status"] == "completed" and col["stats"]["docs_out"] == 40 and col["stats"]["balanced"]
    assert (Path(first["store"]) / "runs" / first["run_id"] / "summary.json").exists()
    assert run_cli("run", "demo", *common, "--summary", str(summary2)) == 0
    second = json.loads(summary2.read_text())
    assert second["stages"]["collect"]["status"] == "cached"
    assert second["stages"]["collect"]["seconds"] < max(1.0, col["seconds"])
    out = capsys.readouterr().out
    assert "collect   completed" in out and "collect   cached" in out
    assert _task_state_names(second["run_id"]) == {"collect": "Cached"}


def _task_state_names(flow_run_id: str) -> dict[str, str]:
    """What Prefect itself recorded for the stage tasks of one flow run."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter

    async def fetch():
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                                               task_run_filter=TaskRunFilter())
            return {r.name.split("-")[0]: r.state.name for r in runs
                    if not r.name.startswith("unit")}

    return asyncio.run(fetch())


def test_user_errors_exit_2_without_traceback(tmp_path, capsys):
    assert run_cli("run", "demo", "--set", "collect.max_dcs=3") == 2
    err = capsys.readouterr().err
    assert "collect.max_dcs: unknown key" in err and "Traceback" not in err
    assert run_cli("run", "demo", "--set", f"store={tmp_path}", "--source", str(tmp_path / "missing"),
                   "--until", "collect") == 2
    err = capsys.readouterr().err
    assert "does not exist" in err and "Traceback" not in err


def test_source_flag_replaces_sources(tmp_path):
    texts = tmp_path / "my_texts"
    texts.mkdir()
    for i in range(3):
        (texts / f"{i}.txt").write_text(f"my own document number {i}")
    summary = tmp_path / "s.json"
    assert run_cli("run", "demo", "--source", str(texts), "--set", f"store={tmp_path / 'store'}",
                   "--until", "collect", "--summary", str(summary)) == 0
    s = json.loads(summary.read_text())
    assert s["stages"]["collect"]["stats"]["docs_out"] == 3
    assert list(s["stages"]["collect"]["stats"]["sources"]) == ["cli-0"]


# --- SIGKILL in the middle of collect, then rerun -----------------------------------------------------------

class StallingHandler(http.server.BaseHTTPRequestHandler):
    release = threading.Event()

    def do_GET(self):
        if self.path.startswith("/stall") and not StallingHandler.release.is_set():
            StallingHandler.release.wait(120)
        body = "".join(json.dumps({"text": f"{self.path} line {i}"}) + "\n" for i in range(50)).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def stalling_server():
    StallingHandler.release.clear()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StallingHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    StallingHandler.release.set()
    server.shutdown()


def _config(tmp_path: Path, base: str) -> Path:
    urls = [f"{base}/a{i}.jsonl" for i in range(4)] + [f"{base}/stall.jsonl"]
    sources = "\n".join(f"        - name: web{i}\n          url: {u}" for i, u in enumerate(urls))
    path = tmp_path / "pipelines.yaml"
    path.write_text(f"defaults:\n  runner:\n    workers: 1\npipelines:\n  web:\n    collect:\n      sources:\n{sources}\n")
    return path


@pytest.mark.slow
def test_sigkill_mid_collect_then_rerun_equals_uninterrupted(tmp_path, stalling_server, prefect_server):
    cfg = _config(tmp_path, stalling_server)
    store = tmp_path / "store"
    env = dict(os.environ, PREFECT_API_URL=prefect_server)
    cmd = [sys.executable, "-m", "flows.cli", "run", "web", "-c", str(cfg), "--set", f"store={store}",
           "--until", "collect"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    markers: list[Path] = []
    while time.time() < deadline and len(markers) < 4:
        markers = list(store.glob("collect/*/_units/*.json"))
        time.sleep(0.2)
    assert len(markers) == 4, "the four fast units should finish while the fifth stalls"
    stage_dir = markers[0].parent.parent
    assert not (stage_dir / "_SUCCESS.json").exists()
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    StallingHandler.release.set()
    summary = tmp_path / "resumed.json"
    assert run_cli("run", "web", "-c", str(cfg), "--set", f"store={store}", "--until", "collect",
                   "--summary", str(summary)) == 0
    resumed = json.loads(summary.read_text())["stages"]["collect"]
    assert resumed["status"] == "completed" and resumed["stats"]["units_resumed"] == 4
    clean_store = tmp_path / "clean"
    summary2 = tmp_path / "clean.json"
    assert run_cli("run", "web", "-c", str(cfg), "--set", f"store={clean_store}", "--until", "collect",
                   "--summary", str(summary2)) == 0
    clean = json.loads(summary2.read_text())["stages"]["collect"]
    docs_a = read_all(Store(store), [f"{resumed['uri']}/{f}" for f in resumed["outputs"]["docs"]])
    docs_b = read_all(Store(clean_store), [f"{clean['uri']}/{f}" for f in clean["outputs"]["docs"]])
    assert docs_a == docs_b and len(docs_a) == 250
    assert resumed["stats"]["docs_out"] == clean["stats"]["docs_out"] == 250


def test_changed_config_reruns_that_stage_and_later_only(tmp_path):
    common = ["--set", f"store={tmp_path / 'store'}", "--set", "collect.max_docs=60", "--until", "dedup"]
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert run_cli("run", "demo", *common, "--summary", str(first)) == 0
    assert run_cli("run", "demo", *common, "--set", "clean.word_count.min_words=30", "--summary", str(second)) == 0
    a, b = json.loads(first.read_text())["stages"], json.loads(second.read_text())["stages"]
    assert [a[s]["status"] for s in ("collect", "clean", "dedup")] == ["completed"] * 3
    assert [b[s]["status"] for s in ("collect", "clean", "dedup")] == ["cached", "completed", "completed"]
    assert b["clean"]["uri"] != a["clean"]["uri"] and b["collect"]["uri"] == a["collect"]["uri"]


def test_whole_pipeline_smoke_on_cpu(tmp_path):
    """collect -> clean -> dedup -> pii -> tokenize -> pretrain -> evaluate -> bias at toy size, under Prefect."""
    summary = tmp_path / "s.json"
    sets = ["store=" + str(tmp_path / "store"), "collect.max_docs=80", "pii.nlp_model=null",
            "tokenize.vocab_size=512", "tokenize.val_fraction=0.2", "pretrain.n_layer=2", "pretrain.n_embd=32", "pretrain.n_head=2",
            "pretrain.block_size=32", "pretrain.max_steps=30", "pretrain.eval_every=15",
            "pretrain.checkpoint_every=15", "pretrain.n_future=2", "evaluate.tasks=[sst2,boolq]",
            "evaluate.limit_train=32", "evaluate.limit_eval=32", "evaluate.bootstrap_samples=100",
            "evaluate.finetune.epochs=1", "bias.limit=16", "bias.bootstrap_samples=50",
            "bias.bold.per_group=1", "bias.bold.max_new_tokens=4", "bias.counterfactual.limit=32",
            "register.gate.below_unigram=false"]  # 30 steps need not beat the unigram model
    args = [a for kv in sets for a in ("--set", kv)]
    assert run_cli("run", "demo", *args, "--summary", str(summary)) == 0
    s = json.loads(summary.read_text())
    status = {name: e["status"] for name, e in s["stages"].items()}
    assert all(status[n] == "completed" for n in
               ("collect", "clean", "dedup", "pii", "tokenize", "pretrain", "evaluate", "bias", "register"))
    assert s["status"] == "completed"
    reg = s["stages"]["register"]["stats"]
    assert reg["version"] == "v1" and reg["decision"] == "promote" and reg["champion"] == "v1"
    version = Path(reg["version_path"])
    assert (version / "hf" / "config.json").exists() and (version / "model" / "model.safetensors").exists()
    assert "## Bias" in (version / "card.md").read_text()
    lineage = json.loads((version / "lineage.json").read_text())
    assert set(lineage["data"]) >= {"collect", "clean", "dedup", "pii", "tokenize", "pretrain"}
    bias = json.loads((Path(s["stages"]["bias"]["uri"]) / "bias.json").read_text())
    assert bias["checks"]["probes"]["status"] == "done" and bias["checks"]["data"]["status"] == "done"
    assert {g["figure"] for g in bias["thresholds"]} >= {"crows_pairs/pct_stereotype", "winobias/gap"}
    assert bias["verdict"]["thresholds"] == len(bias["thresholds"])
    ev = s["stages"]["evaluate"]
    assert ev["stats"]["val_perplexity"] > 1 and ev["stats"]["val_bits_per_byte"] > 0
    results = json.loads((Path(ev["uri"]) / "results.json").read_text())
    assert set(results["tasks"]) == {"sst2", "boolq"}  # fine-tuned and few-shot, or skipped without ../shared
    pre = s["stages"]["pretrain"]
    assert pre["stats"]["steps"] == 30 and pre["stats"]["val_loss"] < pre["stats"]["val_unigram_baseline_nats"] + 1
    model_dir = Path(pre["uri"]) / "model"
    assert (model_dir / "model.safetensors").exists() and (model_dir / "tokenizer.json").exists()
    assert json.loads((Path(pre["uri"]) / "hf" / "config.json").read_text())["model_type"] == "llama"
    keys = _artifact_keys(s["run_id"])
    assert {"demo-collect-sources", "demo-pii-entities", "demo-tokenize-stats", "demo-pretrain-training",
            "demo-run-summary", "demo-dedup-account", "demo-evaluate-results", "demo-evaluate-summary",
            "demo-bias-bias", "demo-bias-bias-summary", "demo-bias-bias-thresholds", "demo-register-decision",
            "demo-register-gate-rules", "demo-register-history"} <= keys
    run, logs = _flow_run_and_logs(s["run_id"])
    # what the Prefect UI shows: the pipeline in the name and tags, llmpipe's status as the state, and
    # stage and training progress in the Logs tab at INFO without -v
    assert run.name.startswith("demo-") and {"llmpipe", "pipeline:demo"} <= set(run.tags)
    assert run.state.name == "Completed" and run.state.type.value == "COMPLETED"
    assert any(m.startswith("step 30/30 | loss") for m in logs)
    assert sum(m.startswith("step 30/30 | loss") for m in logs) == 1, "each training line reaches the UI once"


def _flow_run_and_logs(flow_run_id: str):
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    async def fetch():
        async with get_client() as client:
            run = await client.read_flow_run(flow_run_id)
            messages: list[str] = []
            while True:  # the API pages its answers (200 lines by default)
                page = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(
                    any_=[flow_run_id])), limit=200, offset=len(messages))
                messages += [entry.message for entry in page]
                if len(page) < 200:
                    return run, messages

    return asyncio.run(fetch())


def _artifact_keys(flow_run_id: str) -> set[str]:
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def fetch():
        async with get_client() as client:
            arts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
            return {a.key for a in arts}

    return asyncio.run(fetch())
