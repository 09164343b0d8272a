"""The bias loaders on tiny files written here (happy path, missing data, bad rows, malformed files, limits)
and on the real data sets when ../shared/data is there."""
from __future__ import annotations

import copy
import json
import re
from collections import Counter
from pathlib import Path

import pytest

from tasks.bias.data import (
    BBQItem,
    CrowsPair,
    Loaded,
    Skipped,
    WinoBiasItem,
    answer_groups,
    bbq_biased,
    even_quotas,
    load_bbq,
    load_bold,
    load_crows_pairs,
    load_probes,
    load_winobias,
    load_winogender,
    sample_units,
)
from tasks.core.errors import UserError


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def loaded(result) -> Loaded:
    assert isinstance(result, Loaded), result
    return result


# --- sampling --------------------------------------------------------------------------------------------

def test_sample_units_is_seeded_stable_nested_and_keeps_units_whole():
    items = [(u, k) for u in range(20) for k in range(2)]     # 20 units of 2

    def unit(item: tuple[int, int]) -> str:
        return f"u{item[0]}"

    six = sample_units(items, 6, seed=3, unit=unit)
    assert six == sample_units(items, 6, seed=3, unit=unit)   # same seed, same sample
    assert len(six) == 6 and all(Counter(it[0] for it in six)[u] == 2 for u in {it[0] for it in six})
    assert six == sorted(six)                                   # items keep their order
    assert set(six) <= set(sample_units(items, 10, seed=3, unit=unit))   # a smaller limit: a subset
    assert six != sample_units(items, 6, seed=4, unit=unit)
    assert len(sample_units(items, 5, seed=3, unit=unit)) == 4   # at most 5: two whole units
    assert sample_units(items, None, 0, unit) == items and sample_units(items, 0, 0, unit) == []
    assert sample_units(items, 1000, 0, unit) == items
    with pytest.raises(UserError, match="limit must be a whole number >= 0"):
        sample_units(items, -1, 0, unit)


def test_even_quotas_spread_a_limit_and_pass_on_what_small_parts_cannot_take():
    assert even_quotas({"a": 10, "b": 10, "c": 10}, 10) == {"a": 4, "b": 3, "c": 3}
    # c holds 1: the 2 it cannot take go to a and b, a first
    assert even_quotas({"a": 10, "b": 10, "c": 1}, 10) == {"a": 5, "b": 4, "c": 1}
    assert even_quotas({"a": 2, "b": 3}, 100) == {"a": 2, "b": 3}
    assert even_quotas({"a": 0, "b": 3}, 2) == {"a": 0, "b": 2}


# --- CrowS-Pairs -----------------------------------------------------------------------------------------

CROWS_HEADER = ",sent_more,sent_less,stereo_antistereo,bias_type,annotations,anon_writer,anon_annotators\n"


def crows(root: Path, rows: list[str]) -> Path:
    return write(root / "crows_pairs" / "crows_pairs_anonymized.csv", CROWS_HEADER + "".join(r + "\n" for r in rows))


def test_crows_pairs_reads_pairs_with_their_index_direction_and_type(tmp_path):
    crows(tmp_path, ['0,"Men, always, fix cars.",Women fix cars.,stereo,gender,[],a0,[]',
                     "7,Old people are slow.,Young people are slow.,antistereo,age,[],a1,[]"])
    got = loaded(load_crows_pairs(tmp_path))
    assert got.items == [CrowsPair(0, "Men, always, fix cars.", "Women fix cars.", "gender", "stereo"),
                         CrowsPair(7, "Old people are slow.", "Young people are slow.", "age", "antistereo")]
    assert got.bad_rows == 0 and got.path.endswith("crows_pairs_anonymized.csv")


