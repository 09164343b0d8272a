"""Token ids outside the vocabulary never reach a model: refused when written, found when a split opens."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tasks.core import token_shards
from tasks.core.docs import DocWriter
from tasks.core.errors import UserError
from tasks.core.result import StageResult
from tasks.core.stage import RunContext, RunnerConfig, plan_stage, run_stage
from tasks.core.store import Store
from tasks.core.token_shards import ShardWriter, TokenRangeError, TokenSplit, TokenWindows, read_index
from tasks.tokenizer import stage as tokenize_stage
from tasks.tokenizer.stage import STAGE, TokenizeConfig

CFG = TokenizeConfig(vocab_size=300, val_fraction=0.2, unit_bytes=3000)


@pytest.fixture
def tokenized(tmp_path):
    """A small tokenize output in a few units; returns (ctx, upstream, result)."""
    words = ["the", "quick", "brown", "fox", "jumps", "over", "a", "lazy", "dog", "while", "seven", "wizards"]
    rng = np.random.default_rng(0)
    with DocWriter(Store(tmp_path), str(tmp_path / "docs"), "part", batch_rows=8) as writer:
        for i in range(60):
            writer.write(f"d{i}", " ".join(rng.choice(words, size=40)), "test", {})
    upstream = StageResult(stage="pii", key="k", uri=str(tmp_path / "docs"), outputs={"docs": writer.files},
                           digest="docs")
    ctx = RunContext(store=str(tmp_path / "store"), pipeline="t", run_id="r", runner=RunnerConfig(workers=1))
    return ctx, upstream, run_stage(STAGE, CFG, {"pii": upstream}, ctx)


def flip_to_out_of_range(shard: Path, position: int, vocab_size: int) -> int:
    """Flip the high bit of one uint16 id, as a bit rot on disk would; returns the id now stored."""
    data = bytearray(shard.read_bytes())
    data[2 * position + 1] ^= 0x80  # little-endian: the high byte
    shard.write_bytes(bytes(data))
    new_id = int(np.frombuffer(bytes(data), np.uint16)[position])
    assert new_id >= vocab_size
    return new_id


def test_a_flipped_byte_gives_a_clear_error_naming_the_shard(tokenized):
    _, _, result = tokenized
    index_path = result.files("index")[0]
    vocab_size = read_index(index_path)["vocab_size"]
    shard = Path(result.uri) / result.outputs["tokens"][1]
    new_id = flip_to_out_of_range(shard, 5, vocab_size)
    with pytest.raises(TokenRangeError) as caught:
        TokenSplit(index_path, "train" if shard.name.startswith("train") else "val")
    message = str(caught.value)
    assert str(shard) in message and f"token id {new_id} at position 5 " in message
    assert f"vocabulary size {vocab_size}" in message and "llmpipe verify" in message
    assert isinstance(caught.value, UserError)  # the CLI prints it without a traceback
    split = "train" if shard.name.startswith("train") else "val"
    with pytest.raises(TokenRangeError):  # the loader training uses opens through the same check
        TokenWindows(index_path, split, seq_len=8, batch_size=2)


def test_verify_then_rerun_retokenizes_only_the_damaged_unit(tokenized):
    ctx, upstream, result = tokenized
    index_path = result.files("index")[0]
    before = {rel: Path(result.uri, rel).read_bytes() for rel in result.outputs["tokens"]}
    shard = Path(result.uri) / result.outputs["tokens"][1]
    flip_to_out_of_range(shard, 5, read_index(index_path)["vocab_size"])
    assert not plan_stage(STAGE, CFG, {"pii": upstream}, ctx).damaged  # same size: sizes cannot see it
    hashed = ctx.model_copy(update={"verify": "hashes"})  # what `llmpipe verify` checks
    assert plan_stage(STAGE, CFG, {"pii": upstream}, hashed).damaged == [
        f"{result.outputs['tokens'][1]}: SHA-256 differs from the manifest (same size: changed bytes)"]
    again = run_stage(STAGE, CFG, {"pii": upstream}, ctx)
    assert not again.cached and again.stats["units_resumed"] == again.stats["units"] - 1 >= 2
    assert {rel: Path(again.uri, rel).read_bytes() for rel in again.outputs["tokens"]} == before
    TokenSplit(index_path, "train")  # opens cleanly again


def test_the_open_check_reads_each_shard_once_until_it_changes(tokenized, monkeypatch):
    _, _, result = tokenized
    index_path = result.files("index")[0]
    token_shards._IDS_CHECKED.clear()
    maxima = []
    real_max = np.memmap.max

    def counting_max(self, *args, **kwargs):
        maxima.append(self.filename)
        return real_max(self, *args, **kwargs)

    monkeypatch.setattr(np.memmap, "max", counting_max)
    first = TokenSplit(index_path, "train")
    assert len(maxima) == len(first.arrays) >= 2
    TokenSplit(index_path, "train")
    assert len(maxima) == len(first.arrays)  # cached by path, size and mtime
    shard = Path(first.arrays[0].filename)
    shard.write_bytes(shard.read_bytes())  # rewritten: a new mtime, so checked again
    TokenSplit(index_path, "train")
    assert len(maxima) == len(first.arrays) + 1


def test_write_time_check_refuses_ids_outside_the_vocabulary(tmp_path):
    writer = ShardWriter(tmp_path, "train", np.uint16, max_tokens=100, vocab_size=50)
    writer.append(np.array([1, 2, 0]))
    with pytest.raises(ValueError, match=r"train-00000\.bin: token id 50 at position 4 is outside the "
                                         r"vocabulary of 50 ids"):
        writer.append(np.array([3, 50, 0]))
    with pytest.raises(ValueError, match="token id 70000 at position 3"):  # checked before a cast could wrap it
        ShardWriter(tmp_path, "val", np.uint16, vocab_size=300).append(np.array([1, 2, 3, 70_000]))
    with pytest.raises(ValueError, match="token id -1"):
        ShardWriter(tmp_path, "val", np.uint16, vocab_size=300).append(np.array([4, -1]))


def test_the_stage_refuses_to_write_an_id_its_tokenizer_does_not_own(tmp_path, monkeypatch, tokenized):
    ctx, upstream, _ = tokenized
    monkeypatch.setattr(tokenize_stage, "vocab_size_of", lambda tok: 100)  # as if the vocab were miscounted
    with pytest.raises(ValueError, match=r"tokens/(train|val)-u00000-0000\.bin: token id \d+ at position \d+ "
                                         r"is outside the vocabulary of 100 ids"):
        run_stage(STAGE, CFG.model_copy(update={"shard_tokens": 10**6}), {"pii": upstream}, ctx)
    out = Store(ctx.store).local_path(plan_stage(STAGE, CFG.model_copy(update={"shard_tokens": 10**6}),
                                                 {"pii": upstream}, ctx).uri)
    assert not list(out.rglob("*.bin")), "no shard with the bad id was published"
