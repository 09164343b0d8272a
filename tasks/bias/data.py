"""The bias checks' data: loaders for CrowS-Pairs, WinoBias, Winogender, BBQ, BOLD and the shipped probes.

A loader returns Loaded (the items, and an account of the rows it could not use) or Skipped (the data is
not there, and where it looked). A file that is there but is not what it should be (wrong header, not JSON)
is a UserError naming the file. `limit` keeps a deterministic sample: whole units (a WinoBias pro/anti
pair, a Winogender sentence's gender variants) in the order of a seeded hash of their key, so a sample is
the same on every machine and a smaller limit keeps a subset of a larger one's units."""
from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tasks.core.errors import UserError

MAX_BAD_EXAMPLES = 5
MAX_DETAIL_CHARS = 80  # a bad row's offending value is shown cut to this; the row's text never is
DATA_KEY = "bias.data_dir"
PROBES_FILE = Path(__file__).with_name("probes.yaml")
BBQ_CATEGORIES = ("Age", "Disability_status", "Gender_identity", "Nationality", "Physical_appearance",
                  "Race_ethnicity", "Race_x_gender", "Race_x_SES", "Religion", "SES", "Sexual_orientation")
PRONOUNS = {
    "male": ("he", "him", "his", "himself"),
    "female": ("she", "her", "hers", "herself"),
    "neutral": ("they", "them", "their", "theirs", "themselves"),
}
ALL_PRONOUNS = frozenset(p for forms in PRONOUNS.values() for p in forms)

T = TypeVar("T")


# --- what loaders return ---------------------------------------------------------------------------------

@dataclass
class Loaded:
    """A check's items and what could not be read (counts and locations only, never a row's text)."""

    check: str
    items: list[Any]
    path: str                                                   # file(s) read, comma-separated
    bad_rows: int = 0
    bad_reasons: dict[str, int] = field(default_factory=dict)   # reason -> count
    bad_examples: list[str] = field(default_factory=list)       # first 5 "FILE:LINE: reason (field X)"
    notes: list[str] = field(default_factory=list)              # e.g. BBQ categories asked for but absent


@dataclass
class Skipped:
    """A check whose data is not there; the reason says where we looked and what to set."""

    check: str
    reason: str


@dataclass(frozen=True)
class CrowsPair:
    idx: int           # the CSV's own index column
    more: str          # sent_more: the more stereotypical sentence (lm-eval's first choice)
    less: str
    bias_type: str
    direction: str     # stereo | antistereo (column stereo_antistereo)


@dataclass(frozen=True)
class WinoBiasItem:
    idx: int
    pair: str          # shared by the pro and the anti line with the same number, e.g. "type1-test-27"
    sentence: str      # without the [brackets]
    pronoun: str       # as written: he, she, his, her, him
    referent: str      # the bracketed occupation the pronoun refers to, without its article
    other: str         # the other occupation in the sentence, as written
    stereotype: str    # pro | anti (from the file name)
    type: int          # 1 | 2


@dataclass(frozen=True)
class WinogenderItem:
    idx: int
    group: str         # the sentence id without the gender: "technician.customer.1"
    sentence: str
    pronoun: str       # as written
    occupation: str
    participant: str
    answer: int        # 0: the occupation is the referent, 1: the participant
    gender: str        # male | female | neutral
    stereotype: str | None  # pro | anti by the occupation's BLS share of women; None for neutral or 50%


@dataclass(frozen=True)
class BBQItem:
    idx: int
    category: str
    condition: str     # ambig | disambig
    polarity: str      # neg | nonneg
    context: str
    question: str
    answers: tuple[str, str, str]
    label: int
    unknown: int                 # index of the "unknown" answer
    biased: tuple[int, ...]      # indices of the answers that count as biased (Parrish et al. 2022, p. 6)


@dataclass(frozen=True)
class BoldPrompt:
    idx: int
    domain: str        # gender, race, profession, political_ideology, religious_ideology
    group: str         # e.g. American_actresses
    name: str          # the person or topic the prompt is about
    prompt: str


@dataclass(frozen=True)
class ProbeItem:
    idx: int
    set: str                              # the probe set's name in probes.yaml
    template: int                         # index of the template within its set
    fills: tuple[tuple[str, str], ...]    # (slot, value) of every slot the template uses
    context: str                          # the filled template
    a: str                                # the two continuations compared, with their leading space
    b: str
    labels: tuple[str, str]               # short names of a and b (figure names)


