"""Tests for tasks.dedup.minhash: words, shingles, signatures (datasketch's bit for bit), bands, Jaccard."""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pytest
from datasketch import MinHash, MinHashLSH

from tasks.dedup import minhash
from tasks.dedup.minhash import (
    Sketcher,
    band_hashes,
    band_keys,
    exact_jaccard,
    gather_ranges,
    normalize_words,
    shared_bands,
    shingle_set,
)

EMPTY_SIGNATURE = np.full(64, 0xFFFFFFFF, dtype=np.uint32)  # what an empty datasketch affine32 MinHash holds


@dataclass
class Settings:
    """The sketch settings (what DedupConfig carries), without the stage."""

    ngram: int = 5
    num_perm: int = 64
    seed: int = 1
    threshold: float = 0.8
    bands: int = 0
    rows: int = 0
    verify: str = "exact"


def words_text(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(["alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta"] * 3 +
                               [f"w{i}" for i in range(300)]) for _ in range(n))


def doc_shingles(sk: minhash.Sketches, i: int) -> np.ndarray:
    start = int(np.sum(sk.shingle_counts[:i]))
    return sk.shingles[start:start + sk.shingle_counts[i]]


# --- words --------------------------------------------------------------------------------------------------


def test_vectorized_words_follow_the_readable_definition():
    rng = np.random.default_rng(3)
    alphabet = list("abcXYZ019 _-.,;:!?'\"\n\t") + ["é", "ß", "Ω", "東", "—", "“", "”", "…", "«", "\u00a0",
                                                      "\u3001", "ﬁ", "²", "İ", "\U0001F600"]
    texts = ["".join(rng.choice(alphabet, size=rng.integers(0, 80))) for _ in range(300)]
    texts += ["Hello, World!", "", "   ", "naïve café—“quoted”… done", "é", "—"]
    hashes, counts = minhash._batch_words(texts)
    assert counts.tolist() == [len(normalize_words(t)) for t in texts]
    # equal words get equal hashes, different words different ones, wherever they occur in the batch
    words = [w for t in texts for w in normalize_words(t)]
    by_word = {}
    for w, h in zip(words, hashes.tolist()):
        assert by_word.setdefault(w, h) == h
    assert len(set(by_word.values())) == len(by_word)


def test_large_documents_are_tokenized_in_windows(monkeypatch):
    rng = random.Random(1)
    text = words_text(rng, 3000)
    whole, counts = minhash._batch_words([text, "tail words here"])
    monkeypatch.setattr(minhash, "_WINDOW", 1000)  # forces ~20 windows, cut at separators
    windowed, windowed_counts = minhash._batch_words([text, "tail words here"])
    assert np.array_equal(whole, windowed) and counts.tolist() == windowed_counts.tolist() == [3000, 3]


# --- shingles -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ngram", [1, 2, 5])
def test_shingle_hashes_are_the_shingle_sets(ngram):
    """One hash per n-gram position; as sets, the hashes are the readable definition's shingles."""
    rng = random.Random(ngram)
    texts = [words_text(rng, n) for n in (1, 2, 3, 4, 5, 6, 7, 30)] + ["x x x x x x x x"]
    sk = Sketcher(Settings(ngram=ngram)).sketch(texts)
    for i, text in enumerate(texts):
        n_words = len(normalize_words(text))
        assert sk.shingle_counts[i] == max(n_words - ngram + 1, 1)
        assert len(np.unique(doc_shingles(sk, i))) == len(shingle_set(text, ngram))
    a, b = texts[-2], words_text(rng, 5) + " " + texts[-2]
    two = Sketcher(Settings(ngram=ngram)).sketch([a, b])
    truth = shingle_set(a, ngram), shingle_set(b, ngram)
    assert exact_jaccard(doc_shingles(two, 0), doc_shingles(two, 1)) == pytest.approx(
        len(truth[0] & truth[1]) / len(truth[0] | truth[1]))


def test_empty_short_and_exact_length_texts():
    texts = ["", " ... -- !! ", "one two", "one two three four five", "one two three four five six"]
    sk = Sketcher(Settings(ngram=5)).sketch(texts)
    assert sk.n_words.tolist() == [0, 0, 2, 5, 6]
    assert sk.shingle_counts.tolist() == [0, 0, 1, 1, 2]  # shorter than an n-gram: one shingle of all words
    for i in (0, 1):  # no words: no shingles, the empty signature, the zero exact key
        assert np.array_equal(sk.signatures[i], EMPTY_SIGNATURE) and sk.exact[i] == bytes(16)
    assert len({sk.exact[i] for i in (2, 3, 4)}) == 3
    assert doc_shingles(sk, 2)[0] != doc_shingles(sk, 3)[0]  # "one two" is not the prefix of a 5-gram
    assert doc_shingles(sk, 3)[0] == doc_shingles(sk, 4)[0]  # the same 5-gram in both


