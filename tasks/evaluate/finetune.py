"""Fine-tuning a causal LM (a Hugging Face directory) into a classifier, regressor or multiple-choice model.

transformers' `AutoModelForSequenceClassification` puts a linear head on the last non-pad token (for a
Llama; every decoder LM in transformers pools that way): `num_labels` classes, one value for regression
(mean squared error), and for multiple choice one score per (context, choice) sequence with a
cross-entropy over an example's choices, which is what a multiple-choice head computes. Training runs on
the one loop, tasks/pretrain/loop.py: this module gives it a data source (seeded shuffle per epoch,
batches grouped by length and padded to their longest sequence) and an objective.

Two input formats. The prompt head (FinetuneConfig.head "prompt", for a classification task
whose prompt gives one continuation per class, each starting with its own token): the input is the task's
zero-shot prompt rendered without the answer, the pooled token is the prompt's last, where the LM
predicts the answer, and the head starts as the LM head's rows of the answers' first tokens, so training
starts from the zero-shot classifier instead of a random projection (pattern-based fine-tuning: Schick &
Schuetze 2021 "PET", Gao et al. 2021 "LM-BFF"). The random-init baseline gets the same inputs; its LM
head would be random, so its head starts random. Otherwise (head "linear", the default; regression,
multiple choice, or no such prompt) inputs are `[prefix] text <eos> [pair <eos>]` (the prefix is what the
tokenizer puts before any text, e.g. a BOS; none for our models), so the pooled last token has read both
texts, and a new linear head is trained; when the sequence is too long the first text is cut. The
classifier's config.json records the format under `llmpipe_task` and `predict` reads it back, so the
classifier formats its inputs the way it was trained.

    <out_dir>/classifier/   config.json, model.safetensors, tokenizer files, finetune.json
    <out_dir>/checkpoints/  the loop's checkpoints while training (a rerun resumes; removed when done)
    <out_dir>/metrics.jsonl the loop's loss log

Defaults (FinetuneConfig): lr 1e-4 with 10% warmup then cosine decay to 0, AdamW (0.9, 0.999), weight
decay 0.01, batch 16, 3 epochs. 1e-4 is meant for this pipeline's small models (millions to ~100M
parameters); models of BERT-base size and up are usually tuned at 2e-5..5e-5, and the tests' 41k-parameter
model learns a toy task in a dozen steps at 3e-3. One process: under several, each would train the
same batches.
"""
from __future__ import annotations

import json
import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tasks.core.config import stable_hash
from tasks.core.errors import UserError
from tasks.core.hashing import sha256_of
from tasks.evaluate.finetune_config import FinetuneConfig  # noqa: F401 - kept importable from here
from tasks.evaluate.prompts import ExampleLike, PromptSpec, example_fields, fill
from tasks.evaluate.score import quiet_transformers
from tasks.pretrain.checkpoint import write_json_atomic
from tasks.pretrain.loop import (
    LoopConfig,
    NonFiniteLoss,
    OutOfMemory,
    Trainer,
    make_accelerator,
    resolve_precision,
    run,
)

log = logging.getLogger("llmpipe.evaluate")

KINDS = ("classification", "regression", "multiple_choice")
TASK_KEY = "llmpipe_task"  # the classifier config.json entry that records the task and input format
FORMAT = "[prefix] text <eos> [pair <eos>]"
RECORD = "finetune.json"  # in the classifier dir: the run's spec and figures (a rerun with the same reuses it)


@dataclass
class FinetuneResult:
    predictions: list[dict[str, Any]]  # per evaluate_on example, in its order: idx, prediction, scores
    classifier_dir: Path
    train_examples: int  # examples in the training set
    steps: int  # optimizer steps
    seconds: float  # wall time of the call (loading, training, saving, predicting)
    train_examples_per_s: float | None  # examples trained on per second of training steps
    train_loss: float | None  # mean loss of the last logged steps
    reused: bool = False  # the classifier of an earlier identical run was reused: no training ran
    head: str = "linear"  # "prompt": inputs were the task's prompt and the head started from the LM head
    linear_why: str = ""  # why a classification task got the linear head when cfg.head asked for "prompt"


