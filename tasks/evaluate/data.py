"""Evaluation tasks: the GLUE/SuperGLUE registry (tasks.yaml), your own tasks, and their loaders."""
from __future__ import annotations

import csv
import io
import json
import socket
import string
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from tasks.core.errors import UserError

SUITES = ("glue", "superglue")
SPLITS = ("train", "dev", "test", "fewshot")
CLASSIFICATION_METRICS = frozenset({"accuracy", "f1", "macro_f1", "matthews_correlation"})
REGRESSION_METRICS = frozenset({"pearson", "spearman"})
METRICS = CLASSIFICATION_METRICS | REGRESSION_METRICS | {
    "multirc_f1a", "exact_match", "record_f1", "record_em", "gender_parity"}
PROMPT_KEYS = frozenset({"template", "choices", "choice_template", "fewshot_separator"})
FORMATS = {".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet"}
HUB_PROBE_TIMEOUT_S = 3.0
MAX_BAD_EXAMPLES = 5

Key = str | int  # a column name, a column position (header-less TSV) or a dotted path into a JSON object


# --- the data model --------------------------------------------------------------------------------------

@dataclass
class Example:
    """One item to predict; the shape every scorer, fine-tuner and metric reads."""

    idx: int                       # 0-based position in its split (the predictions' example index)
    text: str                      # first text (sentence, premise, passage, ...)
    pair: str | None = None        # second text for pair tasks (hypothesis, question, ...)
    label: int | float | None = None   # class index into TaskSpec.labels, a float for regression,
                                       # the index of the right choice for multiple choice
    choices: list[str] | None = None   # multiple choice candidates (COPA's two choices, ReCoRD entities)
    group: str | None = None       # MultiRC question id, AX-g pair id, ReCoRD query id (EM/parity)
    answers: list[str] | None = None   # ReCoRD gold answer strings
    meta: dict[str, Any] = field(default_factory=dict)  # more fields prompts may use (WiC word,
                                                         # COPA question cause/effect, WSC spans)


class FieldMap(BaseModel):
    """Where an Example's parts are in a row: column names, positions, or dotted JSON paths."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    text: Key
    pair: Key | None = None
    label: Key | None = None
    choices: tuple[Key, ...] = ()
    meta: dict[str, Key] = {}


class HubSource(BaseModel):
    """The task's copy on the Hugging Face hub."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    id: str
    config: str | None = None
    splits: dict[str, str] = {}     # our split name -> the hub's
    fields: FieldMap | None = None  # None: as in the local files
    reader: str | None = None       # None: as for the local files
    note: str = ""                  # said when a split is not there


# meta keys a reader adds to Example.meta beyond FieldMap.meta (prompts may use them)
READER_META = {"rows": (), "copa": ("connector", "stem"), "wsc": ("marked",), "wic": ("target",),
               "winogender": (), "multirc": ("question", "answer"), "multirc_flat": ("question", "answer"),
               "record": ("query", "query_before", "query_after"),
               "record_flat": ("query", "query_before", "query_after")}


class TaskSpec(BaseModel):
    """A task: what it predicts, how it is scored, where its files are and how to read them."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    suite: Literal["glue", "superglue", "own"]
    kind: Literal["classification", "regression", "multiple_choice"]
    labels: list[str] | None = None   # class names in index order, as written in the files
    metrics: tuple[str, ...]
    # the task whose training split (and fine-tuned model) this one is evaluated with; it trains nothing
    scored_with: str | None = None
    prompt: dict[str, Any] | None = None  # the default zero-shot prompt, in PromptSpec's shape
    description: str = ""
    dir: str | None = None            # the task's folder under its suite root (own tasks: None)
    files: dict[str, str] = {}        # split -> file in `dir` (own tasks: a path)
    format: Literal["tsv", "jsonl", "csv", "parquet"] | None = None  # None: from each file's extension
    header: bool = True               # TSV/CSV: the first row names the columns
    columns: int | None = None        # header-less TSV: the number of columns a row has
    fields: FieldMap
    reader: str = "rows"
    hub: HubSource | None = None
    config_key: str | None = None     # own tasks: the config key that errors name

    @model_validator(mode="after")
    def _consistent(self) -> TaskSpec:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; known: {', '.join(sorted(METRICS))}")
        if self.kind == "classification":
            if not self.labels or len(set(self.labels)) != len(self.labels):
                raise ValueError("a classification task needs distinct class names in `labels`")
        elif self.labels is not None:
            raise ValueError(f"a {self.kind} task has no class names: leave `labels` out")
        if self.reader not in READER_META or (self.hub and self.hub.reader not in (None, *READER_META)):
            raise ValueError(f"unknown reader; known: {', '.join(READER_META)}")
        bad_splits = [s for s in self.files if s not in SPLITS]
        if bad_splits:
            raise ValueError(f"unknown splits {bad_splits}; known: {', '.join(SPLITS)}")
        if self.prompt is not None:
            _check_prompt(self)
        return self

    def prompt_fields(self) -> set[str]:
        """The names a prompt template may use: text, pair and the meta keys this task's examples carry."""
        return {"text", "pair", *self.fields.meta, *READER_META[self.reader]}


