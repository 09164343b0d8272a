"""The pretrain stage: config, outputs and lineage, resume after a hard kill, two processes vs one."""
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from tasks.core.errors import ConfigError
from tasks.core.retry import retry_unless_user_error
from tasks.core.result import StageResult
from tasks.core.stage import RunContext, RunnerConfig, run_stage
from tasks.pretrain.data import phrase_tokens, write_token_index
from tasks.pretrain.stage import (
    LAUNCH_ERROR,
    PretrainConfig,
    build_train_config,
    launch_command,
    main,
    STAGE,
    pretrain_key_inputs,
    run_pretrain,
)

VOCAB = 200  # the model pads it to 256
REPO = Path(__file__).resolve().parents[3]


pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny models: see tests/conftest.py


@pytest.fixture(scope="module")
def tokens(tmp_path_factory) -> StageResult:
    """What the tokenize stage hands over: a tokenizer file and a token index."""
    root = tmp_path_factory.mktemp("store") / "tokenize" / "k1"
    stream = phrase_tokens(44_000, VOCAB, n_phrases=24, phrase_len=8, seed=3)
    write_token_index(root / "tokens", stream[:40_000], stream[40_000:], VOCAB)
    (root / "tokenizer.json").write_text(json.dumps({"model": {"type": "BPE"}, "fake": True}))
    return StageResult(stage="tokenize", key="k1", uri=str(root),
                       outputs={"tokenizer": "tokenizer.json", "index": "tokens/index.json"}, digest="d1")


def stage_config(**kw) -> PretrainConfig:
    base = dict(n_layer=2, n_embd=32, n_head=2, block_size=32, n_future=2, micro_batch=8, max_steps=60,
                lr=3e-3, warmup_steps=5, eval_every=30, eval_batches=4, checkpoint_every=10, log_every=10)
    return PretrainConfig(**(base | kw))


def context(tmp_path) -> RunContext:
    return RunContext(store=str(tmp_path / "store"), pipeline="test", run_id="t1",
                      runner=RunnerConfig(workers=1))


@pytest.fixture(scope="module")
def finished(tokens, tmp_path_factory):
    ctx = context(tmp_path_factory.mktemp("run"))
    return run_stage(STAGE, stage_config(), {"tokenize": tokens}, ctx), ctx


def test_config_defaults_and_errors():
    assert PretrainConfig().n_future == 1
    with pytest.raises(ValidationError, match="not a multiple of n_head"):
        PretrainConfig(n_embd=30, n_head=4)
    with pytest.raises(ValidationError, match="budget"):
        PretrainConfig(max_steps=0, max_tokens=0)
    with pytest.raises(ValidationError):
        PretrainConfig(n_layers=3)


def test_vocab_comes_from_the_tokenizer_padded(tokens, tmp_path):
    index = Path(tokens.files("index")[0])
    cfg = build_train_config(stage_config(), index, None, tmp_path, {})
    assert cfg.model["vocab_size"] == 256
    with pytest.raises(ConfigError, match="smaller than the tokenizer"):
        build_train_config(stage_config(vocab_size=128), index, None, tmp_path, {})


def test_stage_outputs_stats_and_lineage(finished, tokens):
    result, ctx = finished
    out = Path(result.uri)
    for rel in ("model/model.safetensors", "model/config.json", "model/tokenizer.json", "model/lineage.json",
                "metrics.jsonl", "loss.png", "run.json"):
        assert (out / rel).exists(), rel
    assert set(result.outputs) >= {"model", "model_config", "metrics", "tokenizer", "loss_curve", "lineage",
                                   "hf_model"}
    assert {"hf/config.json", "hf/model.safetensors", "hf/extra_heads.safetensors"} <= set(result.outputs["hf_model"])
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "model" / "tokenizer.json").read_text() == Path(tokens.files("tokenizer")[0]).read_text()
    stats = result.stats
    assert stats["steps"] == 60 and stats["tokens"] == 60 * 8 * 32
    assert stats["val_loss"] < stats["val_unigram_entropy_nats"] and stats["val_below_unigram"] is True
    assert stats["loss_units"] == "nats" and stats["tokens_per_s"] > 0
    lineage = json.loads((out / "model" / "lineage.json").read_text())
    index_bytes = Path(tokens.files("index")[0]).read_bytes()
    assert lineage["token_index_sha256"] == hashlib.sha256(index_bytes).hexdigest()
    assert lineage["tokenizer_sha256"] == "synthetic" and lineage["upstream"]["digest"] == "d1"
    assert lineage["stage_config"]["n_future"] == 2
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["model"]["n_future"] == 2 and config["model"]["vocab_size"] == 256
    again = run_stage(STAGE, stage_config(), {"tokenize": tokens}, ctx)
    assert again.cached and again.digest == result.digest


