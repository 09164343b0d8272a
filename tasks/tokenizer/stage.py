"""Tokenize stage: train (or load) a byte-level BPE tokenizer and pack documents into token shards.

Named `tokenizer.py`, not `tokenize.py`, so it never shadows the standard library's `tokenize`.

Outputs under the stage directory:
    tokenizer.json          Hugging Face `tokenizers` file (also loads in transformers'
                            PreTrainedTokenizerFast(tokenizer_file=...))
    tokens/index.json       shard list, token counts, dtype, vocab size, tokenizer hash (tasks.core.token_shards)
    tokens/<split>-<unit>-NNNN.bin  packed ids, one end-of-text token after each document
    _units/                 markers: the trained tokenizer, the packing plan, one per finished unit

Resuming: packing runs in work units (runs of Parquet row groups holding about `unit_bytes` of text),
each writing its own shards and then a marker (tasks.core.units.execute_unit). A rerun after a kill
reuses the trained tokenizer (its marker records its SHA-256), recalibrates the same split threshold
(deterministic from the data), and reuses every finished unit whose shards still hash as recorded:
the index, shards and token counts equal those of an uninterrupted run, byte for byte.

Splits: a document goes to 'val' when a hash of its split key (meta "parent", set on the pieces clean and
collect cut from one document, else its id) is below a threshold, so every piece of a book shares one
split. The threshold is calibrated on sizes so that 'val' holds about `val_fraction` of the text, and is
kept in the index: append mode reuses it, and `val_threshold` pins it for a full re-run, so a document
keeps its split as the corpus grows (see `calibrate_val_threshold`).

Counterfactual augmentation (`counterfactual:`, off by default): train-split documents get a copy with
gendered words swapped (he <-> she, tasks/bias/counterfactual.py), or are replaced by it. It runs here,
not in clean: MinHash dedup would drop the copies as near-duplicates of their originals, and the text
is anonymized only after pii. The 'val' split and the tokenizer's own training texts stay unchanged, so
validation perplexity stays comparable with an unaugmented run.

Speed: encoding runs on the Rust thread pool of `tokenizers` (all cores, GIL released); this process
only reads Parquet, cuts long documents into pieces, converts ids and writes, overlapped with the
encoding of the previous batch. No worker processes: forking next to a running Rust pool can deadlock,
so units run one after another in this process.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import xxhash
from pydantic import Field, model_validator
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from tasks.bias.counterfactual import WordPairs, chosen, load_pairs, pairs_path, swap
from tasks.core.artifacts import Artifact, Table
from tasks.core.config import StageConfig
from tasks.core.docs import iter_batches
from tasks.core.errors import ConfigError, UserError
from tasks.core.hashing import sha256_of
from tasks.core.result import Account, StageResult
from tasks.core.stage import Inputs, RunContext, Stage, StageOutput
from tasks.core.store import Store
from tasks.core.token_shards import ShardWriter, dtype_for_vocab, read_index, write_index
from tasks.core.units import UnitResult, WorkUnit, execute_unit, marker_uri, merge_results

log = logging.getLogger("llmpipe.tokenize")

SPLITS = ("train", "val")
PIECE_CHARS = 8192  # whole multi-MB books encode ~1.5x slower per byte than ~8 KB pieces (cache misses)
IN_FLIGHT = 2  # encode batches at once: the next one fills the thread pool while the last one finishes
READ_ROWS = 64  # rows per Parquet read; documents are regrouped into encode batches by size
SPLIT_SEED = 0x5EED  # different seeds: the validation split and the training sample are independent
SAMPLE_SEED = 0x7A1B
DOC_COLUMNS = ["id", "text", "meta"]
SPLIT_BY = "parent_or_id"  # recorded in the index: an append must split by the same rule
# A space preceded by a visible character: GPT-2's pre-tokenizer regex always splits right before it
# (no pattern continues a word through a space, and a whitespace run cannot start at a visible char).
_CUT_BEFORE = re.compile(r"(?<=[!-~\w]) ")


class CounterfactualConfig(StageConfig):
    """`tokenize.counterfactual`: counterfactual data augmentation of the train split (gendered words swapped)."""

    enabled: bool = False
    mode: Literal["add", "replace"] = Field(
        "add", description="add: a swapped copy after each treated document the swap changes; replace: the "
                           "swapped text instead of the document")
    share: float = Field(1.0, ge=0.0, le=1.0,
                         description="share of train documents treated, chosen by a hash of the document id "
                                     "and the pipeline seed")
    pairs_file: str | None = Field(None, description="word pairs in the format of tasks/bias/word_pairs.yaml; "
                                                     "None = that shipped file")


class TokenizeConfig(StageConfig):
    """The `tokenize:` section of pipelines.yaml."""

    vocab_size: int = Field(4096, description="BPE vocabulary size when training (special tokens included)")
    min_frequency: int = Field(2, ge=1, description="a merge must occur at least this often to be learned")
    eot_token: str = Field("<|endoftext|>", description="end-of-text token appended after every document")
    pad_token: str = Field("<|pad|>", description="padding token (falls back to eot for a loaded tokenizer "
                                                  "that has none)")
    extra_special_tokens: tuple[str, ...] = Field((), description="more special tokens to reserve")
    tokenizer_file: str | None = Field(None, description="load this tokenizer.json instead of training")
    append_to: str | None = Field(None, description="tokens/index.json of an earlier run: tokenize only this "
                                                    "input with that run's tokenizer and list both")
    val_fraction: float = Field(
        0.01, ge=0.0, lt=1.0,
        description="share of the text in 'val': whole source documents (meta 'parent' when set, else the "
                    "id) taken in hash order until about this share of bytes; the threshold found is kept "
                    "in the index as val_threshold")
    val_threshold: float | None = Field(
        None, ge=0.0, le=1.0,
        description="pin the split instead of calibrating it: a document is in 'val' when its key's hash "
                    "(in [0, 1)) is below this. Copy val_threshold from an earlier index so a full re-run "
                    "of a grown corpus keeps every earlier document in its split (append mode reuses it)")
    dtype: Literal["auto", "uint16", "uint32"] = "auto"
    shard_tokens: int = Field(1 << 27, ge=1, description="a shard closes after the document reaching this")
    unit_bytes: int = Field(256 << 20, ge=1,
                            description="text per work unit (runs of Parquet row groups): a killed run "
                                        "resumes after its last finished unit; each unit writes its own shards")
    batch_docs: int = Field(1024, ge=1, description="most documents per encode batch")
    batch_bytes: int = Field(4 << 20, ge=1, description="text bytes per encode batch")
    workers: int = Field(0, ge=0, description="Rust encode threads; 0 = every core (read at first use)")
    max_train_bytes: int = Field(1 << 30, ge=0, description="train on a sample of about this many bytes "
                                                            "(documents chosen by id hash); 0 = all")
    counterfactual: CounterfactualConfig = Field(
        default_factory=CounterfactualConfig,
        description="counterfactual data augmentation of the train split (see tasks/bias/word_pairs.yaml)")

    key_exclude = frozenset({"batch_docs", "batch_bytes", "workers"})  # shards are identical whatever these are

    def key_dict(self) -> dict[str, Any]:
        """Disabled augmentation writes what the stage wrote before the option existed, so it stays out of
        the key (whatever its other fields say): the config part of the key is unchanged for old configs."""
        key = super().key_dict()
        if not self.counterfactual.enabled:
            del key["counterfactual"]
        return key

    @property
    def special_tokens(self) -> list[str]:
        return [self.eot_token, self.pad_token, *self.extra_special_tokens]

    @model_validator(mode="after")
    def _check(self) -> TokenizeConfig:
        specials = self.special_tokens
        if not all(specials) or len(set(specials)) != len(specials):
            raise ValueError(f"special tokens must be distinct non-empty strings, got {specials}")
        if self.tokenizer_file is None and self.vocab_size < 256 + len(specials):
            raise ValueError(f"vocab_size {self.vocab_size} is smaller than the 256 byte tokens plus "
                             f"{len(specials)} special tokens; use at least {256 + len(specials)}")
        if self.tokenizer_file is None and self.dtype == "uint16" and self.vocab_size > 1 << 16:
            raise ValueError(f"vocab_size {self.vocab_size} does not fit dtype uint16 (65536 ids at most); "
                             "set dtype to uint32 or auto")
        return self


# tokenizer ---------------------------------------------------------------------------------------------

def new_tokenizer() -> Tokenizer:
    """An untrained GPT-2 style byte-level BPE: lossless on any UTF-8 text, no unknown token."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


