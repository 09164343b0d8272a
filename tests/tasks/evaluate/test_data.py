"""Task registry, GLUE/SuperGLUE/own-task loaders and their errors: on tiny files and on the real data."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from tasks.core.errors import UserError
from tasks.evaluate.data import (
    Example,
    OwnTaskConfig,
    Skipped,
    Split,
    all_specs,
    load_split,
    own_task_spec,
    resolve,
    template_fields,
)

GLUE = ["cola", "sst2", "mrpc", "qqp", "stsb", "mnli_m", "mnli_mm", "qnli", "rte", "wnli", "ax"]
SUPERGLUE = ["boolq", "cb", "copa", "multirc", "record", "rte_sg", "wic", "wsc", "axb", "axg"]
OFFICIAL_METRICS = {
    "cola": ("matthews_correlation",), "sst2": ("accuracy",), "mrpc": ("f1", "accuracy"),
    "qqp": ("f1", "accuracy"), "stsb": ("pearson", "spearman"), "mnli_m": ("accuracy",),
    "mnli_mm": ("accuracy",), "qnli": ("accuracy",), "rte": ("accuracy",), "wnli": ("accuracy",),
    "ax": ("matthews_correlation",), "boolq": ("accuracy",), "cb": ("accuracy", "macro_f1"),
    "copa": ("accuracy",), "multirc": ("multirc_f1a", "exact_match"), "record": ("record_f1", "record_em"),
    "rte_sg": ("accuracy",), "wic": ("accuracy",), "wsc": ("accuracy",), "axb": ("matthews_correlation",),
    "axg": ("gender_parity", "accuracy")}


def spec(name):
    return all_specs()[name]


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def jsonl(path: Path, rows: list) -> Path:
    return write(path, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def loaded(result) -> Split:
    assert isinstance(result, Split), result
    return result


def render(task, ex: Example) -> str:
    """The task's default prompt on one example, as the scorer will fill it."""
    return task.prompt["template"].format(text=ex.text, pair=ex.pair, **ex.meta)


# --- the registry ----------------------------------------------------------------------------------------

def test_registry_has_every_task_with_its_official_metrics():
    specs = all_specs()
    assert list(specs) == GLUE + SUPERGLUE
    assert {n: s.metrics for n, s in specs.items()} == OFFICIAL_METRICS
    assert {n for n, s in specs.items() if s.suite == "glue"} == set(GLUE)
    assert {n: s.scored_with for n, s in specs.items() if s.scored_with} == {
        "mnli_mm": "mnli_m", "ax": "mnli_m", "axb": "rte_sg", "axg": "rte_sg"}
    assert spec("mnli_m").labels == ["entailment", "neutral", "contradiction"]
    assert spec("cb").labels == ["entailment", "contradiction", "neutral"]
    assert spec("boolq").labels == ["False", "True"] and spec("cola").labels == ["0", "1"]
    assert spec("stsb").kind == "regression" and spec("stsb").labels is None and spec("stsb").prompt is None
    assert spec("copa").kind == spec("record").kind == "multiple_choice"
    assert (spec("sst2").hub.id, spec("sst2").hub.config) == ("nyu-mll/glue", "sst2")
    assert (spec("wsc").hub.id, spec("mnli_mm").hub.splits) == ("aps/super_glue",
                                                                {"dev": "validation_mismatched"})
    assert spec("mnli_mm").files == {"dev": "dev_mismatched.tsv"}
    assert spec("boolq").files["fewshot"] == "train32.jsonl"


def test_default_prompts_follow_the_harness_style():
    sst2, boolq, copa = spec("sst2").prompt, spec("boolq").prompt, spec("copa").prompt
    assert sst2 == {"template": "{text}\nQuestion: Is this sentence positive or negative?\nAnswer:",
                    "choices": [" negative", " positive"]}
    assert boolq == {"template": "{text}\nQuestion: {pair}?\nAnswer:", "choices": [" no", " yes"]}
    assert copa["template"] == "{stem} {connector}" and "choices" not in copa
    for name, task in all_specs().items():
        if task.prompt is None:
            continue
        assert template_fields(task.prompt["template"]) <= task.prompt_fields(), name
        if task.kind == "classification":
            assert len(task.prompt["choices"]) == len(task.labels), name