def test_rerun_after_a_hard_kill_resumes_from_the_last_checkpoint(finished, tokens, tmp_path):
    reference, ctx = finished
    cfg = stage_config()
    out = tmp_path / "killed"
    out.mkdir()
    train_cfg = build_train_config(cfg, Path(tokens.files("index")[0]), None, out, {})
    (out / "run.json").write_text(json.dumps({"train": asdict(train_cfg)}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "tasks.pretrain", "--config", str(out / "run.json")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = out / "checkpoints" / "latest"
    deadline = time.time() + 60
    while not latest.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert latest.exists(), "the run never wrote a checkpoint"
    killed_at = int(latest.read_text().split("-")[1])
    assert 0 < killed_at < 60
    result = run_pretrain({"tokenize": tokens}, str(out), cfg, ctx)
    assert result.stats["resumed_from_step"] >= killed_at and result.stats["steps"] == 60
    ref = load_file(str(Path(reference.uri) / "model" / "model.safetensors"))
    got = load_file(str(out / "model" / "model.safetensors"))
    assert all(torch.equal(ref[k], got[k]) for k in ref)


@pytest.mark.slow
def test_two_processes_match_one_on_the_same_global_batch(tokens, tmp_path):
    """accelerate launch, 2 CPU processes over gloo: DDP with the memory-saving head order and gradient
    accumulation (no_sync on the first micro-batch)."""
    cfg = stage_config(max_steps=8, grad_accum=2, eval_every=0, checkpoint_every=4, log_every=4)
    one = run_stage(STAGE, cfg, {"tokenize": tokens}, context(tmp_path / "one"))
    two_cfg = cfg.model_copy(update={"micro_batch": 4, "num_processes": 2})
    two = run_stage(STAGE, two_cfg, {"tokenize": tokens}, context(tmp_path / "two"))
    assert two.stats["processes"] == 2 and two.stats["tokens"] == one.stats["tokens"]
    a = load_file(str(Path(one.uri) / "model" / "model.safetensors"))
    b = load_file(str(Path(two.uri) / "model" / "model.safetensors"))
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=k)
    assert two.stats["val_loss"] == pytest.approx(one.stats["val_loss"], rel=1e-4)
    assert not torch.equal(a["wte.weight"], load_file(
        str(Path(one.uri) / "checkpoints" / "step-000004" / "model.safetensors"))["wte.weight"])


def test_entry_point_reports_user_errors_for_the_parent(tmp_path):
    run_json = tmp_path / "run.json"
    run_json.write_text(json.dumps({"train": {"no_such_key": 1}}))
    assert main(["--config", str(run_json)]) == 2
    error = json.loads((tmp_path / LAUNCH_ERROR).read_text())
    assert "no_such_key" in error["message"]


def test_launch_command_and_task():
    cmd = launch_command(Path("/r/run.json"), 4, "fsdp")
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert cmd[cmd.index("--num_processes") + 1] == "4"
    assert cmd[cmd.index("--config_file") + 1].endswith("infra/accelerate/fsdp.yaml")
    assert cmd[-4:] == ["-m", "tasks.pretrain", "--config", "/r/run.json"]
    from flows.stages import prefect_task

    task = prefect_task(STAGE)
    assert STAGE.resumable and task.retries == 2 and task.retry_condition_fn is retry_unless_user_error


def test_warm_start_key_holds_the_init_weights_digest(finished, tmp_path):
    """The store key must change when the model init_from points at is retrained: the lead attaches
    pretrain_key_inputs as run_pretrain.key_inputs."""
    result, ctx = finished
    model_dir = Path(result.uri) / "model"
    key = pretrain_key_inputs(stage_config(init_from=str(model_dir)), ctx)
    digest = hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()
    assert key == {"init_from_sha256": digest}
    assert pretrain_key_inputs(stage_config(), ctx) == {}
    with pytest.raises(ConfigError, match="init_from: .*does not exist"):
        pretrain_key_inputs(stage_config(init_from=str(tmp_path)), ctx)


def test_warm_start_through_the_stage(finished, tokens, tmp_path):
    result, _ = finished
    cfg = stage_config(init_from=str(Path(result.uri) / "model"), max_steps=5, eval_every=0,
                       checkpoint_every=0)
    warm = run_pretrain({"tokenize": tokens}, str(tmp_path / "warm"), cfg, context(tmp_path))
    assert warm.stats["steps"] == 5
    # five steps from scratch leave the loss near log(256) = 5.5; warm, it goes on from the trained model's
    assert warm.stats["val_loss"] < result.stats["val_loss"] + 0.3
    lineage = json.loads((tmp_path / "warm" / "model" / "lineage.json").read_text())
    assert lineage["init_from"]["model_dir"] == cfg.init_from