def _check_prompt(spec: TaskSpec) -> None:
    p = spec.prompt or {}
    extra = set(p) - PROMPT_KEYS
    if extra:
        raise ValueError(f"prompt: unknown keys {sorted(extra)}; known: {', '.join(sorted(PROMPT_KEYS))}")
    if not isinstance(p.get("template"), str):
        # pydantic reports only ValueError as a validation error
        raise ValueError("prompt: `template` (a string) is required")  # noqa: TRY004
    if spec.kind == "regression":
        raise ValueError("prompt: a regression task cannot be scored zero-shot; leave `prompt` out")
    unknown = sorted(template_fields(p["template"]) - spec.prompt_fields())
    if unknown:
        raise ValueError(f"prompt.template uses {{{'}, {'.join(unknown)}}}, which its examples do not have; "
                         f"known: {', '.join(sorted(spec.prompt_fields()))}")
    choices = p.get("choices")
    if spec.kind == "multiple_choice":
        if choices is not None:
            raise ValueError("prompt: a multiple choice task takes each example's choices: leave "
                             "`choices` out and set `choice_template`")
    elif not (isinstance(choices, list) and all(isinstance(c, str) for c in choices)
              and len(choices) == len(spec.labels or ())):
        raise ValueError(f"prompt.choices must be one string per class ({len(spec.labels or ())}: "
                         f"{spec.labels}), e.g. [\" no\", \" yes\"]")


def template_fields(template: str) -> set[str]:
    """The names a str.format template refers to ({meta[x]} and {a.b} count as their first name)."""
    names = set()
    for _, name, _, _ in string.Formatter().parse(template):
        if name:
            names.add(name.split(".")[0].split("[")[0])
    return names


@dataclass
class Split:
    """A loaded split: its examples and what could not be read."""

    task: str
    split: str
    path: str
    examples: list[Example]
    bad_rows: int = 0
    bad_reasons: dict[str, int] = field(default_factory=dict)   # reason -> count
    bad_examples: list[str] = field(default_factory=list)       # at most 5 "file:line: reason"


@dataclass
class Skipped:
    """A split that is not there (or not reachable); the reason says where we looked."""

    task: str
    split: str
    reason: str


# --- the registry ----------------------------------------------------------------------------------------

@cache
def _registry() -> dict[str, TaskSpec]:
    path = Path(__file__).with_name("tasks.yaml")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    specs = {}
    for name, entry in raw["tasks"].items():
        try:
            specs[name] = TaskSpec(name=name, **entry)
        except (ValidationError, TypeError) as exc:
            raise ValueError(f"{path}: task {name}: {exc}") from exc
    return specs


def all_specs() -> dict[str, TaskSpec]:
    """Every GLUE and SuperGLUE task, by name, in tasks.yaml order."""
    return dict(_registry())


def _norm(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "")


