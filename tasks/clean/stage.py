"""The clean stage: normalize text, strip markup, split long documents into passages, drop low-quality ones.

Per document, in this order (each step sees the output of the one before):

1. markup stripping (optional, `markup`): HTML first (comments, script/style, tags, entities), then
   markdown (fenced code kept or dropped, headings markers, rules, quotes, images dropped, links to
   their text, emphasis, inline code). It runs before whitespace normalization so the blank lines and
   trailing spaces it leaves behind are cleaned up by step 3.
2. Unicode NFC (`nfc`), after markup so that decoded HTML entities are composed too.
3. line normalization, always: every line break (CRLF, CR, VT, FF, NEL, U+2028/9) becomes LF; C0/C1
   control characters and invisible format characters (BOM, zero-width space, soft hyphen, word
   joiner, bidi overrides) are removed; tabs and Unicode spaces inside a line become ASCII spaces and
   runs of them collapse to one, while leading indentation is kept as it is (code in documentation
   depends on it); trailing whitespace goes; runs of blank lines collapse to
   one blank line; leading and trailing blank lines go. A document left empty is dropped as `empty`.
4. chunking (optional, `chunk`): paragraphs are packed greedily into passages of about
   `target_chars`; a paragraph longer than `max_chars` is cut at sentence ends (else at whitespace,
   else hard) into pieces of at most `target_chars`; a short last passage joins the one before when
   both fit in `max_chars`. Every passage is at most `max_chars` long.
5. quality filters, per passage (or per document when chunking is off), cheapest first; the first
   that fails names the drop reason: word_count (`too_few_words`, `too_many_words`),
   `mean_word_length`, `symbol_ratio`, `stop_words` (`no_stop_words`), `line_punctuation`,
   `repeated_lines`, `repeated_ngrams`.

The account counts input documents: a document is kept (`docs_out`) when at least one of its passages
passes, and its passing passages are written as rows (`rows_out`); it is dropped only when every
passage fails, under the most common of its passages' reasons (the first seen on ties). Passages
dropped from kept documents appear only in counters: `chunks_in == chunks_kept + sum(chunks_dropped.*)`.
A record that cannot be processed (no id, text not a string, meta that is not a JSON object when
pieces need it, an unexpected error while cleaning) is quarantined with its reason and id.
"""
from __future__ import annotations

import html
import json
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from itertools import accumulate, compress, islice
from operator import mul, ne
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from tasks.core.config import StageConfig
from tasks.core.mapstage import UnitWriter, iter_unit_docs, run_map_stage
from tasks.core.stage import Inputs, RunContext, Stage, StageOutput
from tasks.core.units import UnitResult, WorkUnit

# --- config ------------------------------------------------------------------------------------------------


class MarkupConfig(StageConfig):
    """Markup stripping; off by default because it is lossy on text that is not markup (e.g. `a * b * c`)."""

    markdown: bool = False
    html: bool = False
    code_blocks: Literal["keep", "drop"] = "keep"  # fenced code: keep the code (not the fences) or drop it


class ChunkConfig(StageConfig):
    """Split documents into passages: books are long, and dedup and PII work better on passages."""

    enabled: bool = True
    target_chars: int = Field(4000, ge=100)
    max_chars: int = Field(8000, ge=100)

    @model_validator(mode="after")
    def _target_within_max(self) -> ChunkConfig:
        if self.target_chars > self.max_chars:
            raise ValueError(f"chunk.target_chars ({self.target_chars}) must not exceed chunk.max_chars "
                             f"({self.max_chars}); raise max_chars or lower target_chars")
        return self


class WordCountConfig(StageConfig):
    """Gopher keeps 50..100,000 words; 20 keeps the one-paragraph module docstrings of the demo corpus."""

    enabled: bool = True
    min_words: int = Field(20, ge=0)
    max_words: int = Field(100_000, ge=1)


class MeanWordLengthConfig(StageConfig):
    """Mean length of whitespace-separated words (punctuation attached), Gopher's 3..10 characters."""

    enabled: bool = True
    min_length: float = Field(3.0, ge=0)
    max_length: float = Field(10.0, gt=0)


class SymbolRatioConfig(StageConfig):
    """Occurrences of any one symbol per word (Gopher: '#' or ellipsis over 0.1 marks lists and teasers)."""

    enabled: bool = True
    max_ratio: float = Field(0.1, gt=0)
    symbols: tuple[str, ...] = ("#", "...", "…")


