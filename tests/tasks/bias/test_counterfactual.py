"""Tests for the word-pair swap, the pair and lexicon files, and the demographic term counts."""
from __future__ import annotations

import re

import pytest

from tasks.bias.counterfactual import (
    LEXICONS_FILE,
    PAIRS_FILE,
    chosen,
    corpus_term_counts,
    count_terms,
    load_lexicons,
    load_pairs,
    swap,
)
from tasks.core.docs import DocWriter
from tasks.core.errors import UserError
from tasks.core.store import Store


@pytest.fixture(scope="module")
def pairs():
    return load_pairs()


def test_shipped_pairs_are_the_documented_gender_list(pairs):
    assert pairs.source == str(PAIRS_FILE) and 40 <= len(pairs.pairs) <= 80
    assert {axis for axis, _, _ in pairs.pairs} == {"gender"}
    partner = pairs.partner
    assert partner["he"] == "she" and partner["she"] == "he" and partner["actress"] == "actor"
    assert partner["her"] == "his" and partner["his"] == "her"  # the documented rule for ambiguous "her"
    assert partner["him"] == "her" and partner["hers"] == "his"
    assert pairs.one_way == {"him", "hers", "ms", "mum", "lord", "lords"}
    assert "hero" not in partner  # its use for women is common: not a gendered word here


def test_swap_preserves_case_and_counts(pairs):
    assert swap("he", pairs) == ("she", 1)
    assert swap("He said HE was the King; hE nodded.", pairs) == ("She said SHE was the Queen; she nodded.", 4)
    assert swap("Mr. Brown met his wife.", pairs) == ("Mrs. Brown met her husband.", 3)
    assert swap("she'd seen herself", pairs) == ("he'd seen himself", 2)
    assert swap("", pairs) == ("", 0)


def test_swap_replaces_whole_words_only(pairs):
    text = "The hero, a shell, then Sheila, Heather, Hermes, manly mankind, a woman_king and he2 mother-in-law."
    out, n = swap(text, pairs)
    assert out == text.replace("mother-in-law", "father-in-law") and n == 1  # a hyphen ends a word
    assert swap("ſhe and he", pairs) == ("ſhe and she", 1)  # a long s folds to 's' but is no listed word


def test_swap_twice_gives_the_text_back_without_one_way_words(pairs):
    two_way = sorted(w for w in pairs.partner if w not in pairs.one_way)
    text = " ".join(w.upper() if i % 3 == 0 else w.title() if i % 3 == 1 else w for i, w in enumerate(two_way))
    once, n = swap(text, pairs)
    assert n == len(two_way) and once != text
    assert swap(once, pairs) == (text, n)


def test_swap_agrees_with_a_plain_alternation(pairs):
    """The trie pattern finds exactly what a flat alternation of the words finds."""
    flat = re.compile(r"\b(?:" + "|".join(sorted(pairs.partner, key=len, reverse=True)) + r")\b", re.IGNORECASE)
    text = ("Hers is his; he and her husband, husbands and himself. Mrs Smith, ladies, lass, lasses, LADS. "
            "herself hehe he-she ms. mum's mummy sons sonsy ") * 3
    assert pairs.pattern.findall(text) == flat.findall(text)
    assert swap(text, pairs)[1] == len(flat.findall(text))


def write(tmp_path, body: str, name: str = "pairs.yaml"):
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


def test_a_user_pair_file(tmp_path):
    path = write(tmp_path, "gender:\n  - [He, She]\nage:\n  - [young, old]\n")
    pairs = load_pairs(str(path))
    assert pairs.pairs == (("gender", "he", "she"), ("age", "young", "old"))
    assert swap("She is Young", pairs) == ("He is Old", 2)


@pytest.mark.parametrize("body, message", [
    ("gender:\n  - [he, she]\n  - [him]\n", r"pairs\.yaml, line 3: gender pair 2 must be two words"),
    ("gender:\n  - [he, he]\n", r"line 2: gender pair 1 pairs 'he' with itself"),
    ("gender:\n  - [he, she]\n  - [his, two words]\n", r"line 3: gender pair 2: 'two words' is not a word"),
    ("gender:\n  - [he, [she]]\n", r"line 2: gender pair 1: 'a sequence' is not a word"),
    ("gender: [he, she]\n", r"line 1: gender pair 1 must be two words"),
    ("gender: {he: she}\n", r"line 1: axis 'gender' must list pairs"),
    ("gender:\n  - [he, she]\ngender:\n  - [him, her]\n", r"line 3: axis 'gender' appears twice"),
    ("- [he, she]\n", "the top level must map each axis name"),
    ("gender: [he, she\n", "not a readable YAML file"),
])
def test_bad_pair_files_name_the_file_line_and_entry(tmp_path, body, message):
    with pytest.raises(UserError, match=message):
        load_pairs(write(tmp_path, body))


def test_a_missing_pair_file_says_what_to_do(tmp_path):
    with pytest.raises(UserError, match=r"missing\.yaml: no such word-pair file.*remove the key"):
        load_pairs(tmp_path / "missing.yaml")