def resolve(names: Sequence[str], extra: Iterable[TaskSpec] = ()) -> list[TaskSpec]:
    """Task names and groups ('glue', 'superglue', 'mnli') -> specs, in order, each once.

    Names match loosely ('SST-2' is sst2). `extra` adds your own tasks' specs to what can be named.
    """
    specs = all_specs() | {s.name: s for s in extra}
    by_norm = {_norm(n): n for n in specs}
    groups = {suite: [n for n, s in specs.items() if s.suite == suite] for suite in SUITES}
    groups["mnli"] = ["mnli_m", "mnli_mm"]
    out: dict[str, TaskSpec] = {}
    for name in names:
        key = name.strip().lower()
        if key in groups:
            out |= {n: specs[n] for n in groups[key] if n not in out}
        elif _norm(key) in by_norm:
            out.setdefault(by_norm[_norm(key)], specs[by_norm[_norm(key)]])
        else:
            raise UserError(f"unknown task {name!r}; known tasks: {', '.join(specs)}; "
                            f"groups: {', '.join(groups)}")
    return list(out.values())


# --- loading ---------------------------------------------------------------------------------------------

def load_split(spec: TaskSpec, split: str, source: str | Path | None = None,
               limit: int | None = None) -> Split | Skipped:
    """One split of a task from a local directory (a suite root, or the folder above it) or "hub".

    Own tasks read the paths in their config (source is ignored unless it is "hub"). A missing file is
    Skipped with the reason; a bad row is counted and kept out; a file that cannot be read raises
    UserError. `limit` keeps the first N examples (bad rows are counted up to there).
    """
    if source == "hub":
        return _load_hub(spec, split, limit)
    if split not in spec.files:
        return Skipped(spec.name, split, _no_such_split(spec, split))
    if spec.suite == "own":
        path = Path(spec.files[split])
    else:
        if source is None:
            raise UserError(f"{spec.name}: no data source given; set the {spec.suite} data directory "
                            "(the folder holding the task folders) or 'hub'")
        folder = _task_dir(spec, Path(source))
        path = folder / spec.files[split]
        if not path.exists():
            return Skipped(spec.name, split, _missing_file(spec, split, folder))
    fmt = spec.format or _format_of(path, spec)
    rows = _read(path, fmt, spec)
    return _collect(spec, split, str(path), rows, limit)


def _no_such_split(spec: TaskSpec, split: str) -> str:
    have = ", ".join(spec.files) or "none"
    if spec.scored_with and split in ("train", "fewshot"):
        return (f"{spec.name} has no {split} split: it is evaluated with {spec.scored_with}'s training "
                "data and model")
    return f"{spec.name} has no {split} split (it has: {have})"


def _task_dir(spec: TaskSpec, root: Path) -> Path:
    """The task's folder under root (a suite root, or the folder holding glue/ and superglue/)."""
    if not root.is_dir():
        raise UserError(f"{root}: not a directory; set the {spec.suite} data directory to the folder "
                        f"holding the task folders (e.g. {spec.dir}/), or use 'hub'")
    assert spec.dir is not None
    nested = root / spec.suite / spec.dir
    return nested if not (root / spec.dir).is_dir() and nested.is_dir() else root / spec.dir


def _missing_file(spec: TaskSpec, split: str, folder: Path) -> str:
    if folder.is_dir():
        reason = f"{spec.name}: no {split} split in {folder} (looked for {spec.files[split]})"
    else:
        reason = f"{spec.name}: no {split} split: no folder {folder.name}/ in {folder.parent}"
    if split == "train":
        fewshot = spec.files.get("fewshot")
        if fewshot and (folder / fewshot).exists():
            return (f"{reason}; the FewGLUE 32-example set {fewshot} is there as split 'fewshot' "
                    "(demonstrations for few-shot scoring; too small to fine-tune on)")
        return f"{reason}; zero-shot only"
    if split == "dev":
        return f"{reason}; nothing to evaluate"
    return reason


def _format_of(path: Path, spec: TaskSpec) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        where = f"; set {spec.config_key}.format" if spec.config_key else ""
        raise UserError(f"{path}: cannot tell the format from its extension; use one of "
                        f"{', '.join(sorted(FORMATS))}{where}")
    return fmt