# --- accounting and sampling -----------------------------------------------------------------------------

class _Bad(Exception):
    """A row that cannot become an item: the counted reason, the field, a short offending value."""

    def __init__(self, reason: str, field_name: str | None = None, value: Any = None):
        super().__init__(reason)
        self.reason, self.field, self.value = reason, field_name, value


class _Account:
    """Bad rows by reason; the first few as FILE:LINE: reason (field X)."""

    def __init__(self) -> None:
        self.reasons: Counter[str] = Counter()
        self.examples: list[str] = []

    def bad(self, where: str, bad: _Bad) -> None:
        self.reasons[bad.reason] += 1
        if len(self.examples) < MAX_BAD_EXAMPLES:
            text = f"{where}: {bad.reason}"
            if bad.field:
                text += f" (field {bad.field})"
            if bad.value is not None:
                text += f": {str(bad.value)[:MAX_DETAIL_CHARS]!r}"
            self.examples.append(text)

    def loaded(self, check: str, items: list[Any], paths: Sequence[Path], notes: list[str] | None = None
               ) -> Loaded:
        return Loaded(check, items, ", ".join(map(str, paths)), sum(self.reasons.values()),
                      dict(self.reasons), list(self.examples), notes or [])


def _rank(seed: int, key: str) -> bytes:
    """A stable pseudo-random sort key (not Python's salted hash())."""
    return hashlib.blake2b(f"{seed}\x00{key}".encode(), digest_size=8).digest()


def _check_limit(limit: int | None, what: str = "limit") -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise UserError(f"bias {what} must be a whole number >= 0 (or unset for all), got {limit!r}")


def sample_units(items: list[T], limit: int | None, seed: int, unit: Callable[[T], str]) -> list[T]:
    """At most `limit` items, taking whole units (all items with the same unit key) in the order of a
    seeded hash of the key; a unit that no longer fits is passed over. Items keep their order."""
    _check_limit(limit)
    if limit is None:
        return list(items)
    units: dict[str, list[int]] = defaultdict(list)
    for pos, item in enumerate(items):
        units[unit(item)].append(pos)
    chosen: list[int] = []
    room = limit
    for key in sorted(units, key=lambda k: (_rank(seed, k), k)):
        if room == 0:
            break
        if len(units[key]) <= room:
            chosen += units[key]
            room -= len(units[key])
    return [items[pos] for pos in sorted(chosen)]


def even_quotas(sizes: dict[str, int], limit: int) -> dict[str, int]:
    """`limit` spread as evenly as the sizes allow (water-filling): a small part's spare share goes to the
    others; the remainder of an uneven split goes to the parts first in sorted order."""
    quotas = {k: 0 for k in sizes}
    open_parts = sorted(k for k, n in sizes.items() if n > 0)
    left = min(limit, sum(sizes.values()))
    while left > 0 and open_parts:
        share, extra = divmod(left, len(open_parts))
        for i, k in enumerate(list(open_parts)):
            give = min(share + (1 if i < extra else 0), sizes[k] - quotas[k])
            quotas[k] += give
            left -= give
        open_parts = [k for k in open_parts if quotas[k] < sizes[k]]
    return quotas


# --- reading files ---------------------------------------------------------------------------------------

def _missing(check: str, path: Path, sub: str) -> Skipped:
    return Skipped(check, f"{check}: no file {path}; set {DATA_KEY} to the folder holding {sub}/ "
                          "(see the bias/ section of the shared data README)")


def _text_of(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}; check that it is a file you may read") \
            from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8; re-save the file as UTF-8") from None


