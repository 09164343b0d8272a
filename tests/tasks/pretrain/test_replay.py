"""pretrain.replay_ratio: continued pretraining on an appended token index draws that share of its windows
from the earlier runs' tokens. The key of an unset config is unchanged, errors name the key, the stats
count the windows of each region over the run (a resumed run too), end to end from two tokenize runs."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file

from tasks.core.docs import DocWriter
from tasks.core.errors import ConfigError
from tasks.core.result import StageResult
from tasks.core.stage import RunContext, RunnerConfig, run_stage
from tasks.core.store import Store
from tasks.core.token_shards import read_index
from tasks.pretrain import stage as pretrain_stage
from tasks.pretrain.data import LMData, phrase_tokens, write_token_index
from tasks.pretrain.lm import train
from tasks.pretrain.stage import PretrainConfig, build_train_config
from tasks.tokenizer import stage as tokenize_stage
from tasks.tokenizer.stage import TokenizeConfig

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny models: see tests/conftest.py

# PretrainConfig digests computed with the code before the option existed (commit 1f4f87e): unset, the store keys of
# existing configs must not move
DEFAULT_DIGEST = "7b6e38cf805c31f6"
WARM_DIGEST = "52348427a6840bc5"  # PretrainConfig(init_from="/x/model", max_steps=5)
WORDS = ["the", "of", "and", "to", "in", "that", "was", "for", "it", "with", "as", "on", "at", "by", "had", "not",
         "but", "from", "or", "have", "they", "which", "one", "you", "were", "all", "there", "would", "their",
         "we", "been", "has", "when", "who", "will", "more", "no", "if", "out", "so", "said", "what", "up",
         "about", "into", "than", "river", "garden", "letter", "morning", "house", "window"]
TINY = {"n_layer": 1, "n_embd": 16, "n_head": 2, "block_size": 16, "micro_batch": 4, "grad_accum": 2, "lr": 3e-3,
        "warmup_steps": 1, "eval_every": 0, "eval_batches": 2, "checkpoint_every": 2, "log_every": 2}


def test_unset_keeps_the_store_key_and_the_range_is_checked():
    assert PretrainConfig().digest() == DEFAULT_DIGEST
    assert PretrainConfig(init_from="/x/model", max_steps=5).digest() == WARM_DIGEST
    assert "replay_ratio" not in PretrainConfig().key_dict() and PretrainConfig().canonical()["replay_ratio"] is None
    half = PretrainConfig(replay_ratio=0.5)
    assert half.key_dict()["replay_ratio"] == 0.5 and half.digest() not in (DEFAULT_DIGEST,
                                                                            PretrainConfig(replay_ratio=0.25).digest())
    assert PretrainConfig(replay_ratio=0.0).digest() != DEFAULT_DIGEST  # 0: new data only, not uniform
    for bad in (-0.1, 1.5):
        with pytest.raises(ValidationError, match="replay_ratio"):
            PretrainConfig(replay_ratio=bad)


def test_errors_name_the_key_before_training(tmp_path):
    stream = phrase_tokens(3000, 200, seed=1)
    plain = write_token_index(tmp_path / "plain", stream[:2500], stream[2500:], 200)
    cfg = PretrainConfig(**TINY, max_steps=2, replay_ratio=0.5)
    with pytest.raises(ConfigError, match=r"pretrain.replay_ratio: .*plain/index.json lists no previous shards"):
        build_train_config(cfg, plain, None, tmp_path / "run", {})
    with pytest.raises(ConfigError, match="pretrain.replay_ratio: .*no previous shards"):
        LMData(plain, 16, 4, 1, seed=0, replay_ratio=0.5)
    index = json.loads(plain.read_text())
    # the earlier run's shard holds 2500 train tokens; a context of 4000 does not fit in it
    (tmp_path / "plain" / "index.json").write_text(json.dumps(index | {"previous_shards": {"train": 1, "val": 0}}))
    with pytest.raises(ConfigError, match=r"earlier runs' train shards of .* hold 2,500 tokens, fewer than one "
                                          r"window of 4001 tokens"):
        build_train_config(cfg.model_copy(update={"block_size": 4000}), plain, None, tmp_path / "run", {})
    with pytest.raises(ConfigError, match="new train shards of .* hold 0 tokens"):
        build_train_config(cfg, plain, None, tmp_path / "run", {})
    assert build_train_config(cfg.model_copy(update={"replay_ratio": 1.0}), plain, None, tmp_path / "run",
                              {}).replay_ratio == 1.0


# end to end: tokenize, append, warm-started pretraining with replay ---------------------------------------
def write_docs(root: Path, name: str, n: int, seed: int) -> StageResult:
    rng = random.Random(seed)
    out = root / name
    with DocWriter(Store(root), str(out), "part", max_bytes=1 << 20, batch_rows=64) as writer:
        for i in range(n):
            writer.write(f"{name}{i}", f"{name}{i}: " + " ".join(rng.choice(WORDS) for _ in range(60)), "test", {})
    return StageResult(stage="pii", key=name, uri=str(out), outputs={"docs": writer.files}, digest=name)


@pytest.fixture(scope="module")
def continued(tmp_path_factory):
    """A first corpus tokenized and trained on (a few steps), a second appended to it, then training
    continued from the first model with replay_ratio 0.5."""
    root = tmp_path_factory.mktemp("replay")
    ctx = RunContext(store=str(root / "store"), pipeline="test", run_id="t1", runner=RunnerConfig(workers=1))
    tok = TokenizeConfig(vocab_size=300, val_fraction=0.2)
    first = run_stage(tokenize_stage.STAGE, tok, {"pii": write_docs(root, "a", 40, seed=1)}, ctx)
    base = run_stage(pretrain_stage.STAGE, PretrainConfig(**TINY, max_steps=2), {"tokenize": first}, ctx)
    appended = run_stage(tokenize_stage.STAGE, tok.model_copy(update={"append_to": first.files("index")[0]}),
                         {"pii": write_docs(root, "b", 30, seed=2)}, ctx)
    cfg = PretrainConfig(**TINY, max_steps=6, replay_ratio=0.5, init_from=str(Path(base.uri) / "model"))
    warm = run_stage(pretrain_stage.STAGE, cfg, {"tokenize": appended}, ctx)
    return first, appended, cfg, warm


def test_continued_pretraining_reports_the_replay(continued):
    first, appended, _, warm = continued
    old_train = read_index(first.files("index")[0])["splits"]["train"]["tokens"]
    all_train = read_index(appended.files("index")[0])["splits"]["train"]["tokens"]
    stats = warm.stats
    assert stats["steps"] == 6 and stats["replay_ratio"] == 0.5
    assert stats["previous_train_tokens"] == old_train and stats["new_train_tokens"] == all_train - old_train > 0
    assert stats["windows_from_previous"] + stats["windows_from_new"] == 6 * 4 * 2  # steps x micro x accum
    assert stats["windows_from_previous"] > 0 and stats["windows_from_new"] > 0  # each 0 with p = 2^-48
    metrics = json.loads((Path(warm.uri) / "model" / "metrics.json").read_text())
    assert {k: metrics[k] for k in ("windows_from_previous", "windows_from_new")} == {
        k: stats[k] for k in ("windows_from_previous", "windows_from_new")}
    assert json.loads((Path(warm.uri) / "model" / "lineage.json").read_text())["init_from"]["model_dir"]


def test_a_resumed_run_counts_and_trains_as_an_uninterrupted_one(continued, tmp_path):
    _, appended, cfg, warm = continued
    train_cfg = build_train_config(cfg, Path(appended.files("index")[0]), None, tmp_path, {}, pipeline_seed=0)

    def crash(trainer):
        if trainer.step == 3:  # after the step-2 checkpoint: step 3 is lost and redone
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(train_cfg, on_step=crash)
    summary = train(train_cfg)
    assert summary["resumed_from_step"] == 2
    keys = ("windows_from_previous", "windows_from_new", "previous_train_tokens", "new_train_tokens")
    assert {k: summary[k] for k in keys} == {k: warm.stats[k] for k in keys}
    ref, got = load_file(str(Path(warm.uri) / "model" / "model.safetensors")), load_file(
        str(tmp_path / "model" / "model.safetensors"))
    assert all(torch.equal(ref[k], got[k]) for k in ref)