def test_chosen_is_stable_and_takes_about_the_share():
    ids = [f"doc-{i}" for i in range(4000)]
    picked = [d for d in ids if chosen(d, 0.25, seed=1337)]
    assert 0.22 < len(picked) / len(ids) < 0.28
    assert picked == [d for d in ids if chosen(d, 0.25, seed=1337)]
    assert picked != [d for d in ids if chosen(d, 0.25, seed=7)]  # another seed, other documents
    assert set([d for d in ids if chosen(d, 0.1, seed=1337)]) <= set(picked)  # a larger share adds documents
    assert all(chosen(d, 1.0, 0) for d in ids) and not any(chosen(d, 0.0, 0) for d in ids)


# term counts ----------------------------------------------------------------------------------------------

LEXICON = """\
gender:
  male: [he, him, man]
  female: [she, her, woman]
age:
  young: [young]
  old: [old, elderly]
  middle: [middle-aged]
"""


def test_count_terms_by_hand(tmp_path):
    lexicons = load_lexicons(write(tmp_path, LEXICON, "lex.yaml"))
    texts = [
        "He told her: the man is OLD, she is young.",  # male 2, female 2, young 1, old 1
        "A Woman and a woman; the hero shelled.",      # female 2
        "",                                             # nothing
        None,                                           # nothing
        "Him, him, HIM and an elderly middle-aged man.",  # male 4, old 1, middle 1
    ]
    result = count_terms(texts, lexicons)
    assert result["docs"] == 5
    gender = result["axes"]["gender"]
    assert gender["occurrences"] == 10 and gender["docs"] == 3
    assert gender["groups"] == {"male": {"occurrences": 6, "docs": 2, "share": 0.6},
                                "female": {"occurrences": 4, "docs": 2, "share": 0.4}}
    assert gender["ratios"] == {"male/female": 1.5}
    age = result["axes"]["age"]
    assert age["occurrences"] == 4 and age["docs"] == 2
    assert {g: v["occurrences"] for g, v in age["groups"].items()} == {"young": 1, "old": 2, "middle": 1}
    assert age["groups"]["old"] == {"occurrences": 2, "docs": 2, "share": 0.5}
    assert age["ratios"] == {"young/old": 0.5, "young/middle": 1.0, "old/middle": 2.0}


def test_count_terms_with_no_terms_gives_no_shares_and_no_ratios(tmp_path):
    lexicons = load_lexicons(write(tmp_path, LEXICON, "lex.yaml"))
    result = count_terms(["nothing here", "she"], lexicons)
    assert result["axes"]["age"]["groups"]["young"] == {"occurrences": 0, "docs": 0, "share": None}
    assert result["axes"]["gender"]["ratios"] == {"male/female": 0.0}
    assert result["axes"]["age"]["ratios"]["young/old"] is None


def test_shipped_lexicons():
    lexicons = load_lexicons()
    assert lexicons.source == str(LEXICONS_FILE) and set(lexicons.axes) == {"gender"}
    male, female = lexicons.axes["gender"]["male"], lexicons.axes["gender"]["female"]
    assert {"he", "him", "his", "man"} <= set(male) and {"she", "her", "hers", "woman"} <= set(female)
    assert not set(male) & set(female)
    result = count_terms(["He and his wife.", "She saw her brother."], lexicons)
    assert {g: v["occurrences"] for g, v in result["axes"]["gender"]["groups"].items()} == {"male": 3, "female": 3}


@pytest.mark.parametrize("body, message", [
    ("gender:\n  male: [he]\n  female: [she, he]\n", r"lex\.yaml, line 3: 'he' is in both gender\.male and "
                                                     r"gender\.female"),
    ("gender:\n  male: [he]\n", r"line 2: axis 'gender' must map at least two groups"),
    ("gender:\n  male: [he]\n  female: []\n", r"line 3: gender\.female must list its terms"),
    ("gender:\n  male: [he]\n  female: [s he]\n", r"line 3: gender\.female: 's he' is not a word"),
    ("gender:\n  male: [he]\n  male: [him]\n", r"line 3: gender group 'male' appears twice"),
])
def test_bad_lexicon_files_name_the_file_line_and_entry(tmp_path, body, message):
    with pytest.raises(UserError, match=message):
        load_lexicons(write(tmp_path, body, "lex.yaml"))


def test_corpus_term_counts_streams_shards(tmp_path):
    lexicons = load_lexicons(write(tmp_path, LEXICON, "lex.yaml"))
    store = Store(tmp_path / "store")
    texts = ["he and she", "", "an old man", "nothing", "her, her and HER"] * 30
    with DocWriter(store, f"{store.root}/docs", batch_rows=7, max_bytes=600) as writer:
        for i, text in enumerate(texts):
            writer.write(f"d{i}", text, "test", None)
    assert len(writer.files) > 1
    uris = [f"{store.root}/docs/{name}" for name in writer.files]
    result = corpus_term_counts(store, uris, lexicons, batch_rows=4)
    assert result == {**count_terms(texts, lexicons), "shards": len(uris)}
    assert result["docs"] == 150
    assert result["axes"]["gender"]["groups"]["female"] == {"occurrences": 120, "docs": 60, "share": 0.6667}