def _table(path: Path, delimiter: str, required: Sequence[str], what: str
           ) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The header and the (line, cells) rows of a CSV/TSV; a header without `required` is a UserError."""
    text = _text_of(path)
    quoting = csv.QUOTE_MINIMAL if delimiter == "," else csv.QUOTE_NONE
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    try:
        header = next(reader)
    except StopIteration:
        raise UserError(f"{path}: empty file; expected {what}") from None
    absent = [c for c in required if c not in header]
    if absent:
        raise UserError(f"{path}:1: the header has no column {', '.join(map(repr, absent))} (it has "
                        f"{', '.join(map(repr, header))[:200]}); expected {what}")

    def rows() -> Iterator[tuple[int, list[str]]]:
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise UserError(f"{path}:{reader.line_num}: malformed CSV ({exc}); fix the quoting there") \
                    from None
            if cells and any(c.strip() for c in cells):
                yield reader.line_num, cells

    return header, rows()


def _none_read(path: Path | str, account: _Account, what: str) -> UserError:
    if not account.reasons:
        return UserError(f"{path}: no rows; expected {what}")
    top = ", ".join(f"{r} ({n})" for r, n in account.reasons.most_common(3))
    return UserError(f"{path}: none of its rows could be read: {top}; first: {account.examples[0]}; "
                     f"is this {what}?")


# --- CrowS-Pairs -----------------------------------------------------------------------------------------

CROWS_COLUMNS = ("sent_more", "sent_less", "stereo_antistereo", "bias_type")


def load_crows_pairs(root: Path, limit: int | None = None, seed: int = 0) -> Loaded | Skipped:
    """CrowS-Pairs (Nangia et al. 2020), crows_pairs/crows_pairs_anonymized.csv: one sentence pair a row."""
    _check_limit(limit)
    path = Path(root) / "crows_pairs" / "crows_pairs_anonymized.csv"
    if not path.is_file():
        return _missing("crows_pairs", path, "crows_pairs")
    what = "the CrowS-Pairs CSV (,sent_more,sent_less,stereo_antistereo,bias_type,...)"
    header, rows = _table(path, ",", CROWS_COLUMNS, what)
    account, items, seen = _Account(), [], set()
    for line, cells in rows:
        try:
            pair = _crows_row(header, cells, len(items))
            if pair.idx in seen:
                raise _Bad("duplicate index", header[0] or "(index)", pair.idx)
        except _Bad as bad:
            account.bad(f"{path}:{line}", bad)
            continue
        seen.add(pair.idx)
        items.append(pair)
    if not items:
        raise _none_read(path, account, what)
    return account.loaded("crows_pairs", sample_units(items, limit, seed, lambda p: str(p.idx)), [path])


def _crows_row(header: list[str], cells: list[str], position: int) -> CrowsPair:
    if len(cells) != len(header):
        raise _Bad("wrong column count", None, f"{len(cells)} columns, the header has {len(header)}")
    row = dict(zip(header, cells))
    for column in CROWS_COLUMNS:
        if not row[column].strip():
            raise _Bad("missing field", column)
    direction = row["stereo_antistereo"].strip()
    if direction not in ("stereo", "antistereo"):
        raise _Bad("unknown label", "stereo_antistereo", direction)
    idx = position
    if header[0] in ("", "id", "index"):   # the file's own (unnamed) index column
        if not cells[0].strip().isdigit():
            raise _Bad("index not a whole number", header[0] or "(index)", cells[0])
        idx = int(cells[0])
    return CrowsPair(idx, row["sent_more"], row["sent_less"], row["bias_type"].strip(), direction)


# --- WinoBias --------------------------------------------------------------------------------------------

_WINOBIAS_FILE = re.compile(r"^(pro|anti)_stereotyped_type([12])\.txt\.(dev|test)$")
_NUMBERED = re.compile(r"^(\d+)\s+(\S.*)$")
_BRACKETS = re.compile(r"\[([^\[\]]*)\]")
_ARTICLE = re.compile(r"^(?:the|a|an)\s+", re.IGNORECASE)


def load_winobias(root: Path, split: str = "test", limit: int | None = None, seed: int = 0
                  ) -> Loaded | Skipped:
    """WinoBias (Zhao et al. 2018), winobias/{pro,anti}_stereotyped_type{1,2}.txt.{split}: numbered lines
    with the referent and the pronoun in [brackets]. The pro and the anti line with the same number in the
    same type are a pair: a pair with a bad line is left out whole (the partner counted as
    "partner line is bad"), and `limit` keeps pairs whole."""
    if split not in ("dev", "test"):
        raise UserError(f"winobias split must be 'dev' or 'test', got {split!r}")
    _check_limit(limit)
    folder = Path(root) / "winobias"
    paths = [folder / f"{s}_stereotyped_type{t}.txt.{split}" for t in (1, 2) for s in ("pro", "anti")]
    absent = [p for p in paths if not p.is_file()]
    if absent:
        return _missing("winobias", absent[0], "winobias")
    occupations = _winobias_occupations(folder)
    account, lines = _Account(), {}
    for path in paths:
        stereotype, kind, _ = _WINOBIAS_FILE.match(path.name).groups()
        for line, number, text in _numbered_lines(path):
            key = (int(kind), number, stereotype)
            try:
                if number is None:
                    raise _Bad("no line number")
                if key in lines:
                    raise _Bad("duplicate line number", None, number)
                lines[key] = (f"{path}:{line}", _winobias_parts(text, occupations))
            except _Bad as bad:
                account.bad(f"{path}:{line}", bad)
    items: list[WinoBiasItem] = []
    for (kind, number, stereotype), (where, parts) in sorted(lines.items()):
        partner = "anti" if stereotype == "pro" else "pro"
        if (kind, number, partner) not in lines:
            account.bad(where, _Bad("partner line is bad"))
            continue
        sentence, pronoun, referent, other = parts
        items.append(WinoBiasItem(len(items), f"type{kind}-{split}-{number}", sentence, pronoun, referent,
                                  other, stereotype, kind))
    return account.loaded("winobias", sample_units(items, limit, seed, lambda it: it.pair), paths)


def _numbered_lines(path: Path) -> Iterator[tuple[int, int | None, str]]:
    """(line, number or None when it has none, text) of a WinoBias file's non-blank lines; a file where no
    line is numbered is a UserError."""
    good = 0
    for line, raw in enumerate(_text_of(path).splitlines(), start=1):
        if not raw.strip():
            continue
        m = _NUMBERED.match(raw.strip())
        if m is None:
            yield line, None, raw
            continue
        good += 1
        yield line, int(m.group(1)), m.group(2)
    if not good:
        raise UserError(f"{path}: no numbered lines ('1 The [developer] argued with ...'); is this a "
                        "WinoBias file?")


def _winobias_occupations(folder: Path) -> list[str]:
    """Every occupation bracketed anywhere in the folder's WinoBias files (lowercase, no article), longest
    first so that "construction worker" is matched before "worker"."""
    found: set[str] = set()
    for path in sorted(folder.iterdir()):
        if not _WINOBIAS_FILE.match(path.name):
            continue
        for span in _BRACKETS.findall(_text_of(path)):
            word = _ARTICLE.sub("", span.strip()).lower()
            if word and word not in ALL_PRONOUNS:
                found.add(word)
    return sorted(found, key=lambda w: (-len(w), w))


def _winobias_parts(text: str, occupations: list[str]) -> tuple[str, str, str, str]:
    """(sentence, pronoun, referent, other) of one line's text."""
    if text.count("[") != text.count("]"):
        raise _Bad("unbalanced brackets")
    sentence, spans, pos = "", [], 0
    for m in _BRACKETS.finditer(text):   # drop the brackets, remembering where each span lands
        sentence += text[pos:m.start()]
        inner = m.group(1).strip()
        spans.append((inner, len(sentence), len(sentence) + len(inner)))
        sentence += inner
        pos = m.end()
    sentence += text[pos:]
    referent = next((s for s in spans if s[0].lower() not in ALL_PRONOUNS), None)
    if referent is None:
        raise _Bad("no bracketed occupation")
    pronoun = next((s[0] for s in spans if s[0].lower() in ALL_PRONOUNS), None)
    if pronoun is None:
        raise _Bad("no pronoun found")
    article = _ARTICLE.match(referent[0])
    ref_word, ref_start = referent[0][article.end() if article else 0:], referent[1]
    other = _other_occupation(sentence, occupations, (ref_start, referent[2]))
    if other is None:
        raise _Bad("no other occupation")
    return _tidy(sentence), pronoun, ref_word, other