class StopWordsConfig(StageConfig):
    """Gopher: real English prose uses at least two of these words (counted with repeats, any case)."""

    enabled: bool = True
    min_count: int = Field(2, ge=0)
    words: tuple[str, ...] = ("the", "be", "to", "of", "and", "that", "have", "with")


class LinePunctuationConfig(StageConfig):
    """Fraction of non-empty lines ending in terminal punctuation (FineWeb's 0.12): catches menus and lists.

    ':' counts because documentation introduces code with it; hard-wrapped text has most lines
    ending mid-sentence, which is why the threshold is low.
    """

    enabled: bool = True
    min_fraction: float = Field(0.12, ge=0, le=1)
    endings: tuple[str, ...] = (".", "!", "?", "…", ":", '"', "'", "”", "’", "»", "。", "！", "？")


class RepeatedLinesConfig(StageConfig):
    """Gopher's duplicate lines and paragraphs: share of repeats (after their first) by count and by chars.

    Only lines and paragraphs of at least `min_chars` characters with a letter or digit are compared:
    speaker names in plays ("Nora."), "Returns:" in docstrings and table borders repeat by design.
    Counting every line (min_chars=0) drops 328 of the books corpus's 91k passages: 2 plays whole and
    most of 7 others; with 30 it drops 8.
    """

    enabled: bool = True
    min_chars: int = Field(30, ge=0)
    max_dup_line_fraction: float = Field(0.3, ge=0, le=1)
    max_dup_line_char_fraction: float = Field(0.2, ge=0, le=1)
    max_dup_paragraph_fraction: float = Field(0.3, ge=0, le=1)
    max_dup_paragraph_char_fraction: float = Field(0.2, ge=0, le=1)


class RepeatedNgramsConfig(StageConfig):
    """Gopher's n-gram repetition, measured in word characters (whitespace excluded).

    top: chars of the most frequent n-gram times its count (when it repeats); dup: chars of the words
    covered by a later occurrence of an n-gram seen before. The dup thresholds are Gopher's shape
    (0.15 at n=5 down to 0.10 at n=10) loosened by 0.15: technical documentation repeats phrases by
    nature ("Return True if ..."), and Gopher's values drop ~10% of Python documentation passages,
    while book passages sit below 0.04 (99th percentile) and text that repeats itself lies above 0.5.
    """

    enabled: bool = True
    top_ngram_max_char_fraction: dict[int, float] = Field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    dup_ngram_max_char_fraction: dict[int, float] = Field(
        default_factory=lambda: {5: 0.30, 6: 0.29, 7: 0.28, 8: 0.27, 9: 0.26, 10: 0.25})

    @field_validator("top_ngram_max_char_fraction", "dup_ngram_max_char_fraction")
    @classmethod
    def _valid_thresholds(cls, value: dict[int, float]) -> dict[int, float]:
        for n, frac in value.items():
            if n < 1 or not 0 <= frac <= 1:
                raise ValueError(f"n-gram sizes must be >= 1 and fractions in [0, 1]; got {n}: {frac}")
        return dict(sorted(value.items()))


class CleanConfig(StageConfig):
    """The `clean:` section of pipelines.yaml. Every filter has `enabled` and its thresholds."""

    nfc: bool = True
    markup: MarkupConfig = MarkupConfig()
    chunk: ChunkConfig = ChunkConfig()
    word_count: WordCountConfig = WordCountConfig()
    mean_word_length: MeanWordLengthConfig = MeanWordLengthConfig()
    symbol_ratio: SymbolRatioConfig = SymbolRatioConfig()
    stop_words: StopWordsConfig = StopWordsConfig()
    line_punctuation: LinePunctuationConfig = LinePunctuationConfig()
    repeated_lines: RepeatedLinesConfig = RepeatedLinesConfig()
    repeated_ngrams: RepeatedNgramsConfig = RepeatedNgramsConfig()


# --- markup stripping --------------------------------------------------------------------------------------