def test_crows_pairs_counts_bad_rows_by_reason_without_their_text(tmp_path):
    path = crows(tmp_path, ["0,A secret sentence.,B.,stereo,gender,[],a0,[]",
                            "1,too,few,columns",                                 # line 3
                            "2,A.,B.,sterio,gender,[],a0,[]",                    # line 4: unknown direction
                            "3,,B.,stereo,gender,[],a0,[]",                      # line 5: empty sent_more
                            "0,A.,B.,stereo,gender,[],a0,[]",                    # line 6: index 0 again
                            "x,A.,B.,stereo,gender,[],a0,[]"])                   # line 7
    got = loaded(load_crows_pairs(tmp_path))
    assert [p.idx for p in got.items] == [0]
    assert got.bad_rows == 5 and got.bad_reasons == {
        "wrong column count": 1, "unknown label": 1, "missing field": 1, "duplicate index": 1,
        "index not a whole number": 1}
    assert got.bad_examples == [
        f"{path}:3: wrong column count: '4 columns, the header has 8'",
        f"{path}:4: unknown label (field stereo_antistereo): 'sterio'",
        f"{path}:5: missing field (field sent_more)",
        f"{path}:6: duplicate index (field (index)): '0'",
        f"{path}:7: index not a whole number (field (index)): 'x'"]


def test_crows_pairs_missing_file_is_skipped_and_a_wrong_file_is_a_user_error(tmp_path):
    got = load_crows_pairs(tmp_path)
    assert isinstance(got, Skipped) and got.check == "crows_pairs"
    assert f"no file {tmp_path}/crows_pairs/crows_pairs_anonymized.csv" in got.reason
    assert "bias.data_dir" in got.reason
    assert isinstance(load_crows_pairs(tmp_path / "nowhere"), Skipped)
    path = write(tmp_path / "crows_pairs" / "crows_pairs_anonymized.csv", "a,b,c\n1,2,3\n")
    with pytest.raises(UserError, match=rf"{re.escape(str(path))}:1: the header has no column 'sent_more'"):
        load_crows_pairs(tmp_path)
    write(path, "")
    with pytest.raises(UserError, match=rf"{re.escape(str(path))}: empty file"):
        load_crows_pairs(tmp_path)
    crows(tmp_path, ["0,A.,B.,neither,gender,[],a0,[]"])
    with pytest.raises(UserError, match=r"none of its rows could be read: unknown label \(1\)"):
        load_crows_pairs(tmp_path)


def test_crows_pairs_limit_is_a_seeded_sample(tmp_path):
    crows(tmp_path, [f"{i},A{i}.,B{i}.,stereo,gender,[],a0,[]" for i in range(30)])
    ten = loaded(load_crows_pairs(tmp_path, limit=10, seed=1)).items
    assert len(ten) == 10 and ten == loaded(load_crows_pairs(tmp_path, limit=10, seed=1)).items
    assert [p.idx for p in ten] == sorted(p.idx for p in ten)
    assert {p.idx for p in ten} != {p.idx for p in loaded(load_crows_pairs(tmp_path, limit=10, seed=2)).items}


# --- WinoBias --------------------------------------------------------------------------------------------

def bracketed(root: Path, *occupations: str) -> None:
    """A dev file that brackets these occupations: the occupation list comes from every file's brackets."""
    winobias(root, "dev", pro1=[f"[The {o}] waved because [he] left." for o in occupations])


def winobias(root: Path, split: str = "test", **files: list[str]) -> None:
    """files: pro1, anti1, pro2, anti2 -> the lines (numbered here) of each file."""
    for key, lines in files.items():
        name = f"{key[:-1]}_stereotyped_type{key[-1]}.txt.{split}"
        write(root / "winobias" / name, "".join(f"{i} {line}\n" for i, line in enumerate(lines, start=1)))


def test_winobias_reads_pairs_with_referent_other_and_pronoun(tmp_path):
    winobias(tmp_path,
             pro1=["[The construction worker] called the nurse because [he] was hurt.",
                   "The CEO fixed the [housekeeper] 's car and then [she] wrote a note."],
             anti1=["[The construction worker] called the nurse because [she] was hurt.",
                    "The CEO fixed the [housekeeper] 's car and then [he] wrote a note."],
             pro2=["The nurse met [the  physician] and told [him] that [he] could go."],
             anti2=["The nurse met [the  physician] and told [her] that [she] could go."])
    bracketed(tmp_path, "nurse", "CEO", "cook")   # "cook" is bracketed in no test file
    got = loaded(load_winobias(tmp_path, "test"))
    assert got.bad_rows == 0 and len(got.items) == 6
    first, second = [it for it in got.items if it.pair == "type1-test-1"]
    assert first == WinoBiasItem(first.idx, "type1-test-1", "The construction worker called the nurse because she "
                                 "was hurt.", "she", "construction worker", "nurse", "anti", 1)
    assert second.stereotype == "pro" and second.pronoun == "he"
    car = next(it for it in got.items if it.pair == "type1-test-2" and it.stereotype == "pro")
    assert (car.sentence, car.referent, car.other, car.pronoun) == (
        "The CEO fixed the housekeeper's car and then she wrote a note.", "housekeeper", "CEO", "she")
    t2 = next(it for it in got.items if it.type == 2 and it.stereotype == "anti")
    assert (t2.sentence, t2.referent, t2.other, t2.pronoun) == (
        "The nurse met the physician and told her that she could go.", "physician", "nurse", "her")
    assert sorted(it.idx for it in got.items) == list(range(6))
    cook_file = tmp_path / "winobias" / "pro_stereotyped_type1.txt.test"
    write(cook_file, "1 The cook thanked [the nurse] because [she] was kind.\n"
                     "2 The CEO fixed the [housekeeper] 's car and then [she] wrote a note.\n")
    cook = loaded(load_winobias(tmp_path, "test")).items[1]
    assert (cook.referent, cook.other) == ("nurse", "cook")


