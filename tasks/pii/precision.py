"""False-positive filters: code-aware rules that drop detections which are not personal data.

Measured on Python's own documentation (the demo corpus), a small spaCy NER model calls "Python" a
LOCATION and "False", "Convert" or "SimpleCookie" a PERSON, and presidio's patterns call "::" an IP
address and "0.999999999" a phone number. The rules below say why each such span is not personal data;
`tasks.pii.evalset` measures what they cost and gain on a labeled set.

- NER spans (PERSON, LOCATION, ...) are kept only when they look like names: capitalized words, no
  digits, underscores, brackets or dotted identifiers, not CamelCase or ALL CAPS, not glued to code
  (`obj.Name`, `Name(`), not a heading ("Numeric Types" over "~~~~"), not made only of Python keywords,
  builtins, technical terms, verbs or adverbs ("Convert", "Returns None", "Manually"); inside code (doctest lines, statements, fenced or `inline` code) a name
  needs two words ("Jane Doe" in a comment still counts).
- IP addresses that identify no host are dropped: unspecified (0.0.0.0, ::), localhost, "this network"
  (0.x.x.x), netmasks (255.255.255.0) and network blocks (10.0.0.0/8; 10.1.2.3/8 stays).
- Phone numbers that are decimals ("0.999999999"), dotted quads (255.255.255.0) or bare digit runs
  without a context word ("2147483647") are dropped.
"""
from __future__ import annotations

import builtins
import ipaddress
import keyword
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

TERMS_FILE = Path(__file__).with_name("technical_terms.txt")
NAME_PARTICLES = frozenset({"van", "von", "de", "da", "del", "della", "der", "di", "du", "la", "le", "bin",
                            "ibn", "al", "el", "dos", "das", "ter", "ten", "y", "e", "st"})
# Mc/Mac/O'/De... names legitimately carry an inner capital (McDonald, MacArthur, O'Neil, DeVito)
NAME_INNER_CAPITAL = re.compile(r"^(?:Mc|Mac|O'|D'|De|Di|Da|La|Le|Van|Von|Fitz)[A-Z][a-z]+$")
NAME_WORD = re.compile(r"^[A-Z][a-z'\u2019]*(?:-[A-Z]?[a-z'\u2019]+)*\.?$|^[A-Z]\.$")  # Jane, O'Neil, J., Jean-Luc
ALLOWED_CAPS = frozenset({"US", "USA", "UK", "UAE", "NYC"})  # places written in capitals in prose
NON_NAME_CHARS = re.compile(r"[\d_()\[\]{}<>=+*/\\|#@$%^&~`\"“”;:]")
CODE_GLUE_BEFORE = frozenset("._/\\@$`=<")  # not quotes: "Jane Doe" in a string literal is still a name
CODE_GLUE_AFTER = frozenset("_(/\\`[=<>")
CODE_LINE = re.compile(
    r"^\s*(?:>>>|\.\.\.(?=\s)|#|@\w|(?:def|class|return|import|from|if|elif|else|for|while|try|except|finally|"
    r"with|raise|assert|yield|async|await|pass|lambda|print)\b(?!\s+[a-z]+\s+[a-z]+\s+[a-z]+)"
    r"|.*(?:::=|\s(?:=|==|!=|\+=|-=|:=)\s|\w\(.*\)\s*$|\)\s*:\s*$))")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"``.+?``|`[^`\n]+`")
DECIMAL = re.compile(r"^\D{0,3}\d+\.\d+\D{0,2}$")  # one dot: 0.999999999, 31.01875 (not 212.867.5309)
DOTTED_QUAD = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}(?:/\d{1,3})?$")  # 255.255.255.0: an address or a mask, no phone
BARE_DIGITS = re.compile(r"^\(?\d+\)?$")  # no separator, no "+": an integer unless a context word says so
WORD_SPLIT = re.compile(r"\s+")
HEADING_RULE = re.compile(r"^([=\-*~^#+])\1+$")