def _other_occupation(sentence: str, occupations: list[str], referent: tuple[int, int]) -> str | None:
    """The first occupation after an article that is not the referent's span, as written."""
    pattern = r"\b(?:the|a|an)\s+(" + "|".join(re.escape(o) for o in occupations) + r")\b"
    for m in re.finditer(pattern, sentence, re.IGNORECASE):
        if m.end(1) <= referent[0] or m.start(1) >= referent[1]:
            return m.group(1)
    return None


def _tidy(sentence: str) -> str:
    """Single spaces, and the source's tokenized possessive ("housekeeper 's car") joined up."""
    return re.sub(r"\s+('s)\b", r"\1", " ".join(sentence.split()))


# --- Winogender ------------------------------------------------------------------------------------------

def load_winogender(root: Path, limit: int | None = None, seed: int = 0) -> Loaded | Skipped:
    """Winogender schemas (Rudinger et al. 2018), winogender/all_sentences.tsv (sentid =
    occupation.participant.answer.gender.txt) and occupations-stats.tsv (bls_pct_female). `limit` keeps
    the male, female and neutral variants of a sentence together."""
    _check_limit(limit)
    folder = Path(root) / "winogender"
    sentences, stats = folder / "all_sentences.tsv", folder / "occupations-stats.tsv"
    for path in (sentences, stats):
        if not path.is_file():
            return _missing("winogender", path, "winogender")
    account = _Account()
    pct_female = _winogender_stats(stats, account)
    what = "the Winogender all_sentences.tsv (sentid, sentence)"
    header, rows = _table(sentences, "\t", ("sentid", "sentence"), what)
    items: list[WinogenderItem] = []
    for line, cells in rows:
        try:
            items.append(_winogender_row(header, cells, len(items), pct_female))
        except _Bad as bad:
            account.bad(f"{sentences}:{line}", bad)
    if not items:
        raise _none_read(sentences, account, what)
    return account.loaded("winogender", sample_units(items, limit, seed, lambda it: it.group),
                          [sentences, stats])


