"""Tests for tokenize.counterfactual: augmented train split, untouched val, counts, resume, unchanged when off."""
from __future__ import annotations

import hashlib
import random
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer

from tasks.bias.counterfactual import PAIRS_FILE, chosen, load_pairs, swap
from tasks.core.docs import DocWriter
from tasks.core.errors import UserError
from tasks.core.result import StageResult
from tasks.core.stage import RunContext, RunnerConfig, run_stage
from tasks.core.store import Store
from tasks.core.token_shards import TokenSplit, read_index
from tasks.tokenizer import stage as stage_module
from tasks.tokenizer.stage import STAGE, CounterfactualConfig, TokenizeConfig, split_key, split_of, tokenize_key_extra

NEUTRAL = ("the of and to in that was for it with as on at by had not but from or have they which one you "
           "were all there would their we been has when who will more no if out so said what up about into "
           "than them can only other new some could time these two may then do first any now such over even "
           "most made after also did many before must through house river garden letter morning").split()
GENDERED = ("he she him her his himself herself man woman boy girl father mother king queen Mr Mrs brother "
            "sister").split()
BASE = {"vocab_size": 300, "val_fraction": 0.2, "unit_bytes": 8000, "shard_tokens": 3000}
# Computed with the code before the option existed (commit 6ea60bc), on `corpus_docs()` with BASE: an
# unaugmented run must still write exactly these bytes, and the config part of its store key must not move.
# (A tokenizers release that trains BPE differently would change OUTPUT_DIGEST too.)
DEFAULT_CONFIG_DIGEST = "c407c4e018b060a3"
BASE_CONFIG_DIGEST = "0117e9ed1284563e"
OUTPUT_DIGEST = "a628b9f85a19b221"


def corpus_docs(n: int = 80, seed: int = 7) -> list[tuple[str, str]]:
    """Documents of common words; three in four also hold gendered words, so some swaps change nothing."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        words = [rng.choice(GENDERED if rng.random() < 0.2 and i % 4 else NEUTRAL)
                 for _ in range(rng.choice([30, 80, 200]))]
        docs.append((f"c{i}", f"c{i}: " + " ".join(words) + "."))
    return docs


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> StageResult:
    root = tmp_path_factory.mktemp("cda-corpus")
    out = root / "docs"
    with DocWriter(Store(root), str(out), "part", batch_rows=10) as writer:
        for doc_id, text in corpus_docs():
            writer.write(doc_id, text, "test", {})
    return StageResult(stage="pii", key="docs", uri=str(out), outputs={"docs": writer.files}, digest="docs")


def tokenize(root: Path, upstream: StageResult, seed: int = 0, **counterfactual) -> StageResult:
    cfg = TokenizeConfig(**BASE, counterfactual=CounterfactualConfig(**counterfactual))
    ctx = RunContext(store=str(root / "store"), pipeline="test", run_id="t", seed=seed,
                     runner=RunnerConfig(workers=1))
    return run_stage(STAGE, cfg, {"pii": upstream}, ctx)


@pytest.fixture(scope="module")
def plain(tmp_path_factory, upstream) -> StageResult:
    return tokenize(tmp_path_factory.mktemp("plain"), upstream)


@pytest.fixture(scope="module")
def added(tmp_path_factory, upstream) -> StageResult:
    return tokenize(tmp_path_factory.mktemp("added"), upstream, enabled=True)


def output_bytes(result: StageResult) -> dict[str, bytes]:
    rels = ["tokenizer.json", "tokens/index.json", *result.outputs["tokens"]]
    return {rel: Path(result.uri, rel).read_bytes() for rel in rels}


def output_digest(result: StageResult) -> str:
    h = hashlib.sha256()
    for rel, data in output_bytes(result).items():
        h.update(rel.encode())
        h.update(data)
    return h.hexdigest()[:16]


def decoded(result: StageResult) -> dict[str, list[str]]:
    """Each split's documents, decoded from the shards (cut at the end-of-text ids)."""
    index_path = result.files("index")[0]
    index = read_index(index_path)
    tok = Tokenizer.from_file(result.files("tokenizer")[0])
    out = {}
    for split, entry in index["splits"].items():
        stream = TokenSplit(index_path, split).slice(0, entry["tokens"]) if entry["tokens"] else np.empty(0)
        ends = np.flatnonzero(stream == index["eot_id"])
        starts = np.concatenate([[0], ends[:-1] + 1])
        out[split] = [tok.decode(stream[a:b].tolist(), skip_special_tokens=False) for a, b in zip(starts, ends)]
    return out