_HTML_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
_HTML_SCRIPT = re.compile(r"<(script|style)\b[^>]*>.*?</\1\s*>", re.DOTALL | re.IGNORECASE)
_HTML_BLOCK_TAG = re.compile(
    r"</?(?:p|div|br|hr|h[1-6]|li|ul|ol|dl|dt|dd|tr|table|blockquote|pre|section|article|header|footer)\b[^<>]*>",
    re.IGNORECASE)
_HTML_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9:-]*(?:\s[^<>]*)?/?>")  # needs a tag name: `a < b > c` survives

_MD_FENCE = re.compile(r"^[ \t]{0,3}(`{3,}|~{3,})[^\n]*\n(.*?)(?:^[ \t]{0,3}\1[`~]*[ \t]*$|\Z)",
                       re.MULTILINE | re.DOTALL)  # an unclosed fence runs to the end, as in CommonMark
_MD_INLINE_CODE = re.compile(r"(?<!`)(`+)(?!`)(.+?)(?<!`)\1(?!`)")
_MD_RULES = [  # (substrings one of which must occur for the pattern to be tried, pattern, replacement)
    (("---", "***", "===", "___", "- -", "* *", "_ _"),  # thematic breaks and setext underlines; headings
     re.compile(r"^[ \t]{0,3}([-*_=])[ \t]*(?:\1[ \t]*){2,}$", re.MULTILINE), ""),
    (("#",), re.compile(r"^[ \t]{0,3}#{1,6}(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$", re.MULTILINE), r"\1"),
    ((">",), re.compile(r"^[ \t]{0,3}(?:>[ \t]?)+", re.MULTILINE), ""),  # blockquote markers
    (("]:",), re.compile(r"^[ \t]{0,3}\[[^\]\n]+\]:[ \t]*\S+.*$", re.MULTILINE), ""),  # link definitions
    (("![",), re.compile(r"!\[[^\]\n]*\](?:\([^)\n]*\)|\[[^\]\n]*\])"), ""),  # images
    (("](", "]["), re.compile(r"\[([^\]\n]+)\](?:\([^)\n]*\)|\[[^\]\n]*\])"), r"\1"),  # links -> their text
    (("://",), re.compile(r"<((?:https?|ftp)://[^>\s]+)>"), r"\1"),  # autolinks
    # strong, then emphasis; `__init__`, `a_b_c` and `\\*` are left alone (identifiers, escapes). Each
    # pattern opens with its marker and looks behind it afterwards: a leading lookbehind would make
    # the regex engine try every position (8x slower on books).
    (("**",), re.compile(r"\*\*(?<![\w*\\]\*\*)(?![\s*])(.+?)(?<![\s*\\])\*\*(?![\w*])"), r"\1"),
    (("__",), re.compile(r"__(?<![\w\\]__)(?![\s_])(?!\w+__(?!\w))(.+?)(?<![\s_\\])__(?!\w)"), r"\1"),
    (("*",), re.compile(r"\*(?<![\w*\\]\*)(?![\s*])(.+?)(?<![\s*\\])\*(?![\w*])"), r"\1"),
    (("_",), re.compile(r"_(?<![\w\\]_)(?![\s_])(.+?)(?<![\s_\\])_(?!\w)"), r"\1"),
    (("\\",), re.compile(r"\\([!-/:-@\[-`{-~])"), r"\1"),  # backslash escapes of ASCII punctuation
]


def strip_html(text: str) -> str:
    """Drop comments, scripts, styles and tags (block tags become line breaks); decode entities."""
    if "<" in text:
        text = _HTML_COMMENT.sub("", text)
        text = _HTML_SCRIPT.sub("", text)
        text = _HTML_BLOCK_TAG.sub("\n", text)
        text = _HTML_TAG.sub("", text)
    if "&" in text:
        text = html.unescape(text)
    return text


def strip_markdown(text: str, code_blocks: str = "keep") -> str:
    """Markdown to plain text; fenced and inline code is kept verbatim (or fenced code dropped)."""
    parts, pos = [], 0
    for m in _MD_FENCE.finditer(text):
        parts.append(_strip_markdown_prose(text[pos:m.start()]))
        if code_blocks == "keep":
            parts.append(m.group(2))
        pos = m.end()
    parts.append(_strip_markdown_prose(text[pos:]))
    return "".join(parts)


