"""Replay sampling of TokenWindows: a share of the training windows from the earlier runs' shards of an
appended index, the rest from the new ones; deterministic, the same global batch on any number of
processes, resumable; unset, the loader draws exactly as it did before the option."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tasks.core.token_shards import (
    ReplayError,
    ShardWriter,
    TokenWindows,
    previous_tokens,
    replay_boundary,
    write_index,
)

VOCAB = 20_000  # every token is its own position in the train split, so a window names where it came from
SEQ, N_FUTURE = 8, 2
WINDOW = SEQ + N_FUTURE


def write_appended(out: Path, previous: list[int], new: list[int], previous_val: int = 1,
                   appended: bool = True) -> Path:
    """An index as an appending tokenize run writes it: train shards of the given sizes, the earlier
    run's first; token i of the train split is i. Returns index.json's path."""
    dtype = np.dtype(np.uint16)
    out.mkdir(parents=True, exist_ok=True)
    shards, at = [], 0
    for k, size in enumerate(previous + new):
        writer = ShardWriter(out, "train", dtype, max_tokens=size, first_index=k)
        writer.append(np.arange(at, at + size))
        shards += writer.close()
        at += size
    val = ShardWriter(out, "val", dtype)
    val.append(np.arange(50) % VOCAB)
    val.append(np.arange(50) % VOCAB)
    extra = {"previous_shards": {"train": len(previous), "val": previous_val}} if appended else {}
    write_index(out / "index.json", dtype=dtype, vocab_size=VOCAB, eot_id=0, tokenizer_sha256="ab" * 32,
                splits={"train": shards, "val": val.close()}, extra=extra)
    return out / "index.json"


@pytest.fixture(scope="module")
def appended(tmp_path_factory) -> Path:
    return write_appended(tmp_path_factory.mktemp("appended"), previous=[3000, 2000], new=[4000, 1000])


BOUNDARY, TOTAL = 5000, 10_000


def windows(index: Path, batch: int = 64, **kw) -> TokenWindows:
    return TokenWindows(index, "train", SEQ, batch, N_FUTURE, **({"seed": 5, "replay_ratio": 0.3} | kw))


def starts_of(loader: TokenWindows, batches: int) -> np.ndarray:
    """The start of each window drawn (token values are positions), batch after batch."""
    return np.concatenate([loader.next_batch()[0][:, 0].numpy() for _ in range(batches)])


def test_previous_tokens_come_from_the_index(appended):
    from tasks.core.token_shards import read_index

    index = read_index(appended)
    assert previous_tokens(index, "train") == BOUNDARY and previous_tokens(index, "val") == 100
    assert previous_tokens({k: v for k, v in index.items() if k != "previous_shards"}, "train") is None
    assert replay_boundary(index, "train", WINDOW, 0.5, "here") == BOUNDARY


@pytest.mark.parametrize("ratio", [0.3, 0.8])
def test_the_share_of_replayed_windows_matches_the_ratio(appended, ratio):
    loader = windows(appended, replay_ratio=ratio)
    batches = 150
    starts = starts_of(loader, batches)
    n = batches * 64
    replayed = int((starts < BOUNDARY).sum())
    # 4.5 standard deviations of a binomial(n, ratio): a correct sampler fails about once in 10^5 runs
    assert abs(replayed - n * ratio) < 4.5 * math.sqrt(n * ratio * (1 - ratio))
    assert loader.drawn == {"previous": replayed, "new": n - replayed}


def test_each_window_lies_wholly_in_its_region(appended):
    loader = windows(appended, replay_ratio=0.5)
    for _ in range(100):
        x, y = loader.next_batch()
        first, last = x[:, 0].numpy(), y[:, -1].numpy()
        assert np.array_equal(last - first, np.full(64, WINDOW - 1))  # contiguous, across shard joins too
        old = first < BOUNDARY
        assert (last[old] < BOUNDARY).all() and (first[~old] >= BOUNDARY).all() and (last < TOTAL).all()
    starts = starts_of(windows(appended, replay_ratio=0.5), 300)
    # both regions are covered to their ends, each shard of each (a window may start at its last start)
    assert starts[starts < BOUNDARY].min() < 100 and starts[starts < BOUNDARY].max() > BOUNDARY - WINDOW - 100
    assert starts[starts >= BOUNDARY].min() < BOUNDARY + 100 and starts.max() > TOTAL - WINDOW - 100
    assert starts[starts < BOUNDARY].max() <= BOUNDARY - WINDOW and starts.max() <= TOTAL - WINDOW


def test_ratio_zero_and_one_draw_from_one_region(appended):
    assert (starts_of(windows(appended, replay_ratio=0.0), 20) >= BOUNDARY).all()
    only_old = windows(appended, replay_ratio=1.0)
    assert (starts_of(only_old, 20) + WINDOW <= BOUNDARY).all() and only_old.drawn["new"] == 0


def test_the_global_batch_is_the_same_whatever_the_number_of_processes(appended):
    one = windows(appended, batch=12)
    reference = [one.next_batch()[0] for _ in range(5)]
    for world in (2, 3, 4):
        ranks = [windows(appended, batch=12 // world, rank=r, world_size=world) for r in range(world)]
        for step in range(5):
            parts = [loader.next_batch()[0] for loader in ranks]
            assert np.array_equal(np.concatenate(parts), reference[step].numpy())
        assert all(loader.drawn == one.drawn for loader in ranks)  # every rank counts the global batch
    assert windows(appended, seed=6).next_batch()[0].tolist() != reference[0].tolist()


def test_a_resumed_loader_continues_the_same_sequence_and_counts(appended):
    whole = windows(appended)
    expected = starts_of(whole, 10)
    part = windows(appended)
    first = starts_of(part, 4)
    state = json.loads(json.dumps(part.state_dict()))  # as a checkpoint stores it
    assert state["replay_ratio"] == 0.3 and state["drawn"] == part.drawn
    resumed = windows(appended)
    resumed.load_state_dict(state)
    assert np.array_equal(np.concatenate([first, starts_of(resumed, 6)]), expected)
    assert resumed.drawn == whole.drawn and resumed.batches == whole.batches == 10
    with pytest.raises(ValueError, match="replay_ratio=0.3, this loader has replay_ratio=0.5"):
        windows(appended, replay_ratio=0.5).load_state_dict(state)
    with pytest.raises(ValueError, match="replay_ratio=None"):
        windows(appended, replay_ratio=None).load_state_dict(state)


def test_unset_draws_exactly_as_before(appended, tmp_path):
    """No replay_ratio: the start positions of the code before the option (one seeded integers() call per
    global batch over the whole split), also on an appended index, and the same loader state."""
    for index in (appended, write_appended(tmp_path, [TOTAL], [], appended=False)):
        loader = windows(index, batch=16, replay_ratio=None, rank=1, world_size=2)
        rng = np.random.Generator(np.random.PCG64(5))
        for _ in range(5):
            expected = rng.integers(0, TOTAL - WINDOW + 1, size=32)[16:]
            assert np.array_equal(loader.next_batch()[0][:, 0].numpy(), expected)
        assert set(loader.state_dict()) == {"mode", "seed", "batches", "position", "rng"}
    # pinned from the code before the option (commit 1f4f87e): seed 7, 4 windows per batch, the first three batches
    pinned = windows(appended, batch=4, seed=7, replay_ratio=None)
    assert starts_of(pinned, 3).tolist() == [9440, 6245, 6835, 8964, 5777, 7749, 8329, 2250, 554, 2998, 2848,
                                             8727]


def test_errors_name_the_index_and_the_sizes(appended, tmp_path):
    plain = write_appended(tmp_path / "plain", [TOTAL], [], appended=False)
    with pytest.raises(ReplayError, match="lists no previous shards.*tokenize.append_to"):
        windows(plain)
    index = json.loads(plain.read_text())
    older = tmp_path / "plain" / "older.json"  # appended by a version that did not count the shards
    older.write_text(json.dumps(index | {"appended_to": "../../k0/tokens/index.json"}))
    with pytest.raises(ReplayError, match="older version .* appended it to ../../k0/tokens/index.json"):
        windows(older)
    small_old = write_appended(tmp_path / "small_old", [6], [3000])
    with pytest.raises(ReplayError, match=r"earlier runs' train shards of .*small_old/index.json hold 6 tokens, "
                                          r"fewer than one window of 10 tokens"):
        windows(small_old)
    assert (starts_of(windows(small_old, replay_ratio=0.0), 5) >= 6).all()  # never drawn from: no error
    small_new = write_appended(tmp_path / "small_new", [3000], [9])
    with pytest.raises(ReplayError, match="new train shards of .* hold 9 tokens"):
        windows(small_new, replay_ratio=0.99)
    windows(small_new, replay_ratio=1.0)
    with pytest.raises(ValueError, match="needs mode='random'"):
        TokenWindows(appended, "val", SEQ, 2, mode="sequential", replay_ratio=0.5)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        windows(appended, replay_ratio=1.5)