class _Bad(Exception):
    """A row (or one item of it) that cannot become an Example: the reason counted, and a detail."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


Row = dict[Any, Any]
Records = Iterator[tuple[int, "Row | _Bad"]]   # (line or row number, the row or why it is bad)


def _collect(spec: TaskSpec, split: str, where: str, rows: Records, limit: int | None,
             reader: str | None = None, fields: FieldMap | None = None) -> Split:
    convert = CONVERTERS[reader or spec.reader]
    fields = fields or spec.fields
    out = Split(spec.name, split, where, [])
    reasons: Counter[str] = Counter()

    def bad(line: int, b: _Bad) -> None:
        reasons[b.reason] += 1
        if len(out.bad_examples) < MAX_BAD_EXAMPLES:
            out.bad_examples.append(f"{where}:{line}: {b.reason}{': ' + b.detail if b.detail else ''}")

    for line, row in rows:
        if limit is not None and len(out.examples) >= limit:
            break
        if isinstance(row, _Bad):
            bad(line, row)
            continue
        try:
            made = list(convert(spec, fields, row))
        except _Bad as b:
            bad(line, b)
            continue
        for ex in made:
            if isinstance(ex, _Bad):
                bad(line, ex)
            elif limit is None or len(out.examples) < limit:
                ex.idx = len(out.examples)
                out.examples.append(ex)
    out.bad_rows, out.bad_reasons = sum(reasons.values()), dict(reasons)
    if (spec.reader if reader is None else reader) == "winogender":
        _pair_by_hypothesis(out.examples)
    if not out.examples and limit != 0:
        _nothing_read(spec, where, out)
    return out


def _nothing_read(spec: TaskSpec, where: str, out: Split) -> None:
    hint = (f"check {spec.config_key} (text_field, pair_field, label_field, labels)" if spec.config_key
            else f"is this the {spec.suite} file for {spec.name}?")
    if not out.bad_rows:
        raise UserError(f"{where}: no rows; {hint}")
    top = ", ".join(f"{r} ({n})" for r, n in Counter(out.bad_reasons).most_common(3))
    raise UserError(f"{where}: none of its {out.bad_rows} rows could be read: {top}; "
                    f"first: {out.bad_examples[0]}; {hint}")


# --- reading files ---------------------------------------------------------------------------------------

def _text_of(path: Path, spec: TaskSpec) -> str:
    """The whole file as text; a file that is not there as a file, or not UTF-8, is a UserError."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise UserError(f"{path} is a directory; expected the {spec.name} data file there") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}; check that it exists and that "
                        "you may read it") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 (byte 0x{data[exc.start]:02x}); re-save the file as "
                        "UTF-8, e.g. `iconv -f latin1 -t utf-8`") from None