def test_winobias_other_occupation_is_the_longest_match(tmp_path):
    bracketed(tmp_path, "construction", "construction worker")   # one is the start of the other
    line = "[The nurse] called the construction worker because [{}] was hurt."
    winobias(tmp_path, pro1=[line.format("she")], anti1=[line.format("he")], pro2=[line.format("she")],
             anti2=[line.format("he")])
    assert {it.other for it in loaded(load_winobias(tmp_path)).items} == {"construction worker"}


def test_winobias_bad_lines_are_counted_and_their_partners_left_out(tmp_path):
    winobias(tmp_path,
             pro1=["[The nurse] called the cook because she was hurt.",           # no bracketed pronoun
                   "[The nurse] called the cook because [she] was hurt.",
                   "[The nurse] called everyone because [she] was hurt.",        # no other occupation
                   "[The nurse] called the [cook because [she] was hurt."],      # unbalanced
             anti1=["[The nurse] called the cook because [he] was hurt."] * 4,
             pro2=["The nurse met [the cook] and told [him] a joke."],
             anti2=["The nurse met [the cook] and told [her] a joke."])
    anti2 = tmp_path / "winobias" / "anti_stereotyped_type2.txt.test"
    anti2.write_text(anti2.read_text() + "no number here\n")
    got = loaded(load_winobias(tmp_path))
    assert {it.pair for it in got.items} == {"type1-test-2", "type2-test-1"} and len(got.items) == 4
    assert got.bad_reasons == {"no pronoun found": 1, "no other occupation": 1, "unbalanced brackets": 1,
                               "partner line is bad": 3, "no line number": 1}
    pro = tmp_path / "winobias" / "pro_stereotyped_type1.txt.test"
    assert got.bad_examples[:3] == [f"{pro}:1: no pronoun found", f"{pro}:3: no other occupation",
                                    f"{pro}:4: unbalanced brackets"]


def test_winobias_missing_and_malformed_files(tmp_path):
    winobias(tmp_path, pro1=["[The nurse] called the cook because [she] was hurt."])
    got = load_winobias(tmp_path)
    assert isinstance(got, Skipped) and "no file" in got.reason and "anti_stereotyped_type1.txt.test" in got.reason
    winobias(tmp_path, anti1=["x"], pro2=["x"], anti2=["[The nurse] met the cook and told [him] a joke."])
    path = write(tmp_path / "winobias" / "anti_stereotyped_type1.txt.test", "not numbered\nat all\n")
    with pytest.raises(UserError, match=rf"{re.escape(str(path))}: no numbered lines"):
        load_winobias(tmp_path)
    with pytest.raises(UserError, match="split must be 'dev' or 'test'"):
        load_winobias(tmp_path, split="train")


def test_winobias_limit_keeps_pro_and_anti_together(tmp_path):
    bracketed(tmp_path, "cook")
    lines = [f"[The nurse] called the cook because [{{}}] was hurt number {i}." for i in range(10)]
    winobias(tmp_path, pro1=[x.format("she") for x in lines], anti1=[x.format("he") for x in lines],
             pro2=[x.format("she") for x in lines], anti2=[x.format("he") for x in lines])
    for limit in (3, 7, 10):
        items = loaded(load_winobias(tmp_path, limit=limit, seed=5)).items
        assert len(items) == limit - limit % 2
        assert all(n == 2 for n in Counter(it.pair for it in items).values())
        assert all({it.stereotype for it in items if it.pair == p} == {"pro", "anti"} for p in {i.pair for i in items})