# input format ------------------------------------------------------------------------------------
def _prefix(tokenizer) -> tuple[int, ...]:
    """What the tokenizer puts before any text (e.g. a BOS; none for our models)."""
    return tuple(tokenizer("", add_special_tokens=True)["input_ids"])


@dataclass(frozen=True)
class PairFormat:
    """`prefix + text + [sep] (+ pair + [sep])`, at most max_length tokens."""

    prefix: tuple[int, ...]
    sep: int
    max_length: int

    @classmethod
    def for_tokenizer(cls, tokenizer, max_length: int) -> PairFormat:
        if tokenizer.eos_token_id is None:
            raise UserError("the tokenizer has no eos token, which separates and ends the texts; set "
                            "eos_token in the model directory's tokenizer_config.json")
        prefix = _prefix(tokenizer)
        if max_length < len(prefix) + 4:
            raise UserError(f"finetune.max_length {max_length} leaves no room for text")
        return cls(prefix, int(tokenizer.eos_token_id), max_length)

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "prefix_ids": list(self.prefix), "sep_id": self.sep,
                "max_length": self.max_length}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PairFormat:
        return cls(tuple(d["prefix_ids"]), d["sep_id"], d["max_length"])

    def encode(self, tokenizer, texts: Sequence[str], pairs: Sequence[str | None] | None = None) -> list[list[int]]:
        """Token ids of each (text, pair); when too long the text is cut from its end, down to half the
        room, then the pair."""
        pairs = pairs if pairs is not None else [None] * len(texts)
        if len(pairs) != len(texts):
            raise UserError(f"{len(texts)} texts but {len(pairs)} pairs")
        firsts = tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"] if texts else []
        present = [p for p in pairs if p is not None]
        seconds = iter(tokenizer(present, add_special_tokens=False, verbose=False)["input_ids"] if present else [])
        out = []
        for first, pair in zip(firsts, pairs):
            if pair is None:
                room = self.max_length - len(self.prefix) - 1
                out.append([*self.prefix, *first[:room], self.sep])
                continue
            second = next(seconds)
            room = self.max_length - len(self.prefix) - 2
            if len(first) + len(second) > room:
                first = first[:max(room - len(second), min(len(first), room // 2))]
                second = second[:room - len(first)]
            out.append([*self.prefix, *first, self.sep, *second, self.sep])
        return out


@dataclass(frozen=True)
class PromptFormat:
    """`prefix + rendered prompt` (as zero-shot scoring renders it, without the choices), at most max_length
    tokens; the head pools the prompt's last token, where the LM predicts the answer, and starts as the LM
    head's rows of `head_token_ids` (each choice's first token). When too long, the longest of text and
    pair is cut from its end until the prompt fits, so the question at the end is kept."""

    template: str
    choices: tuple[str, ...]
    head_token_ids: tuple[int, ...]
    prefix: tuple[int, ...]
    max_length: int

    @classmethod
    def for_task(cls, tokenizer, prompt: PromptSpec | None, kind: str, labels: list[str] | None,
                 max_length: int) -> tuple[PromptFormat | None, str]:
        """(the format, "") or (None, why the task gets the linear head instead)."""
        if kind != "classification":
            return None, f"a {kind} task gets a linear head"
        if prompt is None or prompt.choices is None:
            return None, "the task has no prompt with one fixed choice per class"
        if len(prompt.choices) != len(labels or ()):
            return None, f"its prompt has {len(prompt.choices)} choices for {len(labels or ())} classes"
        firsts = [tokenizer(c, add_special_tokens=False)["input_ids"][:1] for c in prompt.choices]
        ids = [f[0] for f in firsts if f]
        if len(ids) != len(firsts) or len(set(ids)) != len(ids):
            return None, f"its prompt's choices {list(prompt.choices)} do not start with distinct tokens"
        prefix = _prefix(tokenizer)
        if max_length < len(prefix) + 8:
            raise UserError(f"finetune.max_length {max_length} leaves no room for the prompt")
        return cls(prompt.template, tuple(prompt.choices), tuple(ids), prefix, max_length), ""

    def to_dict(self) -> dict[str, Any]:
        return {"format": "prompt", "template": self.template, "choices": list(self.choices),
                "head_token_ids": list(self.head_token_ids), "prefix_ids": list(self.prefix),
                "max_length": self.max_length}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PromptFormat:
        return cls(d["template"], tuple(d["choices"]), tuple(d["head_token_ids"]), tuple(d["prefix_ids"]),
                   d["max_length"])

    def encode(self, tokenizer, examples: Sequence[ExampleLike]) -> list[list[int]]:
        room = self.max_length - len(self.prefix)
        fields = [example_fields(e) for e in examples]
        rendered = [fill(self.template, f, e, "template") for f, e in zip(fields, examples)]
        ids = tokenizer(rendered, add_special_tokens=False, verbose=False)["input_ids"] if rendered else []
        out = []
        for e, f, seq in zip(examples, fields, ids):
            for _ in range(4):  # cutting by tokens, then re-rendering, can merge tokens: a few rounds
                if len(seq) <= room:
                    break
                name = max(("text", "pair"), key=lambda k: len(f.get(k) or ""))
                cut = tokenizer(f[name], add_special_tokens=False)["input_ids"]
                f = {**f, name: tokenizer.decode(cut[:max(0, len(cut) - (len(seq) - room) - 1)])}
                seq = tokenizer(fill(self.template, f, e, "template"), add_special_tokens=False)["input_ids"]
            out.append([*self.prefix, *seq[-room:]])  # a template longer than the room keeps its end
        return out


def format_from_dict(d: dict[str, Any]) -> PairFormat | PromptFormat:
    """The input format a classifier's config.json records."""
    return PromptFormat.from_dict(d) if d.get("format") == "prompt" else PairFormat.from_dict(d)


def choice_context(example: ExampleLike) -> str:
    """The first text of a multiple-choice sequence (the choice is the second): the text, its pair if any,
    and for COPA-style examples with meta["question"] ("cause"/"effect") " What was the cause?"."""
    context = example.text if example.pair is None else f"{example.text} {example.pair}"
    question = (getattr(example, "meta", None) or {}).get("question")
    return f"{context} What was the {question}?" if question else context


def encode_examples(tokenizer, fmt: PairFormat, kind: str, examples: Sequence[ExampleLike]) -> list[list[list[int]]]:
    """Each example's sequences: one, or one per choice."""
    if isinstance(fmt, PromptFormat):
        return [[ids] for ids in fmt.encode(tokenizer, examples)]
    if kind != "multiple_choice":
        return [[ids] for ids in fmt.encode(tokenizer, [e.text for e in examples], [e.pair for e in examples])]
    contexts, choices = [], []
    for e in examples:
        for choice in e.choices:
            contexts.append(choice_context(e))
            choices.append(choice)
    flat, out = iter(fmt.encode(tokenizer, contexts, choices)), []
    for e in examples:
        out.append([next(flat) for _ in e.choices])
    return out


def check_examples(kind: str, labels: list[str] | None, examples: Sequence[ExampleLike], what: str,
                   need_labels: bool) -> None:
    for e in examples:
        where = f"{what} example {e.idx}"
        if kind == "multiple_choice" and not e.choices:
            raise UserError(f"{where} has no choices (a multiple-choice task needs them)")
        if not need_labels:
            continue
        if e.label is None:
            raise UserError(f"{where} has no label")
        if kind == "classification" and not (isinstance(e.label, (int, np.integer)) and 0 <= e.label < len(labels)):
            raise UserError(f"{where}: label {e.label!r} is not a class index below {len(labels)} ({labels})")
        if kind == "multiple_choice" and not (isinstance(e.label, (int, np.integer)) and 0 <= e.label < len(e.choices)):
            raise UserError(f"{where}: label {e.label!r} is not the index of one of its {len(e.choices)} choices")
        if kind == "regression" and not (isinstance(e.label, (int, float)) and math.isfinite(e.label)):
            raise UserError(f"{where}: label {e.label!r} is not a number")


# batches and the objective -----------------------------------------------------------------------
def collate(groups: Sequence[list[list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids and attention_mask (N, L) of all sequences, right-padded to the longest; n_choices (B,)."""
    seqs = [s for g in groups for s in g]
    longest = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), longest), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), longest), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, :len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask,
            "n_choices": torch.tensor([len(g) for g in groups], dtype=torch.long)}


def task_scores(kind: str, logits: torch.Tensor, n_choices: torch.Tensor) -> torch.Tensor:
    """Head outputs (N, num_labels) -> class logits (B, K), values (B,) or choice logits (B, C) (a
    missing choice of an example with fewer is -inf)."""
    if kind == "classification":
        return logits
    if kind == "regression":
        return logits[:, 0]
    width = int(n_choices.max())
    present = torch.arange(width, device=logits.device)[None, :] < n_choices[:, None]  # (B, C)
    scores = torch.full(present.shape, float("-inf"), device=logits.device, dtype=logits.dtype)
    scores[present] = logits[:, 0]
    return scores


def head_forward(forward: Callable, kind: str, x: dict[str, torch.Tensor]) -> torch.Tensor:
    out = forward(input_ids=x["input_ids"], attention_mask=x["attention_mask"], use_cache=False)
    return task_scores(kind, out.logits.float(), x["n_choices"])


class ExampleBatches:
    """The loop's data source: each epoch a seeded shuffle of the examples, cut into batches of similar
    lengths (groups of 50 batches sorted by length, the batches then shuffled) and padded per batch.
    The position (epoch, batch) is what checkpoints save."""

    def __init__(self, groups: list[list[list[int]]], labels: torch.Tensor, batch_size: int, seed: int,
                 pad_id: int, group_by_length: bool):
        self.groups, self.labels, self.batch_size = groups, labels, batch_size
        self.seed, self.pad_id, self.group_by_length = seed, pad_id, group_by_length
        self.lengths = np.array([max(len(s) for s in g) for g in groups])
        self.seq_len = max(1, round(float(np.mean([sum(len(s) for s in g) for g in groups]))))
        self.steps_per_epoch = math.ceil(len(groups) / batch_size)
        self.epoch, self.position, self.served = 0, 0, 0
        self._order: list[np.ndarray] | None = None

    def order(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        perm = rng.permutation(len(self.groups))
        if not self.group_by_length:
            return [perm[i:i + self.batch_size] for i in range(0, len(perm), self.batch_size)]
        mega = 50 * self.batch_size
        batches = []
        for start in range(0, len(perm), mega):
            chunk = perm[start:start + mega]
            chunk = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        batches = [batches[i] for i in rng.permutation(len(batches))]
        longest = max(range(len(batches)), key=lambda i: self.lengths[batches[i]].max())
        batches[0], batches[longest] = batches[longest], batches[0]  # out of memory at once, if at all
        return batches

    def next_batch(self) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if self._order is None:
            self._order = self.order(self.epoch)
        if self.position == len(self._order):
            self.epoch, self.position, self._order = self.epoch + 1, 0, self.order(self.epoch + 1)
        batch = self._order[self.position]
        self.position += 1
        self.served += len(batch)
        return collate([self.groups[i] for i in batch], self.pad_id), self.labels[batch]

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self._order = state["epoch"], state["position"], None

    def val_batches(self, max_batches: int) -> None:
        return None  # predictions on evaluate_on are made after training


class HeadObjective:
    """Cross-entropy over classes or choices, mean squared error for regression."""

    n_losses = 1
    oom_hint = ""

    def __init__(self, kind: str):
        self.kind = kind

    def prepare(self, core, compile: bool, fsdp: bool) -> None:
        pass

    def loss(self, forward: Callable, x: dict[str, torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        scores = head_forward(forward, self.kind, x)
        if self.kind == "regression":
            return F.mse_loss(scores, y)
        return F.cross_entropy(scores, y)

    def backward(self, forward: Callable, x, y: torch.Tensor, scale: float) -> torch.Tensor:
        loss = self.loss(forward, x, y)
        (loss * scale).backward()
        return loss.detach().reshape(1)

    def losses(self, forward: Callable, x, y: torch.Tensor) -> torch.Tensor:
        return self.loss(forward, x, y).detach().reshape(1)


# prediction --------------------------------------------------------------------------------------
@torch.no_grad()
def predict_groups(model, kind: str, groups: list[list[list[int]]], pad_id: int, batch_size: int,
                   device: torch.device, autocast) -> list[tuple[int | float, list[float] | float]]:
    """(prediction, scores) per example: class index and class probabilities, the value twice, or
    choice index and choice probabilities. Batches of up to batch_size sequences, longest first."""
    model.eval()
    order = sorted(range(len(groups)), key=lambda i: -max(len(s) for s in groups[i]))
    out: list[Any] = [None] * len(groups)
    start = 0
    while start < len(order):
        end, n_seqs = start, 0
        while end < len(order) and (end == start or n_seqs + len(groups[order[end]]) <= batch_size):
            n_seqs += len(groups[order[end]])
            end += 1
        chunk = order[start:end]
        x = {k: v.to(device) for k, v in collate([groups[i] for i in chunk], pad_id).items()}
        with autocast():
            scores = head_forward(model, kind, x)
        if kind == "regression":
            for i, value in zip(chunk, scores.tolist()):
                out[i] = (value, value)
        else:
            probs = scores.softmax(-1).tolist()
            for i, p in zip(chunk, probs):
                p = p[:len(groups[i])] if kind == "multiple_choice" else p
                out[i] = (int(np.argmax(p)), p)
        start = end
    return out


def read_task(classifier_dir: Path) -> tuple[Any, dict[str, Any]]:
    """(transformers config, its `llmpipe_task` entry); a UserError when the directory is not a classifier
    this module wrote."""
    from transformers import AutoConfig

    config_file = classifier_dir / "config.json"
    try:
        meta = json.loads(config_file.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{classifier_dir}: not a classifier directory ({config_file}: {exc}); give "
                        "<evaluate output>/classifiers/<task>") from None
    if TASK_KEY not in meta or "model_type" not in meta:
        raise UserError(f"{config_file} has no '{TASK_KEY}' entry: {classifier_dir} is not a classifier written "
                        "by the evaluate stage; give <evaluate output>/classifiers/<task>")
    config = AutoConfig.from_pretrained(classifier_dir)
    return config, getattr(config, TASK_KEY)


def predict(classifier_dir: str | Path, texts: Sequence[str], pairs: Sequence[str | None] | None = None,
            choices: Sequence[list[str]] | None = None, batch_size: int = 64,
            device: str | None = None) -> list[tuple[str, float | None]]:
    """Classify texts (with their pairs) with a classifier finetune wrote: (label name, its probability);
    regression: (the value as a string, None); multiple choice (texts are the contexts, choices each
    one's candidates): (the chosen index as a string, its probability). Inputs are formatted as in
    training (config.json `llmpipe_task`)."""
    from tasks.evaluate.data import Example

    classifier_dir = Path(classifier_dir)
    config, task = read_task(classifier_dir)
    kind = task["kind"]
    if kind == "multiple_choice" and (choices is None or len(choices) != len(texts)):
        raise UserError(f"{classifier_dir} is a multiple-choice model: give one list of choices per text")
    pairs = pairs if pairs is not None else [None] * len(texts)
    choices = choices if choices is not None else [None] * len(texts)
    examples = [Example(i, t, p, choices=c) for i, (t, p, c) in enumerate(zip(texts, pairs, choices))]
    results = predict_examples(classifier_dir, examples, batch_size, device)
    if kind == "regression":
        return [(str(r["prediction"]), None) for r in results]
    if kind == "multiple_choice":
        return [(str(r["prediction"]), r["scores"][r["prediction"]]) for r in results]
    return [(config.id2label[r["prediction"]], r["scores"][r["prediction"]]) for r in results]


def predict_examples(classifier_dir: str | Path, examples: Sequence[ExampleLike], batch_size: int = 64,
                     device: str | None = None) -> list[dict[str, Any]]:
    """{idx, prediction, scores} per example, as `finetune` returns for its evaluation set: how a
    diagnostic set (AX-b, AX-g) is scored with the classifier of the task it belongs to (RTE)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    classifier_dir = Path(classifier_dir)
    _, task = read_task(classifier_dir)
    kind, fmt = task["kind"], format_from_dict(task)
    tokenizer = AutoTokenizer.from_pretrained(classifier_dir)
    dev = torch.device(device) if device else default_device()
    with quiet_transformers():
        model = AutoModelForSequenceClassification.from_pretrained(classifier_dir, dtype=torch.float32).to(dev)
    groups = encode_examples(tokenizer, fmt, kind, examples)
    outputs = predict_groups(model, kind, groups, task["pad_id"], batch_size, dev, autocast_for(dev, "auto"))
    return [{"idx": e.idx, "prediction": pred, "scores": scores} for e, (pred, scores) in zip(examples, outputs)]


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_for(device: torch.device, precision: str) -> Callable:
    """A context factory: bf16 autocast where `precision` resolves to it (as in training), else none."""
    bf16 = resolve_precision(precision, device) == "bf16"
    return lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)


# fine-tuning -------------------------------------------------------------------------------------
def task_config(hf_dir: Path, kind: str, labels: list[str] | None, tokenizer, max_length: int,
                prompt: PromptSpec | None = None, head: str = "linear"):
    """(the model's config with the head's size, labels, loss type, pad token and `llmpipe_task`, the
    input format, and why the head is linear when `head` asked for a prompt head, else ""); max_length is
    capped at the model's positions (it was trained on no longer inputs)."""
    from transformers import AutoConfig

    if kind == "classification":
        sizes = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                 "label2id": {name: i for i, name in enumerate(labels)},
                 "problem_type": "single_label_classification"}
    else:
        sizes = {"num_labels": 1, "problem_type": "regression"} if kind == "regression" else {"num_labels": 1}
    with quiet_transformers():
        config = AutoConfig.from_pretrained(hf_dir, **sizes)
    positions = getattr(config, "max_position_embeddings", None)
    max_length = min(max_length, positions or max_length)
    fmt, linear_why = None, ""
    if head == "prompt":
        fmt, linear_why = PromptFormat.for_task(tokenizer, prompt, kind, labels, max_length)
    pair_fmt = PairFormat.for_tokenizer(tokenizer, max_length)
    fmt = fmt or pair_fmt
    pad = config.pad_token_id if config.pad_token_id is not None else tokenizer.pad_token_id
    if pad is None:
        pad = pair_fmt.sep
    if pad == pair_fmt.sep and isinstance(fmt, PairFormat):  # the head pools the last non-pad token
        log.warning("%s has no pad token apart from eos: the classifier pools the last token before the "
                    "final eos", hf_dir)
    config.pad_token_id = pad
    if hasattr(config, "llmpipe"):  # the export's extra multi-token heads are not part of the classifier
        del config.llmpipe
    setattr(config, TASK_KEY, {"kind": kind, "pad_id": pad, **fmt.to_dict()})
    return config, fmt, linear_why


def model_builder(hf_dir: Path, config, random_init: bool,
                  head_token_ids: Sequence[int] = ()) -> Callable[[], torch.nn.Module]:
    """Pretrained weights and a head (new, or the LM head's rows of head_token_ids), or the same
    architecture from scratch (whose LM head would be random: its head starts random); the loop seeds both."""
    from transformers import AutoModelForSequenceClassification

    def build() -> torch.nn.Module:
        with quiet_transformers():
            if random_init:
                return AutoModelForSequenceClassification.from_config(config, dtype=torch.float32)
            model, info = AutoModelForSequenceClassification.from_pretrained(
                hf_dir, config=config, dtype=torch.float32, output_loading_info=True)
        missing = [k for k in info["missing_keys"] if not k.startswith("score.")]
        if missing:
            log.warning("%s lacks weights the classifier needs; they start random: %s", hf_dir, missing)
        if head_token_ids:
            with torch.no_grad():
                model.score.weight.copy_(lm_head_rows(hf_dir, config, model, head_token_ids))
        return model

    return build


def lm_head_rows(hf_dir: Path, config, classifier, token_ids: Sequence[int]) -> torch.Tensor:
    """The causal LM's output-embedding rows of token_ids: the input embeddings when they are tied, else
    `lm_head.weight` from the directory's safetensors (or, failing those, the model loaded whole)."""
    ids = torch.tensor(list(token_ids), dtype=torch.long)
    if getattr(config, "tie_word_embeddings", False):
        return classifier.get_input_embeddings().weight.detach()[ids].float()
    from safetensors import safe_open

    for path in sorted(Path(hf_dir).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            if "lm_head.weight" in f.keys():
                return f.get_slice("lm_head.weight")[:][ids].float()
    from transformers import AutoModelForCausalLM

    with quiet_transformers():
        lm = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    return lm.get_output_embeddings().weight.detach()[ids].float()


def label_tensor(kind: str, examples: Sequence[ExampleLike]) -> torch.Tensor:
    if kind == "regression":
        return torch.tensor([float(e.label) for e in examples], dtype=torch.float32)
    return torch.tensor([int(e.label) for e in examples], dtype=torch.long)


def loop_config(cfg: FinetuneConfig, out_dir: Path, steps: int) -> LoopConfig:
    return LoopConfig(
        out_dir=str(out_dir), micro_batch=cfg.batch_size, grad_accum=1, lr=cfg.lr, min_lr_ratio=0.0,
        warmup_steps=math.ceil(cfg.warmup_ratio * steps), weight_decay=cfg.weight_decay, beta1=0.9,
        beta2=0.999, grad_clip=cfg.grad_clip, max_steps=steps, max_tokens=0, precision=cfg.precision,
        compile=cfg.compile, attention="auto", cpu=False, cpu_threads=0, seed=cfg.seed, eval_every=0,
        eval_batches=0, checkpoint_every=cfg.checkpoint_every, keep_checkpoints=1, log_every=min(50, steps),
        progress=False)


def run_spec(hf_dir: Path, kind: str, labels: list[str] | None, train: Sequence[ExampleLike],
             cfg: FinetuneConfig, random_init: bool, fmt: PairFormat | PromptFormat) -> dict[str, Any]:
    """What the trained weights depend on (the input format included: a prompt head's template and head
    tokens): checkpoints and the finished classifier are reused only by a run with the same spec."""
    data = [[e.text, e.pair, e.label, e.choices, choice_context(e)] for e in train]
    weights = {} if random_init else {f.name: sha256_of(f) for f in sorted(Path(hf_dir).glob("*.safetensors"))}
    return {"hf_dir": str(Path(hf_dir).resolve()), "weights_sha256": weights, "kind": kind, "labels": labels,
            "random_init": random_init, "config": cfg.model_dump(mode="json"),
            "train_sha256": stable_hash(data, 64), "format": fmt.to_dict()}


def finetune(hf_dir: str | Path, kind: str, labels: list[str] | None, train: Sequence[ExampleLike],
             evaluate_on: Sequence[ExampleLike], cfg: FinetuneConfig, out_dir: str | Path,
             random_init: bool = False, progress: Callable[[int, int], None] | None = None,
             prompt: PromptSpec | None = None) -> FinetuneResult:
    """Fine-tune hf_dir's model with a `kind` head on `train`, save it as <out_dir>/classifier and predict
    `evaluate_on`. With cfg.head "prompt" and a prompt whose choices fit (PromptFormat.for_task), the
    inputs are the rendered prompt and the head starts from the LM head. A rerun with the same out_dir
    resumes from the last checkpoint, or reuses the finished classifier when nothing it depends on
    changed. progress(step, total_steps) runs after every step."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    start = time.perf_counter()
    hf_dir, out_dir = Path(hf_dir), Path(out_dir)
    if kind not in KINDS:
        raise UserError(f"finetune: kind must be one of {KINDS}, not {kind!r}")
    if kind == "classification" and (not labels or len(labels) < 2):
        raise UserError(f"finetune: a classification task needs two or more labels, got {labels!r}")
    if not train:
        raise UserError(f"finetune: no training examples for {hf_dir}")
    check_examples(kind, labels, train, "training", need_labels=True)
    check_examples(kind, labels, evaluate_on, "evaluation", need_labels=False)
    if not (hf_dir / "config.json").exists():
        raise UserError(f"{hf_dir} is not a Hugging Face model directory (no config.json); export one with "
                        "tasks/pretrain/export.py")
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    config, fmt, linear_why = task_config(hf_dir, kind, labels, tokenizer, cfg.max_length, prompt, cfg.head)
    if linear_why and kind == "classification":
        log.info("%s: linear head, not a prompt head: %s", out_dir.name, linear_why)
    spec = run_spec(hf_dir, kind, labels, train, cfg, random_init, fmt)
    classifier = out_dir / "classifier"
    record = _finished(classifier, spec)
    reused = record is not None
    if reused:
        log.info("reusing %s (trained by an identical run)", classifier)
        device = default_device()
        with quiet_transformers():
            model = AutoModelForSequenceClassification.from_pretrained(classifier, dtype=torch.float32)
        model, autocast = model.to(device), autocast_for(device, cfg.precision)
    else:
        record, model, device, autocast = _train(hf_dir, kind, train, cfg, out_dir, config, tokenizer, fmt,
                                                 spec, random_init, progress)
    groups = encode_examples(tokenizer, fmt, kind, evaluate_on)
    outputs = predict_groups(model, kind, groups, config.pad_token_id, cfg.eval_batch_size, device, autocast)
    predictions = [{"idx": e.idx, "prediction": pred, "scores": scores}
                   for e, (pred, scores) in zip(evaluate_on, outputs)]
    return FinetuneResult(predictions=predictions, classifier_dir=classifier, train_examples=len(train),
                          steps=record["steps"], seconds=time.perf_counter() - start,
                          train_examples_per_s=record["train_examples_per_s"],
                          train_loss=record["train_loss"], reused=reused,
                          head="prompt" if isinstance(fmt, PromptFormat) else "linear", linear_why=linear_why)


def _finished(classifier: Path, spec: dict[str, Any]) -> dict[str, Any] | None:
    path = classifier / RECORD
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    return record if record.get("spec") == spec else None


def _train(hf_dir, kind, train, cfg, out_dir, config, tokenizer, fmt, spec, random_init, progress):
    """Train on the loop, publish the classifier, drop the checkpoints; returns (record, model, device,
    autocast)."""
    groups = encode_examples(tokenizer, fmt, kind, train)
    data = ExampleBatches(groups, label_tensor(kind, train), cfg.batch_size, cfg.seed, config.pad_token_id,
                          cfg.group_by_length)
    steps = cfg.epochs * data.steps_per_epoch
    out_dir.mkdir(parents=True, exist_ok=True)
    loop_cfg = loop_config(cfg, out_dir, steps)
    head_ids = fmt.head_token_ids if isinstance(fmt, PromptFormat) else ()
    trainer = Trainer(loop_cfg, model_builder(hf_dir, config, random_init, head_ids), data, HeadObjective(kind),
                      make_accelerator(loop_cfg), model_spec=spec, fused_on_cpu=True)
    on_step = (lambda t: progress(t.step, t.total_steps)) if progress else None
    try:
        loop, summary = run(trainer, log.info, on_step)
    except OutOfMemory as exc:
        raise OutOfMemory(f"fine-tuning {hf_dir} ran out of device memory at finetune.batch_size="
                          f"{cfg.batch_size}, max_length={fmt.max_length}: lower either") from exc
    except NonFiniteLoss as exc:
        raise NonFiniteLoss(f"fine-tuning {hf_dir} diverged ({exc}); lower finetune.lr or raise "
                            "finetune.warmup_ratio") from exc
    seconds = loop.train_seconds
    record = {"spec": spec, "steps": trainer.step, "train_loss": summary["train_loss"],
              "train_examples_per_s": data.served / seconds if data.served and seconds else None,
              "train_seconds": seconds, "precision": trainer.precision, "device": str(trainer.device),
              "seq_len_mean": data.seq_len}
    _publish(trainer.core, tokenizer, record, out_dir / "classifier")
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    return record, trainer.core, trainer.device, trainer.autocast


def _publish(model, tokenizer, record: dict[str, Any], final: Path) -> None:
    """save_pretrained of the model and tokenizer plus finetune.json into a temp dir, renamed to `final`."""
    tmp = final.with_name(f".{final.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with quiet_transformers():
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    write_json_atomic(tmp / RECORD, record)
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