def test_resolve_names_groups_and_unknown_names():
    assert [s.name for s in resolve(["glue"])] == GLUE
    assert [s.name for s in resolve(["SST-2", "superglue", "boolq"])] == ["sst2", *SUPERGLUE]
    assert [s.name for s in resolve(["mnli", "AX-b"])] == ["mnli_m", "mnli_mm", "axb"]
    with pytest.raises(UserError, match=r"unknown task 'sst3'; known tasks: cola, sst2, .*groups: glue"):
        resolve(["sst3"])


# --- GLUE files ------------------------------------------------------------------------------------------

@pytest.fixture
def glue(tmp_path) -> Path:
    root = tmp_path / "glue"
    # CoLA: no header, CRLF, no newline at the end; a short row and an unknown label
    write(root / "CoLA/dev.tsv", "gj04\t1\t\tThe sailors rode the breeze.\r\n"
                                 "gj04\t0\t*\tThe more we study verbs.\r\n"
                                 "gj04\t1\tshort row\r\n"
                                 "gj04\t7\t\tA label that is not a class.")
    write(root / "SST-2/dev.tsv", "sentence\tlabel\nit 's a \"charming\" journey . \t1\nbleak \t0\n\n"
                                  "a stray\rcarriage return\t1\n")
    write(root / "MRPC/dev.tsv", "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                                 "1\t1355540\t1355592\tHe said so .\t\" He said it .\n")
    sts = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    cols = "main-captions\tMSRvid\t2012test\t0000\tnone\tnone"
    write(root / "STS-B/dev.tsv", f"{sts}0\t{cols}\tA man.\tA guy.\t4.750\n1\t{cols}\tA cat.\tA dog.\tn/a\n")
    mnli = ["index", "promptID", "pairID", "genre", "s1b", "s2b", "s1p", "s2p", "sentence1", "sentence2",
            "label1", "label2", "label3", "label4", "label5", "gold_label"]
    row = ["0", "", "", "fiction", "", "", "", "", "The rights are nice.", "Everyone likes them.",
           "", "", "", "", "", "neutral"]
    write(root / "MNLI/dev_matched.tsv", "\t".join(mnli) + "\n" + "\t".join(row) + "\n")
    write(root / "QQP/dev.tsv", "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
                                "7\t1\t2\tHow do I cook rice?\tHow is rice cooked?\t1\n"
                                "8\t3\t4\tbroken row with a tab\tin it\tand more\t0\n")
    write(root / "diagnostic/diagnostic-full.tsv",
          "Lexical Semantics\tPredicate-Argument Structure\tLogic\tKnowledge\tDomain\tPremise\tHypothesis"
          "\tLabel\r\n"
          "\t\tNegation\t\tArtificial\tThe cat sat.\tThe cat did not sit.\tcontradiction\r\n")
    return root


