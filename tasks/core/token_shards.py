"""Packed token shards: the on-disk format between tokenize and pretrain, and its memory-mapped loader.

Layout of a token output directory:
    index.json            format, dtype, vocab size, end-of-text id, tokenizer hash, per-split shards
    train-00000.bin ...   raw little-endian token ids (uint16 when the vocabulary fits, else uint32)
    val-00000.bin ...

Shard paths in index.json are relative to the index file, so an incremental run can list the shards
of an earlier run (`../<key>/tokens/train-00000.bin`) and append its own. numpy only at import time:
this module also runs on GPU machines that have torch + numpy and nothing else.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from tasks.core.errors import UserError

FORMAT = "llmpipe-tokens/1"


class TokenRangeError(UserError):
    """A shard holds an id the vocabulary does not have: the file changed on disk after it was written."""


def dtype_for_vocab(vocab_size: int, requested: str = "auto") -> np.dtype:
    """uint16 when every id fits, else uint32; an explicit dtype too small for the vocab is an error."""
    if requested == "auto":
        return np.dtype(np.uint16) if vocab_size <= 1 << 16 else np.dtype(np.uint32)
    dtype = np.dtype(requested)
    if dtype not in (np.dtype(np.uint16), np.dtype(np.uint32)):
        raise ValueError(f"token dtype must be uint16, uint32 or auto, not {requested!r}")
    if vocab_size > np.iinfo(dtype).max + 1:
        raise ValueError(f"a vocabulary of {vocab_size} ids does not fit {dtype.name} (max id "
                         f"{np.iinfo(dtype).max}); set tokenize.dtype to uint32 or auto")
    return dtype


class ShardWriter:
    """Appends token arrays to `<split>-NNNNN.bin` files of at most `max_tokens` tokens each.

    A shard is written under a temporary name and renamed when full or closed, so a killed run never
    leaves a file that looks finished. `shards` lists the finished ones for the index. With `stem`,
    names are `<split>-<stem>-NNNN.bin` (the tokenize stage's work unit), so units never share a name.
    With `vocab_size`, every id is checked before it is written: an id outside the vocabulary is a bug
    upstream, and a model would only fail on it much later, far from its cause.
    """

    def __init__(self, out_dir: str | os.PathLike, split: str, dtype: np.dtype, max_tokens: int = 1 << 28,
                 first_index: int = 0, stem: str | None = None, vocab_size: int | None = None):
        self.out_dir, self.split, self.dtype = Path(out_dir), split, np.dtype(dtype)
        self.max_tokens = max_tokens
        self.next_index = first_index
        self.stem, self.vocab_size = stem, vocab_size
        self.shards: list[dict[str, Any]] = []
        self.sha256: dict[str, str] = {}  # of each finished shard, computed as it is written (no re-read)
        self._fh = None
        self._tokens = self._docs = 0
        self.out_dir.mkdir(parents=True, exist_ok=True)

    @property
    def open_tokens(self) -> int:
        """Tokens already in the shard being written (0 when none is open), so callers can cut whole
        documents exactly where a per-document append would close the shard."""
        return self._tokens if self._fh is not None else 0

    def append(self, tokens: np.ndarray, docs: int = 1) -> None:
        """Add a run of tokens (one or more whole documents, end-of-text included)."""
        if self._fh is None:
            self._open()
        if self.vocab_size is not None:
            _check_ids_to_write(tokens, self.vocab_size, self.out_dir / self._name, self._tokens)
        arr = np.ascontiguousarray(tokens, dtype=self.dtype)
        arr.tofile(self._fh)
        self._hash.update(arr.data)
        self._tokens += arr.size
        self._docs += docs
        if self._tokens >= self.max_tokens:
            self._close_shard()

    def _open(self) -> None:
        self._name = (f"{self.split}-{self.stem}-{self.next_index:04d}.bin" if self.stem
                      else f"{self.split}-{self.next_index:05d}.bin")
        self._tmp = self.out_dir / f".{self._name}.tmp-{uuid.uuid4().hex[:8]}"
        self._fh = open(self._tmp, "wb")  # noqa: SIM115 - stays open across append() calls
        self._hash = hashlib.sha256()
        self._tokens = self._docs = 0

    def _close_shard(self) -> None:
        if self._fh is None:
            return
        self._fh.close()
        self._fh = None
        if self._tokens == 0:
            self._tmp.unlink()
            return
        os.replace(self._tmp, self.out_dir / self._name)
        self.sha256[self._name] = self._hash.hexdigest()
        self.shards.append({"file": self._name, "tokens": self._tokens, "docs": self._docs})
        self.next_index += 1

    def close(self) -> list[dict[str, Any]]:
        self._close_shard()
        return list(self.shards)


def _check_ids_to_write(tokens: np.ndarray, vocab_size: int, shard: Path, offset: int) -> None:
    """Refuse ids outside [0, vocab_size) before they reach a shard (checked on the caller's ids, before
    any cast to the shard dtype could wrap them)."""
    tokens = np.asarray(tokens)
    if tokens.size == 0:
        return
    bad = (tokens >= vocab_size) | (tokens < 0) if tokens.dtype.kind == "i" else tokens >= vocab_size
    if bad.any():
        pos = int(np.argmax(bad))
        raise ValueError(f"{shard}: token id {int(tokens[pos])} at position {offset + pos} is outside the "
                         f"vocabulary of {vocab_size} ids; the tokenizer produced an id it does not own "
                         "(a bug: report it with the tokenizer.json used). The shard is not published.")


def write_index(path: str | os.PathLike, *, dtype: np.dtype, vocab_size: int, eot_id: int,
                tokenizer_sha256: str, splits: dict[str, list[dict[str, Any]]],
                extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write index.json atomically; `splits` maps split name to its shard entries."""
    index = {
        "format": FORMAT, "dtype": np.dtype(dtype).name, "vocab_size": int(vocab_size), "eot_id": int(eot_id),
        "tokenizer_sha256": tokenizer_sha256,
        "splits": {
            name: {"tokens": sum(s["tokens"] for s in shards), "docs": sum(s["docs"] for s in shards),
                   "shards": [_entry(s) for s in shards]}
            for name, shards in splits.items()
        },
        **(extra or {}),
    }
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(index, indent=2))
    os.replace(tmp, path)
    return index


