"""PII stage: presidio detection (patterns, optional spaCy NER), anonymization, and a counts-only audit.

Every document's text and every string inside its meta (collect copies source fields such as an author
or a contact address there) go through the same detection and operators.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import Field, field_validator, model_validator

from tasks.core.artifacts import Artifact, Markdown, Table
from tasks.core.config import StageConfig
from tasks.core.errors import ConfigError, UserError
from tasks.core.mapstage import UnitWriter, iter_unit_docs, run_map_stage
from tasks.core.result import StageResult
from tasks.core.stage import Inputs, RunContext, Stage, StageOutput
from tasks.core.units import UnitResult, WorkUnit
from tasks.pii.precision import NameFilter, code_regions, in_regions, ip_is_host, phone_is_number, verb_lemmas

# Presidio's email and URL recognizers call tldextract, which downloads the public suffix list unless
# told not to. Its bundled snapshot is enough and runs must stay offline, so say so before it is imported.
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
os.environ.setdefault("TLDEXTRACT_CACHE", os.path.join(tempfile.gettempdir(), "llmpipe-tldextract"))

log = logging.getLogger("llmpipe.pii")

# What runs when `entities` is not set: structured identifiers with validating recognizers (checksums,
# number metadata), which are rarely wrong on prose. NER entities join when a spaCy model is loaded.
DEFAULT_PATTERN_ENTITIES = (
    "EMAIL_ADDRESS", "PHONE_NUMBER", "CREDIT_CARD", "IBAN_CODE", "IP_ADDRESS", "US_SSN")
DEFAULT_NER_ENTITIES = ("PERSON", "LOCATION")
NER_ENTITIES = frozenset({"PERSON", "LOCATION", "ORGANIZATION", "NRP"})
DEFAULT_PHONE_REGIONS = ("US", "GB", "DE", "FR", "IL", "IN", "CA", "BR")

# Digits joined by at most 4 non-word characters. Every digit-bearing presidio pattern (cards, SSNs,
# IBAN check digits, IPv4, phone numbers) has its digits inside one such cluster, so one pass over the
# text tells which of those recognizers can match at all.
DIGIT_CLUSTER = re.compile(r"\d(?:[\W_]{0,4}\d)*")
IPV4_HINT = re.compile(r"\d\.\d{1,3}\.\d")
# "::" or "x:xxxx:"; written to open with ":" so the scan is fast
IPV6_HINT = re.compile(r":(?=:)|(?<=[0-9A-Fa-f]):[0-9A-Fa-f]{1,4}:")
AT_SIGN = re.compile("@")
NON_SPACE = re.compile(r"\S*")
PHONE_WINDOW_MARGIN = 24  # room for a leading "+"/"(" and a trailing extension ("ext. 1234")
CERTAIN = 1.0  # presidio's score for a checksum-validated match (cards, IBANs): a phone inside it cannot win
CONTEXT_WINDOW_CHARS = 160  # how far back to look for the context words of a low-score match
CONTEXT_WORDS = 5  # presidio's default: five words before the match
CONTEXT_BOOST, CONTEXT_MIN_SCORE = 0.35, 0.4  # presidio's LemmaContextAwareEnhancer defaults
NER_CHUNK_CHARS = 100_000  # spaCy refuses texts over nlp.max_length; long documents go in pieces
WORD = re.compile(r"\w+")
ENTITY_NAME = re.compile(r"^[A-Z][A-Z0-9_]*$")
MASK_ALL = 1 << 30  # presidio's mask takes a count; larger than any span masks all of it


# ------------------------------------------------------------------------------------------- config
class PatternSpec(StageConfig):
    """One regex of a custom recognizer; `score` is its confidence before context words."""

    regex: str
    score: float = Field(0.6, ge=0.0, le=1.0)
    name: str = ""


class RecognizerSpec(StageConfig):
    """A custom pattern recognizer: the entity it finds, its regexes, words that raise its score nearby."""

    name: str
    entity: str
    patterns: list[PatternSpec] = Field(min_length=1)
    context: list[str] = Field(default_factory=list)

    @field_validator("entity")
    @classmethod
    def _entity_name(cls, value: str) -> str:
        return _check_entity_names([value])[0]


class OperatorSpec(StageConfig):
    """How one entity type is anonymized (a presidio-anonymizer operator and its parameters)."""

    type: Literal["replace", "mask", "hash", "redact"] = "replace"
    new_value: str | None = None  # replace; None = "<ENTITY_TYPE>"
    masking_char: str = Field("*", min_length=1, max_length=1)  # mask
    chars_to_mask: int | None = Field(None, ge=0)  # mask; None = the whole span
    from_end: bool = False  # mask
    hash_type: Literal["sha256", "sha512"] = "sha256"  # hash; the salt is read from `hash_salt_env`

    @model_validator(mode="after")
    def _params_fit_type(self) -> "OperatorSpec":
        if self.new_value is not None and self.type != "replace":
            raise ValueError(f"new_value only applies to type 'replace', not '{self.type}'")
        if self.chars_to_mask is not None and self.type != "mask":
            raise ValueError(f"chars_to_mask only applies to type 'mask', not '{self.type}'")
        return self


class PiiConfig(StageConfig):
    """The `pii` section of pipelines.yaml."""

    entities: list[str] | None = None  # None: DEFAULT_PATTERN_ENTITIES (+ DEFAULT_NER_ENTITIES with a model)
    score_threshold: float = Field(0.35, ge=0.0, le=1.0)  # presidio scores: phone 0.4, dashed SSN 0.5
    score_thresholds: dict[str, float] = Field(default_factory=dict)  # per entity, overrides the above
    allow_list: list[str] = Field(default_factory=list)  # spans equal to one of these are left alone
    allow_list_match: Literal["exact", "regex"] = "exact"  # regex: the pattern must match the whole span
    deny_list: dict[str, list[str]] = Field(default_factory=dict)  # entity -> terms always detected
    custom_recognizers: list[RecognizerSpec] = Field(default_factory=list)
    operators: dict[str, OperatorSpec] = Field(default_factory=dict)  # entity -> operator
    default_operator: OperatorSpec = Field(default_factory=OperatorSpec)  # replace with "<ENTITY>"
    hash_salt_env: str = "LLMPIPE_PII_SALT"  # the hash salt is a secret: only its variable's name is here
    nlp_model: str | None = "en_core_web_lg"  # an installed spaCy model (name or path); never downloaded
    language: str = "en"
    phone_regions: list[str] = Field(default_factory=lambda: list(DEFAULT_PHONE_REGIONS))
    # python-phonenumbers accepts German 4-6 digit pager/short numbers, so prose years such as "1648"
    # become PHONE_NUMBER; a number needs this many digits in one run (extension aside). 0 = presidio's rule.
    phone_min_digits: int = Field(7, ge=0)
    context_enhancement: bool = True  # raise low scores when a context word ("ssn", "phone") is near
    # drop detections that are not personal data: NER "names" that are code, keywords, technical terms or
    # verbs ("Python", "False", "Convert"), IPs of no host ("::", 0.0.0.0), decimals taken for phone
    # numbers; see tasks/pii/precision.py and the precision figures of `python -m bench.pii`
    precision_filters: bool = True
    # score this config on the shipped labeled set (tasks/pii/eval/) at start: precision and recall per
    # entity go to the stats and report.json as `precision_eval` (about a second; NER adds a few)
    evaluate: bool = True
    prefilter: bool = True  # skip recognizers whose cheap necessary condition fails (off: for checking)
    batch_size: int = Field(64, ge=1)  # documents per NER/analysis batch
    # no `workers` here: the flow sizes its executor once at start, so runner.workers is the one knob

    key_exclude = frozenset({"batch_size"})

    @field_validator("entities", "score_thresholds", "deny_list", "operators")
    @classmethod
    def _entity_names(cls, value: Any) -> Any:
        _check_entity_names(value or [])
        return value

    @field_validator("score_thresholds")
    @classmethod
    def _threshold_range(cls, value: dict[str, float]) -> dict[str, float]:
        for name, threshold in value.items():
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"score_thresholds.{name}={threshold} is outside [0, 1]")
        return value


def _check_entity_names(names: Any) -> list[str]:
    for name in names:
        if not ENTITY_NAME.match(name):
            raise ValueError(f"'{name}' is not an entity name: use upper case, digits and '_' "
                             "(e.g. EMAIL_ADDRESS)")
    return list(names)


# --------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class PiiPlan:
    """What a config resolves to on this machine: entities, whether NER runs, and the warning if not."""

    entities: tuple[str, ...]
    ner_entities: tuple[str, ...]  # NER entities that will be detected (empty when NER is off)
    ner_model: str | None  # the model that will be loaded, or None
    warning: str | None  # set when names are not being detected

    @property
    def ner_enabled(self) -> bool:
        return bool(self.ner_entities)


def spacy_model_available(name: str | None) -> bool:
    """True for an installed spaCy package or a model directory; nothing is downloaded."""
    if not name:
        return False
    import spacy.util

    return spacy.util.is_package(name) or Path(name).expanduser().is_dir()


def plan_pii(cfg: PiiConfig) -> PiiPlan:
    """Resolve the entity list and NER status; cheap (no model is loaded)."""
    model = cfg.nlp_model if spacy_model_available(cfg.nlp_model) else None
    if cfg.entities is None:
        base = list(DEFAULT_PATTERN_ENTITIES) + (list(DEFAULT_NER_ENTITIES) if model else [])
    else:
        base = list(cfg.entities)
    extra = [r.entity for r in cfg.custom_recognizers] + list(cfg.deny_list)
    entities = tuple(dict.fromkeys(base + extra))
    ner_wanted = tuple(e for e in entities if e in NER_ENTITIES)
    ner_entities = ner_wanted if model else ()
    return PiiPlan(entities=entities, ner_entities=ner_entities, ner_model=model if ner_entities else None,
                   warning=_ner_warning(cfg, model, ner_wanted))


def _ner_warning(cfg: PiiConfig, model: str | None, ner_wanted: tuple[str, ...]) -> str | None:
    if model and ner_wanted:
        return None
    if not cfg.nlp_model:
        why = "no spaCy model is configured (pii.nlp_model is null)"
    elif not model:
        why = f"the spaCy model '{cfg.nlp_model}' (pii.nlp_model) is not installed"
    else:
        why = "pii.entities lists no NER entity (PERSON, LOCATION, ORGANIZATION, NRP)"
    missing = ", ".join(ner_wanted) or "PERSON, LOCATION"
    return (f"NER is OFF: {why}. Names and places ({missing}) are NOT being detected or anonymized; only "
            "pattern entities are. Install a spaCy NER model (e.g. `python -m spacy download "
            "en_core_web_lg`) and set pii.nlp_model to it.")


# ------------------------------------------------------------------------------------------- engine
class Span(NamedTuple):
    start: int
    end: int
    entity: str
    score: float
    source: str = "pattern"  # or "ner"


class Cluster(NamedTuple):
    start: int
    end: int
    digits: int


def digit_clusters(text: str) -> list[Cluster]:
    return [Cluster(m.start(), m.end(), sum(c.isdigit() for c in m.group()))
            for m in DIGIT_CLUSTER.finditer(text)]


def _min_digits(n: int):
    return lambda text, clusters: any(c.digits >= n for c in clusters)


def _iban_gate(text: str, clusters: list[Cluster]) -> bool:
    return any(c.start >= 2 and text[c.start - 2:c.start].isalpha() for c in clusters)  # "DE" + check digits


def _ip_gate(text: str, clusters: list[Cluster]) -> bool:
    return (any(c.digits >= 4 and IPV4_HINT.search(text, c.start, c.end) for c in clusters)
            or IPV6_HINT.search(text) is not None)


# Cheap necessary conditions per presidio recognizer class (for its default patterns and flags): when a
# gate is false the recognizer cannot match, so it does not run on that document. Checked against the
# ungated recognizers by the tests and by `bench.pii` (prefilter on vs off).
GATES = {
    "EmailRecognizer": lambda text, clusters: "@" in text,
    "CreditCardRecognizer": _min_digits(13),  # 4+3+3+3 digits, single separators
    "UsSsnRecognizer": _min_digits(9),
    "UsItinRecognizer": _min_digits(9),
    "NhsRecognizer": _min_digits(10),
    "UsBankRecognizer": _min_digits(8),
    "IbanRecognizer": _iban_gate,
    "IpRecognizer": _ip_gate,
}


def _email_hints(text: str) -> list[int]:
    return [m.start() for m in AT_SIGN.finditer(text)]


def _ip_hints(text: str) -> list[int]:
    return [m.start() for m in IPV4_HINT.finditer(text)] + [m.start() for m in IPV6_HINT.finditer(text)]


# Recognizers whose every match lies inside one whitespace-free token holding a hint ("@"; "1.2.3" or
# "::"), and whose regexes look at most two characters around a match: running them on those tokens
# alone (with one character of margin) finds exactly what a run over the whole text finds, and the
# regexes no longer scan the whole document.
TOKEN_WINDOWS = {"EmailRecognizer": _email_hints, "IpRecognizer": _ip_hints}


def token_windows(text: str, hints: list[int]) -> list[tuple[int, int]]:
    """Merged (start, end) windows: each whitespace-delimited token holding a hint, plus the whitespace
    character on either side."""
    windows: list[list[int]] = []
    for pos in sorted(hints):
        if windows and pos < windows[-1][1]:
            continue
        lo = pos
        while lo > 0 and not text[lo - 1].isspace():
            lo -= 1
        hi = NON_SPACE.match(text, pos).end()
        lo, hi = max(0, lo - 1), min(len(text), hi + 1)
        if windows and lo <= windows[-1][1]:
            windows[-1][1] = hi
        else:
            windows.append([lo, hi])
    return [(lo, hi) for lo, hi in windows]


def run_in_windows(det: Detector, text: str) -> list[Any]:
    """The recognizer over the token windows of its hints, results placed back in the whole text."""
    results = []
    for lo, hi in token_windows(text, det.windows(text)):
        for r in det.recognizer.analyze(text[lo:hi], [det.entity], None):
            r.start += lo
            r.end += lo
            results.append(r)
    return results


@dataclass
class Detector:
    """One presidio recognizer, the entity it reports, and how to skip it cheaply."""

    recognizer: Any  # presidio EntityRecognizer
    entity: str
    gate: Any = None  # (text, clusters) -> bool; None: always run
    windows: Any = None  # text -> hint positions: run on the tokens holding them only (TOKEN_WINDOWS)
    context: tuple[str, ...] = ()
    # phone numbers: one recognizer per region with the fewest digits a valid number there has
    phone_regions: tuple[tuple[int, Any], ...] = ()


@dataclass
class DocOutcome:
    """The result for one text or document: new text and per-entity counts, or the error type that
    stopped it. For a document, `counts` covers text and meta, `meta_counts` the meta alone, and `meta`
    is its parsed meta with every detected span anonymized."""

    text: str | None
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    meta: Any = None
    meta_counts: dict[str, int] = field(default_factory=dict)


def _import_presidio():
    """Import presidio lazily (seconds of imports) and make sure tldextract stays offline."""
    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    import presidio_analyzer
    import tldextract.tldextract as tld

    if getattr(tld.TLD_EXTRACTOR, "suffix_list_urls", ()):
        # tldextract was imported before our environment setting; swap in an extractor that cannot fetch
        tld.TLD_EXTRACTOR = tld.TLDExtract(suffix_list_urls=(), cache_dir=os.environ["TLDEXTRACT_CACHE"])
    for name in ("presidio-analyzer", "presidio-anonymizer"):
        # their debug records can hold analyzed text; PII must not reach the logs whatever the root level
        logging.getLogger(name).setLevel(max(logging.getLogger(name).level, logging.WARNING))
    return presidio_analyzer


class PiiEngine:
    """Detection and anonymization for one config, built once per process (see `get_engine`)."""

    def __init__(self, cfg: PiiConfig, plan: PiiPlan | None = None, load_ner: bool = True):
        self.cfg = cfg
        self.plan = plan or plan_pii(cfg)
        self.detectors = build_detectors(cfg, self.plan)
        self.thresholds = {e: cfg.score_thresholds.get(e, cfg.score_threshold) for e in self.plan.entities}
        self.allow_exact = frozenset(cfg.allow_list) if cfg.allow_list_match == "exact" else frozenset()
        self.allow_regex = _compile_allow_regex(cfg)
        self.operators = build_operators(cfg, self.plan)
        self.stop_words = _stop_words(cfg.language) if cfg.context_enhancement else frozenset()
        self.ner = NerModel(self.plan, cfg.language) if (load_ner and self.plan.ner_model) else None
        self.names = NameFilter(self.ner.verbs if self.ner else frozenset()) if cfg.precision_filters else None
        from presidio_anonymizer import AnonymizerEngine

        self.anonymizer = AnonymizerEngine()

    # detection ------------------------------------------------------------------------------------
    def detect(self, text: str, ner_spans: list[Span] = ()) -> list[Span]:
        """Non-overlapping spans above threshold, sorted by start."""
        kept, code = [], None
        trimmed = [t for t in (_trimmed(text, s) for s in ner_spans) if t.end > t.start]
        for span in self._candidates(text, trimmed):
            threshold = self.thresholds[span.entity]
            if span.score < threshold and self.cfg.context_enhancement:
                span = self._boost(text, span)
            if span.score <= 0 or span.score < threshold or self._allowed(text, span):
                continue
            if self.names is not None:
                if span.source == "ner" and code is None:
                    code = code_regions(text)  # only documents with NER spans pay for it
                if not self._plausible(text, span, code):
                    continue
            kept.append(span)
        return merge_overlaps(kept)

    def _plausible(self, text: str, span: Span, code: list | None) -> bool:
        """The precision filters (tasks/pii/precision.py): is this span personal data at all?"""
        if span.source == "ner":
            return self.names.keep(text, span.start, span.end, in_regions(span.start, span.end, code))
        if span.entity == "IP_ADDRESS":
            return ip_is_host(text[span.start:span.end])
        if span.entity == "PHONE_NUMBER":
            return phone_is_number(text[span.start:span.end], self._has_context(text, span))
        return True

    def _candidates(self, text: str, found: list[Span]) -> list[Span]:
        """Every recognizer's raw spans, skipping the recognizers whose gate says they cannot match."""
        clusters = digit_clusters(text) if self.cfg.prefilter else None
        for det in self.detectors:  # phone detectors come last: they skip what a checksum already owns
            if clusters is None:
                results = det.recognizer.analyze(text, [det.entity], None)
            elif det.phone_regions:
                certain = [s for s in found if s.score >= CERTAIN]
                results = run_phone(det, text, clusters, certain, self.cfg.phone_min_digits)
            elif det.gate is not None and not det.gate(text, clusters):
                continue
            elif det.windows is not None:
                results = run_in_windows(det, text)
            else:
                results = det.recognizer.analyze(text, [det.entity], None)
            if det.phone_regions:
                min_digits = self.cfg.phone_min_digits
                results = [r for r in results if longest_digit_run(text[r.start:r.end]) >= min_digits]
            found.extend(Span(r.start, r.end, det.entity, r.score) for r in results)
        return found

    def _boost(self, text: str, span: Span) -> Span:
        """Presidio's context rule without a spaCy pass: a context word among the words before the match."""
        if self._has_context(text, span):
            score = min(1.0, max(span.score + CONTEXT_BOOST, CONTEXT_MIN_SCORE))
            return span._replace(score=score)
        return span

    def _has_context(self, text: str, span: Span) -> bool:
        context = self._context_of(span.entity)
        if not context:
            return False
        before = text[max(0, span.start - CONTEXT_WINDOW_CHARS):span.end].lower()
        words = [w for w in WORD.findall(before) if w not in self.stop_words][-(CONTEXT_WORDS + 1):]
        return any(c in w for c in context for w in words)

    def _context_of(self, entity: str) -> tuple[str, ...]:
        if not self.cfg.context_enhancement:
            return ()
        return tuple(c for det in self.detectors if det.entity == entity for c in det.context)

    def _allowed(self, text: str, span: Span) -> bool:
        value = text[span.start:span.end]
        if value in self.allow_exact:
            return True
        return self.allow_regex is not None and self.allow_regex.fullmatch(value) is not None

    # anonymization --------------------------------------------------------------------------------
    def anonymize(self, text: str, spans: list[Span]) -> str:
        """Replace exactly the given (non-overlapping) spans; every other character stays as it was."""
        if not spans:
            return text
        from presidio_anonymizer.entities import RecognizerResult

        results = [RecognizerResult(s.entity, s.start, s.end, s.score) for s in spans]
        # spans are already merged; presidio's own merging would also swallow the whitespace between them
        out = self.anonymizer.anonymize(text=text, analyzer_results=results, operators=self.operators,
                                        merge_entities_with_spaces=False)
        return out.text

    def process_batch(self, texts: list[str]) -> list[DocOutcome]:
        """Detect and anonymize a batch; a document that fails is reported by error type, never raised."""
        ner_results = self.ner.spans_batch(texts) if self.ner else [[] for _ in texts]
        outcomes = []
        for text, ner_spans in zip(texts, ner_results):
            try:
                if isinstance(ner_spans, Exception):
                    raise ner_spans
                spans = self.detect(text, ner_spans)
                counts = Counter(s.entity for s in spans)
                outcomes.append(DocOutcome(self.anonymize(text, spans), dict(counts)))
            except (UserError, MemoryError):
                raise
            except Exception as exc:  # quarantined by the caller; the message may quote text, so drop it
                outcomes.append(DocOutcome(None, error=type(exc).__name__))
        return outcomes

    def process_docs(self, docs: list[dict[str, Any]]) -> list[DocOutcome]:
        """Anonymize each document's text and every string in its meta, all in one batch."""
        metas = [parse_meta(d.get("meta")) for d in docs]
        strings = [meta_strings(m) for m in metas]
        # values such as a license or a source name repeat across documents: analyze each once per batch
        unique = list(dict.fromkeys(s for values in strings for s in values if s))
        outcomes = self.process_batch([d["text"] for d in docs] + unique)
        by_value = dict(zip(unique, outcomes[len(docs):]))
        return [_document_outcome(text_outcome, meta, values, by_value)
                for text_outcome, meta, values in zip(outcomes[:len(docs)], metas, strings)]


