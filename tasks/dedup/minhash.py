"""MinHash sketching for dedup, pure functions: text -> words -> shingles -> signatures, LSH bands, Jaccard.

Normalization: NFKC, lowercase, words are runs of letters and digits (punctuation, whitespace and formatting
are ignored). A document's exact key is the xxh3-128 of its word sequence; its shingles are word n-grams,
hashed to 32 bits; its signature is datasketch's `affine32` MinHash of those hashes, computed for a whole
batch of documents at once in numpy. Nothing here reads or writes the store.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import xxhash
from datasketch import MinHash

SKETCH_VERSION = 1  # bump when normalization or shingle hashing changes: old index generations stop matching


class SketchSettings(Protocol):
    """The settings sketching and LSH read (`tasks.dedup.DedupConfig` has them all)."""

    ngram: int
    num_perm: int
    seed: int
    threshold: float
    bands: int
    rows: int
    verify: str


# --- LSH parameters -----------------------------------------------------------------------------------------

CANDIDATE_RECALL_AT_THRESHOLD = 0.9  # auto bands/rows: P(pair at Jaccard = threshold becomes a candidate)


def lsh_params(cfg: SketchSettings) -> tuple[int, int]:
    """(bands, rows): configured, or the fewest bands whose S-curve puts a pair at the threshold in a band
    with probability >= 0.9 (>= 0.99 from 0.05 above it at the defaults).

    datasketch's own optimizer balances false positives against false negatives around the threshold,
    which loses about a third of the pairs just above it; here candidates are verified afterwards, so
    false positives cost only time and the curve is shifted towards recall.
    """
    if cfg.bands:
        return cfg.bands, cfg.rows
    for rows in range(cfg.num_perm // 2, 0, -1):
        bands = cfg.num_perm // rows
        if 1.0 - (1.0 - cfg.threshold ** rows) ** bands >= CANDIDATE_RECALL_AT_THRESHOLD:
            return bands, rows
    return cfg.num_perm, 1


def sketch_params(cfg: SketchSettings) -> dict[str, Any]:
    """What makes two signatures comparable and two LSH indexes compatible."""
    bands, rows = lsh_params(cfg)
    return {"version": SKETCH_VERSION, "ngram": cfg.ngram, "num_perm": cfg.num_perm, "seed": cfg.seed,
            "bands": bands, "rows": rows, "scheme": "affine32", "shingles": cfg.verify == "exact"}


# --- text -> words -> shingles -> signatures ---------------------------------------------------------------

# Word characters after NFKC + lowercase: ASCII letters and digits, and every other code point except the
# Latin-1 punctuation/symbols block, General Punctuation (dashes, curly quotes, ellipsis), CJK punctuation.
WORD_RE = re.compile("[0-9a-z\u00c0-\u1fff\u2080-\u2fff\u3040-\U0010ffff]+")


def normalize_words(text: str) -> list[str]:
    """The words dedup compares: the readable definition that the vectorized path below reproduces."""
    return WORD_RE.findall(unicodedata.normalize("NFKC", text).lower())


def shingle_set(text: str, ngram: int) -> set[tuple[str, ...]]:
    """Word n-grams of a text (a short text is one shingle): for tests and the benchmark's ground truth."""
    words = normalize_words(text)
    if 0 < len(words) < ngram:
        return {tuple(words)}
    return {tuple(words[i:i + ngram]) for i in range(len(words) - ngram + 1)}


_U64 = np.uint64


def _word_bytes(buf: np.ndarray) -> np.ndarray:
    """True for ASCII digits and lowercase letters, and for every non-ASCII byte (the punctuation blocks are
    taken out in _word_mask). Three comparisons: ~6x faster than a 256-entry lookup table on large buffers."""
    word = (buf - np.uint8(ord("a"))) < 26  # uint8 wraparound: one compare per range
    word |= (buf - np.uint8(ord("0"))) < 10
    word |= buf >= 0x80
    return word