def train_tokenizer(texts: Iterable[str], cfg: TokenizeConfig) -> Tokenizer:
    """Train on a stream of texts; `tokenizers` counts words on all cores as it pulls them."""
    tok = new_tokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency, special_tokens=cfg.special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def load_tokenizer(path: str | os.PathLike, key: str = "tokenize.tokenizer_file") -> Tokenizer:
    """Read a tokenizer.json; a missing or unreadable file is a UserError naming `key`."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"{key}: {path} does not exist. Give the path of a tokenizer.json saved by "
                        "Hugging Face tokenizers (GPT-2's, or one this stage trained), or remove the key "
                        "to train one.")
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust side raises a bare Exception with the serde error
        raise UserError(f"{key}: {path} is not a tokenizer.json that Hugging Face tokenizers can read "
                        f"({exc}). Point it at a file written by Tokenizer.save() or save_pretrained(), or "
                        "remove the key to train a tokenizer.") from exc
    tok.no_truncation()  # a file saved with truncation on would silently cut documents
    tok.no_padding()
    return tok


def vocab_size_of(tok: Tokenizer) -> int:
    """Number of ids the token arrays must hold (added tokens included, gaps counted)."""
    return max(tok.get_vocab_size(with_added_tokens=True), max(tok.get_vocab(True).values()) + 1)


def special_token_ids(tok: Tokenizer, cfg: TokenizeConfig, where: str) -> tuple[int, int]:
    """(eot_id, pad_id); a tokenizer without the end-of-text token is a UserError."""
    eot_id = tok.token_to_id(cfg.eot_token)
    if eot_id is None:
        raise UserError(f"{where} has no token {cfg.eot_token!r}: set tokenize.eot_token to that tokenizer's "
                        "end-of-text token (GPT-2's is '<|endoftext|>').")
    pad_id = tok.token_to_id(cfg.pad_token)
    return eot_id, eot_id if pad_id is None else pad_id


def cuts_between_words(tok: Tokenizer) -> bool:
    """True for a plain GPT-2 style byte-level BPE, whose ids for a text equal the concatenated ids of
    its `cut_text` pieces; any other tokenizer gets whole documents."""
    spec = json.loads(tok.to_str())
    pre, model = spec.get("pre_tokenizer") or {}, spec.get("model") or {}
    return (spec.get("normalizer") is None
            and pre.get("type") == "ByteLevel" and pre.get("use_regex", True)
            and not pre.get("add_prefix_space", True)
            and model.get("type") == "BPE" and model.get("dropout") is None
            and all(t.get("special") for t in spec.get("added_tokens", [])))


def cut_text(text: str, piece_chars: int = PIECE_CHARS) -> list[str]:
    """Pieces of about `piece_chars` characters, each cut right before a space that follows a visible
    character, where the byte-level pre-tokenizer splits anyway: encoding the pieces gives the same ids."""
    if len(text) < 2 * piece_chars:
        return [text]
    pieces, start = [], 0
    while len(text) - start >= 2 * piece_chars:
        cut = _CUT_BEFORE.search(text, start + piece_chars)
        if cut is None:
            break
        pieces.append(text[start:cut.start()])
        start = cut.start()
    pieces.append(text[start:])
    return pieces


def _publish(src_or_tok: Path | Tokenizer, target: Path) -> None:
    """Write tokenizer.json under a temporary name, then rename: never a half-written file."""
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    if isinstance(src_or_tok, Tokenizer):
        src_or_tok.save(str(tmp))
    else:
        shutil.copyfile(src_or_tok, tmp)  # a copy, byte for byte: its hash stays the source's hash
    os.replace(tmp, target)


# reading documents -------------------------------------------------------------------------------------

@dataclass
class DocBatch:
    """Non-empty documents to encode together, and how many empty ones were skipped on the way."""

    ids: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)  # split key of each document (see `split_key`)
    texts: list[str] = field(default_factory=list)
    nbytes: list[int] = field(default_factory=list)  # UTF-8 bytes of each text
    empty: int = 0
    copies: int = 0  # counterfactual copies among the documents, each right after its original


def read_doc_batches(record_batches: Iterable, batch_docs: int, batch_bytes: int) -> Iterator[DocBatch]:
    """Regroup Parquet record batches (id, text, meta) into batches of at most `batch_docs` docs or about
    `batch_bytes` of text."""
    batch, size = DocBatch(), 0
    for rows in record_batches:
        texts = rows.column("text")
        nbytes = pc.binary_length(texts).to_pylist()
        metas = rows.column("meta").to_pylist()
        for doc_id, text, n, meta in zip(rows.column("id").to_pylist(), texts.to_pylist(), nbytes, metas):
            if not text or text.isspace():
                batch.empty += 1
                continue
            batch.ids.append(doc_id or "")
            batch.keys.append(split_key(doc_id or "", meta))
            batch.texts.append(text)
            batch.nbytes.append(n)
            size += n
            if len(batch.ids) >= batch_docs or size >= batch_bytes:
                yield batch
                batch, size = DocBatch(), 0
    if batch.ids or batch.empty:
        yield batch


def read_documents(store: Store, uris: list[str]) -> Iterator:
    """Record batches of the columns tokenize reads, from whole document shards."""
    return iter_batches(store, uris, batch_rows=READ_ROWS, columns=DOC_COLUMNS)


def _unit_hash(doc_id: str, seed: int) -> float:
    """A stable number in [0, 1) from a document id."""
    return xxhash.xxh64_intdigest(doc_id.encode(), seed) / 2.0**64


def split_key(doc_id: str, meta: str | None) -> str:
    """What a document's split is drawn from: meta "parent" when set, else the document's own id.

    Clean and collect cut long documents into pieces `<parent>-<k>` with `parent` in meta (UnitWriter.
    keep_pieces); hashing the piece ids would put passages of one book in both splits, so validation
    text would leak into training. Meta that is not a JSON object, or has no non-empty parent, means
    the document is whole.
    """
    if not meta or '"parent"' not in meta:  # most documents: skip parsing their meta
        return doc_id
    try:
        parsed = json.loads(meta)
    except ValueError:
        return doc_id
    parent = parsed.get("parent") if isinstance(parsed, dict) else None
    return str(parent) if parent not in (None, "") else doc_id


def split_hash(key: str) -> float:
    """Where a split key falls in [0, 1): the order in which documents are drawn for 'val'."""
    return _unit_hash(key, SPLIT_SEED)


def split_of(key: str, val_threshold: float) -> str:
    """'val' or 'train' from the hash of the split key (see `split_key`) and the threshold alone, so
    every piece of one parent document lands in the same split, and a document keeps its split as long
    as the threshold is kept (append mode, or a pinned `val_threshold`)."""
    return "val" if split_hash(key) < val_threshold else "train"


def calibrate_val_threshold(hashes: np.ndarray, sizes: np.ndarray, val_fraction: float) -> float:
    """The hash threshold that puts about `val_fraction` of `sizes` in 'val'.

    Documents sharing a key share a hash, so they are summed as one. Keys are taken in hash order,
    lowest first, and the count whose total is nearest to the target wins, at least one key when there
    are two or more: a split by key count alone lets a few large documents decide the share of text.
    The threshold is the hash of the first key left in 'train'; a new document then goes to 'val' with
    probability about equal to the threshold, whatever its size.
    """
    if val_fraction <= 0 or hashes.size == 0:
        return float(val_fraction)
    keys, inverse = np.unique(hashes, return_inverse=True)  # (keys,) sorted hashes
    cumulative = np.cumsum(np.bincount(inverse, weights=sizes))  # (keys,) text of the lowest k+1 keys
    target = val_fraction * cumulative[-1]
    above = int(np.searchsorted(cumulative, target))  # taking above+1 keys reaches the target
    take = above if above > 0 and target - cumulative[above - 1] <= cumulative[above] - target else above + 1
    take = max(1, min(take, keys.size - 1)) if keys.size > 1 else 0
    return float(keys[take]) if take < keys.size else 1.0


def document_hashes_and_sizes(store: Store, uris: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(split hash, UTF-8 bytes of text) of every document: one pass over ids, metas and text lengths."""
    hashes, sizes = [], []
    for rows in iter_batches(store, uris, batch_rows=16 * READ_ROWS, columns=["id", "text", "meta"]):
        sizes.append(pc.binary_length(rows.column("text")).fill_null(0).to_numpy(zero_copy_only=False))
        hashes.append(np.fromiter((split_hash(split_key(doc_id or "", meta)) for doc_id, meta in
                                   zip(rows.column("id").to_pylist(), rows.column("meta").to_pylist())),
                                  np.float64, count=rows.num_rows))
    if not hashes:
        return np.empty(0), np.empty(0)
    return np.concatenate(hashes), np.concatenate(sizes).astype(np.float64)