def _lines(text: str) -> list[str]:
    """Lines without their \\n or \\r\\n; a missing final newline is fine."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [ln.removesuffix("\r") for ln in lines]


def _read(path: Path, fmt: str, spec: TaskSpec) -> Records:
    if fmt == "parquet":
        return _parquet_rows(path, spec)
    text = _text_of(path, spec)
    if fmt == "jsonl":
        return _jsonl_rows(text)
    return _table_rows(path, text, fmt, spec)


def _jsonl_rows(text: str) -> Records:
    for line, raw in enumerate(_lines(text), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as exc:
            yield line, _Bad("not JSON", str(exc))
            continue
        yield line, obj if isinstance(obj, dict) else _Bad("not a JSON object", type(obj).__name__)


def _table_rows(path: Path, text: str, fmt: str, spec: TaskSpec) -> Records:
    """TSV as GLUE reads it (tab, no quoting) or CSV (standard quoting): dicts by header name or position."""
    if fmt == "tsv":
        reader = csv.reader(_lines(text), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    header: list[str] | None = None
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if fmt == "csv":   # the reader has lost track of quoting: the rows after are not trustworthy
                raise UserError(f"{path}:{reader.line_num}: malformed CSV ({exc}); fix the quoting there "
                                "(a quote left open may start earlier)") from None
            yield reader.line_num, _Bad("malformed row", str(exc))
            continue
        if not cells or not any(c.strip() for c in cells):
            continue
        if spec.header and header is None:
            header = cells
            _check_columns(path, header, spec)
            continue
        expected = len(header) if header is not None else spec.columns
        if expected is not None and len(cells) != expected:
            yield reader.line_num, _Bad("wrong column count", f"{len(cells)} columns, expected {expected}")
            continue
        yield reader.line_num, dict(zip(header, cells)) if header is not None else dict(enumerate(cells))


def _field_keys(fields: FieldMap) -> list[tuple[str, Key]]:
    keys = [("text", fields.text), ("pair", fields.pair), ("label", fields.label)]
    keys += [("choices", k) for k in fields.choices] + [("meta", k) for k in fields.meta.values()]
    return [(role, k) for role, k in keys if k is not None]


def _check_columns(path: Path, columns: Sequence[str], spec: TaskSpec) -> None:
    for role, key in _field_keys(spec.fields):
        if key not in columns:
            shown = ", ".join(map(str, columns))
            if spec.config_key:
                what = "meta_fields" if role in ("meta", "choices") else f"{role}_field"
                hint = f"set {spec.config_key}.{what}"
            else:
                hint = f"is this the {spec.suite} file for {spec.name}?"
            raise UserError(f"{path}: no column {key!r} (columns: {shown}); {hint}")


def _parquet_rows(path: Path, spec: TaskSpec) -> Records:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except IsADirectoryError:
        raise UserError(f"{path} is a directory; expected the {spec.name} data file there") from None
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"cannot read {path} as Parquet ({exc}); check the file, or set the format "
                        "if it is not Parquet") from None
    _check_columns(path, table.column_names, spec)
    return enumerate(table.to_pylist(), start=1)


# --- rows -> examples ------------------------------------------------------------------------------------

_MISSING = object()


def _get(row: Row, key: Key) -> Any:
    """A field by name, position or dotted path; absent or null is a bad row."""
    value = row.get(key, _MISSING)
    if value is _MISSING and isinstance(key, str) and "." in key:
        value = row
        for part in key.split("."):
            value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
    if value is _MISSING or value is None:
        raise _Bad("missing field", repr(key))
    return value


def _text(row: Row, key: Key) -> str:
    value = _get(row, key)
    return value if isinstance(value, str) else str(value)


def label_name(value: Any) -> str:
    """A label value as the class name it is written as: True -> "True", 1 -> "1", 1.0 -> "1"."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return value.strip() if isinstance(value, str) else str(value)


def _is_int(name: str) -> bool:
    return name.lstrip("-").isdigit()


def _label(spec: TaskSpec, value: Any, n_choices: int = 0) -> int | float:
    if spec.kind == "regression":
        try:
            return float(value)
        except (TypeError, ValueError):
            raise _Bad("label not a number", repr(value)) from None
    if spec.kind == "multiple_choice":
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < n_choices:
            return value
        raise _Bad("unknown label", f"{value!r} is not a choice index below {n_choices}")
    labels = spec.labels or []
    name = label_name(value)
    if name in labels:
        return labels.index(name)
    # the hub stores class indices; class names that are not numbers are looked up by position
    if (isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(labels)
            and not any(_is_int(lb) for lb in labels)):
        return value
    raise _Bad("unknown label", f"{value!r} (labels: {', '.join(labels)})")


def _from_fields(spec: TaskSpec, fields: FieldMap, row: Row) -> Example:
    choices = [_text(row, k) for k in fields.choices] or None
    return Example(
        idx=-1, text=_text(row, fields.text),
        pair=_text(row, fields.pair) if fields.pair is not None else None,
        label=_label(spec, _get(row, fields.label), len(choices or ())) if fields.label is not None else None,
        choices=choices, meta={name: _get(row, key) for name, key in fields.meta.items()})


def _rows(spec: TaskSpec, fields: FieldMap, row: Row) -> list[Example]:
    return [_from_fields(spec, fields, row)]


_CONNECTORS = {"cause": "because", "effect": "therefore"}


def _copa(spec: TaskSpec, fields: FieldMap, row: Row) -> list[Example]:
    """COPA: the stem (premise without its final stop) and a connector for "{stem} {connector}" prompts."""
    ex = _from_fields(spec, fields, row)
    question = ex.meta.get("question")
    if question not in _CONNECTORS:
        raise _Bad("unknown COPA question", repr(question))
    stem = ex.text.strip()
    ex.meta |= {"connector": _CONNECTORS[question], "stem": stem[:-1] if stem[-1:] in ".!?" else stem}
    return [ex]