_ASCII_SEPARATOR = ~_word_bytes(np.arange(256, dtype=np.uint8))
_ASCII_SEPARATOR[0x80:] = False
_WINDOW = 1 << 20  # bytes tokenized at once: bounds the power tables and temporaries (~40 MB)
_BYTE_MULT = _U64(0x9E3779B97F4A7C15)  # odd, so invertible mod 2^64
_SHINGLE_MULTS = [_U64((0xC2B2AE3D27D4EB4F + 2 * k * 0x165667B19E3779F9) % (1 << 64) | 1)  # odd, distinct
                  for k in range(64)]
_POWERS: dict[str, np.ndarray] = {}
_PERMS_PER_PASS = 8  # permutations per vectorized pass in Sketcher.signatures (measured: 4-16 are alike)


def _fmix64(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 64-bit finalizer (an avalanching bijection), elementwise with wraparound."""
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xFF51AFD7ED558CCD)
    h = h ^ (h >> _U64(33))
    h = h * _U64(0xC4CEB9FE1A85EC53)
    return h ^ (h >> _U64(33))


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer: what datasketch's affine32 scheme applies to each input hash."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def _power_tables(n: int) -> tuple[np.ndarray, np.ndarray]:
    """M^i and M^-i mod 2^64 for i < n (n <= one window + 1), computed once per process."""
    if len(_POWERS.get("pow", ())) < n:
        size = max(n, _WINDOW + 1)
        steps = np.full(size, _BYTE_MULT, dtype=_U64)
        steps[0] = 1
        inv = np.full(size, _U64(pow(int(_BYTE_MULT), -1, 1 << 64)), dtype=_U64)
        inv[0] = 1
        _POWERS["pow"], _POWERS["inv"] = np.cumprod(steps, dtype=_U64), np.cumprod(inv, dtype=_U64)
    return _POWERS["pow"], _POWERS["inv"]


def _word_mask(buf: np.ndarray) -> np.ndarray:
    """True for bytes inside words of a UTF-8 buffer (the byte-level form of WORD_RE)."""
    word = _word_bytes(buf)
    lead = np.flatnonzero(buf >= 0xC2)  # lead bytes of non-ASCII characters: few in most text
    if len(lead):
        last = len(buf) - 1  # valid UTF-8 has its continuation bytes in the buffer; clipping is a guard
        first, second = buf[lead], buf[np.minimum(lead + 1, last)]
        two = lead[first == 0xC2]  # U+0080..U+00BF
        three = lead[((first == 0xE2) & ((second & 0xFE) == 0x80))  # U+2000..U+207F
                     | ((first == 0xE3) & (second == 0x80))]  # U+3000..U+303F
        for starts, size in ((two, 2), (three, 3)):
            for k in range(size):
                word[np.minimum(starts + k, last)] = False
    return word


def _window_word_hashes(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes (n_words,) and byte offsets (n_words,) of the words of one buffer.

    A word's hash is a polynomial over its bytes, made position-independent with prefix sums and inverse
    powers so the whole buffer is hashed in a few vectorized passes, then avalanched with fmix64.
    """
    padded = np.zeros(len(buf) + 2, dtype=np.bool_)
    padded[1:-1] = _word_mask(buf)
    edges = np.flatnonzero(padded[1:] != padded[:-1])  # word starts and ends, alternating
    starts, ends = edges[0::2], edges[1::2]
    pw, inv = _power_tables(len(buf) + 1)
    prefix = np.empty(len(buf) + 1, dtype=_U64)
    prefix[0] = 0
    terms = prefix[1:]  # computed in place: these arrays are 8 bytes per input byte
    np.add(buf, _U64(1), out=terms, dtype=_U64)
    terms *= pw[:len(buf)]
    np.cumsum(terms, out=terms)
    return _fmix64((prefix[ends] - prefix[starts]) * inv[starts]), starts


def _word_hashes(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Word hashes and offsets of a buffer of any size, in windows cut just after an ASCII separator."""
    hashes, offsets, pos = [], [], 0
    while pos < len(buf):
        end = min(pos + _WINDOW, len(buf))
        if end < len(buf):
            tail = max(pos, end - (_WINDOW >> 2))
            seps = np.flatnonzero(_ASCII_SEPARATOR[buf[tail:end]])
            end = tail + int(seps[-1]) + 1 if len(seps) else end  # no separator: cut the giant "word"
        h, s = _window_word_hashes(buf[pos:end])
        hashes.append(h)
        offsets.append(s + pos)
        pos = end
    if not hashes:
        return np.zeros(0, _U64), np.zeros(0, np.int64)
    return np.concatenate(hashes), np.concatenate(offsets)


@dataclass
class Sketches:
    """Per-document results of sketching a batch of D texts."""

    n_words: np.ndarray  # (D,) int64
    exact: list[bytes]  # D 16-byte exact keys (zeros for empty documents)
    signatures: np.ndarray  # (D, num_perm) uint32, datasketch affine32 hash values
    shingle_counts: np.ndarray  # (D,) int64, shingles per document (one per n-gram position)
    shingles: np.ndarray  # (sum of counts,) uint32, each document's shingle hashes in word order, in turn


def _batch_words(texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """All word hashes of a batch (n_words,) and each document's word count (D,)."""
    encoded = [unicodedata.normalize("NFKC", t).lower().encode("utf-8", "surrogatepass") for t in texts]
    lengths = np.fromiter((len(e) + 1 for e in encoded), dtype=np.int64, count=len(encoded))
    doc_starts = np.cumsum(lengths) - lengths  # documents joined by b"\n", a separator
    buf = np.frombuffer(b"\n".join(encoded), dtype=np.uint8)
    hashes, offsets = _word_hashes(buf)
    first_word = np.searchsorted(offsets, doc_starts)  # words are in buffer order: D lookups, not n_words
    return hashes, np.diff(first_word, append=len(offsets))


def _shingle_hashes(words: np.ndarray, n_words: np.ndarray, ngram: int) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of every document's word n-grams in word order (n_shingles,), and their count per
    document (D,). A document shorter than `ngram` words gives one shingle of all its words.
    """
    combined = words * _SHINGLE_MULTS[0]  # (n_words,) the n-gram starting at each word, across documents
    for k in range(1, min(ngram, len(words))):
        combined[:len(words) - k] += words[k:] * _SHINGLE_MULTS[k]
    doc_start = np.cumsum(n_words) - n_words
    short = np.flatnonzero((n_words > 0) & (n_words < ngram))  # rare: their only n-gram stops at their end
    if len(short):
        value = np.zeros(len(short), _U64)
        for k in range(ngram - 1):
            inside = n_words[short] > k
            value[inside] += words[doc_start[short[inside]] + k] * _SHINGLE_MULTS[k]
        combined[doc_start[short]] = value
    counts = np.where(n_words >= ngram, n_words - ngram + 1, np.minimum(n_words, 1))
    inside = gather_ranges(combined, doc_start, counts)  # the n-grams that end inside their document
    return (_fmix64(inside) >> _U64(32)).astype(np.uint32), counts


class Sketcher:
    """Turns batches of texts into exact keys, shingle hashes and datasketch-compatible MinHash signatures."""

    def __init__(self, cfg: SketchSettings):
        self.ngram, self.num_perm = cfg.ngram, cfg.num_perm
        a, b = MinHash(num_perm=cfg.num_perm, seed=cfg.seed, scheme="affine32").permutations
        self.a, self.b = a.astype(np.uint32), b.astype(np.uint32)

    def sketch(self, texts: list[str]) -> Sketches:
        words, n_words = _batch_words(texts)
        offsets = np.cumsum(n_words) - n_words
        exact = [xxhash.xxh3_128_digest(words[o:o + n].tobytes()) if n else bytes(16)
                 for o, n in zip(offsets.tolist(), n_words.tolist())]
        shingles, counts = _shingle_hashes(words, n_words, self.ngram)
        return Sketches(n_words=n_words, exact=exact, signatures=self.signatures(shingles, counts),
                        shingle_counts=counts, shingles=shingles)

    def signatures(self, shingles: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """(D, num_perm) minimum of a_k * fmix32(h) + b_k mod 2^32 over each document's shingles h.

        Equal to datasketch's `MinHash(num_perm, seed).update_batch(hashes)` with an identity hashfunc
        (a minimum ignores repeated shingles). Permutations run in the outer loop, a few at a time: each
        pass is a contiguous multiply-add over every shingle of the batch and one segmented minimum per
        row, which stays in cache (~10x faster than (S, P) blocks).
        """
        out = np.full((self.num_perm, len(counts)), np.iinfo(np.uint32).max, dtype=np.uint32)  # (P, D)
        present = np.flatnonzero(counts)
        if len(present):
            hv = _fmix32(shingles)
            starts = (np.cumsum(counts) - counts)[present]
            step = _PERMS_PER_PASS
            tmp = np.empty((step, len(hv)), dtype=np.uint32)  # (step, S)
            for k in range(0, self.num_perm, step):
                rows = tmp[:min(step, self.num_perm - k)]
                np.multiply(hv, self.a[k:k + step, None], out=rows)
                rows += self.b[k:k + step, None]
                out[k:k + len(rows), present] = np.minimum.reduceat(rows, starts, axis=1)
        return np.ascontiguousarray(out.T)


# --- LSH band keys and Jaccard ------------------------------------------------------------------------------


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> list[list[bytes]]:
    """Each document's LSH bucket keys on Redis: byte for byte what MinHashLSH computes (big-endian band
    values), so the Redis index is a plain datasketch index."""
    big_endian = np.ascontiguousarray(signatures[:, :bands * rows]).astype(">u4")
    return big_endian.view(f"V{rows * 4}").tolist()  # (K, bands) raw byte strings, NULs kept


def gather_ranges(values: np.ndarray, starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """values[starts[0]:starts[0] + counts[0]], values[starts[1]:...], ... concatenated, in one gather."""
    first = np.cumsum(counts) - counts
    return values[np.arange(int(counts.sum())) + np.repeat(starts - first, counts)]


def band_hashes(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(K, bands) uint64: a 64-bit hash of each band's values (the in-memory index's bucket keys).

    Equal bands give equal hashes; two different bands collide with probability about 2^-64, which would
    only add a candidate that verification then rejects.
    """
    k = len(signatures)
    values = signatures[:, :bands * rows].astype(_U64).reshape(k, bands, rows)
    h = np.zeros((k, bands), dtype=_U64)
    for i in range(rows):
        h = h * _U64(0x100000001B3) + values[:, :, i]
    return _fmix64(h)


def shared_bands(hashes: np.ndarray) -> np.ndarray:
    """(K, bands) number of the group of block documents sharing each document's band value, -1 if none do.

    Found with one sort per band over the band hashes (K, bands), so documents sharing nothing cost nothing
    in the loop.
    """
    k, bands = hashes.shape
    groups = np.full((k, bands), -1, dtype=np.int64)
    for j in range(bands):
        order = np.argsort(hashes[:, j], kind="stable")
        sorted_h = hashes[order, j]
        same_as_next = np.flatnonzero(sorted_h[1:] == sorted_h[:-1])
        if len(same_as_next):
            run_start = np.concatenate([[True], sorted_h[1:] != sorted_h[:-1]])
            run_id = np.cumsum(run_start) - 1 + j * k  # unique across bands
            members = np.union1d(same_as_next, same_as_next + 1)
            groups[order[members], j] = run_id[members]
    return groups


def estimated_jaccard(signature: np.ndarray, others: np.ndarray) -> np.ndarray:
    """datasketch's MinHash.jaccard of one signature (P,) with many (C, P): the share of equal values."""
    return (others == signature).mean(axis=1)


def exact_jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Jaccard of the sets of two shingle-hash arrays (any order, repeats allowed)."""
    return jaccard_of_set(np.unique(a), b)


def jaccard_of_set(a_set: np.ndarray, b: np.ndarray) -> float:
    """`exact_jaccard` when `a_set` is already `np.unique(a)` (one document checked against several)."""
    a, b = a_set, np.unique(b)
    inter = np.intersect1d(a, b, assume_unique=True).size
    union = a.size + b.size - inter
    return inter / union if union else 1.0