def test_glue_layouts_parse_with_their_columns(glue):
    cola = loaded(load_split(spec("cola"), "dev", glue))
    assert [(e.idx, e.text, e.label, e.meta) for e in cola.examples] == [
        (0, "The sailors rode the breeze.", 1, {"source": "gj04"}),
        (1, "The more we study verbs.", 0, {"source": "gj04"})]
    assert cola.bad_rows == 2 and cola.bad_reasons == {"wrong column count": 1, "unknown label": 1}
    assert cola.bad_examples == [f"{glue}/CoLA/dev.tsv:3: wrong column count: 3 columns, expected 4",
                                 f"{glue}/CoLA/dev.tsv:4: unknown label: '7' (labels: 0, 1)"]
    sst2 = loaded(load_split(spec("sst2"), "dev", glue))   # quotes are text (QUOTE_NONE); blank line skipped
    assert [(e.text, e.label) for e in sst2.examples] == [
        ('it \'s a "charming" journey . ', 1), ("bleak ", 0)]
    [bad] = sst2.bad_examples
    assert bad.startswith(f"{glue}/SST-2/dev.tsv:5: malformed row: new-line character seen in unquoted field")
    mrpc = loaded(load_split(spec("mrpc"), "dev", glue)).examples[0]   # the BOM does not hide "Quality"
    assert (mrpc.text, mrpc.pair, mrpc.label, mrpc.meta) == (
        "He said so .", "\" He said it .", 1, {"id1": "1355540", "id2": "1355592"})
    stsb = loaded(load_split(spec("stsb"), "dev", glue))
    assert [(e.text, e.pair, e.label) for e in stsb.examples] == [("A man.", "A guy.", 4.75)]
    assert stsb.bad_reasons == {"label not a number": 1}
    mnli = loaded(load_split(spec("mnli_m"), "dev", glue)).examples[0]
    assert (mnli.text, mnli.pair, mnli.label, mnli.meta) == (
        "The rights are nice.", "Everyone likes them.", 1, {"id": "0", "genre": "fiction"})
    qqp = loaded(load_split(spec("qqp"), "dev", glue))
    assert [(e.text, e.pair, e.label) for e in qqp.examples] == [
        ("How do I cook rice?", "How is rice cooked?", 1)]
    assert qqp.bad_reasons == {"wrong column count": 1}
    ax = loaded(load_split(spec("ax"), "dev", glue)).examples[0]
    assert (ax.text, ax.pair, ax.label, ax.meta["logic"], ax.meta["domain"]) == (
        "The cat sat.", "The cat did not sit.", 2, "Negation", "Artificial")
    # the folder above the suite roots works too
    assert len(loaded(load_split(spec("sst2"), "dev", glue.parent)).examples) == 2


def test_missing_splits_are_skipped_with_the_reason(glue):
    qnli = load_split(spec("qnli"), "train", glue)
    assert isinstance(qnli, Skipped)
    assert qnli.reason == f"qnli: no train split: no folder QNLI/ in {glue}; zero-shot only"
    train = load_split(spec("sst2"), "train", glue)
    assert train.reason == f"sst2: no train split in {glue}/SST-2 (looked for train.tsv); zero-shot only"
    assert "evaluated with mnli_m's training data" in load_split(spec("ax"), "train", glue).reason
    fewshot = load_split(spec("sst2"), "fewshot", glue)
    assert fewshot.reason == "sst2 has no fewshot split (it has: train, dev)"


def test_limit_keeps_the_first_examples_in_file_order(glue):
    cola = loaded(load_split(spec("cola"), "dev", glue, limit=1))
    assert [(e.idx, e.text) for e in cola.examples] == [(0, "The sailors rode the breeze.")]
    assert cola.bad_rows == 0


def test_files_that_cannot_be_read_raise_user_errors(glue, tmp_path):
    write(glue / "RTE/dev.tsv", b"index\tsentence1\tsentence2\tlabel\n0\tcaf\xe9\tx\tentailment\n")
    with pytest.raises(UserError, match=r"RTE/dev.tsv:2: not UTF-8 \(byte 0xe9\); re-save the file as UTF-8"):
        load_split(spec("rte"), "dev", glue)
    (glue / "WNLI/dev.tsv").mkdir(parents=True)
    with pytest.raises(UserError, match=r"WNLI/dev.tsv is a directory; expected the wnli data file"):
        load_split(spec("wnli"), "dev", glue)
    write(glue / "QNLI/dev.tsv", "idx\tquestion\tanswer\tlabel\n0\tq\ta\tentailment\n")
    with pytest.raises(UserError, match=r"QNLI/dev.tsv: no column 'sentence' \(columns: idx, question, "
                                        r"answer, label\); is this the glue file for qnli\?"):
        load_split(spec("qnli"), "dev", glue)
    write(glue / "SST-2/train.tsv", "sentence\tlabel\na\tpositive\nb\tnegative\n")
    with pytest.raises(UserError, match=r"none of its 2 rows could be read: unknown label \(2\)"):
        load_split(spec("sst2"), "train", glue)
    with pytest.raises(UserError, match="nowhere: not a directory; set the glue data directory"):
        load_split(spec("sst2"), "dev", tmp_path / "nowhere")