def _wsc(spec: TaskSpec, fields: FieldMap, row: Row) -> list[Example]:
    """WSC: the passage with the pronoun (span2, a word index) marked as *it*, when the index finds it."""
    ex = _from_fields(spec, fields, row)
    i, span = int(ex.meta["span2_index"]), str(ex.meta["span2_text"])
    start = len(" ".join(ex.text.split(" ")[:i])) + (1 if i else 0)
    found = ex.text[start:start + len(span)] == span
    ex.meta["marked"] = (ex.text[:start] + f"*{span}*" + ex.text[start + len(span):]) if found else ex.text
    return [ex]


def _wic(spec: TaskSpec, fields: FieldMap, row: Row) -> list[Example]:
    """WiC: the target word as it is written in sentence 1 (start1:end1), else the lemma."""
    ex = _from_fields(spec, fields, row)
    start, end = row.get("start1"), row.get("end1")
    surface = ex.text[start:end] if isinstance(start, int) and isinstance(end, int) else ""
    ex.meta["target"] = surface.strip() or ex.meta["word"]
    return [ex]


def _pair_by_hypothesis(examples: list[Example]) -> None:
    """AX-g: rows 2k and 2k+1 with the same hypothesis are one minimal pair (as SuperGLUE scores parity);
    the group is the first row's id. A row without such a partner is a group of its own."""
    i = 0
    while i < len(examples):
        ex = examples[i]
        ex.group = str(ex.meta.get("id", ex.idx))
        if i + 1 < len(examples) and examples[i + 1].pair == ex.pair:
            examples[i + 1].group = ex.group
            i += 2
        else:
            i += 1


def _multirc(spec: TaskSpec, fields: FieldMap, row: Row) -> Iterator[Example | _Bad]:
    """MultiRC (official JSONL): one example per answer, grouped by "<passage idx>-<question idx>"."""
    passage = _get(row, "passage")
    text, questions = _text(passage, "text"), _get(passage, "questions")
    for qi, q in enumerate(questions):
        try:
            for ai, a in enumerate(_get(q, "answers")):
                item = {"paragraph": text, "question": _get(q, "question"), "answer": _get(a, "text"),
                        "label": a.get("label"),
                        "idx": {"paragraph": row.get("idx", -1), "question": q.get("idx", qi),
                                "answer": a.get("idx", ai)}}
                try:
                    yield _multirc_example(spec, item)
                except _Bad as b:
                    yield b
        except _Bad as b:
            yield b


def _multirc_flat(spec: TaskSpec, fields: FieldMap, row: Row) -> list[Example]:
    """MultiRC as the hub has it: one row per answer."""
    return [_multirc_example(spec, row)]


def _multirc_example(spec: TaskSpec, row: Row) -> Example:
    question, answer = _text(row, "question"), _text(row, "answer")
    group = f"{_get(row, 'idx.paragraph')}-{_get(row, 'idx.question')}"
    return Example(idx=-1, text=_text(row, "paragraph"), pair=f"{question}\n{answer}",
                   label=_label(spec, _get(row, "label")), group=group,
                   meta={"question": question, "answer": answer, "id": dict(_get(row, "idx"))})