def _strip_markdown_prose(text: str) -> str:
    if "`" not in text:
        return _apply_md_rules(text)
    parts, pos = [], 0
    for m in _MD_INLINE_CODE.finditer(text):
        parts.append(_apply_md_rules(text[pos:m.start()]))
        parts.append(m.group(2).strip())
        pos = m.end()
    parts.append(_apply_md_rules(text[pos:]))
    return "".join(parts)


def _apply_md_rules(text: str) -> str:
    for hints, pattern, replacement in _MD_RULES:
        if any(hint in text for hint in hints):  # substring search is ~20x faster than a line-anchored regex
            text = pattern.sub(replacement, text)
    return text


def strip_markup(text: str, cfg: MarkupConfig) -> str:
    if not (cfg.html or cfg.markdown):
        return text
    if "\r" in text:  # the line-anchored patterns need LF line ends
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if cfg.html:
        text = strip_html(text)
    if cfg.markdown:
        text = strip_markdown(text, cfg.code_blocks)
    return text


# --- normalization -----------------------------------------------------------------------------------------

# C0/C1 controls (TAB and the line breaks are handled by split()/splitlines()) and invisible format
# characters; ZWJ/ZWNJ stay, as some scripts and emoji sequences need them.
_INVISIBLE = re.compile(
    "[\x00-\x08\x0e-\x1f\x7f-\x9f\u00ad\u180e\u200b\u2060\ufeff\u202a-\u202e\u2066-\u2069]")


def normalize_text(text: str, nfc: bool = True) -> str:
    """NFC, LF line ends, no control/invisible characters, single spaces, at most one blank line."""
    if nfc and not unicodedata.is_normalized("NFC", text):
        text = unicodedata.normalize("NFC", text)
    out: list[str] = []
    blank = True  # so leading blank lines are dropped
    for line in text.splitlines():  # splits on CRLF, CR, LF, VT, FF, FS/GS/RS, NEL, U+2028/9
        line = _normalize_line(line)
        if line:
            out.append(line)
            blank = False
        elif not blank:
            out.append("")
            blank = True
    if blank and out:
        out.pop()
    return "\n".join(out)


def _normalize_line(line: str) -> str:
    line = line.rstrip()
    # Fast path, most lines: printable means no controls, tabs, Unicode spaces or format characters.
    if line.isprintable():
        if "  " not in line:
            return line
    else:
        line = _INVISIBLE.sub("", line).rstrip()
    body = line.lstrip(" \t")
    if not body:
        return ""
    return line[:len(line) - len(body)] + " ".join(body.split())


def clean_text(text: str, cfg: CleanConfig) -> str:
    """Steps 1-3 of the module docstring: markup, NFC, line normalization."""
    return normalize_text(strip_markup(text, cfg.markup), cfg.nfc)


# --- chunking ----------------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"([.!?…。！？][\"'”’»)\]]*)(\s+)")
_WHITESPACE = re.compile(r"\s+")


def split_passages(text: str, target_chars: int, max_chars: int) -> list[str]:
    """Pack paragraphs into passages of about `target_chars`, none longer than `max_chars`.

    Joining the passages loses nothing but whitespace: paragraphs are never reordered or dropped.
    """
    if len(text) <= target_chars:
        return [text]
    chunks: list[tuple[str, str]] = []  # (joiner before it, passage)
    parts: list[str] = []
    size, first_joiner = 0, "\n\n"
    for joiner, unit in _chunk_units(text, target_chars, max_chars):
        if parts and size + len(joiner) + len(unit) <= target_chars:
            parts += [joiner, unit]
            size += len(joiner) + len(unit)
            continue
        if parts:
            chunks.append((first_joiner, "".join(parts)))
        parts, size, first_joiner = [unit], len(unit), joiner
    chunks.append((first_joiner, "".join(parts)))
    if len(chunks) > 1:  # a short tail joins its neighbour when both fit
        (_, prev), (joiner, last) = chunks[-2], chunks[-1]
        if len(last) < target_chars // 4 and len(prev) + len(joiner) + len(last) <= max_chars:
            chunks[-2:] = [(chunks[-2][0], prev + joiner + last)]
    return [passage for _, passage in chunks]