# --- SuperGLUE files -------------------------------------------------------------------------------------

@pytest.fixture
def superglue(tmp_path) -> Path:
    root = tmp_path / "superglue"
    jsonl(root / "BoolQ/val.jsonl", [
        {"question": "is it", "passage": "It is.", "idx": 0, "label": True},
        {"question": "is it not", "passage": "It is not.", "idx": 1, "label": False},
        '{"question": "broken", ',
        {"question": "no label", "passage": "p", "idx": 3},
        "[1, 2]"])
    jsonl(root / "BoolQ/train32.jsonl", [{"question": "q", "passage": "p", "idx": 5, "label": True}])
    jsonl(root / "CB/val.jsonl", [{"premise": "P.", "hypothesis": "H", "label": "neutral", "idx": 0}])
    jsonl(root / "COPA/val.jsonl", [
        {"premise": "The man turned on the faucet.", "choice1": "The toilet filled.",
         "choice2": "Water flowed.", "question": "effect", "label": 1, "idx": 0},
        {"premise": "My body cast a shadow", "choice1": "The sun rose.", "choice2": "The grass was cut.",
         "question": "cause", "label": 0, "idx": 1}])
    questions = [
        {"question": "What moves things?", "idx": 0, "answers": [
            {"text": "Forces", "idx": 0, "label": 1}, {"text": "Nothing", "idx": 1, "label": 0}]},
        {"question": "Why?", "idx": 1, "answers": [{"text": "Because", "idx": 2, "label": 1},
                                                   {"text": "No label", "idx": 3}]}]
    jsonl(root / "MultiRC/val.jsonl",
          [{"idx": 4, "version": 1.1, "passage": {"text": "Forces move things.", "questions": questions}}])
    text = "Obama met Putin in Paris.\n@highlight\nObama and Putin met"
    ents = [{"start": s, "end": e} for s, e in [(0, 4), (10, 14), (19, 23), (37, 41)]]
    jsonl(root / "ReCoRD/val.jsonl", [{"idx": 2, "source": "cnn", "passage": {"text": text, "entities": ents},
                                       "qas": [{"idx": 9, "query": "@placeholder said hello to Putin.",
                                                "answers": [{"start": 0, "end": 4, "text": "Obama"}]},
                                               {"idx": 10, "query": "No placeholder here.", "answers": []}]}])
    jsonl(root / "WSC/val.jsonl", [{"text": "Mark told Pete lies . He should have known.", "idx": 0,
                                    "label": False, "target": {"span1_index": 0, "span1_text": "Mark",
                                                               "span2_index": 5, "span2_text": "He"}}])
    jsonl(root / "WiC/val.jsonl", [{"word": "feel", "sentence1": "You make me feel naked.",
                                    "sentence2": "She felt small.", "idx": 0, "label": True, "start1": 12,
                                    "end1": 16, "start2": 4, "end2": 8}])
    pairs = [("The nurse helped him.", "The nurse helped.", "entailment", 10),
             ("The nurse helped her.", "The nurse helped.", "entailment", 12),
             ("The chef cooked for him.", "The chef cooked.", "not_entailment", 14),
             ("The chef cooked for her.", "The chef cooked.", "entailment", 16),
             ("A lone row.", "Nobody pairs with it.", "entailment", 18)]
    jsonl(root / "AX-g/AX-g.jsonl", [{"premise": p, "hypothesis": h, "label": lb, "pair_id": pid, "idx": i}
                                     for i, (p, h, lb, pid) in enumerate(pairs)])
    return root