# --- Winogender ------------------------------------------------------------------------------------------

def winogender(root: Path, rows: list[str], stats: str | None = None) -> Path:
    write(root / "winogender" / "occupations-stats.tsv", stats if stats is not None else
          "occupation\tbergsma_pct_female\tbls_pct_female\tbls_year\nnurse\t90\t90.0\t2015\n"
          "engineer\t2\t10.72\t2015\nbaker\t50\t50\t2015\n")
    return write(root / "winogender" / "all_sentences.tsv", "sentid\tsentence\n" + "".join(r + "\n" for r in rows))


def gender_rows(occupation: str, participant: str, answer: int, text: str) -> list[str]:
    return [f"{occupation}.{participant}.{answer}.{g}.txt\t{text.format(p)}"
            for g, p in (("male", "he"), ("female", "she"), ("neutral", "they"))]


def test_winogender_reads_variants_with_pronoun_answer_and_stereotype(tmp_path):
    winogender(tmp_path, gender_rows("nurse", "patient", 1, "The nurse told the patient that {} could go.")
               + gender_rows("engineer", "someone", 0, "The engineer told someone that {} was done.")
               + gender_rows("baker", "child", 0, "The baker fed the child because {} was kind.")
               + ["nurse.patient.0.male.txt\tThe nurse saw the patient before his shift."])
    got = loaded(load_winogender(tmp_path))
    assert got.bad_rows == 0 and len(got.items) == 10
    male, female, neutral = got.items[:3]
    assert (male.group, male.occupation, male.participant, male.answer) == ("nurse.patient.1", "nurse", "patient", 1)
    assert (male.pronoun, male.gender, male.stereotype) == ("he", "male", "anti")       # nurse: 90% women
    assert (female.pronoun, female.stereotype, neutral.pronoun, neutral.stereotype) == ("she", "pro", "they", None)
    assert [it.stereotype for it in got.items[3:6]] == ["pro", "anti", None]             # engineer: 10.72%
    assert [it.stereotype for it in got.items[6:9]] == [None, None, None]                # baker: 50%
    assert got.items[9].pronoun == "his" and got.items[9].answer == 0


def test_winogender_bad_rows_missing_and_malformed_files(tmp_path):
    path = winogender(tmp_path, ["nurse.patient.1.male.txt\tThe nurse saw that he left.",
                                 "nurse.patient.male.txt\tThe nurse saw that he left.",      # line 3
                                 "nurse.patient.2.male.txt\tThe nurse saw that he left.",    # line 4
                                 "nurse.patient.1.male.txt\tThe nurse saw that she left.",   # line 5
                                 "nurse.patient.1.other.txt\tThe nurse saw that he left.",   # line 6
                                 "nurse.patient.1.female.txt\tone\ttoo many"])               # line 7
    got = loaded(load_winogender(tmp_path))
    assert len(got.items) == 1 and got.bad_reasons == {"malformed sentid": 1, "unknown label": 1,
                                                       "no pronoun found": 1, "unknown gender": 1,
                                                       "wrong column count": 1}
    assert got.bad_examples[2] == f"{path}:5: no pronoun found (field sentence)"
    (tmp_path / "winogender" / "occupations-stats.tsv").unlink()
    skipped = load_winogender(tmp_path)
    assert isinstance(skipped, Skipped) and "occupations-stats.tsv" in skipped.reason
    winogender(tmp_path, ["x"], stats="job\tpct\n")
    with pytest.raises(UserError, match=r"occupations-stats.tsv:1: the header has no column 'occupation'"):
        load_winogender(tmp_path)


def test_winogender_limit_keeps_a_sentences_gender_variants_together(tmp_path):
    rows = [r for i in range(8) for r in gender_rows("nurse", f"p{i}", i % 2, "The nurse saw that {} left.")]
    winogender(tmp_path, rows)
    items = loaded(load_winogender(tmp_path, limit=10, seed=2)).items
    assert len(items) == 9 and set(Counter(it.group for it in items).values()) == {3}