def _trimmed(text: str, span: Span) -> Span:
    """An NER span without the whitespace spaCy sometimes includes ("False\\n\\n   ")."""
    value = text[span.start:span.end]
    lead = len(value) - len(value.lstrip())
    return span._replace(start=span.start + lead, end=span.start + len(value.rstrip()))


def _document_outcome(text_outcome: DocOutcome, meta: Any, values: list[str],
                      by_value: dict[str, DocOutcome]) -> DocOutcome:
    """Join a document's text outcome with those of its meta strings (`values`, in `meta_strings` order)."""
    value_outcomes = [by_value[v] for v in values if v]
    error = next((o.error for o in [text_outcome, *value_outcomes] if o.error is not None), None)
    if error is not None:
        return DocOutcome(None, error=error)
    meta_counts: Counter = Counter()
    for outcome in value_outcomes:
        meta_counts.update(outcome.counts)
    if meta_counts:
        meta = replace_strings(meta, iter([by_value[v].text if v else v for v in values]))
    return DocOutcome(text_outcome.text, dict(Counter(text_outcome.counts) + meta_counts), meta=meta,
                      meta_counts=dict(meta_counts))


def parse_meta(raw: Any) -> Any:
    """A document's meta as JSON data; meta that is not JSON is kept (and analyzed) as one string."""
    if isinstance(raw, (dict, list)):
        return raw
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except ValueError:
        return raw