def test_off_writes_what_the_stage_wrote_before_the_option(tmp_path, upstream, plain):
    assert TokenizeConfig().digest() == DEFAULT_CONFIG_DIGEST
    assert TokenizeConfig(**BASE).digest() == BASE_CONFIG_DIGEST
    assert "counterfactual" not in TokenizeConfig().key_dict()
    assert output_digest(plain) == OUTPUT_DIGEST
    assert "counterfactual" not in plain.stats and plain.stats["counters"] == {}
    assert "counterfactual" not in read_index(plain.files("index")[0])
    # off is off whatever the other fields say: same key, so the finished output is reused
    other = tokenize(Path(plain.uri).parents[2], upstream, enabled=False, mode="replace", share=0.5)
    assert other.cached and other.uri == plain.uri
    assert TokenizeConfig(counterfactual={"mode": "replace"}).digest() == DEFAULT_CONFIG_DIGEST


def test_add_puts_a_swapped_copy_after_each_changed_train_document(plain, added):
    pairs = load_pairs()
    before, after = decoded(plain), decoded(added)
    assert after["val"] == before["val"]  # val stays real text
    expected, changed, swaps = [], 0, 0
    for text in before["train"]:
        expected.append(text)
        swapped, n = swap(text, pairs)
        if n:
            expected.append(swapped)
            changed, swaps = changed + 1, swaps + n
    assert after["train"] == expected
    assert 0 < changed < len(before["train"])  # the fixture has documents without gendered words
    stats, base = added.stats, plain.stats
    settings = {"mode": "add", "share": 1.0, "pairs_sha256": hashlib.sha256(PAIRS_FILE.read_bytes()).hexdigest()}
    assert stats["counterfactual"] == {**settings, "docs_treated": len(before["train"]), "docs_changed": changed,
                                       "copies_added": changed, "docs_replaced": 0, "swaps": swaps}
    assert stats["docs_by_split"] == {"train": base["docs_by_split"]["train"] + changed, "val": len(before["val"])}
    assert stats["tokens_by_split"]["train"] > base["tokens_by_split"]["train"]
    assert stats["tokens_by_split"]["val"] == base["tokens_by_split"]["val"]
    # the account counts input documents: every one kept, the changed ones as two rows
    assert stats["docs_in"] == stats["docs_out"] == base["docs_in"] == 80 and stats["balanced"]
    assert stats["rows_out"] == 80 + changed
    # the tokenizer trains on the unaugmented text
    assert Path(added.files("tokenizer")[0]).read_bytes() == Path(plain.files("tokenizer")[0]).read_bytes()
    index = read_index(added.files("index")[0])
    assert index["counterfactual"] == settings
    assert index["documents"] == 80 + changed and added.uri != plain.uri


def test_replace_keeps_the_document_count(tmp_path, upstream, plain):
    pairs = load_pairs()
    result = tokenize(tmp_path, upstream, enabled=True, mode="replace")
    before, after = decoded(plain), decoded(result)
    assert after["val"] == before["val"]
    assert after["train"] == [swap(text, pairs)[0] for text in before["train"]]
    changed = sum(swap(text, pairs)[1] > 0 for text in before["train"])
    cf = result.stats["counterfactual"]
    assert cf["docs_replaced"] == cf["docs_changed"] == changed and cf["copies_added"] == 0
    assert result.stats["docs_by_split"] == plain.stats["docs_by_split"]
    assert result.stats["rows_out"] == result.stats["docs_in"] == 80