def _chunk_units(text: str, target_chars: int, max_chars: int) -> Iterator[tuple[str, str]]:
    """Paragraphs, with over-long ones cut into pieces of at most `target_chars`."""
    for para in text.split("\n\n"):  # not stripped: the first line's indentation may be code's
        if not para.strip():
            continue
        if len(para) <= max_chars:
            yield "\n\n", para
            continue
        for k, piece in enumerate(_split_long(para, target_chars)):
            yield ("\n\n" if k == 0 else " "), piece


def _split_long(para: str, limit: int) -> Iterator[str]:
    start, n = 0, len(para)
    while n - start > limit:
        window = para[start:start + limit + 1]  # +1: whitespace right after `limit` chars is a boundary too
        end, resume = _last_boundary(window, limit)
        yield para[start:start + end]
        start += resume
        while start < n and para[start].isspace():
            start += 1
    if start < n:
        yield para[start:]


def _last_boundary(window: str, limit: int) -> tuple[int, int]:
    """(end of this piece, start of the next): the last sentence end, else whitespace, else a hard cut."""
    ends = list(_SENTENCE_END.finditer(window))
    if ends:
        return ends[-1].end(1), ends[-1].end(2)
    spaces = [m for m in _WHITESPACE.finditer(window) if m.start() > 0]
    if spaces:
        return spaces[-1].start(), spaces[-1].end()
    return limit, limit


# --- quality filters ---------------------------------------------------------------------------------------


class Passage:
    """A normalized text and the features the filters share, each computed at most once."""

    def __init__(self, text: str):
        self.text = text

    @cached_property
    def words(self) -> list[str]:
        return self.text.split()

    @cached_property
    def word_chars(self) -> int:
        return sum(map(len, self.words))

    @cached_property
    def lines(self) -> list[str]:
        return [line for line in self.text.split("\n") if line.strip()]

    @cached_property
    def paragraphs(self) -> list[str]:
        return [p.strip() for p in self.text.split("\n\n") if p.strip()]


def check_word_count(p: Passage, cfg: WordCountConfig) -> str | None:
    n = len(p.words)
    if n < cfg.min_words:
        return "too_few_words"
    if n > cfg.max_words:
        return "too_many_words"
    return None


def check_mean_word_length(p: Passage, cfg: MeanWordLengthConfig) -> str | None:
    if not p.words:
        return "mean_word_length"
    mean = p.word_chars / len(p.words)
    return None if cfg.min_length <= mean <= cfg.max_length else "mean_word_length"


def check_symbol_ratio(p: Passage, cfg: SymbolRatioConfig) -> str | None:
    n_words = max(len(p.words), 1)
    for symbol in cfg.symbols:
        if p.text.count(symbol) / n_words > cfg.max_ratio:
            return "symbol_ratio"
    return None


def check_stop_words(p: Passage, cfg: StopWordsConfig) -> str | None:
    if cfg.min_count <= 0:
        return None
    hits = filter(_stop_word_set(cfg.words).__contains__, p.words)
    found_enough = next(islice(hits, cfg.min_count - 1, None), None) is not None  # stops at the last needed
    return None if found_enough else "no_stop_words"


_STOP_SETS: dict[tuple[str, ...], frozenset[str]] = {}


def _stop_word_set(words: tuple[str, ...]) -> frozenset[str]:
    """Lower, Title and UPPER forms, so one set lookup per word checks it in any usual case."""
    if words not in _STOP_SETS:
        _STOP_SETS[words] = frozenset(f for w in words for f in (w.lower(), w.title(), w.upper()))
    return _STOP_SETS[words]


def check_line_punctuation(p: Passage, cfg: LinePunctuationConfig) -> str | None:
    lines = p.lines
    if not lines:
        return "line_punctuation"
    ending = tuple(cfg.endings)
    ended = sum(1 for line in lines if line.endswith(ending))
    return None if ended / len(lines) >= cfg.min_fraction else "line_punctuation"


def check_repeated_lines(p: Passage, cfg: RepeatedLinesConfig) -> str | None:
    checks = ((p.lines, cfg.max_dup_line_fraction, cfg.max_dup_line_char_fraction),
              (p.paragraphs, cfg.max_dup_paragraph_fraction, cfg.max_dup_paragraph_char_fraction))
    for items, max_frac, max_char_frac in checks:
        if len(items) < 2 or len(set(items)) == len(items):  # the usual case, at C speed
            continue
        items = [item for item in items if len(item) >= cfg.min_chars and _WORD_CHAR.search(item)]
        if len(items) < 2:
            continue
        dup_count, dup_chars = _repeats(items)
        if dup_count / len(items) > max_frac or dup_chars / sum(map(len, items)) > max_char_frac:
            return "repeated_lines"
    return None