def _winogender_stats(path: Path, account: _Account) -> dict[str, float]:
    what = "the Winogender occupations-stats.tsv (occupation, bls_pct_female, ...)"
    header, rows = _table(path, "\t", ("occupation", "bls_pct_female"), what)
    out: dict[str, float] = {}
    for line, cells in rows:
        row = dict(zip(header, cells))
        try:
            out[row["occupation"].strip()] = float(row.get("bls_pct_female", ""))
        except ValueError:
            account.bad(f"{path}:{line}", _Bad("not a number", "bls_pct_female", row.get("bls_pct_female")))
    return out


def _winogender_row(header: list[str], cells: list[str], idx: int, pct_female: dict[str, float]
                    ) -> WinogenderItem:
    if len(cells) != len(header):
        raise _Bad("wrong column count", None, f"{len(cells)} columns, the header has {len(header)}")
    row = dict(zip(header, cells))
    parts = row["sentid"].strip().split(".")
    if len(parts) != 5 or parts[4] != "txt" or not all(parts[:4]):
        raise _Bad("malformed sentid", "sentid", row["sentid"])
    occupation, participant, answer, gender = parts[:4]
    if answer not in ("0", "1"):
        raise _Bad("unknown label", "sentid", answer)
    if gender not in PRONOUNS:
        raise _Bad("unknown gender", "sentid", gender)
    sentence = row["sentence"].strip()
    if not sentence:
        raise _Bad("missing field", "sentence")
    m = re.search(r"\b(" + "|".join(PRONOUNS[gender]) + r")\b", sentence, re.IGNORECASE)
    if m is None:
        raise _Bad("no pronoun found", "sentence")
    stereotype = None
    share = pct_female.get(occupation)
    if gender != "neutral" and share is not None and share != 50:
        majority = "female" if share > 50 else "male"
        stereotype = "pro" if gender == majority else "anti"
    return WinogenderItem(idx, f"{occupation}.{participant}.{answer}", sentence, m.group(1), occupation,
                          participant, int(answer), gender, stereotype)


# --- BBQ -------------------------------------------------------------------------------------------------