def test_share_picks_train_documents_by_id_and_pipeline_seed(tmp_path, upstream, plain):
    pairs = load_pairs()
    threshold = read_index(plain.files("index")[0])["val_threshold"]
    train = [(i, t) for i, t in corpus_docs() if split_of(split_key(i, "{}"), threshold) == "train"]
    results = {seed: tokenize(tmp_path, upstream, seed=seed, enabled=True, share=0.5) for seed in (1, 2)}
    assert results[1].uri != results[2].uri  # the seed picks the documents, so it is in the key
    for seed, result in results.items():
        picked = [t for i, t in train if chosen(i, 0.5, seed)]
        cf = result.stats["counterfactual"]
        assert cf["seed"] == seed and cf["docs_treated"] == len(picked)
        assert cf["copies_added"] == sum(swap(t, pairs)[1] > 0 for t in picked)
        assert 0 < len(picked) < len(train)
    # with every document treated the seed changes nothing, so it stays out of the key
    full = [tokenize(tmp_path / "full", upstream, seed=seed, enabled=True) for seed in (1, 2)]
    assert full[1].cached and full[0].uri == full[1].uri


def test_a_killed_augmented_run_resumes_with_the_same_outputs_and_counts(tmp_path, upstream, added, monkeypatch):
    assert added.stats["units"] >= 3
    real = stage_module.pack_unit

    def pack_or_die(unit):
        if unit.unit_id == "u00002":
            raise KeyboardInterrupt("killed")
        return real(unit)

    monkeypatch.setattr(stage_module, "pack_unit", pack_or_die)
    with pytest.raises(KeyboardInterrupt):
        tokenize(tmp_path, upstream, enabled=True)
    monkeypatch.undo()
    resumed = tokenize(tmp_path, upstream, enabled=True)
    assert resumed.stats["units_resumed"] == 2
    assert output_bytes(resumed) == output_bytes(added)
    for stat in ("counterfactual", "counters", "docs_in", "docs_out", "rows_out", "docs_by_split", "tokens_by_split"):
        assert resumed.stats[stat] == added.stats[stat], stat


def test_the_key_follows_the_pairs_file(tmp_path):
    user = tmp_path / "pairs.yaml"
    user.write_text("gender:\n  - [he, she]\n")
    cfg = TokenizeConfig(counterfactual={"enabled": True, "pairs_file": str(user)})
    before = tokenize_key_extra(cfg)
    user.write_text("gender:\n  - [he, she]\n  - [man, woman]\n")
    assert tokenize_key_extra(cfg)["counterfactual_pairs"] != before["counterfactual_pairs"]
    shipped = tokenize_key_extra(TokenizeConfig(counterfactual={"enabled": True}))
    assert shipped == {"counterfactual_pairs": hashlib.sha256(PAIRS_FILE.read_bytes()).hexdigest()}
    assert tokenize_key_extra(TokenizeConfig(counterfactual={"share": 0.5})) == {}  # off


def test_bad_settings_fail_before_any_work(tmp_path, upstream):
    with pytest.raises(UserError, match=r"nowhere\.yaml: no such word-pair file"):
        STAGE.preflight(TokenizeConfig(counterfactual={"enabled": True, "pairs_file": str(tmp_path / "nowhere.yaml")}))
    bad = tmp_path / "bad.yaml"
    bad.write_text("gender:\n  - [he]\n")
    with pytest.raises(UserError, match=r"bad\.yaml, line 2: gender pair 1 must be two words"):
        tokenize(tmp_path, upstream, enabled=True, pairs_file=str(bad))
    assert not list((tmp_path / "store").rglob("tokenizer.json"))  # refused before training
    with pytest.raises(ValueError, match="share"):
        CounterfactualConfig(share=1.5)
    with pytest.raises(ValueError, match="mode"):
        CounterfactualConfig(mode="swap")


def test_append_refuses_another_augmentation(tmp_path, upstream, plain):
    cfg = TokenizeConfig(**BASE, append_to=plain.files("index")[0], counterfactual={"enabled": True})
    ctx = RunContext(store=str(tmp_path / "store"), pipeline="test", run_id="t", runner=RunnerConfig(workers=1))
    with pytest.raises(UserError, match="counterfactual augmentation None, this run has {'mode': 'add'"):
        run_stage(STAGE, cfg, {"pii": upstream}, ctx)