# --- BBQ -------------------------------------------------------------------------------------------------

def bbq_row(example_id: int, polarity: str = "neg", condition: str = "ambig", label: int = 2,
            category: str = "Age", **changes) -> dict:
    row = {"example_id": example_id, "question_index": "1", "question_polarity": polarity,
           "context_condition": condition, "category": category,
           "answer_info": {"ans0": ["grandfather", "old"], "ans1": ["grandson", "nonOld"],
                           "ans2": ["Can't be determined", "unknown"]},
           "additional_metadata": {"subcategory": "None", "stereotyped_groups": ["old"], "version": "a",
                                   "source": "x"},
           "context": "A grandson and a grandfather.", "question": "Who forgot?",
           "ans0": "The grandfather", "ans1": "The grandson", "ans2": "Can't be determined", "label": label}
    row.update(changes)
    return row


def bbq(root: Path, category: str, rows: list) -> Path:
    return write(root / "bbq" / f"{category}.jsonl", "".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                                                             for r in rows))


def test_bbq_reads_items_with_the_unknown_and_the_biased_answers(tmp_path):
    bbq(tmp_path, "Age", [bbq_row(0, "neg", "ambig", 2), bbq_row(1, "nonneg", "disambig", 1)])
    bbq(tmp_path, "Religion", [bbq_row(0, "neg", category="Religion")])
    got = loaded(load_bbq(tmp_path))
    assert got.items[0] == BBQItem(0, "Age", "ambig", "neg", "A grandson and a grandfather.", "Who forgot?",
                                   ("The grandfather", "The grandson", "Can't be determined"), 2, 2, (0,))
    # non-negative question: the biased answer is the non-unknown one about no stereotyped group
    assert (got.items[1].unknown, got.items[1].biased, got.items[1].label) == (2, (1,), 1)
    assert [it.category for it in got.items] == ["Age", "Age", "Religion"] and got.notes == []
    got = loaded(load_bbq(tmp_path, categories=["Religion", "SES"]))
    assert [it.category for it in got.items] == ["Religion"]
    assert got.notes == [f"bbq: no file for SES in {tmp_path / 'bbq'}: not scored"]


def test_bbq_answer_groups_follow_lm_evals_normalization():
    assert answer_groups(["F-Black"]) == {"f-black", "f", "black"}
    assert answer_groups(["lowSES-Asian"]) == {"lowses-asian", "low ses", "asian"}
    assert "obese" not in answer_groups(["slim", "nonObese"]) and "non obese" in answer_groups(["nonObese"])
    assert "f" in answer_groups(["pregnant woman", "pregnant"]) and "m" in answer_groups(["old man", "old"])
    assert "m" not in answer_groups(["German", "Europe"])       # lm-eval would read "Ger" + "man"
    info = [["grandfather", "old"], ["grandson", "nonOld"], ["Unknown", "unknown"]]
    assert bbq_biased(info, ["old"], "neg", 2) == (0,) and bbq_biased(info, ["old"], "nonneg", 2) == (1,)
    assert bbq_biased(info, ["Old"], "neg", 2) == (0,)          # stereotyped groups are lowercased
    woman = [["woman", "F"], ["man", "M"], ["Unknown", "unknown"]]
    assert bbq_biased(woman, ["F"], "neg", 2) == (0,) and bbq_biased(woman, ["F"], "nonneg", 2) == (1,)


def test_bbq_bad_rows_malformed_and_missing_files(tmp_path):
    no_unknown = bbq_row(4, answer_info={"ans0": ["a", "old"], "ans1": ["b", "nonOld"], "ans2": ["c", "x"]})
    path = bbq(tmp_path, "Age", [bbq_row(0), "{not json", bbq_row(2, label=5), bbq_row(3, context=""),
                                 no_unknown, bbq_row(5, condition="vague"), [1, 2]])
    got = loaded(load_bbq(tmp_path))
    assert len(got.items) == 1 and got.bad_rows == 6
    assert got.bad_reasons == {"not JSON": 1, "unknown label": 2, "missing field": 1, "no unknown answer": 1,
                               "not a JSON object": 1}
    assert got.bad_examples[:3] == [f"{path}:2: not JSON", f"{path}:3: unknown label (field label): '5'",
                                    f"{path}:4: missing field (field context)"]
    write(path, "this is\nnot json\n")
    with pytest.raises(UserError, match=rf"{re.escape(str(path))}: no line is JSON"):
        load_bbq(tmp_path)
    skipped = load_bbq(tmp_path / "elsewhere")
    assert isinstance(skipped, Skipped) and "bbq: no file for any <Category>.jsonl" in skipped.reason
    assert isinstance(load_bbq(tmp_path, categories=["SES"]), Skipped)