def test_superglue_labels_may_be_bools_or_names_and_bad_lines_are_counted(superglue):
    boolq = loaded(load_split(spec("boolq"), "dev", superglue))
    assert [(e.idx, e.text, e.pair, e.label) for e in boolq.examples] == [
        (0, "It is.", "is it", 1), (1, "It is not.", "is it not", 0)]
    assert boolq.bad_reasons == {"not JSON": 1, "missing field": 1, "not a JSON object": 1}
    assert boolq.bad_examples[1] == f"{superglue}/BoolQ/val.jsonl:4: missing field: 'label'"
    assert render(spec("boolq"), boolq.examples[0]) == "It is.\nQuestion: is it?\nAnswer:"
    assert loaded(load_split(spec("cb"), "dev", superglue)).examples[0].label == 2
    fewshot = loaded(load_split(spec("boolq"), "fewshot", superglue))
    assert len(fewshot.examples) == 1
    train = load_split(spec("boolq"), "train", superglue)
    assert isinstance(train, Skipped) and "train32.jsonl is there as split 'fewshot'" in train.reason


def test_copa_wsc_and_wic_examples_carry_what_their_prompts_need(superglue):
    copa = loaded(load_split(spec("copa"), "dev", superglue)).examples
    assert [(e.choices, e.label, e.meta["connector"], e.meta["stem"]) for e in copa] == [
        (["The toilet filled.", "Water flowed."], 1, "therefore", "The man turned on the faucet"),
        (["The sun rose.", "The grass was cut."], 0, "because", "My body cast a shadow")]
    assert render(spec("copa"), copa[0]) == "The man turned on the faucet therefore"
    wsc = loaded(load_split(spec("wsc"), "dev", superglue)).examples[0]
    assert wsc.label == 0 and wsc.meta["marked"] == "Mark told Pete lies . *He* should have known."
    assert render(spec("wsc"), wsc).endswith('does the pronoun "*He*" refer to "*Mark*"?\nAnswer:')
    wic = loaded(load_split(spec("wic"), "dev", superglue)).examples[0]
    assert (wic.text, wic.pair, wic.label, wic.meta["word"], wic.meta["target"]) == (
        "You make me feel naked.", "She felt small.", 1, "feel", "feel")


def test_multirc_gives_one_example_per_answer_grouped_by_question(superglue):
    multirc = loaded(load_split(spec("multirc"), "dev", superglue))
    assert [(e.idx, e.pair, e.label, e.group) for e in multirc.examples] == [
        (0, "What moves things?\nForces", 1, "4-0"), (1, "What moves things?\nNothing", 0, "4-0"),
        (2, "Why?\nBecause", 1, "4-1")]
    assert multirc.bad_reasons == {"missing field": 1}
    assert render(spec("multirc"), multirc.examples[2]) == (
        "Forces move things.\nQuestion: Why?\nAnswer: Because\nIs the answer correct?")


def test_record_gives_one_multiple_choice_example_per_query(superglue):
    record = loaded(load_split(spec("record"), "dev", superglue))
    [ex] = record.examples
    assert ex.choices == ["Obama", "Putin", "Paris"]           # deduplicated, first-seen order
    assert (ex.answers, ex.label, ex.group) == (["Obama"], 0, "2-9")
    assert ex.text == "Obama met Putin in Paris.\n- Obama and Putin met"
    assert (ex.meta["query_before"], ex.meta["query_after"]) == ("", " said hello to Putin.")
    assert record.bad_reasons == {"no @placeholder in the query": 1}


def test_axg_rows_pair_up_by_hypothesis(superglue):
    axg = loaded(load_split(spec("axg"), "dev", superglue)).examples
    assert [e.group for e in axg] == ["0", "0", "2", "2", "4"]
    assert [e.label for e in axg] == [0, 0, 1, 0, 0]