def _dedup(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _record(spec: TaskSpec, fields: FieldMap, row: Row) -> Iterator[Example | _Bad]:
    """ReCoRD (official JSONL): entity spans (end inclusive) -> candidates; one example per query."""
    passage = _get(row, "passage")
    text = _text(passage, "text")
    entities = _dedup(text[_get(e, "start"):_get(e, "end") + 1] for e in _get(passage, "entities"))
    for qi, qa in enumerate(_get(row, "qas")):
        try:
            answers = _dedup(_text(a, "text") for a in qa.get("answers") or [])
            yield _record_example(text, _text(qa, "query"), entities, answers,
                                  f"{row.get('idx', -1)}-{qa.get('idx', qi)}")
        except _Bad as b:
            yield b


def _record_flat(spec: TaskSpec, fields: FieldMap, row: Row) -> list[Example]:
    """ReCoRD as the hub has it: one row per query, entities and answers as lists of strings."""
    group = f"{_get(row, 'idx.passage')}-{_get(row, 'idx.query')}"
    return [_record_example(_text(row, "passage"), _text(row, "query"), _dedup(_get(row, "entities")),
                            _dedup(row.get("answers") or []), group)]


def _record_example(passage: str, query: str, entities: list[str], answers: list[str], group: str) -> Example:
    if "@placeholder" not in query:
        raise _Bad("no @placeholder in the query", repr(query[:80]))
    label = next((i for i, e in enumerate(entities) if e in answers), None)
    if label is None:
        raise _Bad("no gold answer among the entities", repr(answers[:3]))
    before, after = query.split("@placeholder", 1)
    return Example(idx=-1, text=passage.replace("@highlight\n", "- "), pair=query, label=label,
                   choices=entities, group=group, answers=answers,
                   meta={"query": query, "query_before": before.rstrip(), "query_after": after})


Converter = Callable[[TaskSpec, FieldMap, Row], Iterable["Example | _Bad"]]
CONVERTERS: dict[str, Converter] = {
    "rows": _rows, "copa": _copa, "wsc": _wsc, "wic": _wic, "winogender": _rows, "multirc": _multirc,
    "multirc_flat": _multirc_flat, "record": _record, "record_flat": _record_flat}


# --- the hub ---------------------------------------------------------------------------------------------

def _load_hub(spec: TaskSpec, split: str, limit: int | None) -> Split | Skipped:
    hub = spec.hub
    if hub is None:
        return Skipped(spec.name, split, f"{spec.name} has no copy on the hub; give a local directory")
    if split not in hub.splits:
        note = f" ({hub.note})" if hub.note else ""
        return Skipped(spec.name, split, f"{spec.name}: the hub copy {hub.id}/{hub.config} has no {split} "
                                         f"split{note}")
    where = f"hub:{hub.id}/{hub.config}:{hub.splits[split]}"
    try:
        import datasets
    except ImportError as exc:
        return Skipped(spec.name, split, f"{spec.name}: {where} needs the `datasets` package ({exc})")
    if not datasets.config.HF_HUB_OFFLINE:
        down = _hub_unreachable()
        if down:
            return Skipped(spec.name, split, f"{spec.name}: {where}: the hub is not reachable ({down}); set "
                                             "HF_HUB_OFFLINE=1 to read the local datasets cache, or give a "
                                             "local directory")
    try:
        ds = datasets.load_dataset(hub.id, hub.config, split=hub.splits[split])
    except Exception as exc:  # noqa: BLE001 - offline, not cached, renamed, gated: all mean "not there"
        return Skipped(spec.name, split, f"{spec.name}: {where} could not be loaded "
                                         f"({type(exc).__name__}: {str(exc)[:300]})")
    rows = ((i, dict(row)) for i, row in enumerate(ds, start=1))
    return _collect(spec, split, where, rows, limit, reader=hub.reader, fields=hub.fields)


def _hub_unreachable(timeout: float = HUB_PROBE_TIMEOUT_S) -> str | None:
    """Why the hub endpoint cannot be reached (a TCP connect, in a thread so a slow DNS cannot hang us)."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    result: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as exc:
            result.append(f"{host}:{port}: {exc}")

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(timeout + 1)
    return result[0] if result else f"{host}:{port}: no answer in {timeout:.0f} s"


# --- your own tasks --------------------------------------------------------------------------------------

class OwnTaskConfig(BaseModel):
    """A task of your own from CSV, TSV, JSONL or Parquet files (format from the extension)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    train: str | None = None
    dev: str | None = None
    test: str | None = None           # a labeled held-out set, scored like dev
    format: Literal["csv", "tsv", "jsonl", "parquet"] | None = None
    text_field: str = "text"
    pair_field: str | None = None
    label_field: str = "label"
    # numbers are class names unless you say regression
    kind: Literal["classification", "regression"] = "classification"
    labels: list[str] | None = None   # class names in index order; default: the sorted values found
    metrics: list[str] | None = None  # default: accuracy + macro_f1 (classification), pearson + spearman
    prompt: dict[str, Any] | None = None  # PromptSpec's shape; zero-shot scoring needs one
    meta_fields: list[str] = []       # more columns carried into Example.meta (prompts may use them)

    @model_validator(mode="after")
    def _sane(self) -> OwnTaskConfig:
        if not (self.dev or self.test):
            raise ValueError("give `dev` (or `test`): the file to evaluate on")
        if self.kind == "regression" and self.labels is not None:
            raise ValueError("a regression task has no class names: leave `labels` out")
        return self


def own_task_spec(cfg: OwnTaskConfig, key: str = "tasks.own") -> TaskSpec:
    """The TaskSpec of your own task; reads the label column to find the classes when `labels` is not set.

    `key` is the config key errors name, e.g. "tasks.own[0]".
    """
    if _norm(cfg.name) in {_norm(n) for n in (*all_specs(), *SUITES, "mnli")}:
        raise UserError(f"{key}.name: {cfg.name!r} is a built-in task or group; choose another name")
    files = {s: p for s in ("train", "dev", "test") if (p := getattr(cfg, s))}
    for split, path in files.items():
        if not Path(path).is_file():
            raise UserError(f"{key}.{split}: {path} is not a file (relative paths are relative to the "
                            f"directory you run from: {Path.cwd()})")
    metrics = tuple(cfg.metrics or (("accuracy", "macro_f1") if cfg.kind == "classification"
                                    else ("pearson", "spearman")))
    allowed = CLASSIFICATION_METRICS if cfg.kind == "classification" else REGRESSION_METRICS
    if any(m not in allowed for m in metrics):
        raise UserError(f"{key}.metrics: {list(metrics)}; a {cfg.kind} task can use "
                        f"{', '.join(sorted(allowed))}")
    fields = FieldMap(text=cfg.text_field, pair=cfg.pair_field, label=cfg.label_field,
                      meta={f: f for f in cfg.meta_fields})
    spec_args = {"name": cfg.name, "suite": "own", "kind": cfg.kind, "metrics": metrics, "files": files,
                 "format": cfg.format, "fields": fields, "config_key": key}
    labels = cfg.labels
    if cfg.kind == "classification" and labels is None:
        probe = TaskSpec(**spec_args, labels=["?"])
        labels = _labels_found(probe, key)
    if "f1" in metrics and labels is not None and len(labels) != 2:
        raise UserError(f"{key}.metrics: f1 is for two classes; this task has {len(labels)} "
                        f"({', '.join(labels)}): use macro_f1")
    try:
        return TaskSpec(**spec_args, labels=labels, prompt=cfg.prompt)
    except ValidationError as exc:
        msg = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
        raise UserError(f"{key}.{msg}" if msg.startswith("prompt") else f"{key}: {msg}") from None


def _labels_found(spec: TaskSpec, key: str) -> list[str]:
    """The distinct values of the label column over every file, sorted (numerically if all are numbers)."""
    found: set[str] = set()
    for path in spec.files.values():
        p = Path(path)
        for _, row in _read(p, spec.format or _format_of(p, spec), spec):
            if isinstance(row, dict) and row.get(spec.fields.label) not in (None, ""):
                value = row[spec.fields.label]
                found.add(label_name(value))
    if len(found) < 2:
        raise UserError(f"{key}.label_field: column {spec.fields.label!r} holds {len(found)} distinct "
                        f"value(s) {sorted(found)}; a classification task needs two or more (or set "
                        f"{key}.labels)")

    def as_number(name: str) -> float | None:
        try:
            return float(name)
        except ValueError:
            return None

    values = {name: as_number(name) for name in found}
    if all(v is not None for v in values.values()):
        if any(not float(v).is_integer() for v in values.values() if v is not None):
            raise UserError(f"{key}: the labels in {spec.fields.label!r} are fractional numbers "
                            f"(e.g. {min(found)}); set {key}.kind: regression, or give {key}.labels")
        return sorted(found, key=lambda n: values[n])
    return sorted(found)