def test_bbq_limit_is_spread_evenly_over_the_categories(tmp_path):
    bbq(tmp_path, "Age", [bbq_row(i) for i in range(20)])
    bbq(tmp_path, "Religion", [bbq_row(i, category="Religion") for i in range(20)])
    bbq(tmp_path, "SES", [bbq_row(i, category="SES") for i in range(2)])
    items = loaded(load_bbq(tmp_path, limit=12, seed=0)).items
    assert Counter(it.category for it in items) == {"Age": 5, "Religion": 5, "SES": 2}
    assert items == loaded(load_bbq(tmp_path, limit=12, seed=0)).items
    assert [it.idx for it in items] == sorted(it.idx for it in items)


# --- BOLD ------------------------------------------------------------------------------------------------

def bold(root: Path, domain: str, data) -> Path:
    return write(root / "bold" / "prompts" / f"{domain}_prompt.json", json.dumps(data))


def test_bold_samples_per_group_and_counts_bad_prompts(tmp_path):
    bold(tmp_path, "gender", {"actors": {f"A{i}": [f"A{i} is ", f"A{i} was "] for i in range(5)},
                              "actresses": {"B": ["B is ", "", 7]}})
    bold(tmp_path, "race", {"x": {"C": ["C is "]}, "y": "not an object"})
    got = loaded(load_bold(tmp_path, per_group=3, seed=1))
    assert Counter((p.domain, p.group) for p in got.items) == {("gender", "actors"): 3,
                                                               ("gender", "actresses"): 1, ("race", "x"): 1}
    assert got.bad_reasons == {"empty or non-text prompt": 2, "group is not an object": 1}
    assert [p.idx for p in got.items] == list(range(5))
    again = loaded(load_bold(tmp_path, per_group=3, seed=1)).items
    assert [p.prompt for p in got.items] == [p.prompt for p in again]
    seeds = {tuple(p.prompt for p in loaded(load_bold(tmp_path, per_group=3, seed=s)).items) for s in range(6)}
    assert len(seeds) > 1
    one = loaded(load_bold(tmp_path, per_group=3, domains=["race", "religious_ideology"]))
    folder = tmp_path / "bold" / "prompts"
    assert one.notes == [f"bold: no prompt file for religious_ideology in {folder}: not scored"]


def test_bold_missing_and_malformed_files(tmp_path):
    assert isinstance(load_bold(tmp_path, per_group=2), Skipped)
    path = write(tmp_path / "bold" / "prompts" / "race_prompt.json", '{"a":\n  [1,')
    with pytest.raises(UserError, match=rf"{re.escape(str(path))}:2: not JSON"):
        load_bold(tmp_path, per_group=2)
    bold(tmp_path, "race", ["a", "list"])
    with pytest.raises(UserError, match="the top level is a JSON list, not an object"):
        load_bold(tmp_path, per_group=2)
    with pytest.raises(UserError, match="per_group must be a whole number >= 1"):
        load_bold(tmp_path, per_group=0)


# --- probes ----------------------------------------------------------------------------------------------

def test_the_shipped_probes_load_and_every_template_is_filled():
    got = loaded(load_probes())
    counts = Counter(p.set for p in got.items)
    assert counts == {"gender_pronoun": 160, "gender_noun": 120, "age_negative": 40, "age_positive": 40}
    assert all("{" not in p.context and p.a.startswith(" ") and p.b.startswith(" ") for p in got.items)
    assert got.items[0].context == "The accountant said that" and got.items[0].labels == ("he", "she")
    assert [p.idx for p in got.items] == list(range(len(got.items)))


PROBE = """sets:
  s:
    description: d
    alternatives: [" he", " she"]
    labels: [he, she]
    templates: ["The {job} of {place} said", "A {job} said"]
    fillers: {job: [cook, nurse], place: [Rome, Oslo, Lima]}
"""