def text_bytes_estimate(store: Store, uris: list[str]) -> int:
    """Uncompressed size of the text column from Parquet footers (no data read)."""
    total = 0
    for uri in uris:
        with store.open(uri, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        total += sum(_text_bytes(meta.row_group(g)) for g in range(meta.num_row_groups))
    return total


def training_texts(store: Store, uris: list[str], cfg: TokenizeConfig, val_threshold: float,
                   sample: dict[str, Any]) -> Iterator[str]:
    """Train-split documents, cut into pieces; above `max_train_bytes`, a sample chosen by id hash
    spread over the whole corpus (sampled per document id, so a long book contributes some of its
    pieces). Fills `sample` with what was used."""
    keep = 1.0
    if cfg.max_train_bytes:  # the train split holds about (1 - val_fraction) of the text
        train_estimate = text_bytes_estimate(store, uris) * (1.0 - cfg.val_fraction)
        keep = min(1.0, cfg.max_train_bytes / max(train_estimate, 1.0))
    sample.update(train_docs=0, train_bytes=0, train_sample_fraction=keep)
    for batch in read_doc_batches(read_documents(store, uris), cfg.batch_docs, cfg.batch_bytes):
        for doc_id, key, text, n in zip(batch.ids, batch.keys, batch.texts, batch.nbytes):
            if split_of(key, val_threshold) != "train" or _unit_hash(doc_id, SAMPLE_SEED) >= keep:
                continue
            if cfg.max_train_bytes and sample["train_bytes"] >= cfg.max_train_bytes:
                return
            sample["train_docs"] += 1
            sample["train_bytes"] += n
            yield from cut_text(text)


# counterfactual augmentation ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Counterfactual:
    """What a pack unit needs to augment the train split: the pairs, the mode, and which documents."""

    pairs: WordPairs
    mode: str
    share: float
    seed: int


def counterfactual_settings(cfg: TokenizeConfig, seed: int) -> dict[str, Any] | None:
    """What the augmentation depends on (None when it is off): kept in the pack plan and the index. The
    seed is listed only when it picks documents (0 < share < 1), the pairs by their file's hash."""
    cf = cfg.counterfactual
    if not cf.enabled:
        return None
    settings: dict[str, Any] = {"mode": cf.mode, "share": cf.share,
                                "pairs_sha256": sha256_of(pairs_path(cf.pairs_file))}
    if 0.0 < cf.share < 1.0:
        settings["seed"] = seed
    return settings


def augment(batch: DocBatch, cf: Counterfactual, val_threshold: float, account: Account) -> DocBatch:
    """The batch with its chosen train documents swapped: "add" puts a swapped copy right after each one
    the swap changes, "replace" puts the swapped text in its place. Counts go to the unit's account."""
    out = DocBatch(empty=batch.empty)

    def put(doc_id: str, key: str, text: str, nbytes: int) -> None:
        out.ids.append(doc_id)
        out.keys.append(key)
        out.texts.append(text)
        out.nbytes.append(nbytes)

    for doc_id, key, text, nbytes in zip(batch.ids, batch.keys, batch.texts, batch.nbytes):
        if split_of(key, val_threshold) != "train" or not chosen(doc_id, cf.share, cf.seed):
            put(doc_id, key, text, nbytes)
            continue
        swapped, swaps = swap(text, cf.pairs)
        account.count("cda_docs_treated")
        if not swaps:
            put(doc_id, key, text, nbytes)
            continue
        account.count("cda_docs_changed")
        account.count("cda_swaps", swaps)
        swapped_bytes = len(swapped.encode("utf-8"))
        if cf.mode == "replace":
            put(doc_id, key, swapped, swapped_bytes)
            account.count("cda_docs_replaced")
        else:  # the copy keeps the split key, so it lands in 'train' with its original
            put(doc_id, key, text, nbytes)
            put(doc_id, key, swapped, swapped_bytes)
            out.copies += 1
            account.count("cda_copies_added")
    return out


def counterfactual_stats(settings: dict[str, Any] | None, account: Account) -> dict[str, Any]:
    """The `counterfactual` entry of the stage stats: the settings and what the units counted."""
    if settings is None:
        return {}
    counts = {name: int(account.counters.get(f"cda_{name}", 0))
              for name in ("docs_treated", "docs_changed", "copies_added", "docs_replaced", "swaps")}
    return {"counterfactual": {**settings, **counts}}


# packing -----------------------------------------------------------------------------------------------

@dataclass
class EncodedBatch:
    tokens: dict[str, np.ndarray]  # split -> (n,) ids of its documents, one eot after each
    doc_tokens: dict[str, np.ndarray]  # split -> (docs,) tokens per document, eot included
    text_bytes: dict[str, int]
    special_text_docs: int  # documents holding a special token's text (encoded as plain text)
    copies: int = 0  # counterfactual copies among the documents (DocBatch.copies)


def append_documents(writer: ShardWriter, tokens: np.ndarray, doc_tokens: np.ndarray) -> None:
    """Append whole documents in few writes, closing shards exactly where per-document appends would
    (after the document that fills one), so shard boundaries do not depend on batch sizes."""
    ends = np.cumsum(doc_tokens)  # (docs,) end of each document within `tokens`
    done_docs = done_tokens = 0
    while done_docs < ends.size:
        room = writer.max_tokens - writer.open_tokens
        last = min(int(np.searchsorted(ends, done_tokens + room, side="left")), ends.size - 1)
        end = int(ends[last])
        writer.append(tokens[done_tokens:end], docs=last + 1 - done_docs)
        done_docs, done_tokens = last + 1, end


class Packer:
    """Encodes document batches on the tokenizers thread pool and appends them to per-split shards."""

    def __init__(self, tok: Tokenizer, tokens_dir: Path, *, dtype: np.dtype, eot_id: int, val_threshold: float,
                 shard_tokens: int, special_tokens: list[str], stem: str | None = None,
                 vocab_size: int | None = None):
        tok.encode_special_tokens = True  # a document's literal "<|endoftext|>" is text, not a boundary
        self.tok, self.dtype, self.eot_id, self.val_threshold = tok, np.dtype(dtype), eot_id, val_threshold
        self.special_tokens = special_tokens
        self.cut = cuts_between_words(tok)
        self._encode_batch = getattr(tok, "encode_batch_fast", tok.encode_batch)  # ids only, no offsets
        vocab_size = vocab_size_of(tok) if vocab_size is None else vocab_size
        self.writers = {s: ShardWriter(tokens_dir, s, self.dtype, shard_tokens, stem=stem, vocab_size=vocab_size)
                        for s in SPLITS}
        self.totals = {s: {"docs": 0, "tokens": 0, "bytes": 0} for s in SPLITS}
        self.special_text_docs = 0
        self.shards: dict[str, list[dict[str, Any]]] = {}  # split -> finished shard entries, after close()

    def pack(self, batches: Iterable[DocBatch], account: Account) -> None:
        """Read batch k+1 while batch k encodes; write results in input order (deterministic shards)."""
        pending: deque = deque()
        with ThreadPoolExecutor(max_workers=IN_FLIGHT, thread_name_prefix="llmpipe-encode") as pool:
            for batch in batches:
                for _ in range(batch.empty):
                    account.drop("empty")
                pending.append(pool.submit(self.encode, batch))
                if len(pending) >= IN_FLIGHT:
                    self._write(pending.popleft().result(), account)
            while pending:
                self._write(pending.popleft().result(), account)

    def encode(self, batch: DocBatch) -> EncodedBatch:
        """Token arrays per split for one batch (runs in an encode thread)."""
        pieces, piece_counts = [], []
        for text in batch.texts:
            parts = cut_text(text) if self.cut else [text]
            pieces.extend(parts)
            piece_counts.append(len(parts))
        encodings = self._encode_batch(pieces, add_special_tokens=False)
        # one pass from the Encoding objects into one array, an eot after each document's pieces
        eot, ids, first = (self.eot_id,), [], 0
        for count in piece_counts:
            ids.extend(e.ids for e in encodings[first:first + count])
            ids.append(eot)
            first += count
        piece_tokens = np.fromiter(map(len, encodings), np.int64, count=len(encodings))  # (pieces,)
        doc_starts = np.cumsum(piece_counts) - piece_counts  # (docs,) first piece of each document
        doc_tokens = np.add.reduceat(piece_tokens, doc_starts) + 1 if pieces else np.empty(0, np.int64)
        tokens = np.fromiter(chain.from_iterable(ids), self.dtype, count=int(doc_tokens.sum()))  # (total,)
        del encodings, ids
        is_val = np.fromiter((split_of(k, self.val_threshold) == "val" for k in batch.keys), bool,
                             count=len(batch.keys))  # (docs,)
        token_is_val = np.repeat(is_val, doc_tokens)  # (total,)
        nbytes = np.asarray(batch.nbytes, dtype=np.int64)
        special = sum(any(t in text for t in self.special_tokens) for text in batch.texts)
        return EncodedBatch(
            tokens={"val": tokens[token_is_val], "train": tokens[~token_is_val]},
            doc_tokens={"val": doc_tokens[is_val], "train": doc_tokens[~is_val]},
            text_bytes={"val": int(nbytes[is_val].sum()), "train": int(nbytes[~is_val].sum())},
            special_text_docs=special, copies=batch.copies)

    def _write(self, encoded: EncodedBatch, account: Account) -> None:
        packed = 0
        for split in SPLITS:
            docs = encoded.doc_tokens[split].size
            if docs:
                append_documents(self.writers[split], encoded.tokens[split], encoded.doc_tokens[split])
            totals = self.totals[split]
            totals["docs"] += docs
            totals["tokens"] += encoded.tokens[split].size
            totals["bytes"] += encoded.text_bytes[split]
            packed += docs
        # the account counts input documents: one with a counterfactual copy was kept as two rows
        for _ in range(encoded.copies):
            account.keep(rows=2)
        for _ in range(packed - 2 * encoded.copies):
            account.keep()
        self.special_text_docs += encoded.special_text_docs

    def close(self) -> dict[str, list[dict[str, Any]]]:
        """Finish the open shards; returns (and keeps in `shards`) each split's shard entries."""
        self.shards = {s: w.close() for s, w in self.writers.items()}
        return self.shards


# resumable packing: work units -------------------------------------------------------------------------

PACK_UNIT = "tasks.tokenizer.stage:pack_unit"
PLAN_MARKER = "_units/pack-plan.json"  # what the unit markers were made with: tokenizer, split, dtype
TOKENIZER_MARKER = "_units/tokenizer.json"  # the tokenizer this output trained, and how


def plan_pack_units(store: Store, uris: list[str], out_uri: str, cfg: TokenizeConfig, ctx: RunContext,
                    extra: dict[str, Any]) -> list[WorkUnit]:
    """Runs of consecutive row groups holding about `unit_bytes` of text each (from the Parquet footers).

    Units depend on the input files and `unit_bytes` only, so a rerun finds the same units, and each
    unit writes `<split>-<unit>-NNNN.bin` shards: names and contents do not depend on which units an
    earlier, killed run finished."""
    units: list[WorkUnit] = []
    parts: list[tuple[str, list[int]]] = []
    size = 0

    def close_unit() -> None:
        nonlocal parts, size
        if parts:
            units.append(WorkUnit(stage="tokenize", unit_id=f"u{len(units):05d}", inputs=[u for u, _ in parts],
                                  out_uri=out_uri, store_root=ctx.store, config=cfg.canonical(),
                                  extra=extra | {"row_groups": [g for _, g in parts]}))
        parts, size = [], 0

    for uri in uris:
        with store.open(uri, "rb") as f:
            meta = pq.ParquetFile(f).metadata
        for g in range(meta.num_row_groups):
            if not parts or parts[-1][0] != uri:
                parts.append((uri, []))
            parts[-1][1].append(g)
            size += _text_bytes(meta.row_group(g))
            if size >= cfg.unit_bytes:
                close_unit()
    close_unit()
    return units


def _text_bytes(group: Any) -> int:
    return sum(group.column(c).total_uncompressed_size for c in range(group.num_columns)
               if group.column(c).path_in_schema == "text")


def unit_documents(store: Store, unit: WorkUnit) -> Iterator:
    """Record batches of the unit's row groups, in input order."""
    for uri, groups in zip(unit.inputs, unit.extra["row_groups"]):
        with store.open(uri, "rb") as f:
            yield from pq.ParquetFile(f).iter_batches(batch_size=READ_ROWS, row_groups=groups,
                                                      columns=DOC_COLUMNS)


_TOKENIZERS: dict[tuple[str, str], Tokenizer] = {}  # (path, sha256): loaded once per process


def _unit_tokenizer(path: Path, sha256: str) -> Tokenizer:
    key = (str(path), sha256)
    if key not in _TOKENIZERS:
        if sha256_of(path) != sha256:  # replaced since the run planned its units: never pack with it
            raise RuntimeError(f"{path} changed while the tokenize stage was running (sha256 differs)")
        _TOKENIZERS.clear()
        _TOKENIZERS[key] = load_tokenizer(path, "tokenize (its own tokenizer.json)")
    return _TOKENIZERS[key]


_PAIRS: dict[tuple[str, str], WordPairs] = {}  # (path, sha256): loaded once per process


def _unit_pairs(pairs_file: str | None, sha256: str) -> WordPairs:
    path = pairs_path(pairs_file)
    key = (str(path), sha256)
    if key not in _PAIRS:
        if sha256_of(path) != sha256:  # replaced since the run planned its units: the key no longer says it
            raise RuntimeError(f"{path} changed while the tokenize stage was running (sha256 differs)")
        _PAIRS.clear()
        _PAIRS[key] = load_pairs(path)
    return _PAIRS[key]


def unit_batches(store: Store, unit: WorkUnit, cfg: TokenizeConfig, account: Account) -> Iterator[DocBatch]:
    """The unit's document batches, augmented when the plan says so."""
    batches = read_doc_batches(unit_documents(store, unit), cfg.batch_docs, cfg.batch_bytes)
    settings = unit.extra.get("counterfactual")
    if settings is None:
        return batches
    cf = Counterfactual(pairs=_unit_pairs(cfg.counterfactual.pairs_file, settings["pairs_sha256"]),
                        mode=settings["mode"], share=settings["share"], seed=settings.get("seed", 0))
    return (augment(batch, cf, unit.extra["val_threshold"], account) for batch in batches)


def pack_unit(unit: WorkUnit) -> UnitResult:
    """Encode one unit's documents into its own shards; the marker (written by execute_unit) keeps the
    shard entries, totals and SHA-256s, so a resumed run lists the shards without reading them."""
    cfg = TokenizeConfig.model_validate(unit.config)
    store, x = Store(unit.store_root), unit.extra
    out_dir = store.local_path(unit.out_uri)
    tok = _unit_tokenizer(out_dir / "tokenizer.json", x["tokenizer_sha256"])
    packer = Packer(tok, out_dir / "tokens", dtype=np.dtype(x["dtype"]), eot_id=x["eot_id"],
                    val_threshold=x["val_threshold"], shard_tokens=cfg.shard_tokens,
                    special_tokens=cfg.special_tokens, stem=unit.unit_id, vocab_size=x["vocab_size"])
    account = Account()
    packer.pack(unit_batches(store, unit, cfg, account), account)
    shards = packer.close()
    files = [f"tokens/{e['file']}" for split in SPLITS for e in shards[split]]
    account.check(f"tokenize unit {unit.unit_id}")
    info = {"shards": shards, "totals": packer.totals, "special_text_docs": packer.special_text_docs,
            "sha256": {f"tokens/{name}": sha for w in packer.writers.values() for name, sha in w.sha256.items()}}
    return UnitResult(unit_id=unit.unit_id, account=account, outputs={"tokens": files}, info=info)


def start_pack_plan(store: Store, out_uri: str, plan: dict[str, Any]) -> None:
    """Keep the finished units of an earlier attempt only if they were packed with this very plan
    (tokenizer hash, split threshold, dtype, units); otherwise start the shards afresh."""
    marker = f"{out_uri}/{PLAN_MARKER}"
    if store.exists(marker) and store.read_json(marker) == plan:
        return
    out_dir = store.local_path(out_uri)
    shutil.rmtree(out_dir / "tokens", ignore_errors=True)
    for stale in (out_dir / "_units").glob("u*.json"):
        stale.unlink()
    store.write_json(marker, plan)


def run_pack_units(store: Store, units: list[WorkUnit]) -> list[UnitResult]:
    """Run the units in order, in this process (the encoder's Rust threads already use every core, and
    forking beside them can deadlock). A finished unit is reused only while its shards hash as recorded:
    a marker checks sizes, and a flipped byte keeps the size."""
    results = []
    for unit in units:
        result = execute_unit(PACK_UNIT, unit)
        changed = _changed_files(store, unit, result) if result.resumed else []
        if changed:
            log.warning("tokenize unit %s: %s changed since the unit finished (SHA-256 differs); "
                        "re-tokenizing the unit", unit.unit_id, ", ".join(changed))
            store.rm(marker_uri(unit))
            result = execute_unit(PACK_UNIT, unit)
        results.append(result)
    return results


def _changed_files(store: Store, unit: WorkUnit, result: UnitResult) -> list[str]:
    out_dir = store.local_path(unit.out_uri)
    return [rel for rel, sha in result.info["sha256"].items() if sha256_of(out_dir / rel) != sha]


@dataclass
class PackedUnits:
    """The units' shards and totals, merged in unit order (what the index and the stats need)."""

    shards: dict[str, list[dict[str, Any]]]
    totals: dict[str, dict[str, int]]
    special_text_docs: int
    cut: bool
    account: Account
    units: int
    resumed: int
    packed_bytes: int  # text bytes encoded by this run (resumed units excluded)


def merge_pack_results(results: list[UnitResult], cut: bool) -> PackedUnits:
    shards: dict[str, list[dict[str, Any]]] = {s: [] for s in SPLITS}
    totals = {s: {"docs": 0, "tokens": 0, "bytes": 0} for s in SPLITS}
    special = packed_bytes = 0
    for r in results:
        for split in SPLITS:
            shards[split].extend(r.info["shards"][split])
            for name, value in r.info["totals"][split].items():
                totals[split][name] += value
            if not r.resumed:
                packed_bytes += r.info["totals"][split]["bytes"]
        special += r.info["special_text_docs"]
    account, _ = merge_results(results)
    return PackedUnits(shards=shards, totals=totals, special_text_docs=special, cut=cut, account=account,
                       units=len(results), resumed=sum(r.resumed for r in results), packed_bytes=packed_bytes)


# incremental runs --------------------------------------------------------------------------------------

@dataclass
class PreviousTokens:
    """An earlier run's index, its shards addressed from the new tokens directory."""

    index_path: Path
    index: dict[str, Any]
    shards: dict[str, list[dict[str, Any]]]
    tokenizer_path: Path  # the tokenizer.json of that run's stage directory

    @property
    def counts(self) -> dict[str, int]:
        """Shards per split that come from the earlier run(s): every shard its index lists, so after a
        chain of appends they include the shards that index took from the runs before it. Recorded in
        the new index as `previous_shards`, which pretrain's replay_ratio reads."""
        return {s: len(self.shards.get(s, [])) for s in SPLITS}


def load_previous(append_to: str, tokens_dir: Path) -> PreviousTokens:
    index_path = Path(append_to).expanduser().resolve()
    if not index_path.is_file():
        raise UserError(f"tokenize.append_to: {index_path} does not exist. Give the tokens/index.json of the "
                        "run to extend (the champion's data), or remove the key to tokenize from scratch.")
    try:
        index = read_index(index_path)
    except (ValueError, json.JSONDecodeError) as exc:
        raise UserError(f"tokenize.append_to: {index_path} is not a token index ({exc}).") from exc
    shards: dict[str, list[dict[str, Any]]] = {}
    for split, entry in index["splits"].items():
        shards[split] = []
        for shard in entry["shards"]:
            path = index_path.parent / shard["file"]
            if not path.is_file():
                raise UserError(f"tokenize.append_to: {index_path} lists {path}, which is missing; the "
                                "earlier run's output is incomplete. Point append_to at a complete run.")
            shards[split].append({**shard, "file": os.path.relpath(path, tokens_dir)})
    return PreviousTokens(index_path, index, shards, index_path.parent.parent / "tokenizer.json")


def check_previous(previous: PreviousTokens, *, sha: str, tokenizer_source: str, eot_id: int,
                   cfg: TokenizeConfig, counterfactual: dict[str, Any] | None = None) -> None:
    """Appending is only sound with the very tokenizer, end-of-text id, split rule and augmentation of the
    earlier run."""
    index, where = previous.index, f"tokenize.append_to: {previous.index_path}"
    if index.get("counterfactual") != counterfactual:
        raise UserError(f"{where} was written with counterfactual augmentation {index.get('counterfactual')}, "
                        f"this run has {counterfactual}; set tokenize.counterfactual as the earlier run had it "
                        "(same mode, share, pairs file and seed), or remove append_to to re-tokenize everything.")
    if index["tokenizer_sha256"] != sha:
        raise UserError(
            f"{where} was made with tokenizer sha256 {index['tokenizer_sha256'][:12]}, but "
            f"{tokenizer_source} has sha256 {sha[:12]}. New tokens must use the same tokenizer as the model "
            f"trained on the old ones: set tokenize.tokenizer_file to {previous.tokenizer_path} (or the "
            "champion's tokenizer.json), or remove append_to to re-tokenize everything with the new "
            "tokenizer and retrain from scratch.")
    if index["eot_id"] != eot_id:
        raise UserError(f"{where} uses end-of-text id {index['eot_id']}, but tokenize.eot_token "
                        f"{cfg.eot_token!r} is id {eot_id}; use the earlier run's eot_token.")
    if index.get("val_fraction", cfg.val_fraction) != cfg.val_fraction:
        raise UserError(f"{where} split documents with val_fraction {index['val_fraction']}, this run has "
                        f"{cfg.val_fraction}; use the same value so every document keeps its split.")
    if index.get("split_by", "id") != SPLIT_BY:
        raise UserError(f"{where} split documents by {index.get('split_by', 'id')!r}, this version splits by "
                        f"{SPLIT_BY!r} (meta parent, else id) so pieces of one document share a split; "
                        "remove append_to to re-tokenize everything with the current rule.")


def previous_threshold(previous: PreviousTokens) -> float:
    """The earlier run's threshold; an index written before calibration split by `hash < val_fraction`."""
    return float(previous.index.get("val_threshold", previous.index["val_fraction"]))


def resolve_val_threshold(store: Store, doc_uris: list[str], cfg: TokenizeConfig,
                          previous: PreviousTokens | None) -> tuple[float, str]:
    """(threshold, where it came from): the earlier run's when appending, the pinned one, or calibrated
    on this input's sizes."""
    if previous is not None:
        earlier = previous_threshold(previous)
        if cfg.val_threshold is not None and cfg.val_threshold != earlier:
            raise UserError(f"tokenize.val_threshold: {cfg.val_threshold} differs from the {earlier} of "
                            f"{previous.index_path}, whose documents keep their splits; remove val_threshold "
                            "when appending (the earlier run's is used).")
        return earlier, "append_to"
    if cfg.val_threshold is not None:
        return cfg.val_threshold, "config"
    hashes, sizes = document_hashes_and_sizes(store, doc_uris)
    return calibrate_val_threshold(hashes, sizes, cfg.val_fraction), "calibrated"


def choose_dtype(vocab_size: int, cfg: TokenizeConfig, source: str,
                 previous: PreviousTokens | None) -> np.dtype:
    """The configured dtype, checked against the vocabulary and, when appending, the earlier shards."""
    if previous is not None:
        earlier = np.dtype(previous.index["dtype"])
        if cfg.dtype not in ("auto", earlier.name):
            raise ConfigError(f"tokenize.dtype: {cfg.dtype} differs from the {earlier.name} shards of "
                              f"{previous.index_path}; set it to auto or {earlier.name} when appending.")
        return earlier
    try:
        return dtype_for_vocab(vocab_size, cfg.dtype)
    except ValueError as exc:
        raise ConfigError(f"tokenize.dtype: the tokenizer from {source}: {exc}") from exc


# stats -------------------------------------------------------------------------------------------------

def tokenize_stats(packed: PackedUnits, *, tok_info: dict[str, Any], index: dict[str, Any],
                   pack_seconds: float, counterfactual: dict[str, Any] | None = None) -> dict[str, Any]:
    """Stage stats: the account, sizes, bytes per token, tokens per split, tokenizer, units and timings."""
    totals = packed.totals
    docs = sum(t["docs"] for t in totals.values())
    tokens = sum(t["tokens"] for t in totals.values())
    text_bytes = sum(t["bytes"] for t in totals.values())
    return {
        **packed.account.as_stats(),
        "docs": docs, "bytes": text_bytes, "tokens": tokens,
        "bytes_per_token": round(text_bytes / max(tokens - docs, 1), 4),  # eot tokens excluded
        "tokens_by_split": {s: t["tokens"] for s, t in totals.items()},
        "docs_by_split": {s: t["docs"] for s, t in totals.items()},
        "bytes_by_split": {s: t["bytes"] for s, t in totals.items()},
        "val_token_fraction": round(totals["val"]["tokens"] / max(tokens, 1), 4),
        "index_tokens_by_split": {s: e["tokens"] for s, e in index["splits"].items()},
        "docs_with_special_token_text": packed.special_text_docs,
        "vocab_size": index["vocab_size"], "dtype": index["dtype"], "eot_id": index["eot_id"],
        "pad_id": index["pad_id"], "tokenizer_sha256": index["tokenizer_sha256"],
        "encoded_in_pieces": packed.cut,
        "units": packed.units, "units_resumed": packed.resumed,
        **counterfactual_stats(counterfactual, packed.account),
        **tok_info,
        "pack_seconds": round(pack_seconds, 3),
        # this run's encoding speed: units resumed from a killed attempt took no time here
        "pack_mb_per_s": round(packed.packed_bytes / 1e6 / max(pack_seconds, 1e-9), 3),
    }


def stats_table(stats: dict[str, Any]) -> list[dict[str, str]]:
    """Rows of (metric, value) for a Prefect table artifact; nested dicts become one row per key."""
    rows = []
    for key, value in stats.items():
        if isinstance(value, dict):
            rows.extend({"metric": f"{key}.{k}", "value": str(v)} for k, v in value.items())
        else:
            rows.append({"metric": key, "value": str(value)})
    return rows


def tokenize_artifacts(result: StageResult) -> list[Artifact]:
    """The stats as a table for the Prefect UI."""
    return [Table("stats", stats_table(result.stats), "documents, bytes, tokens per split, tokenizer")]


# the stage ---------------------------------------------------------------------------------------------

def obtain_tokenizer(store: Store, doc_uris: list[str], cfg: TokenizeConfig, previous: PreviousTokens | None,
                     target: Path, val_threshold: float) -> tuple[Tokenizer, dict[str, Any]]:
    """Load the configured (or, when appending, the earlier run's) tokenizer, or train one on the input;
    either way publish it as `target`. Never trains when appending."""
    source = cfg.tokenizer_file
    key = "tokenize.tokenizer_file"
    if source is None and previous is not None:
        source, key = str(previous.tokenizer_path), "tokenize.append_to (its tokenizer.json)"
    if source is not None:
        tok = load_tokenizer(source, key)
        _publish(Path(source).expanduser(), target)
        return tok, {"tokenizer_origin": "file", "tokenizer_source": str(source), "train_seconds": 0.0}
    sample: dict[str, Any] = {}
    start = time.perf_counter()
    tok = train_tokenizer(training_texts(store, doc_uris, cfg, val_threshold, sample), cfg)
    seconds = time.perf_counter() - start
    if sample["train_docs"] == 0:
        raise UserError("tokenize: the input has no non-empty training documents to train a tokenizer on; "
                        "check the upstream stages' stats, or set tokenize.tokenizer_file.")
    _publish(tok, target)
    return tok, {"tokenizer_origin": "trained", "train_seconds": round(seconds, 3), **sample}


def tokenize_key_extra(cfg: TokenizeConfig, ctx: RunContext | None = None) -> dict[str, str]:
    """Hashes of the files the config names, part of the store key: it then changes when a tokenizer
    file or an earlier index is replaced at the same path."""
    extra = {}
    for name in ("tokenizer_file", "append_to"):
        path = getattr(cfg, name)
        if path is not None:
            path = Path(path).expanduser()
            extra[name] = sha256_of(path) if path.is_file() else "missing"
    cf = cfg.counterfactual
    if cf.enabled:  # the shipped pairs file is YAML, outside the code version: its hash goes in too
        path = pairs_path(cf.pairs_file)
        extra["counterfactual_pairs"] = sha256_of(path) if path.is_file() else "missing"
        if ctx is not None and 0.0 < cf.share < 1.0:  # the seed picks the documents treated
            extra["counterfactual_seed"] = str(ctx.seed)
    return extra


def tokenize_preflight(cfg: TokenizeConfig) -> None:
    """A bad word-pair file is reported before the flow starts, not after hours of upstream stages."""
    if cfg.counterfactual.enabled:
        load_pairs(cfg.counterfactual.pairs_file)


def _set_encode_threads(workers: int) -> None:
    # rayon sizes the tokenizers pool from this variable once, at its first use in the process
    if workers > 0:
        os.environ["RAYON_NUM_THREADS"] = str(workers)


def reuse_trained_tokenizer(store: Store, out_uri: str, target: Path) -> tuple[Tokenizer, dict[str, Any]] | None:
    """The tokenizer a killed attempt of this very output trained, when its marker and file agree:
    training is the slowest step after packing, and the units packed with it stay valid."""
    marker = f"{out_uri}/{TOKENIZER_MARKER}"
    if not (store.exists(marker) and target.is_file()):
        return None
    done = store.read_json(marker)
    if sha256_of(target) != done["sha256"]:
        return None
    return load_tokenizer(target, "tokenize (its own tokenizer.json)"), {**done["info"], "tokenizer_resumed": True}


def obtain_or_reuse_tokenizer(store: Store, out_uri: str, doc_uris: list[str], cfg: TokenizeConfig,
                              previous: PreviousTokens | None,
                              val_threshold: float) -> tuple[Tokenizer, dict[str, Any]]:
    target = store.local_path(out_uri) / "tokenizer.json"
    trains = cfg.tokenizer_file is None and previous is None
    reused = reuse_trained_tokenizer(store, out_uri, target) if trains else None
    if reused is not None:
        return reused
    tok, info = obtain_tokenizer(store, doc_uris, cfg, previous, target, val_threshold)
    if trains:
        store.write_json(f"{out_uri}/{TOKENIZER_MARKER}", {"sha256": sha256_of(target), "info": info})
    return tok, {**info, "tokenizer_resumed": False}


def run_tokenize(inputs: Inputs, out_uri: str, cfg: TokenizeConfig, ctx: RunContext) -> StageOutput:
    """Train or load the tokenizer, pack every input document into token shards in resumable units,
    write the index. A rerun after a kill reuses the trained tokenizer and every finished unit."""
    store = ctx.open_store()
    tokens_dir = store.local_path(out_uri) / "tokens"
    tokens_dir.mkdir(parents=True, exist_ok=True)
    _set_encode_threads(cfg.workers)
    doc_uris = inputs["pii"].files("docs")
    previous = load_previous(cfg.append_to, tokens_dir) if cfg.append_to else None
    tokenize_preflight(cfg)
    counterfactual = counterfactual_settings(cfg, ctx.seed)

    start = time.perf_counter()
    val_threshold, threshold_origin = resolve_val_threshold(store, doc_uris, cfg, previous)
    split_info = {"val_threshold": val_threshold, "val_threshold_origin": threshold_origin,
                  "split_seconds": round(time.perf_counter() - start, 3)}
    tok, tok_info = obtain_or_reuse_tokenizer(store, out_uri, doc_uris, cfg, previous, val_threshold)
    source = tok_info.get("tokenizer_source", "the trained tokenizer")
    sha = sha256_of(tokens_dir.parent / "tokenizer.json")
    eot_id, pad_id = special_token_ids(tok, cfg, source)
    if previous is not None:
        check_previous(previous, sha=sha, tokenizer_source=source, eot_id=eot_id, cfg=cfg,
                       counterfactual=counterfactual)
    vocab_size = vocab_size_of(tok)
    dtype = choose_dtype(vocab_size, cfg, source, previous)

    start = time.perf_counter()
    plan = {"tokenizer_sha256": sha, "val_threshold": val_threshold, "dtype": dtype.name, "eot_id": eot_id,
            "vocab_size": vocab_size}
    if counterfactual is not None:  # absent when off: the plan of an unaugmented run is as it always was
        plan["counterfactual"] = counterfactual
    units = plan_pack_units(store, doc_uris, out_uri, cfg, ctx, extra=plan)
    start_pack_plan(store, out_uri, {**plan, "units": [[u.unit_id, u.inputs, u.extra["row_groups"]]
                                                       for u in units]})
    packed = merge_pack_results(run_pack_units(store, units), cut=cuts_between_words(tok))
    pack_seconds = time.perf_counter() - start
    packed.account.check("tokenize")

    splits = {s: (previous.shards.get(s, []) if previous else []) + packed.shards[s] for s in SPLITS}
    extra = {"documents": sum(e["docs"] for shards in splits.values() for e in shards), "pad_id": pad_id,
             "eot_token": cfg.eot_token, "pad_token": cfg.pad_token, "val_fraction": cfg.val_fraction,
             "split_by": SPLIT_BY, "val_threshold": val_threshold,
             "appended_to": os.path.relpath(previous.index_path, tokens_dir) if previous else None}
    if counterfactual is not None:  # readers of the index learn that 'train' holds swapped text
        extra["counterfactual"] = counterfactual
    if previous is not None:  # absent otherwise: the index of a run from scratch is as it always was
        extra["previous_shards"] = previous.counts
    index = write_index(tokens_dir / "index.json", dtype=dtype, vocab_size=vocab_size, eot_id=eot_id,
                        tokenizer_sha256=sha, splits=splits, extra=extra)
    stats = tokenize_stats(packed, tok_info={**tok_info, **split_info}, index=index, pack_seconds=pack_seconds,
                           counterfactual=counterfactual)
    new_files = [f"tokens/{e['file']}" for s in SPLITS for e in packed.shards[s]]
    outputs = {"tokenizer": "tokenizer.json", "index": "tokens/index.json", "tokens": new_files}
    return StageOutput(outputs=outputs, stats=stats)


STAGE = Stage(name="tokenize", config=TokenizeConfig, run=run_tokenize, reads=("pii",),
              key_inputs=tokenize_key_extra, artifacts=tokenize_artifacts, preflight=tokenize_preflight,
              summary="train a byte-level BPE tokenizer and pack token shards with a train/val split")