def _entry(shard: dict[str, Any]) -> dict[str, Any]:
    """One key order, whatever JSON round trip the entry made (a resumed unit's marker sorts keys), so
    index.json is the same bytes for the same shards."""
    return {"file": shard["file"], "tokens": shard["tokens"], "docs": shard["docs"],
            **{k: v for k, v in sorted(shard.items()) if k not in ("file", "tokens", "docs")}}


def read_index(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and check an index.json; anything unreadable is a ValueError naming the file and the fault."""
    path = Path(path)
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); the run that wrote it did not finish: run the "
                         "tokenize stage again") from exc
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        found = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise ValueError(f"{path} is not a token index of format {FORMAT} (found {found!r})")
    missing = [k for k in ("dtype", "vocab_size", "eot_id", "splits") if k not in index]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}; run the tokenize stage again")
    if index["dtype"] not in ("uint16", "uint32"):
        raise ValueError(f"{path}: dtype {index['dtype']!r} is not uint16 or uint32")
    return index


def _map_shard(index_path: Path, entry: dict[str, Any], dtype: np.dtype, vocab_size: int) -> np.memmap:
    """Memory-map one shard, checking that its size is the token count the index gives it and that
    every id is in the vocabulary (`check_shard_ids`)."""
    path = index_path.parent / entry["file"]
    if not path.is_file():
        raise ValueError(f"{index_path} lists {path}, which is missing; copy the whole token directory "
                         "(and the directories its paths point into) or run the tokenize stage again")
    expected = entry["tokens"] * dtype.itemsize
    if path.stat().st_size != expected:
        raise ValueError(f"{path} holds {path.stat().st_size} bytes, but {index_path} says {entry['tokens']} "
                         f"{dtype.name} tokens ({expected} bytes): the shard or the index is from another "
                         "run or was cut short; run the tokenize stage again")
    arr = np.memmap(path, dtype=dtype, mode="r")
    check_shard_ids(path, arr, vocab_size, index_path)
    return arr


# shards whose ids were found in range, by (path, size, mtime_ns, vocab size): a process that opens the
# same split again (train, then val loss, then unigram counts) reads each shard once
_IDS_CHECKED: set[tuple[str, int, int, int]] = set()


def check_shard_ids(path: Path, arr: np.ndarray, vocab_size: int, index_path: Path) -> None:
    """Every id of a shard must be below the vocabulary size, or the model's embedding lookup fails far
    from the cause (an IndexError, or a device-side assert on a GPU). One max over the memory map."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, int(vocab_size))
    if key in _IDS_CHECKED:
        return
    if arr.size and int(arr.max()) >= vocab_size:
        pos = int(np.argmax(arr >= vocab_size))
        raise TokenRangeError(
            f"{path}: token id {int(arr[pos])} at position {pos:,} (of {arr.size:,}) is not below the "
            f"vocabulary size {vocab_size} that {index_path} gives: the shard changed on disk after the "
            "tokenize stage wrote it (a flipped bit, an overwritten or mixed-up file). Run `llmpipe verify "
            "<pipeline>`: it finds the shard's SHA-256 no longer matches and withdraws the tokenize output, "
            "so the next run of the pipeline re-tokenizes only the damaged shards' units. Or restore the "
            "token directory from a copy.")
    _IDS_CHECKED.add(key)


class TokenSplit:
    """One split's shards, memory-mapped, addressed as one long array of tokens.

    Opening checks every shard (size against the index, ids against the vocabulary), so training and
    evaluation, which open their data through this class or `TokenWindows`, never feed a model a
    damaged shard; a `TokenRangeError` (a UserError) names the file, the id and its position."""

    def __init__(self, index_path: str | os.PathLike, split: str = "train"):
        index_path = Path(index_path)
        self.index = read_index(index_path)
        if split not in self.index["splits"]:
            raise ValueError(f"{index_path} has no split {split!r} (has {sorted(self.index['splits'])})")
        self.dtype = np.dtype(self.index["dtype"])
        self.vocab_size = self.index["vocab_size"]
        self.eot_id = self.index["eot_id"]
        entries = self.index["splits"][split]["shards"]
        self.arrays = [_map_shard(index_path, e, self.dtype, self.vocab_size) for e in entries]
        sizes = [a.size for a in self.arrays]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.total = int(self.starts[-1])

    def slice(self, start: int, length: int) -> np.ndarray:
        """Tokens [start, start+length) of the concatenated split; crosses shard boundaries if needed."""
        i = int(np.searchsorted(self.starts, start, side="right") - 1)
        off = start - int(self.starts[i])
        arr = self.arrays[i]
        if off + length <= arr.size:
            return np.asarray(arr[off:off + length])
        parts, need = [], length
        while need > 0:
            arr = self.arrays[i]
            take = min(need, arr.size - off)
            parts.append(np.asarray(arr[off:off + take]))
            need -= take
            i, off = i + 1, 0
        return np.concatenate(parts)


class ReplayError(ValueError):
    """Replay sampling asked of an index that cannot serve it: not written by an append, or a region
    (the earlier runs' tokens or the new ones) too small for one window."""


def previous_tokens(index: dict[str, Any], split: str) -> int | None:
    """Tokens of `split` that an appending tokenize run took from the earlier run(s): its first
    `previous_shards[split]` shards. None when the index was not written with append_to."""
    counts = index.get("previous_shards")
    if counts is None:
        return None
    shards = index["splits"][split]["shards"][:counts.get(split, 0)]
    return sum(s["tokens"] for s in shards)


def replay_boundary(index: dict[str, Any], split: str, window: int, ratio: float, where: str) -> int:
    """The position in `split` where the earlier runs' tokens end and the new ones begin, checked for
    drawing a share `ratio` of the windows before it and the rest after it (a window never crosses it).
    Reads only the index, so a stage can check before it starts training; `where` names the index."""
    previous = previous_tokens(index, split)
    if previous is None and index.get("appended_to"):
        raise ReplayError(f"{where} lists no previous shards: an older version of the tokenize stage appended "
                          f"it to {index['appended_to']} without recording which shards came from there. Run the "
                          "tokenize stage again (same append_to), or remove replay_ratio.")
    if previous is None:
        raise ReplayError(f"{where} lists no previous shards: the tokenize run that wrote it did not append "
                          "to an earlier run, so none of its tokens is old data to replay. Tokenize the new "
                          "data with tokenize.append_to set to the earlier run's tokens/index.json, or remove "
                          "replay_ratio to draw windows uniformly over all tokens.")
    new = index["splits"][split]["tokens"] - previous
    for region, tokens, share in (("earlier runs'", previous, ratio), ("new", new, 1.0 - ratio)):
        if share > 0 and tokens < window:
            raise ReplayError(f"the {region} {split} shards of {where} hold {tokens:,} tokens, fewer than one "
                              f"window of {window} tokens (sequence length + n_future), and a share {share:g} "
                              "of the windows is to be drawn from them: add data to that region, use a "
                              "shorter context, or change replay_ratio.")
    return previous


class TokenWindows:
    """Batches of (x, y) windows for training or evaluation.

    Each window holds seq_len + n_future tokens: x = w[:seq_len], y = w[1:seq_len + n_future], so head k
    (0-based) of a multi-token model reads its targets as y[:, k:k + seq_len].

    mode="random": every batch draws `batch_size * world_size` start positions from one seeded generator
    and rank r takes its slice, so the global batch is the same whatever the number of processes.
    With `replay_ratio` r (random mode, an index written by an appending tokenize run), each window of
    the global batch comes from the earlier runs' tokens with probability r, else from the new ones, and
    `drawn` counts the windows each region gave (the global batch's, the same on every process).
    mode="sequential": non-overlapping windows in order (rank r takes windows r, r+W, ...), one pass.
    `state_dict()` captures the position so a resumed run continues the same data order.
    """

    def __init__(self, index_path: str | os.PathLike, split: str, seq_len: int, batch_size: int,
                 n_future: int = 1, seed: int = 0, mode: str = "random", rank: int = 0, world_size: int = 1,
                 replay_ratio: float | None = None):
        if mode not in ("random", "sequential"):
            raise ValueError(f"mode must be 'random' or 'sequential', not {mode!r}")
        if replay_ratio is not None and (mode != "random" or not 0.0 <= replay_ratio <= 1.0):
            raise ValueError(f"replay_ratio {replay_ratio} needs mode='random' and a value in [0, 1]")
        self.data = TokenSplit(index_path, split)
        self.seq_len, self.batch_size, self.n_future = seq_len, batch_size, n_future
        self.window = seq_len + n_future
        self.mode, self.seed, self.rank, self.world_size = mode, seed, rank, world_size
        if self.data.total < self.window:
            raise ValueError(f"split {split!r} has {self.data.total} tokens, fewer than one window of "
                             f"{self.window} (seq_len {seq_len} + n_future {n_future}); use more data or a "
                             "shorter context")
        self.replay_ratio, self.boundary = replay_ratio, None
        if replay_ratio is not None:
            self.boundary = replay_boundary(self.data.index, split, self.window, replay_ratio, str(index_path))
        self.drawn = {"previous": 0, "new": 0}  # replay: windows drawn from each region so far
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self.batches = 0
        self.position = 0  # sequential mode: next window index

    @property
    def num_windows(self) -> int:
        """Sequential windows in one pass over the split (stride seq_len; the last n_future tokens overlap)."""
        return (self.data.total - self.n_future) // self.seq_len

    def __iter__(self) -> Iterator:
        while True:
            batch = self.next_batch()
            if batch is None:
                return
            yield batch

    def next_batch(self):
        """(x, y) as torch int64 tensors, or None at the end of a sequential pass."""
        import torch  # lazily: the tokenize stage imports this module without needing torch

        if self.mode == "random":
            n = self.batch_size * self.world_size
            if self.boundary is None:
                starts = self.rng.integers(0, self.data.total - self.window + 1, size=n)
            else:
                starts = self._replay_starts(n)
            starts = starts[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        else:
            idx = [self.position + self.rank + self.world_size * j for j in range(self.batch_size)]
            idx = [i for i in idx if i < self.num_windows]
            if not idx:
                return None
            self.position += self.batch_size * self.world_size
            starts = np.asarray(idx, dtype=np.int64) * self.seq_len
        self.batches += 1
        w = np.stack([self.data.slice(int(s), self.window) for s in starts]).astype(np.int64)
        w = torch.from_numpy(w)
        return w[:, :self.seq_len], w[:, 1:]

    def _replay_starts(self, n: int) -> np.ndarray:
        """Start positions of a global batch of n windows: a draw below replay_ratio puts a window among
        the earlier runs' tokens [0, boundary), else among the new ones [boundary, total); either way it
        lies wholly inside its region."""
        previous = self.rng.random(n) < self.replay_ratio
        low = np.where(previous, 0, self.boundary)
        high = np.where(previous, self.boundary, self.data.total) - self.window + 1
        from_previous = int(previous.sum())
        self.drawn["previous"] += from_previous
        self.drawn["new"] += n - from_previous
        return self.rng.integers(low, high)

    def state_dict(self) -> dict[str, Any]:
        state = {"mode": self.mode, "seed": self.seed, "batches": self.batches, "position": self.position,
                 "rng": self.rng.bit_generator.state}
        if self.replay_ratio is not None:  # absent otherwise: a checkpoint without replay is as it was
            state |= {"replay_ratio": self.replay_ratio, "drawn": dict(self.drawn)}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["mode"] != self.mode or state["seed"] != self.seed:
            raise ValueError(f"loader state is for mode={state['mode']} seed={state['seed']}, this loader "
                             f"has mode={self.mode} seed={self.seed}")
        if state.get("replay_ratio") != self.replay_ratio:
            raise ValueError(f"loader state is for replay_ratio={state.get('replay_ratio')}, this loader has "
                             f"replay_ratio={self.replay_ratio}")
        self.batches, self.position = state["batches"], state["position"]
        self.rng.bit_generator.state = state["rng"]
        self.drawn = dict(state.get("drawn", {"previous": 0, "new": 0}))