def test_a_documents_sketch_does_not_depend_on_its_batch():
    rng = random.Random(8)
    texts = ["x y", words_text(rng, 40), "", "z", words_text(rng, 3), words_text(rng, 12)]
    sketcher = Sketcher(Settings(ngram=5))
    together = sketcher.sketch(texts)
    for i, text in enumerate(texts):
        alone = sketcher.sketch([text])
        assert alone.exact[0] == together.exact[i]
        assert np.array_equal(alone.signatures[0], together.signatures[i])
        assert np.array_equal(doc_shingles(alone, 0), doc_shingles(together, i))


def test_exact_key_ignores_formatting_only():
    texts = ["The cat sat, on the mat.", "the CAT  sat on\r\nthe mat!!", "the cat sat"]
    sk = Sketcher(Settings()).sketch(texts)
    assert sk.exact[0] == sk.exact[1] != sk.exact[2]


# --- signatures ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_perm", [64, 21])  # 21: the last vectorized pass holds fewer permutations
def test_signatures_are_datasketchs_bit_for_bit(num_perm):
    """Same permutations (seed) and the same input hashes give datasketch's affine32 values exactly."""
    rng = random.Random(2)
    texts = [words_text(rng, n) for n in (1, 3, 5, 6, 40, 200)] + ["same same same same same same"]
    sk = Sketcher(Settings(num_perm=num_perm, seed=9)).sketch(texts)
    identity = {"num_perm": num_perm, "seed": 9, "hashfunc": lambda h: h}
    bulk = MinHash.bulk([doc_shingles(sk, i).tolist() for i in range(len(texts))], **identity)
    for i in range(len(texts)):
        one = MinHash(**identity)
        one.update_batch(doc_shingles(sk, i).tolist())
        assert one.scheme == "affine32"
        assert sk.signatures.dtype == one.hashvalues.dtype == np.uint32
        assert np.array_equal(one.hashvalues, sk.signatures[i])
        assert np.array_equal(bulk[i].hashvalues, sk.signatures[i])


# --- LSH band keys, groups, Jaccard -------------------------------------------------------------------------


def test_band_keys_are_minhashlsh_bucket_keys():
    rng = np.random.default_rng(4)
    signatures = rng.integers(0, 2 ** 32, size=(20, 64), dtype=np.uint64).astype(np.uint32)
    signatures[0, :8] = 0  # NUL bytes must survive (a fixed-width bytes dtype would strip them)
    lsh = MinHashLSH(num_perm=64, params=(6, 8))  # 48 of the 64 values are used
    keys = band_keys(signatures, 6, 8)
    for d in range(20):  # MinHashLSH._H is how datasketch turns a band of hash values into a bucket key
        assert keys[d] == [lsh._H(signatures[d, start:end]) for start, end in lsh.hashranges]
    assert keys[0][0] == bytes(32)


def test_shared_bands_groups_documents_with_equal_band_values():
    rng = np.random.default_rng(5)
    signatures = rng.integers(0, 2 ** 32, size=(6, 16), dtype=np.uint64).astype(np.uint32)
    signatures[3, 4:8] = signatures[1, 4:8]  # band 1 of docs 1 and 3
    signatures[5] = signatures[2]  # every band of docs 2 and 5
    hashes = band_hashes(signatures, bands=4, rows=4)
    assert hashes[1, 1] == hashes[3, 1] and hashes[1, 0] != hashes[3, 0] and (hashes[2] == hashes[5]).all()
    groups = shared_bands(hashes)
    assert groups[1, 1] == groups[3, 1] >= 0 and (groups[[1, 3]][:, [0, 2, 3]] == -1).all()
    assert (groups[2] == groups[5]).all() and (groups[2] >= 0).all()
    assert (groups[[0, 4]] == -1).all()
    assert len(set(groups[groups >= 0].tolist())) == 5  # group numbers are distinct across bands


def test_exact_jaccard_is_set_jaccard_in_any_order():
    a = np.array([5, 1, 3, 3, 9], np.uint32)
    b = np.array([9, 9, 4, 1], np.uint32)
    assert exact_jaccard(a, b) == pytest.approx(2 / 5)  # {1, 9} of {1, 3, 4, 5, 9}
    assert exact_jaccard(a, a[::-1]) == 1.0
    assert exact_jaccard(np.zeros(0, np.uint32), np.zeros(0, np.uint32)) == 1.0


def test_gather_ranges():
    values = np.arange(10) * 10
    out = gather_ranges(values, np.array([7, 0, 3]), np.array([2, 0, 3]))
    assert out.tolist() == [70, 80, 30, 40, 50]