def load_bbq(root: Path, limit: int | None = None, seed: int = 0, categories: list[str] | None = None
             ) -> Loaded | Skipped:
    """BBQ (Parrish et al. 2022), bbq/<Category>.jsonl. categories None: every file there. A category asked
    for but absent is named in `notes`; none there is Skipped. `limit` spreads the sample evenly over the
    categories present."""
    _check_limit(limit)
    folder = Path(root) / "bbq"
    names = categories if categories is not None else sorted(p.stem for p in folder.glob("*.jsonl"))
    present = [c for c in names if (folder / f"{c}.jsonl").is_file()]
    if not present:
        shown = ", ".join(names) if names else "any <Category>.jsonl"
        return Skipped("bbq", f"bbq: no file for {shown} in {folder}; set {DATA_KEY} to the folder holding "
                              "bbq/ (see the bias/ section of the shared data README)")
    absent = [c for c in names if c not in present]
    notes = [f"bbq: no file for {', '.join(absent)} in {folder}: not scored"] if absent else []
    account, by_category = _Account(), {}
    for category in present:
        by_category[category] = _bbq_file(folder / f"{category}.jsonl", account)
    items, offset = [], 0
    for category in present:   # idx over all categories, before sampling, so a sample keeps its items' idx
        items += [BBQItem(offset + i, *fields) for i, fields in enumerate(by_category[category])]
        offset += len(by_category[category])
    if limit is not None:
        groups: dict[str, list[BBQItem]] = defaultdict(list)
        for item in items:
            groups[item.category].append(item)
        quotas = even_quotas({c: len(g) for c, g in groups.items()}, limit)
        kept = [it for c, g in groups.items()
                for it in sample_units(g, quotas[c], seed, lambda it: f"{it.category}/{it.idx}")]
        items = sorted(kept, key=lambda it: it.idx)
    paths = [folder / f"{c}.jsonl" for c in present]
    return account.loaded("bbq", items, paths, notes)


def _bbq_file(path: Path, account: _Account) -> list[tuple]:
    """The BBQItem fields (all but idx) of every good row of one file."""
    out, parsed = [], 0
    for line, raw in enumerate(_text_of(path).splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw)
        except json.JSONDecodeError:
            account.bad(f"{path}:{line}", _Bad("not JSON"))
            continue
        parsed += 1
        try:
            out.append(_bbq_row(row))
        except _Bad as bad:
            account.bad(f"{path}:{line}", bad)
    if not parsed:
        raise UserError(f"{path}: no line is JSON; expected BBQ JSON lines (one example object a line)")
    return out


def _need(row: dict, key: str, kind: type) -> Any:
    value = row.get(key)
    empty = isinstance(value, str) and not value.strip()
    if not isinstance(value, kind) or isinstance(value, bool) or empty:
        raise _Bad("missing field", key)
    return value


def _bbq_row(row: Any) -> tuple:
    if not isinstance(row, dict):
        raise _Bad("not a JSON object", None, type(row).__name__)
    category = _need(row, "category", str)
    context, question = _need(row, "context", str), _need(row, "question", str)
    answers = tuple(_need(row, f"ans{k}", str) for k in range(3))
    label = _need(row, "label", int)
    if label not in (0, 1, 2):
        raise _Bad("unknown label", "label", label)
    condition, polarity = _need(row, "context_condition", str), _need(row, "question_polarity", str)
    if condition not in ("ambig", "disambig"):
        raise _Bad("unknown label", "context_condition", condition)
    if polarity not in ("neg", "nonneg"):
        raise _Bad("unknown label", "question_polarity", polarity)
    info = _need(row, "answer_info", dict)
    stereotyped = _need(row, "additional_metadata", dict).get("stereotyped_groups")
    if not isinstance(stereotyped, list) or not all(isinstance(g, str) for g in stereotyped):
        raise _Bad("missing field", "additional_metadata.stereotyped_groups")
    groups = []
    for k in range(3):
        labels = info.get(f"ans{k}")
        if not isinstance(labels, list) or not labels or not all(isinstance(x, str) and x for x in labels):
            raise _Bad("missing field", f"answer_info.ans{k}")
        groups.append(labels)
    unknown = [k for k in range(3) if groups[k][-1] == "unknown"]
    if len(unknown) != 1:
        raise _Bad("no unknown answer" if not unknown else "several unknown answers", "answer_info")
    biased = bbq_biased(groups, stereotyped, polarity, unknown[0])
    return category, condition, polarity, context, question, answers, label, unknown[0], biased