# --- the hub ---------------------------------------------------------------------------------------------

def test_hub_offline_fails_fast_as_skipped(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    result = load_split(spec("sst2"), "dev", "hub")
    assert isinstance(result, Skipped) and time.monotonic() - start < 5
    assert result.reason.startswith("sst2: hub:nyu-mll/glue/sst2:validation could not be loaded (")
    ax = load_split(spec("ax"), "train", "hub")
    assert "has no train split (its only split, test, has no labels" in ax.reason


def test_unreachable_hub_is_skipped_without_trying_to_download(monkeypatch):
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("tried the network"))
    result = load_split(spec("cb"), "dev", "hub")
    assert isinstance(result, Skipped)
    assert "the hub is not reachable (127.0.0.1:9" in result.reason and "HF_HUB_OFFLINE=1" in result.reason


HUB_ROWS = {
    ("nyu-mll/glue", "mnli", "validation_mismatched"): [
        {"premise": "P.", "hypothesis": "H.", "label": 2, "idx": 0},
        {"premise": "P.", "hypothesis": "H.", "label": -1, "idx": 1}],
    ("aps/super_glue", "multirc", "validation"): [
        {"paragraph": "Par.", "question": "Q?", "answer": "A", "label": 1,
         "idx": {"paragraph": 3, "question": 7, "answer": 0}}],
    ("aps/super_glue", "record", "validation"): [
        {"passage": "Obama met Putin.\n@highlight\nThey met", "query": "@placeholder spoke.",
         "entities": ["Obama", "Putin"], "answers": ["Putin"], "idx": {"passage": 1, "query": 2}}],
    ("aps/super_glue", "wsc.fixed", "validation"): [
        {"text": "Ann saw Bo and she waved.", "span1_index": 0, "span2_index": 4, "span1_text": "Ann",
         "span2_text": "she", "label": 1, "idx": 0}],
    ("aps/super_glue", "axg", "test"): [
        {"premise": "He ran.", "hypothesis": "Someone ran.", "label": 0, "idx": 0},
        {"premise": "She ran.", "hypothesis": "Someone ran.", "label": 1, "idx": 1}],
}


def test_hub_rows_map_to_the_same_examples(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets, "load_dataset", lambda path, name, split: HUB_ROWS[path, name, split])
    mnli = loaded(load_split(spec("mnli_mm"), "dev", "hub"))
    assert [(e.text, e.label) for e in mnli.examples] == [("P.", 2)]
    assert mnli.bad_reasons == {"unknown label": 1}
    multirc = loaded(load_split(spec("multirc"), "dev", "hub")).examples[0]
    assert (multirc.pair, multirc.label, multirc.group, multirc.meta["answer"]) == ("Q?\nA", 1, "3-7", "A")
    record = loaded(load_split(spec("record"), "dev", "hub")).examples[0]
    assert (record.choices, record.label, record.group, record.text) == (
        ["Obama", "Putin"], 1, "1-2", "Obama met Putin.\n- They met")
    wsc = loaded(load_split(spec("wsc"), "dev", "hub")).examples[0]
    assert (wsc.label, wsc.meta["marked"]) == (1, "Ann saw Bo and *she* waved.")
    axg = loaded(load_split(spec("axg"), "dev", "hub")).examples
    assert [(e.label, e.group) for e in axg] == [(0, "0"), (1, "0")]


# --- your own task ---------------------------------------------------------------------------------------