LOCALHOST = frozenset({ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")})


class Region(NamedTuple):
    start: int
    end: int


@lru_cache(maxsize=1)
def technical_terms() -> frozenset[str]:
    """Lower-case words that name technical things, never people or places: Python's keywords and
    builtins, stdlib module names, and the shipped list (tasks/pii/technical_terms.txt)."""
    words = {line.strip().lower() for line in TERMS_FILE.read_text(encoding="utf-8").splitlines()
             if line.strip() and not line.startswith("#")}
    words |= {w.lower() for w in keyword.kwlist + keyword.softkwlist + dir(builtins) if w.isalpha()}
    words |= {m.lower() for m in sys.stdlib_module_names if m.isalpha() and len(m) > 2}
    return frozenset(words)


def verb_lemmas(nlp) -> frozenset[str]:
    """English verbs and adverbs from a spaCy pipeline's rule lemmatizer tables (WordNet's indexes);
    empty when the pipeline has none. Docstrings open with imperative verbs ("Convert", "Returns") and
    adverbs ("Manually") that NER takes for names. Not nouns or adjectives: those indexes hold names
    (smith, london; brown, lee)."""
    try:
        index = nlp.get_pipe("lemmatizer").lookups.get_table("lemma_index")
        return frozenset(index["verb"]) | frozenset(index["adv"])
    except (KeyError, AttributeError, ValueError):
        return frozenset()


def _inflections(word: str) -> list[str]:
    """The word and the stems its regular English endings come from (raises -> raise, pushes -> push,
    copied -> copy, stopped -> stop); "es" only after s, x, z, ch, sh, so James is not "jam"."""
    stems = [word]
    for suffix, repl in (("ies", "y"), ("ied", "y"), ("s", ""), ("ing", ""), ("ing", "e"), ("ed", ""),
                         ("ed", "e")):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            stems.append(word[:-len(suffix)] + repl)
    if word.endswith("es") and word[:-2].endswith(("s", "x", "z", "ch", "sh")):
        stems.append(word[:-2])
    if word.endswith(("ed", "ing")):
        stem = word[:-2] if word.endswith("ed") else word[:-3]
        if len(stem) > 3 and stem[-1] == stem[-2]:
            stems.append(stem[:-1])
    return stems


# ------------------------------------------------------------------------------------------ code
def code_regions(text: str) -> list[Region]:
    """Character ranges that are code: fenced blocks, doctest and statement lines, `inline` code."""
    regions: list[Region] = []
    pos, fenced = 0, False
    for line in text.splitlines(keepends=True):
        end = pos + len(line)
        if FENCE.match(line):
            fenced = not fenced
            regions.append(Region(pos, end))
        elif fenced or CODE_LINE.match(line):
            regions.append(Region(pos, end))
        pos = end
    regions += [Region(m.start(), m.end()) for m in INLINE_CODE.finditer(text)]
    return sorted(regions)


def in_regions(start: int, end: int, regions: list[Region]) -> bool:
    return any(r.start <= start and end <= r.end for r in regions)


# ------------------------------------------------------------------------------------------ names
class NameFilter:
    """Decides whether an NER span looks like a person's or a place's name (see the module docstring)."""

    def __init__(self, verbs: frozenset[str] = frozenset(), extra_terms: frozenset[str] = frozenset()):
        self.verbs = verbs
        self.terms = technical_terms() | extra_terms

    def keep(self, text: str, start: int, end: int, in_code: bool) -> bool:
        value = text[start:end]
        if NON_NAME_CHARS.search(value) or _dotted_identifier(value) or _glued_to_code(text, start, end):
            return False
        words = [w for w in WORD_SPLIT.split(value) if w]
        if not words or any(not self._word_ok(w) for w in words):
            return False
        if (in_code and len(words) < 2) or _heading(text, start, end):
            return False
        return any(self._name_like(w, first=i == 0) for i, w in enumerate(words))

    def _word_ok(self, word: str) -> bool:
        """Every word of a name: capitalized (or a particle such as 'van'), not CamelCase or ALL CAPS."""
        bare = word.rstrip(".,'\u2019")
        if bare.lower() in NAME_PARTICLES and bare.islower():
            return True
        if bare in ALLOWED_CAPS:
            return True
        return bool(NAME_WORD.match(word) or NAME_INNER_CAPITAL.match(bare))

    def _name_like(self, word: str, first: bool) -> bool:
        """A word that can carry a name: not a particle, keyword, builtin or technical term, and not a
        verb or adverb in first place ("Returns None"; but "Jack White" and "Mark Hill" stay names)."""
        bare = word.rstrip(".,'\u2019")
        lower = bare.lower()
        if lower in NAME_PARTICLES or len(bare) == 1:  # "van", or an initial "J."
            return False
        stems = _inflections(lower)
        return not any(s in self.terms or (first and s in self.verbs) for s in stems)


def _heading(text: str, start: int, end: int) -> bool:
    """A reST heading: the span fills its line and the next line underlines it ("~~~~", "****")."""
    line_start = text.rfind("\n", 0, start) + 1
    line_end = text.find("\n", end)
    if line_end < 0 or text[line_start:start].strip() or text[end:line_end].strip():
        return False
    next_end = text.find("\n", line_end + 1)
    below = text[line_end + 1:len(text) if next_end < 0 else next_end].strip()
    return len(below) >= 3 and HEADING_RULE.match(below) is not None


def _dotted_identifier(value: str) -> bool:
    """sys.argv, i.e. (a dot between letters without a space), but not the initials of "J. R. Smith"."""
    return re.search(r"[a-z]\.[A-Za-z]", value) is not None


def _glued_to_code(text: str, start: int, end: int) -> bool:
    before = text[start - 1] if start > 0 else " "
    after = text[end] if end < len(text) else " "
    if before in CODE_GLUE_BEFORE or after in CODE_GLUE_AFTER:
        return True
    return after == "." and end + 1 < len(text) and (text[end + 1].isalnum() or text[end + 1] == "_")


# ------------------------------------------------------------------------------------- patterns
def ip_is_host(value: str) -> bool:
    """False for addresses that identify no host: unspecified, localhost (127.0.0.1, ::1), 0.0.0.0/8,
    netmasks and network blocks."""
    address, _, prefix = value.partition("/")
    address = address.strip("[]")
    try:
        ip = ipaddress.ip_address(address)
        network = ipaddress.ip_network(value, strict=False) if prefix else None
    except ValueError:
        return True  # presidio validated it its own way; keep it
    if ip.is_unspecified or ip in LOCALHOST:  # not all of 127/8: a random 127.x.y.z is kept, as presidio does
        return False
    if network is not None and network.num_addresses > 1 and ip == network.network_address:
        return False  # a network block such as 10.0.0.0/8 names no host
    if ip.version == 4 and int(address.split(".")[0]) == 0:
        return False
    return not _netmask(int(ip), ip.max_prefixlen)


def _netmask(bits: int, width: int) -> bool:
    """255.255.255.0 or ffff:...:fff0: leading ones (a whole first byte at least), then only zeros."""
    inverted = ~bits & ((1 << width) - 1)
    return bits >> (width - 8) == 0xFF and (inverted & (inverted + 1)) == 0


def phone_is_number(value: str, has_context: bool) -> bool:
    """False for a decimal ("0.999999999") and for a bare digit run with no context word nearby."""
    if DECIMAL.match(value) or DOTTED_QUAD.match(value.strip()):
        return False
    return has_context or not BARE_DIGITS.match(value.strip())