_WORD_CHAR = re.compile(r"[^\W_]")  # a letter or digit


def _repeats(items: list[str]) -> tuple[int, int]:
    """How many items repeat an earlier one, and their characters."""
    seen: set[str] = set()
    count = chars = 0
    for item in items:
        if item in seen:
            count += 1
            chars += len(item)
        else:
            seen.add(item)
    return count, chars


def check_repeated_ngrams(p: Passage, cfg: RepeatedNgramsConfig) -> str | None:
    words, total = p.words, p.word_chars
    if not total:
        return None
    unigrams = Counter(words)
    if max(unigrams.values()) < 2:  # no word repeats, so no n-gram does
        return None
    # Each word of an n-gram seen m times is itself seen >= m times, so m * chars(n-gram) <= n * U:
    # a sound bound that spares counting n-grams in ordinary prose (U is about 4% of the chars there).
    heaviest_word = max(map(mul, unigrams.values(), map(len, unigrams)))
    for n, max_frac in cfg.top_ngram_max_char_fraction.items():
        if n * heaviest_word > max_frac * total and top_ngram_char_fraction(words, n, total) > max_frac:
            return "repeated_ngrams"
    sizes = list(cfg.dup_ngram_max_char_fraction.items())  # sorted by n
    for i, (n, max_frac) in enumerate(sizes):
        frac = dup_ngram_char_fraction(words, n, total)
        if frac > max_frac:
            return "repeated_ngrams"
        # Words covered by a repeated (n+1)-gram are covered by a repeated n-gram (its prefix and suffix
        # repeat too), so the fraction only falls as n grows: stop once no larger n can fail.
        if all(frac <= later for _, later in sizes[i + 1:]):
            break
    return None


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(words[i:] for i in range(n))))


def top_ngram_char_fraction(words: list[str], n: int, total_chars: int) -> float:
    """Chars of the most frequent n-gram (first seen on ties) times its count, over all word chars."""
    if len(words) < n:
        return 0.0
    gram, count = Counter(_ngrams(words, n)).most_common(1)[0]
    return count * sum(map(len, gram)) / total_chars if count > 1 else 0.0


def dup_ngram_char_fraction(words: list[str], n: int, total_chars: int) -> float:
    """Chars of the words inside any occurrence of an n-gram that occurred earlier, over all word chars."""
    grams = _ngrams(words, n)
    first_start = dict(zip(reversed(grams), range(len(grams) - 1, -1, -1)))  # later starts overwritten
    if len(first_start) == len(grams):
        return 0.0
    positions = range(len(grams))
    repeat_starts = compress(positions, map(ne, map(first_start.__getitem__, grams), positions))
    ends = [0, *accumulate(map(len, words))]  # ends[i] = chars of words[:i]
    chars = covered_until = 0
    for start in repeat_starts:  # ascending, so coverage only extends to the right
        chars += ends[start + n] - ends[max(start, covered_until)]
        covered_until = start + n
    return chars / total_chars


FilterFn = Callable[[Passage, Any], "str | None"]
FILTERS: tuple[tuple[str, FilterFn], ...] = (  # (config field, check) cheapest first
    ("word_count", check_word_count),
    ("mean_word_length", check_mean_word_length),
    ("symbol_ratio", check_symbol_ratio),
    ("stop_words", check_stop_words),
    ("line_punctuation", check_line_punctuation),
    ("repeated_lines", check_repeated_lines),
    ("repeated_ngrams", check_repeated_ngrams),
)


def check_passage(text: str, cfg: CleanConfig) -> str | None:
    """The drop reason of the first enabled filter that fails on normalized `text`, or None to keep it."""
    passage = Passage(text)
    for name, check in FILTERS:
        filter_cfg = getattr(cfg, name)
        if filter_cfg.enabled:
            reason = check(passage, filter_cfg)
            if reason is not None:
                return reason
    return None


# --- one document ------------------------------------------------------------------------------------------