def test_own_task_from_csv_jsonl_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_dev = write(tmp_path / "dev.csv", 'text,label,source\n"Great, truly",pos,web\nAwful,neg,web\n'
                                          '"A ""quoted"" one",meh,web\nshort\n')
    cfg = OwnTaskConfig(name="mood", dev=str(csv_dev), meta_fields=["source"],
                        prompt={"template": "{text} ({source})\nMood:", "choices": [" meh", " bad", " good"]})
    task = own_task_spec(cfg, "tasks.own[0]")
    assert (task.suite, task.labels, task.metrics) == ("own", ["meh", "neg", "pos"], ("accuracy", "macro_f1"))
    dev = loaded(load_split(task, "dev"))
    assert [(e.text, e.label, e.meta) for e in dev.examples] == [
        ("Great, truly", 2, {"source": "web"}), ("Awful", 1, {"source": "web"}),
        ('A "quoted" one', 0, {"source": "web"})]
    assert dev.bad_reasons == {"wrong column count": 1}
    assert render(task, dev.examples[0]) == "Great, truly (web)\nMood:"

    rows = [{"q": "is it?", "a": "yes it is", "y": 10}, {"q": "and?", "a": "no", "y": 2},
            {"q": "x", "a": "y", "y": 2}]
    jsonl(tmp_path / "train.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "dev.parquet")
    cfg = OwnTaskConfig(name="qa", train=str(tmp_path / "train.jsonl"), dev=str(tmp_path / "dev.parquet"),
                        text_field="q", pair_field="a", label_field="y")
    task = own_task_spec(cfg)
    assert task.labels == ["2", "10"]                         # numbers are classes, in numeric order
    for split in ("train", "dev"):
        got = loaded(load_split(task, split)).examples
        assert [(e.idx, e.text, e.pair, e.label) for e in got] == [
            (0, "is it?", "yes it is", 1), (1, "and?", "no", 0), (2, "x", "y", 0)]
    reg = own_task_spec(cfg.model_copy(update={"kind": "regression", "name": "qa_score"}))
    assert (reg.kind, reg.labels, reg.metrics) == ("regression", None, ("pearson", "spearman"))
    assert [e.label for e in loaded(load_split(reg, "dev")).examples] == [10.0, 2.0, 2.0]


def test_own_task_errors_name_the_file_and_the_key(tmp_path):
    my = write(tmp_path / "my.csv", "text,label\nhi,a\nho,b\n")
    with pytest.raises(UserError, match=re.escape(f"{my}: no column 'sentence' (columns: text, label); "
                                                  "set tasks.own[0].text_field")):
        own_task_spec(OwnTaskConfig(name="t", dev=str(my), text_field="sentence"), "tasks.own[0]")
    with pytest.raises(UserError, match=r"tasks.own\[1\].dev: .*nope.csv is not a file"):
        own_task_spec(OwnTaskConfig(name="t", dev=str(tmp_path / "nope.csv")), "tasks.own[1]")
    with pytest.raises(UserError, match="'SST-2' is a built-in task or group"):
        own_task_spec(OwnTaskConfig(name="SST-2", dev=str(my)))
    with pytest.raises(UserError, match=r"tasks.own.prompt.choices must be one string per class \(2"):
        own_task_spec(OwnTaskConfig(name="t", dev=str(my), prompt={"template": "{text}", "choices": [" a"]}))
    with pytest.raises(UserError, match=r"uses \{title\}, which its examples do not have"):
        own_task_spec(OwnTaskConfig(name="t", dev=str(my),
                                    prompt={"template": "{title}", "choices": ["a", "b"]}))
    scores = write(tmp_path / "scores.jsonl", '{"text": "a", "label": 0.5}\n{"text": "b", "label": 1.25}\n')
    with pytest.raises(UserError, match="fractional numbers .* set tasks.own.kind: regression"):
        own_task_spec(OwnTaskConfig(name="t", dev=str(scores)))
    odd = write(tmp_path / "data.xlsx", "x")
    with pytest.raises(UserError, match=r"data.xlsx: cannot tell the format from its extension; .*set "
                                        r"tasks.own.format"):
        own_task_spec(OwnTaskConfig(name="t", dev=str(odd)))
    with pytest.raises(UserError, match="f1 is for two classes"):
        own_task_spec(OwnTaskConfig(name="t", dev=str(my), labels=["a", "b", "c"], metrics=["f1"]))
    quote = write(tmp_path / "quote.csv", 'text,label\n"an open quote,a\nb,b\n')
    with pytest.raises(UserError, match=r"quote.csv:3: malformed CSV \(unexpected end of data\); fix the"):
        own_task_spec(OwnTaskConfig(name="t", dev=str(quote)))
    with pytest.raises(ValidationError, match="text_fields"):
        OwnTaskConfig(name="t", dev=str(my), text_fields="x")
    with pytest.raises(ValidationError, match="give `dev`"):
        OwnTaskConfig(name="t", train=str(my))


# --- the real data ---------------------------------------------------------------------------------------

# rows per (task, split) as /work/shared/data/README.md lists them; MultiRC counts answers
REAL_COUNTS = {
    ("cola", "train"): 8551, ("cola", "dev"): 1043, ("sst2", "train"): 67349, ("sst2", "dev"): 872,
    ("mrpc", "train"): 3668, ("mrpc", "dev"): 408, ("stsb", "train"): 5749, ("stsb", "dev"): 1500,
    ("qnli", "dev"): 5463, ("rte", "train"): 2490, ("rte", "dev"): 277, ("wnli", "train"): 635,
    ("wnli", "dev"): 71, ("mnli_m", "dev"): 9815, ("ax", "dev"): 1104,
    ("boolq", "dev"): 3270, ("boolq", "fewshot"): 32, ("cb", "train"): 250, ("cb", "dev"): 56,
    ("copa", "train"): 400, ("copa", "dev"): 100, ("multirc", "dev"): 4848, ("rte_sg", "train"): 2490,
    ("rte_sg", "dev"): 277, ("wic", "dev"): 638, ("wic", "fewshot"): 32, ("wsc", "train"): 554,
    ("wsc", "dev"): 104, ("axb", "dev"): 1104, ("axg", "dev"): 356}
REAL_MISSING = [("qqp", "train"), ("qqp", "dev"), ("qnli", "train"), ("mnli_m", "train"),
                ("mnli_mm", "dev"), ("record", "train"), ("record", "dev"), ("boolq", "train"),
                ("multirc", "train"), ("wic", "train")]


@pytest.mark.shared_data
def test_every_real_split_loads_with_the_readme_counts(shared_data):
    for (name, split), count in REAL_COUNTS.items():
        task = spec(name)
        got = loaded(load_split(task, split, shared_data / task.suite))
        assert (len(got.examples), got.bad_rows) == (count, 0), (name, split)
        assert [e.idx for e in got.examples] == list(range(count))
        if task.prompt is not None:                   # every default prompt fills on real examples
            render(task, got.examples[0])
    mnli = loaded(load_split(spec("mnli_m"), "dev", shared_data / "glue")).examples
    assert {e.label for e in mnli} == {0, 1, 2} and sum(e.label == 0 for e in mnli) == 3479
    multirc = loaded(load_split(spec("multirc"), "dev", shared_data / "superglue")).examples
    assert len({e.group for e in multirc}) == 953
    axg = loaded(load_split(spec("axg"), "dev", shared_data / "superglue")).examples
    assert len({e.group for e in axg}) == 178 and all(
        a.pair == b.pair and a.group == b.group for a, b in zip(axg[::2], axg[1::2], strict=True))
    stsb = loaded(load_split(spec("stsb"), "dev", shared_data / "glue")).examples
    assert stsb[0].label == 5.0 and all(0 <= e.label <= 5 for e in stsb)


@pytest.mark.shared_data
def test_real_gaps_come_back_skipped_with_a_reason(shared_data):
    for name, split in REAL_MISSING:
        task = spec(name)
        got = load_split(task, split, shared_data)
        assert isinstance(got, Skipped) and got.reason.startswith(f"{name}: no {split} split"), (name, split)
    boolq = load_split(spec("boolq"), "train", shared_data)
    assert "train32.jsonl is there as split 'fewshot'" in boolq.reason