def answer_groups(labels: Sequence[str]) -> set[str]:
    """The groups one BBQ answer stands for, lowercased, normalized as lm-eval's bbq/utils.py does it so
    that they can be looked up in stereotyped_groups: an intersectional label is split ("F-Black" -> f,
    black; "lowSES-Asian" -> low ses, asian), "nonObese" is "non obese" (never "obese"), and a gendered
    word (woman, girl / man, boy) also stands for F / M. Unlike lm-eval, gendered words are matched as
    whole words ("German" is not "man"), and the label itself is kept too ("f-black")."""
    out: set[str] = set()
    for label in labels:
        out.add(label.lower())
        m = re.match(r"^(M|F|lowSES|highSES)-(.+)$", label)
        parts = [m.group(1), m.group(2)] if m else [label]
        for part in parts:
            part = part.replace("lowSES", "low SES").replace("highSES", "high SES")
            part = re.sub(r"^non([A-Z])", r"non \1", part)
            out.add(part.lower())
        if re.search(r"\b(?:woman|girl)\b", label, re.IGNORECASE):
            out.add("f")
        elif re.search(r"\b(?:man|boy)\b", label, re.IGNORECASE):
            out.add("m")
    return out


def bbq_biased(answer_info: Sequence[Sequence[str]], stereotyped: Sequence[str], polarity: str,
               unknown: int) -> tuple[int, ...]:
    """Indices of the biased answers (Parrish et al. 2022, p. 6; lm-eval bbq process_docs): for a negative
    question the answers about a stereotyped group, for a non-negative one the non-unknown answers about
    no stereotyped group."""
    targets = {g.lower() for g in stereotyped}
    about = [bool(answer_groups(info) & targets) for info in answer_info]
    if polarity == "neg":
        return tuple(k for k in range(len(about)) if about[k])
    return tuple(k for k in range(len(about)) if k != unknown and not about[k])


# --- BOLD ------------------------------------------------------------------------------------------------

def load_bold(root: Path, per_group: int, seed: int = 0, domains: list[str] | None = None
              ) -> Loaded | Skipped:
    """BOLD prompts (Dhamala et al. 2021), bold/prompts/<domain>_prompt.json = {group: {name: [prompt]}}:
    `per_group` prompts per (domain, group), a seeded sample. A domain asked for but absent is named in
    `notes`; none there is Skipped."""
    if isinstance(per_group, bool) or not isinstance(per_group, int) or per_group < 1:
        raise UserError(f"bias BOLD per_group must be a whole number >= 1, got {per_group!r}")
    folder = Path(root) / "bold" / "prompts"
    names = domains if domains is not None else sorted(p.name.removesuffix("_prompt.json")
                                                       for p in folder.glob("*_prompt.json"))
    present = [d for d in names if (folder / f"{d}_prompt.json").is_file()]
    if not present:
        shown = ", ".join(names) if names else "any <domain>_prompt.json"
        return Skipped("bold", f"bold: no prompt file for {shown} in {folder}; set {DATA_KEY} to the folder "
                               "holding bold/prompts/ (see the bias/ section of the shared data README)")
    absent = [d for d in names if d not in present]
    notes = [f"bold: no prompt file for {', '.join(absent)} in {folder}: not scored"] if absent else []
    account, items = _Account(), []
    for domain in present:
        for group, prompts in _bold_file(folder / f"{domain}_prompt.json", domain, account).items():
            keyed = [(f"{domain}/{group}/{name}/{i}", name, p) for i, (name, p) in enumerate(prompts)]
            for key, name, prompt in sample_units(keyed, per_group, seed, lambda k: k[0]):
                items.append(BoldPrompt(len(items), domain, group, name, prompt))
    paths = [folder / f"{d}_prompt.json" for d in present]
    return account.loaded("bold", items, paths, notes)


def _bold_file(path: Path, domain: str, account: _Account) -> dict[str, list[tuple[str, str]]]:
    """{group: [(name, prompt)]} in file order; a bad entry is counted under its group and position."""
    try:
        data = json.loads(_text_of(path))
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}: not JSON ({exc.msg}); expected BOLD prompts "
                        "{group: {name: [prompt, ...]}}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level is a JSON {type(data).__name__}, not an object; expected "
                        "BOLD prompts {group: {name: [prompt, ...]}}")
    out: dict[str, list[tuple[str, str]]] = {}
    for group, people in data.items():
        where = f"{path}:{group}"
        if not isinstance(people, dict):
            account.bad(where, _Bad("group is not an object", group))
            continue
        out[group] = []
        for k, (name, prompts) in enumerate(people.items()):
            if not isinstance(prompts, list):
                account.bad(f"{where}/#{k}", _Bad("prompts are not a list", group))
                continue
            for i, prompt in enumerate(prompts):
                if isinstance(prompt, str) and prompt.strip():
                    out[group].append((name, prompt))
                else:
                    account.bad(f"{where}/#{k}[{i}]", _Bad("empty or non-text prompt", group))
    return out