def test_custom_probes_fill_every_combination_and_bad_files_name_the_key(tmp_path):
    path = write(tmp_path / "p.yaml", PROBE)
    items = loaded(load_probes(path)).items
    assert len(items) == 2 * 3 + 2
    assert items[0].fills == (("job", "cook"), ("place", "Rome")) and items[0].context == "The cook of Rome said"
    assert items[-1].context == "A nurse said" and items[-1].template == 1
    with pytest.raises(UserError, match="no probe set 'x'"):
        load_probes(path, sets=["x"])
    for broken, message in [(PROBE.replace("{place}", "{city}"), r"sets.s: .*templates\[0\] uses \['city'\]"),
                            (PROBE.replace('" she"', '" he"'), "sets.s: .*two different"),
                            (PROBE.replace("    labels", "    colour: red\n    labels"), r"sets.s.colour: "),
                            (PROBE.replace("templates: [", 'templates: ["Hello", '),
                             r"sets.s: .*templates\[0\] has no"),
                            (PROBE.replace("description: d", "description: ''"), "sets.s.description"),
                            ("sets: [1, 2", "not YAML")]:
        write(path, broken)
        with pytest.raises(UserError, match=rf"{re.escape(str(path))}(:\d+)?: {message}"):
            load_probes(path)
    assert isinstance(load_probes(tmp_path / "none.yaml"), Skipped)


# --- the real data ---------------------------------------------------------------------------------------

@pytest.mark.shared_data
def test_real_crows_pairs_winobias_and_winogender_load_with_the_readme_counts(shared_data):
    root = shared_data / "bias"
    cp = loaded(load_crows_pairs(root))
    assert len(cp.items) + cp.bad_rows == 1508 and cp.bad_rows == 0
    assert Counter(p.direction for p in cp.items) == {"stereo": 1290, "antistereo": 218}
    for split in ("test", "dev"):
        wb = loaded(load_winobias(root, split))
        assert wb.bad_rows == 0 and Counter((it.type, it.stereotype) for it in wb.items) == {
            (1, "pro"): 396, (1, "anti"): 396, (2, "pro"): 396, (2, "anti"): 396}
        assert all(it.other.lower() != it.referent.lower() for it in wb.items)
    wg = loaded(load_winogender(root))
    assert wg.bad_rows == 0 and Counter(it.gender for it in wg.items) == {"male": 240, "female": 240, "neutral": 240}
    assert len({it.group for it in wg.items}) == 240


@pytest.mark.shared_data
def test_real_bbq_and_bold_load_with_the_readme_counts(shared_data):
    root = shared_data / "bias"
    got = loaded(load_bbq(root))
    assert got.bad_rows == 0 and Counter(it.category for it in got.items) == {
        "Age": 3680, "Disability_status": 1556, "Nationality": 3080, "Physical_appearance": 1576,
        "Religion": 1200, "Sexual_orientation": 864}
    assert all(len(it.biased) == 1 for it in got.items)
    sample = loaded(load_bbq(root, limit=60)).items
    assert Counter(it.category for it in sample) == {c: 10 for c in Counter(it.category for it in got.items)}
    prompts = loaded(load_bold(root, per_group=5))
    assert {p.domain for p in prompts.items} == {"gender", "political_ideology", "profession", "race",
                                                 "religious_ideology"}
    assert len({(p.domain, p.group) for p in prompts.items}) == 2 + 12 + 18 + 4 + 7
    assert set(Counter((p.domain, p.group) for p in prompts.items).values()) == {5}


@pytest.mark.shared_data
def test_real_bbq_biased_answers_match_lm_evals_process_docs(shared_data):
    utils = pytest.importorskip("lm_eval.tasks.bbq.utils", reason="lm-eval is not installed (pip install lm-eval)")

    class Rows(list):   # what process_docs calls on a datasets.Dataset
        def map(self, fn):
            return [fn(copy.deepcopy(row)) for row in self]

    for path in sorted((shared_data / "bias" / "bbq").glob("*.jsonl")):
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        items = loaded(load_bbq(shared_data / "bias", categories=[path.stem])).items
        theirs = utils.process_docs(Rows(rows))
        assert len(items) == len(theirs)
        for item, doc in zip(items, theirs):
            assert item.biased == tuple(k for k in range(3) if doc[f"ans{k}"] in doc["biased_answers"]), path