@dataclass
class CleanOutcome:
    """What cleaning made of one document: kept passages, reasons of dropped ones, the document's reason."""

    kept: list[str] = field(default_factory=list)
    chunk_reasons: list[str] = field(default_factory=list)
    reason: str | None = None  # set when nothing is kept

    @property
    def n_chunks(self) -> int:
        return len(self.kept) + len(self.chunk_reasons)


def clean_document(text: str, cfg: CleanConfig) -> CleanOutcome:
    cleaned = clean_text(text, cfg)
    if not cleaned:
        return CleanOutcome(reason="empty")
    chunks = split_passages(cleaned, cfg.chunk.target_chars, cfg.chunk.max_chars) if cfg.chunk.enabled \
        else [cleaned]
    outcome = CleanOutcome()
    for chunk in chunks:
        reason = check_passage(chunk, cfg)
        if reason is None:
            outcome.kept.append(chunk)
        else:
            outcome.chunk_reasons.append(reason)
    if not outcome.kept:  # Counter keeps first-seen order, so ties go to the earliest passage's reason
        outcome.reason = Counter(outcome.chunk_reasons).most_common(1)[0][0]
    return outcome


def _unusable(doc: dict[str, Any]) -> tuple[str, str] | None:
    """(reason, detail) when the record cannot be cleaned at all."""
    if not isinstance(doc.get("id"), str) or not doc["id"]:
        return "missing_id", f"id is {doc.get('id')!r}"
    if not isinstance(doc.get("text"), str):
        return "text_not_a_string", f"text is {type(doc.get('text')).__name__}"
    return None


def _meta_is_object(meta: Any) -> bool:
    if meta is None or meta == "" or isinstance(meta, dict):
        return True
    try:
        return isinstance(json.loads(meta), dict)
    except (TypeError, ValueError):
        return False


def _identity(doc: dict[str, Any]) -> dict[str, Any]:
    return {"id": doc.get("id"), "source": doc.get("source")}


def clean_one(doc: dict[str, Any], cfg: CleanConfig, writer: UnitWriter) -> None:
    """Keep, drop or quarantine one input document through the unit's writer (which keeps the account)."""
    problem = _unusable(doc)
    if problem:
        writer.quarantine(problem[0], _identity(doc) | {"detail": problem[1]})
        return
    try:
        outcome = clean_document(doc["text"], cfg)
    except Exception as exc:  # noqa: BLE001 -- one bad record must not sink the shard; it stays visible
        writer.quarantine("clean_error", _identity(doc) | {"detail": f"{type(exc).__name__}: {exc}"[:1000]})
        return
    if len(outcome.kept) > 1 and not _meta_is_object(doc.get("meta")):
        writer.quarantine("meta_not_a_json_object", _identity(doc) | {"meta": str(doc.get("meta"))[:1000]})
        return
    writer.count("chars_in", len(doc["text"]))
    writer.count("chunks_in", outcome.n_chunks)
    writer.count("chunks_kept", len(outcome.kept))
    for reason in outcome.chunk_reasons:
        writer.count(f"chunks_dropped.{reason}")
    if outcome.kept:
        writer.count("chars_out", sum(map(len, outcome.kept)))
        writer.keep_pieces(doc, outcome.kept)
    else:
        writer.drop(outcome.reason)


# --- the stage ---------------------------------------------------------------------------------------------

_BATCH_ROWS = 64  # whole books are ~0.5 MB each: small batches keep a worker's memory near 30 MB of text


def clean_unit(unit: WorkUnit) -> UnitResult:
    """One input shard -> its cleaned shard(s); runs in a worker process."""
    cfg = CleanConfig.model_validate(unit.config)
    writer = UnitWriter(unit)
    for batch in iter_unit_docs(unit, batch_rows=_BATCH_ROWS):
        for doc in batch:
            clean_one(doc, cfg, writer)
    return writer.finish()


def run_clean(inputs: Inputs, out_uri: str, cfg: CleanConfig, ctx: RunContext) -> StageOutput:
    docs = inputs["collect"].files("docs")
    output, _ = run_map_stage("clean", "tasks.clean.stage:clean_unit", docs, out_uri, cfg, ctx)
    output.outputs.setdefault("docs", [])
    return output


STAGE = Stage(name="clean", config=CleanConfig, run=run_clean, reads=("collect",),
              raw_text=True,
              summary="normalize text, strip markup, drop low-quality documents, split into passages")