def meta_strings(value: Any) -> list[str]:
    """Every string value inside JSON data, depth first in document order (dict keys are not values)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for item in value.values() for s in meta_strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in meta_strings(item)]
    return []


def replace_strings(value: Any, new: Iterator[str]) -> Any:
    """A copy of JSON data with its string values taken in turn from `new` (the `meta_strings` order)."""
    if isinstance(value, str):
        return next(new)
    if isinstance(value, dict):
        return {key: replace_strings(item, new) for key, item in value.items()}
    if isinstance(value, list):
        return [replace_strings(item, new) for item in value]
    return value


def with_pii_counts(meta: Any, counts: dict[str, int]) -> dict[str, Any]:
    """Meta with the `pii` counts added; meta that is not a JSON object is kept under "meta"."""
    base = dict(meta) if isinstance(meta, dict) else {"meta": meta}
    return {**base, "pii": dict(sorted(counts.items()))}


def run_phone(det: Detector, text: str, clusters: list[Cluster], certain: list[Span],
              min_digits: int = 0) -> list[Any]:
    """The phone recognizer on windows around digit clusters only, each region only where it can match.

    python-phonenumbers matches locally, so a window with a margin around a cluster finds what the whole
    text would; a region runs only on clusters with at least as many digits as its shortest valid number
    (a year like 1875 needs only the German matcher, not all eight). Clusters inside a checksum-validated
    span (card, IBAN) are skipped: a phone match there would lose the overlap to that span anyway.
    """
    from presidio_analyzer import EntityRecognizer

    results = []
    fewest = max(det.phone_regions[0][0], min_digits)
    for lo, hi, digits in phone_windows(text, clusters, fewest, certain):
        window = text[lo:hi]
        for min_digits, recognizer in det.phone_regions:
            if digits < min_digits:
                break
            for r in recognizer.analyze(window, [det.entity], None):
                r.start += lo
                r.end += lo
                results.append(r)
    return EntityRecognizer.remove_duplicates(results)


def longest_digit_run(value: str) -> int:
    """Digits in the longest digit cluster of a value (a phone number's main part, extension aside)."""
    return max((c.digits for c in digit_clusters(value)), default=0)


def phone_windows(text: str, clusters: list[Cluster], min_digits: int,
                  certain: list[Span] = ()) -> list[tuple[int, int, int]]:
    """Merged (start, end, most digits in one cluster) windows around clusters that may be phone numbers."""
    windows: list[list[int]] = []
    for c in clusters:
        if c.digits < min_digits or any(s.start <= c.start and c.end <= s.end for s in certain):
            continue
        lo, hi = max(0, c.start - PHONE_WINDOW_MARGIN), min(len(text), c.end + PHONE_WINDOW_MARGIN)
        if windows and lo <= windows[-1][1]:
            windows[-1][1], windows[-1][2] = hi, max(windows[-1][2], c.digits)
        else:
            windows.append([lo, hi, c.digits])
    return [(lo, hi, digits) for lo, hi, digits in windows]


def merge_overlaps(spans: list[Span]) -> list[Span]:
    """Overlapping spans become one span covering all of them, labeled by the strongest member.

    Covering the union (rather than trimming the loser) never leaves part of a detected value in clear.
    The label goes to a pattern match before an NER guess (small spaCy models call "a1e1:1bc:6d53" or
    "Ring 1-404-835-6433" a PERSON), then by score, length, earlier start and entity name, so the result
    does not depend on the order recognizers ran in.
    """
    merged: list[Span] = []
    group: list[Span] = []
    for span in sorted(spans, key=lambda s: (s.start, s.end)):
        if group and span.start >= max(s.end for s in group):
            merged.append(_merge_group(group))
            group = []
        group.append(span)
    if group:
        merged.append(_merge_group(group))
    return merged


def _merge_group(group: list[Span]) -> Span:
    best = min(group, key=lambda s: (s.source == "ner", -s.score, -(s.end - s.start), s.start, s.entity))
    return Span(min(s.start for s in group), max(s.end for s in group), best.entity, best.score, best.source)


def _compile_allow_regex(cfg: PiiConfig) -> re.Pattern | None:
    if cfg.allow_list_match != "regex" or not cfg.allow_list:
        return None
    try:
        return re.compile("|".join(f"(?:{p})" for p in cfg.allow_list))
    except re.error as exc:
        raise ConfigError(f"pii.allow_list: a pattern does not compile ({exc}); fix the regex or set "
                          "pii.allow_list_match: exact") from exc


def _stop_words(language: str) -> frozenset[str]:
    """Words skipped when counting the five context words, as presidio does with spaCy's stop words."""
    try:
        import spacy.util

        return frozenset(spacy.util.get_lang_class(language).Defaults.stop_words)
    except Exception:  # a language spaCy does not know: count every word
        return frozenset()


# -------------------------------------------------------------------------------------- recognizers
def build_detectors(cfg: PiiConfig, plan: PiiPlan) -> list[Detector]:
    """Presidio's predefined recognizers for the pattern entities, plus custom and deny-list ones."""
    pa = _import_presidio()
    predefined = _predefined_recognizers(cfg)
    detectors: list[Detector] = []
    custom_entities = {r.entity for r in cfg.custom_recognizers} | set(cfg.deny_list)
    for entity in plan.entities:
        if entity in NER_ENTITIES:
            continue
        found = [r for r in predefined if entity in r.supported_entities]
        if not found and entity not in custom_entities:
            known = sorted({e for r in predefined for e in r.supported_entities} | NER_ENTITIES)
            raise ConfigError(f"pii.entities: no recognizer finds '{entity}'. Known entities: "
                              f"{', '.join(known)}; or add a pii.custom_recognizers entry for it.")
        detectors.extend(_detector(r, entity, cfg) for r in found)
    for spec in cfg.custom_recognizers:
        detectors.append(Detector(_custom_recognizer(pa, spec, cfg.language), spec.entity,
                                  context=tuple(c.lower() for c in spec.context)))
    for entity, terms in cfg.deny_list.items():
        if terms:
            rec = pa.PatternRecognizer(supported_entity=entity, deny_list=list(terms),
                                       name=f"deny_list_{entity}", supported_language=cfg.language)
            detectors.append(Detector(rec, entity))
    return sorted(detectors, key=lambda d: bool(d.phone_regions))  # phones last (see run_phone)


def _predefined_recognizers(cfg: PiiConfig) -> list[Any]:
    from presidio_analyzer import RecognizerRegistry
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    registry = RecognizerRegistry(supported_languages=[cfg.language])
    presidio_log = logging.getLogger("presidio-analyzer")
    level = presidio_log.level
    presidio_log.setLevel(logging.ERROR)  # it warns once per recognizer of every other language
    try:
        registry.load_predefined_recognizers(languages=[cfg.language])
    finally:
        presidio_log.setLevel(level)
    recognizers = [r for r in registry.recognizers
                   if type(r).__name__ != "SpacyRecognizer" and not set(r.supported_entities) & NER_ENTITIES]
    if cfg.phone_regions != list(DEFAULT_PHONE_REGIONS):
        recognizers = [r for r in recognizers if not isinstance(r, PhoneRecognizer)]
        recognizers.append(PhoneRecognizer(supported_language=cfg.language,
                                           supported_regions=tuple(cfg.phone_regions)))
    return recognizers


def _detector(recognizer: Any, entity: str, cfg: PiiConfig) -> Detector:
    name = type(recognizer).__name__
    context = tuple(c.lower().strip() for c in (getattr(recognizer, "context", None) or ()))
    if name == "PhoneRecognizer":
        return Detector(recognizer, entity, context=context, phone_regions=_phone_regions(recognizer))
    return Detector(recognizer, entity, gate=GATES.get(name), windows=TOKEN_WINDOWS.get(name), context=context)


def _phone_regions(recognizer: Any) -> tuple[tuple[int, Any], ...]:
    """(fewest digits of a valid number, one-region PhoneRecognizer) per region, fewest first."""
    from phonenumbers import PhoneMetadata
    from presidio_analyzer.predefined_recognizers import PhoneRecognizer

    regions = []
    for region in recognizer.supported_regions:
        meta = PhoneMetadata.metadata_for_region(region)
        if meta is None:
            raise ConfigError(f"pii.phone_regions: '{region}' is not a region code python-phonenumbers "
                              "knows; use ISO 3166 codes such as US, GB, DE")
        one = PhoneRecognizer(context=recognizer.context, supported_language=recognizer.supported_language,
                              supported_regions=(region,), leniency=recognizer.leniency)
        regions.append((max(1, min(meta.general_desc.possible_length)), one))
    return tuple(sorted(regions, key=lambda pair: pair[0]))


def _custom_recognizer(pa: Any, spec: RecognizerSpec, language: str) -> Any:
    for i, p in enumerate(spec.patterns):
        try:
            re.compile(p.regex)
        except re.error as exc:
            raise ConfigError(f"pii.custom_recognizers[{spec.name}].patterns[{i}].regex does not compile: "
                              f"{exc}. Fix the regex (Python syntax).") from exc
    patterns = [pa.Pattern(name=p.name or f"{spec.name}_{i}", regex=p.regex, score=p.score)
                for i, p in enumerate(spec.patterns)]
    return pa.PatternRecognizer(supported_entity=spec.entity, name=spec.name, patterns=patterns,
                                context=list(spec.context) or None, supported_language=language)


# ---------------------------------------------------------------------------------------- operators
def build_operators(cfg: PiiConfig, plan: PiiPlan) -> dict[str, Any]:
    """presidio-anonymizer OperatorConfig per entity; the hash salt comes from the environment only."""
    from presidio_anonymizer.entities import OperatorConfig

    unknown = sorted(set(cfg.operators) - set(plan.entities) - NER_ENTITIES)
    if unknown:
        raise ConfigError(f"pii.operators: {', '.join(unknown)} not among the detected entities "
                          f"({', '.join(plan.entities)}); add them to pii.entities or fix the names")
    operators = {}
    for entity in set(plan.entities) | set(cfg.operators):
        spec = cfg.operators.get(entity, cfg.default_operator)
        operators[entity] = OperatorConfig(spec.type, _operator_params(spec, entity, cfg))
    return operators


def _operator_params(spec: OperatorSpec, entity: str, cfg: PiiConfig) -> dict[str, Any]:
    if spec.type == "replace":
        return {"new_value": f"<{entity}>" if spec.new_value is None else spec.new_value}
    if spec.type == "mask":
        count = MASK_ALL if spec.chars_to_mask is None else spec.chars_to_mask
        return {"masking_char": spec.masking_char, "chars_to_mask": count, "from_end": spec.from_end}
    if spec.type == "hash":
        return {"hash_type": spec.hash_type, "salt": read_salt(cfg, entity)}
    return {}


def read_salt(cfg: PiiConfig, entity: str = "") -> str:
    """The secret hash salt from the environment variable the config names (never from the config)."""
    salt = os.environ.get(cfg.hash_salt_env, "")
    if len(salt.encode()) < 16:
        state = "is not set" if not salt else "is shorter than 16 bytes"
        where = f" for {entity}" if entity else ""
        raise UserError(f"pii: the 'hash' operator{where} needs a secret salt, but the environment variable "
                        f"{cfg.hash_salt_env} (pii.hash_salt_env) {state}. Set it to "
                        "a random string of at least 16 characters in the environment of every worker.")
    return salt


# --------------------------------------------------------------------------------------------- NER
class NerModel:
    """A spaCy pipeline reduced to NER (and what NER listens to), run with nlp.pipe over batches."""

    def __init__(self, plan: PiiPlan, language: str):
        import spacy
        from presidio_analyzer.nlp_engine import NerModelConfiguration

        try:
            self.nlp = spacy.load(plan.ner_model)
        except Exception as exc:
            raise UserError(f"pii.nlp_model: the spaCy model '{plan.ner_model}' is installed but does not "
                            f"load ({type(exc).__name__}: {exc}). Reinstall it or set pii.nlp_model: null."
                            ) from exc
        if "ner" not in self.nlp.pipe_names:
            raise UserError(f"pii.nlp_model: '{plan.ner_model}' has no 'ner' component; use an NER model "
                            "such as en_core_web_lg")
        needed = {"ner"} | {name for name, pipe in self.nlp.pipeline
                            if "ner" in (getattr(pipe, "listening_components", None) or [])}
        self.verbs = verb_lemmas(self.nlp)  # its lemmatizer's verb list, for the precision filters
        # tagger, parser and lemmatizer cost more than NER itself and add nothing to entity spans
        self.nlp.select_pipes(enable=[n for n in self.nlp.pipe_names if n in needed])
        ner_config = NerModelConfiguration()
        self.labels = {label: entity for label, entity in ner_config.model_to_presidio_entity_mapping.items()
                       if entity in plan.ner_entities and label not in ner_config.labels_to_ignore}
        self.score = ner_config.default_score
        self.chunk_chars = min(NER_CHUNK_CHARS, self.nlp.max_length)

    def spans_batch(self, texts: list[str]) -> list[list[Span] | Exception]:
        """Entity spans per text; a text whose processing fails gets the exception instead."""
        pieces = [(i, off, chunk) for i, text in enumerate(texts)
                  for off, chunk in _chunks(text, self.chunk_chars)]
        chunks = [chunk for _, _, chunk in pieces]
        try:
            docs = list(self.nlp.pipe(chunks, batch_size=max(1, len(chunks))))
        except Exception:  # find the culprit: one text at a time
            docs = [self._one(chunk) for chunk in chunks]
        out: list[list[Span] | Exception] = [[] for _ in texts]
        for (i, off, _), doc in zip(pieces, docs):
            if isinstance(out[i], Exception):
                continue
            if isinstance(doc, Exception):
                out[i] = doc
                continue
            out[i].extend(Span(off + e.start_char, off + e.end_char, self.labels[e.label_], self.score, "ner")
                          for e in doc.ents if e.label_ in self.labels)
        return out

    def _one(self, text: str) -> Any:
        try:
            return self.nlp(text)
        except Exception as exc:
            return exc


def _chunks(text: str, limit: int) -> list[tuple[int, str]]:
    """(offset, piece) pieces of at most `limit` chars, cut after whitespace where possible."""
    if len(text) <= limit:
        return [(0, text)]
    pieces, start = [], 0
    while start < len(text):
        end = min(len(text), start + limit)
        if end < len(text):
            cut = max(text.rfind(" ", start, end), text.rfind("\n", start, end))
            end = cut + 1 if cut > start else end
        pieces.append((start, text[start:end]))
        start = end
    return pieces


# --------------------------------------------------------------------------------- engine per process
_ENGINES: dict[str, PiiEngine] = {}


def get_engine(cfg: PiiConfig) -> PiiEngine:
    """The engine for this config in this process (worker processes build it once, then reuse it)."""
    salt = os.environ.get(cfg.hash_salt_env, "")
    key = cfg.digest() + hashlib.sha256(salt.encode()).hexdigest()[:8]
    engine = _ENGINES.get(key)
    if engine is None:
        if len(_ENGINES) >= 4:
            _ENGINES.clear()
        engine = _ENGINES[key] = PiiEngine(cfg)
    return engine


# ------------------------------------------------------------------------------------------- stage
def pii_unit(unit: WorkUnit) -> UnitResult:
    """Anonymize one input shard; counts go to the account, never values."""
    cfg = PiiConfig.model_validate(unit.config)
    engine = get_engine(cfg)
    expected = unit.extra.get("ner_model")
    if engine.plan.ner_model != expected:
        # a cluster worker without the model would silently skip names while the stats say NER ran
        raise UserError(f"pii: the flow planned NER with spaCy model {expected!r} but this worker resolves "
                        f"{engine.plan.ner_model!r}; install the same model on every worker (pii.nlp_model).")
    writer = UnitWriter(unit)
    start = time.perf_counter()
    for batch in iter_unit_docs(unit, batch_rows=cfg.batch_size):
        for doc, outcome in zip(batch, engine.process_docs(batch)):
            _record(writer, doc, outcome)
    writer.info = {"seconds": round(time.perf_counter() - start, 3), "ner_enabled": engine.plan.ner_enabled}
    return writer.finish()


def _record(writer: UnitWriter, doc: dict[str, Any], outcome: DocOutcome) -> None:
    if outcome.error is not None:
        log.warning("pii: document %s could not be analyzed (%s); quarantined", doc["id"], outcome.error)
        writer.quarantine(f"analysis_error:{outcome.error}", {"id": doc["id"], "source": doc.get("source")})
        return
    if not outcome.counts:
        writer.keep(doc)  # text and meta exactly as they came
        return
    writer.keep(doc, text=outcome.text, meta=with_pii_counts(outcome.meta, outcome.counts))
    total, in_meta = sum(outcome.counts.values()), sum(outcome.meta_counts.values())
    writer.count("docs_with_pii")
    writer.count("pii_spans", total)
    if in_meta:
        writer.count("meta_spans", in_meta)
        writer.count("docs_with_meta_pii")
    writer.count(f"spans_per_doc/{_bucket(total)}")
    for entity, n in outcome.counts.items():
        writer.count(f"entity/{entity}", n)
        writer.count(f"docs_with/{entity}")


def _bucket(n: int) -> str:
    return "1" if n == 1 else "2-4" if n <= 4 else "5-9" if n <= 9 else "10+"


def run_pii(inputs: Inputs, out_uri: str, cfg: PiiConfig, ctx: RunContext) -> StageOutput:
    """Stage entry point: detect and anonymize PII in every upstream document shard."""
    plan = plan_pii(cfg)
    engine = PiiEngine(cfg, plan, load_ner=False)  # config errors (regexes, entities, salt) fail here, once
    if plan.warning:
        log.warning("!!! PII WARNING !!! %s", plan.warning)
    measured = measure_on_eval_set(cfg, plan, engine) if cfg.evaluate else None
    docs = inputs["dedup"].files("docs")
    out, _ = run_map_stage("pii", "tasks.pii.stage:pii_unit", docs, out_uri, cfg, ctx,
                           extra={"ner_model": plan.ner_model})
    stats = {**summarize(out.stats, plan, cfg), "precision_eval": measured}
    ctx.open_store().write_json(f"{out_uri}/report.json", pii_report(stats))
    return StageOutput(outputs={**out.outputs, "report": "report.json"}, stats=stats)


_MEASURED: dict[str, dict[str, Any]] = {}  # config digest -> its scores: they depend on nothing else


def measure_on_eval_set(cfg: PiiConfig, plan: PiiPlan, engine: PiiEngine) -> dict[str, Any]:
    """Precision and recall per entity of this config on the shipped labeled set (counts only); scored
    once per config and process."""
    key = cfg.digest()
    if key not in _MEASURED:
        _MEASURED[key] = _score_eval_set(cfg, plan, engine)
    return _MEASURED[key]


def _score_eval_set(cfg: PiiConfig, plan: PiiPlan, engine: PiiEngine) -> dict[str, Any]:
    from tasks.pii.evalset import EVAL_SET, evaluate_engine, format_table, load_eval_set

    if plan.ner_model:
        engine = get_engine(cfg)  # with the NER model; reused if units run in this process
    records = load_eval_set()
    table = evaluate_engine(engine, records, cfg.batch_size)
    log.info("pii: on the evaluation set (%d texts):\n  %s", len(records), "\n  ".join(format_table(table)))
    low = sorted(e for e, r in table.items() if r["precision"] is not None and r["precision"] < 0.9)
    if low:
        log.warning("pii: precision below 0.9 on the evaluation set for %s", ", ".join(low))
    return {"texts": len(records), "set": EVAL_SET.name, "ner_model": plan.ner_model, "per_entity": table}


def summarize(stats: dict[str, Any], plan: PiiPlan, cfg: PiiConfig) -> dict[str, Any]:
    """Move the per-entity counters into named fields and add the NER status; span counts include the
    spans found in meta, which `meta_spans` also counts alone."""
    counters = dict(stats.get("counters", {}))
    entity_counts, docs_with = _pop_group(counters, "entity/"), _pop_group(counters, "docs_with/")
    per_doc = _pop_group(counters, "spans_per_doc/")
    docs_with_pii = int(counters.pop("docs_with_pii", 0))
    per_doc = {"0": stats.get("docs_out", 0) - docs_with_pii, **per_doc}
    return {**stats, "counters": counters, "ner_enabled": plan.ner_enabled, "ner_model": plan.ner_model,
            "warning": plan.warning, "entities": list(plan.entities), "entity_counts": entity_counts,
            "docs_with_entity": docs_with, "docs_with_pii": docs_with_pii,
            "pii_spans": int(counters.pop("pii_spans", 0)), "spans_per_doc": per_doc,
            "meta_spans": int(counters.pop("meta_spans", 0)),
            "docs_with_meta_pii": int(counters.pop("docs_with_meta_pii", 0)),
            "operators": {e: cfg.operators.get(e, cfg.default_operator).type for e in plan.entities}}


def _pop_group(counters: dict[str, float], prefix: str) -> dict[str, int]:
    return {k[len(prefix):]: int(counters.pop(k)) for k in sorted(counters) if k.startswith(prefix)}


REPORT_KEYS = ("docs_in", "docs_out", "quarantined", "quarantine_reasons", "dropped", "balanced",
               "ner_enabled", "ner_model", "warning", "entities", "operators", "entity_counts",
               "docs_with_entity", "docs_with_pii", "pii_spans", "spans_per_doc", "meta_spans",
               "docs_with_meta_pii", "precision_eval")


def pii_report(stats: dict[str, Any]) -> dict[str, Any]:
    """report.json: counts and settings only, never a detected value."""
    return {"stage": "pii", **{k: stats.get(k) for k in REPORT_KEYS}}


def pii_entity_rows(stats: dict[str, Any]) -> list[dict[str, Any]]:
    """Rows for a Prefect table artifact: entity, spans replaced, documents containing it, operator."""
    entities = list(dict.fromkeys(list(stats.get("entities", [])) + list(stats.get("entity_counts", {}))))
    return [{"entity": e, "spans": stats.get("entity_counts", {}).get(e, 0),
             "documents": stats.get("docs_with_entity", {}).get(e, 0),
             "operator": stats.get("operators", {}).get(e, "replace")} for e in entities]


def pii_report_markdown(stats: dict[str, Any]) -> str:
    """A markdown artifact: the NER status (loud when off), the account and the entity table."""
    lines = ["# PII", ""]
    if stats.get("warning"):
        lines += [f"> **WARNING** {stats['warning']}", ""]
    else:
        lines += [f"NER on with `{stats.get('ner_model')}`.", ""]
    lines += [f"Documents in {stats.get('docs_in', 0)}, out {stats.get('docs_out', 0)}, quarantined "
              f"{stats.get('quarantined', 0)}; {stats.get('docs_with_pii', 0)} documents held PII "
              f"({stats.get('pii_spans', 0)} spans, {stats.get('meta_spans', 0)} of them in meta).", "",
              "| entity | spans | documents | operator |",
              "|---|---:|---:|---|"]
    lines += [f"| {r['entity']} | {r['spans']} | {r['documents']} | {r['operator']} |"
              for r in pii_entity_rows(stats)]
    lines += _eval_markdown(stats.get("precision_eval"))
    return "\n".join(lines) + "\n"


def _eval_markdown(measured: dict[str, Any] | None) -> list[str]:
    if not measured:
        return []
    title = (f"Measured on the labeled evaluation set ({measured['texts']} texts, "
             f"`tasks/pii/eval/{measured['set']}`), with this config:")
    lines = ["", title, "", "| entity | precision | recall | gold spans |", "|---|---:|---:|---:|"]
    return lines + [f"| {e} | {_ratio(r['precision'])} | {_ratio(r['recall'])} | {r['gold']} |"
                    for e, r in measured["per_entity"].items()]


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def pii_key(cfg: PiiConfig, ctx: RunContext) -> dict[str, Any]:
    """A changed hash salt changes the output, so it changes the key (as a hash: the salt never leaves)."""
    salt = os.environ.get(cfg.hash_salt_env, "")
    return {"salt": hashlib.sha256(("llmpipe-pii-key\0" + salt).encode()).hexdigest()[:16] if salt else ""}


def pii_artifacts(result: StageResult) -> list[Artifact]:
    """The entity table and the report (counts only, never values) for the Prefect UI."""
    return [Table("entities", pii_entity_rows(result.stats), "detected entities (counts only, never values)"),
            Markdown("report", pii_report_markdown(result.stats), "NER status, account and entity counts")]


STAGE = Stage(name="pii", config=PiiConfig, run=run_pii, reads=("dedup",), key_inputs=pii_key,
              artifacts=pii_artifacts,
              summary="detect personal data with presidio and anonymize it; counts only in reports")