# --- probes ----------------------------------------------------------------------------------------------

_SLOT = re.compile(r"\{(\w+)\}")


class ProbeSet(BaseModel):
    """One probe set of probes.yaml: templates whose {slots} are filled from `fillers`, each filled
    template scored with the two alternatives as continuations."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    description: str = Field(min_length=1)
    alternatives: tuple[str, str]              # A, B: continuations with their leading space
    labels: tuple[str, str]                    # short names of A and B, used in figure names
    templates: list[str] = Field(min_length=1)
    fillers: dict[str, list[str]]

    @model_validator(mode="after")
    def _consistent(self) -> ProbeSet:
        a, b = self.alternatives
        if not a.strip() or not b.strip() or a == b:
            raise ValueError("alternatives must be two different non-empty continuations")
        if not all(re.fullmatch(r"\w+", x) for x in self.labels) or self.labels[0] == self.labels[1]:
            raise ValueError("labels must be two different words (letters, digits, _)")
        used: set[str] = set()
        for i, template in enumerate(self.templates):
            slots = set(_SLOT.findall(template))
            if not slots:
                raise ValueError(f"templates[{i}] has no {{slot}}")
            if template != template.rstrip():
                raise ValueError(f"templates[{i}] ends with whitespace; the alternatives carry the space")
            unknown = slots - set(self.fillers)
            if unknown:
                raise ValueError(f"templates[{i}] uses {sorted(unknown)}, which fillers does not define")
            used |= slots
        for slot, values in self.fillers.items():
            if slot not in used:
                raise ValueError(f"fillers.{slot} is used by no template")
            if not values or len(set(values)) != len(values) or not all(v.strip() for v in values):
                raise ValueError(f"fillers.{slot} must be a non-empty list of different values")
        return self


class ProbesFile(BaseModel):
    """probes.yaml: probe sets by name."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    sets: dict[str, ProbeSet] = Field(min_length=1)


def read_probes(path: Path | None = None) -> ProbesFile:
    """The validated probes file; a problem is a UserError naming the file and the key."""
    path = Path(path) if path is not None else PROBES_FILE
    try:
        raw = yaml.safe_load(_text_of(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{line}: not YAML ({getattr(exc, 'problem', exc)})") from None
    try:
        return ProbesFile.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        raise UserError(f"{path}: {key}: {err['msg'].removeprefix('Value error, ')}"
                        f"{f' ({len(exc.errors())} problems in all)' if len(exc.errors()) > 1 else ''}") \
            from None


def load_probes(path: Path | None = None, sets: list[str] | None = None) -> Loaded | Skipped:
    """Every filled template of the probe sets (all, or `sets`) of probes.yaml (None: the shipped one)."""
    file = PROBES_FILE if path is None else Path(path)
    if not file.is_file():
        return Skipped("probes", f"probes: no file {file}; give a probes YAML file, or none for the shipped "
                                 "one")
    spec = read_probes(file)
    names = list(spec.sets) if sets is None else sets
    unknown = [s for s in names if s not in spec.sets]
    if unknown:
        raise UserError(f"{file}: no probe set {', '.join(map(repr, unknown))}; it has "
                        f"{', '.join(spec.sets)}")
    items: list[ProbeItem] = []
    for name in names:
        probe = spec.sets[name]
        for t, template in enumerate(probe.templates):
            slots = list(dict.fromkeys(_SLOT.findall(template)))
            for values in itertools.product(*(probe.fillers[s] for s in slots)):
                fills = tuple(zip(slots, values))
                context = _SLOT.sub(lambda m, f=dict(fills): f[m.group(1)], template)
                items.append(ProbeItem(len(items), name, t, fills, context, *probe.alternatives,
                                       probe.labels))
    return Loaded("probes", items, str(file))

