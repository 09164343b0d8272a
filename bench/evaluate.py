"""Evaluate-stage speed: log-likelihood scoring against lm-evaluation-harness, fine-tuning against
transformers' Trainer, on the same exported model.

    python -m bench.evaluate                                  # CPU: ~1.5 min, 1 thread for both sides
    python -m bench.evaluate --limit 500 --rounds 3 --out bench-evaluate.json
    python -m bench.evaluate --shape gpt2-small --limit 1000 --out bench-evaluate.json   # GPU machine
    python -m bench.evaluate --model store/pretrain/<id>/hf   # a trained model (HF dir or one of ours)

Scoring (zero-shot, tasks.yaml's default prompts; COPA, BoolQ and CB, --limit examples each from the
SuperGLUE dev sets, topped up from train where a dev set has fewer):
  * ours: render the prompts, `LoglikScorer.score`, `predict_from_scores`, accuracy; at each of
    --max-batch-tokens (default the evaluate stage's: 2048 on CPU; 32768 and 65536 on GPU), the fastest counts;
  * lm-eval (`pip install llmpipe[bench]`): model "hf" (HFLM) on the same directory, same dtype, and a task
    written at run time into a temp dir: a JSONL of the same examples (dataset_path json) and a YAML whose
    doc_to_text is our template in Jinja, doc_to_choice our continuations (their leading space as
    target_delimiter), doc_to_target the label, output_type multiple_choice, metrics acc and acc_norm.
    Timed: `lm_eval.evaluator.evaluate` on the loaded task (building requests, tokenizing, the model,
    metrics); its `loglikelihood` call alone is timed too ("ll" columns). It runs at each of
    --lm-eval-batch-size (default 8 and 32 on CPU, 64 and auto on GPU) and its fastest counts.
  Not timed on either side: loading the model and reading the data. One small untimed warm-up call on
  each side first; rounds alternate the two sides and the fastest run of each counts.
Both sides score the same examples, so they must agree: the table gives both accuracies, the number of
differing predictions (acc and acc_norm), the largest log-likelihood difference and the number of
requests whose (context, continuation) strings differ. The exit status is 1 when float32 predictions differ.

Fine-tuning: SST-2's first --ft-examples training sentences, one epoch as a 2-class classifier, by
`tasks.evaluate.finetune.finetune` (the shared training loop, length-grouped batches) and by
transformers.Trainer on the very token ids ours trains on, set up as a competent user would
(DataCollatorWithPadding, group_by_length sampling, the same AdamW settings and schedule, bf16 on CUDA as
ours, no saving, logging or reporting). examples/s over all steps and after the first (which pays
one-time costs), per wall second and per CPU second of the process; the best of --ft-rounds counts.

Without --model, the model has random weights (speed does not depend on them, and the agreement check
holds for any weights) in --shape (default demo: the demo pipeline's 4 layers x 128, T=128), with a byte
BPE (4k) trained on the benchmark's own texts. Needs ../shared/data (or LLMPIPE_DATA).
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import os
import platform
import string
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save_file

from bench.common import shared_data
from models.config import GPTConfig, pad_vocab
from models.gpt import GPT
from tasks.core.artifacts import rounded
from tasks.evaluate.data import Example, load_split, resolve
from tasks.evaluate.finetune import FinetuneConfig, encode_examples, finetune, task_config
from tasks.evaluate.prompts import PromptSpec, example_fields, predict_from_scores, render
from tasks.evaluate.score import LoglikScorer, load_causal_lm, quiet_transformers
from tasks.pretrain.checkpoint import is_tied, weights_for_saving
from tasks.pretrain.export import export_hf

ARCH = {"mlp": "swiglu", "dropout": 0.0, "tie_embeddings": True, "n_future": 1}
SHAPES: dict[str, dict[str, int]] = {
    # the demo pipeline's model (pipelines.yaml defaults.pretrain)
    "demo": {"n_layer": 4, "n_embd": 128, "n_head": 4, "n_kv_head": 0, "block_size": 128},
    "small": {"n_layer": 4, "n_embd": 256, "n_head": 4, "n_kv_head": 0, "block_size": 512},
    # GPT-2 small's shape and vocabulary size (the LM head's cost is the real one; the tokenizer uses fewer)
    "gpt2-small": {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_kv_head": 0, "block_size": 1024,
                   "vocab_size": 50304},
}
TASKS = ("copa", "boolq", "cb")
SST2_LABELS = ["negative", "positive"]
LM_EVAL_FIELDS = ("bench_label", "bench_choices")  # the JSONL's own columns besides the template's fields


# -- the model ------------------------------------------------------------------------------------

def build_model(d: Path, texts: list[str], shape: dict[str, int], vocab: int = 4096, seed: int = 0) -> Path:
    """One of our model directories with random weights (seeded) and a byte BPE trained on `texts`,
    exported to d/hf; returns d/hf."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    ours = d / "ours"
    ours.mkdir(parents=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>",
                                                                                        "<|pad|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(ours / "tokenizer.json"))
    shape = dict(shape)
    vocab_size = max(shape.pop("vocab_size", 0), pad_vocab(tok.get_vocab_size()))
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab_size, **shape, **ARCH))
    save_file(weights_for_saving(model.state_dict(), is_tied(model)), str(ours / "model.safetensors"))
    meta = {"architecture": "llmpipe-gpt", "eot_id": 0, "model": model.cfg.to_dict(),
            "tokenizer": "tokenizer.json"}
    (ours / "config.json").write_text(json.dumps(meta))
    return export_hf(ours, d / "hf")


def model_dir(path: Path, tmp: Path) -> Path:
    """A Hugging Face directory for `path`: itself, or the export of one of our model directories."""
    config = path / "config.json"
    if not config.exists():
        sys.exit(f"--model {path}: no config.json there; give a Hugging Face model directory or one of "
                 "ours (store/pretrain/<id>/hf or a directory with model.safetensors and config.json)")
    if json.loads(config.read_text()).get("architecture") == "llmpipe-gpt":
        return export_hf(path, tmp / "hf")
    return path


def model_summary(hf_dir: Path) -> dict[str, Any]:
    cfg = json.loads((hf_dir / "config.json").read_text())
    keys = ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "vocab_size",
            "max_position_embeddings")
    return {k: cfg.get(k) for k in keys}


# -- the examples ---------------------------------------------------------------------------------

def task_examples(name: str, root: Path, limit: int) -> tuple[PromptSpec, list[Example], str]:
    """(the task's default prompt, up to `limit` examples: the dev set, then train where the dev set has
    fewer, where they came from)."""
    spec = resolve([name])[0]
    if spec.prompt is None or spec.kind not in ("classification", "multiple_choice"):
        sys.exit(f"--tasks {name}: scoring needs a classification or multiple-choice task with a prompt")
    examples, where = [], []
    for split in ("dev", "train"):
        if len(examples) >= limit:
            break
        got = load_split(spec, split, root, limit=limit - len(examples))
        if hasattr(got, "examples"):
            examples += got.examples
            where.append(f"{split} {len(got.examples)}")
    if not examples:
        sys.exit(f"--tasks {name}: no examples under {root} (dev or train split)")
    return PromptSpec(**spec.prompt), examples, " + ".join(where)


def sst2(root: Path, n: int) -> list[Example]:
    path = root / "glue" / "SST-2" / "train.tsv"
    if not path.exists():
        sys.exit(f"SST-2 training data not found at {path}: the fine-tuning rows need it "
                 "(or --skip-finetune)")
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:n + 1]
    return [Example(i, sentence.strip(), label=int(label)) for i, (sentence, label) in enumerate(rows)]


def corpus(examples: list[Example]) -> list[str]:
    texts = []
    for e in examples:
        texts += [e.text, *([e.pair] if e.pair else []), *(e.choices or [])]
    return texts


# -- ours -----------------------------------------------------------------------------------------

def run_ours(scorer: LoglikScorer, prompt: PromptSpec, examples: list[Example],
             max_batch_tokens: int) -> dict[str, Any]:
    """Render, score, predict; timed from the first prompt to the accuracy."""
    scorer.max_batch_tokens = max_batch_tokens
    sync()
    t0 = time.perf_counter()
    requests = [render(prompt, e) for e in examples]
    t1 = time.perf_counter()
    scores = scorer.score(requests)
    sync()
    t2 = time.perf_counter()
    preds = [predict_from_scores(s) for s in scores]
    acc = sum(p[0] == e.label for p, e in zip(preds, examples)) / len(examples)
    acc_norm = sum(p[1] == e.label for p, e in zip(preds, examples)) / len(examples)
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "score_seconds": t2 - t1, "max_batch_tokens": max_batch_tokens,
            "acc": acc, "acc_norm": acc_norm,
            "pred": [p[0] for p in preds], "pred_norm": [p[1] for p in preds],
            "logprobs": [[c.logprob for c in s] for s in scores], "requests": requests}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# -- lm-evaluation-harness ------------------------------------------------------------------------

def jinja_template(template: str) -> str:
    """A str.format template as the same Jinja template ({text} -> {{ text }}); literal text that Jinja
    would read as markup goes in a raw block."""
    out = []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        if literal:
            markup = any(m in literal for m in ("{{", "{%", "{#"))
            out.append("{% raw %}" + literal + "{% endraw %}" if markup else literal)
        if name is not None:
            if spec or conversion:
                raise ValueError(f"template {template!r}: field {{{name}}} has a format spec or conversion, "
                                 "which this benchmark does not translate to Jinja")
            out.append("{{ " + name + " }}")
    return "".join(out)


def write_lm_eval_task(folder: Path, name: str, prompt: PromptSpec,
                       examples: list[Example]) -> tuple[str, str]:
    """The task's JSONL and YAML under folder/name; returns (the lm-eval task name, its target_delimiter)."""
    task = f"llmpipe_bench_{name}"
    conts = [render(prompt, e)[1] for e in examples]
    spaced = all(c.startswith(" ") for cs in conts for c in cs)
    delimiter, cut = (" ", 1) if spaced else ("", 0)
    d = folder / name
    d.mkdir(parents=True)
    with open(d / "data.jsonl", "w", encoding="utf-8") as f:
        for e, cs in zip(examples, conts):
            fields = example_fields(e)
            clash = set(fields) & set(LM_EVAL_FIELDS)
            if clash:
                raise ValueError(f"{name}: example fields {sorted(clash)} clash with the benchmark's columns")
            row = fields | {"bench_label": e.label, "bench_choices": [c[cut:] for c in cs]}
            f.write(json.dumps(row) + "\n")
    fixed = prompt.choices
    config = {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(d / "data.jsonl")},
                           "cache_dir": str(folder / ".cache")},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": jinja_template(prompt.template),
        "doc_to_choice": [c[cut:] for c in fixed] if fixed is not None else "bench_choices",
        "doc_to_target": "bench_label",
        "target_delimiter": delimiter,
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True}
                        for m in ("acc", "acc_norm")],
        "metadata": {"version": 1.0},
    }
    (d / f"{task}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return task, delimiter


class LmEval:
    """HFLM on the model directory (loaded once) and the tasks written to a temp dir."""

    def __init__(self, hf_dir: Path, folder: Path, device: str, dtype: str, max_batch_size: int) -> None:
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        self.folder = folder
        # log-softmax in float32 as ours (lm-eval's default is the model's dtype: coarser in bfloat16)
        self.lm = HFLM(pretrained=str(hf_dir), backend="causal", device=device, dtype=dtype,
                       batch_size=1, max_batch_size=max_batch_size, softmax_dtype="float32")
        self.manager = lambda: TaskManager(include_path=str(folder), include_defaults=False)
        self.ll_seconds = 0.0
        inner = self.lm.loglikelihood

        def timed(requests, disable_tqdm: bool = False):
            sync()
            t0 = time.perf_counter()
            out = inner(requests, disable_tqdm=True)  # no progress bars on either side
            sync()
            self.ll_seconds += time.perf_counter() - t0
            return out

        self.lm.loglikelihood = timed

    def run(self, task: str, delimiter: str, batch_size: int | str,
            limit: int | None = None) -> dict[str, Any]:
        """Evaluate one task (timed) at `batch_size` (a number or "auto"); per example its log-likelihoods,
        requests and predictions (acc_norm's as lm-eval computes it: log-likelihood over len(choice), the
        continuation less the delimiter); the task's metrics by name (acc and acc_norm None when the task
        has others, as CrowS-Pairs)."""
        from lm_eval.evaluator import evaluate

        self.lm.batch_size_per_gpu = batch_size  # what HFLM(batch_size=...) sets
        loaded = self.manager().load([task])  # reads the JSONL: not timed, as our side's load_split
        self.ll_seconds = 0.0
        sync()
        t0 = time.perf_counter()
        out = evaluate(self.lm, loaded, limit=limit, log_samples=True, verbosity="ERROR")
        seconds = time.perf_counter() - t0
        metrics = out["results"][task]
        samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
        lls = [[float(r[0]) for r in s["filtered_resps"]] for s in samples]
        args = [[tuple(a[:2]) for a in s["arguments"]] for s in samples]  # (context, continuation) each
        norm = [[lp / max(1, len(a[1]) - len(delimiter)) for lp, a in zip(x, arg)]
                for x, arg in zip(lls, args)]
        used = f"auto ({', '.join(map(str, self.lm.batch_sizes.values()))})" if batch_size == "auto" \
            else str(batch_size)
        return {"seconds": seconds, "ll_seconds": self.ll_seconds, "batch_size": used,
                "acc": metrics.get("acc,none"), "acc_norm": metrics.get("acc_norm,none"), "logprobs": lls,
                "metrics": {k.split(",")[0]: v for k, v in metrics.items() if k.endswith(",none")},
                "arguments": args,
                "pred": [argmax(x) for x in lls], "pred_norm": [argmax(x) for x in norm]}


def argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)  # the first on ties, as numpy's


def compare(ours: dict[str, Any], theirs: dict[str, Any], examples: list[Example]) -> dict[str, Any]:
    """Differing predictions, the largest log-likelihood difference, requests whose strings differ."""
    if len(theirs["logprobs"]) != len(examples):
        raise RuntimeError(f"lm-eval returned {len(theirs['logprobs'])} samples for {len(examples)} examples")
    diff_pred = sum(a != b for a, b in zip(ours["pred"], theirs["pred"]))
    diff_norm = sum(a != b for a, b in zip(ours["pred_norm"], theirs["pred_norm"]))
    max_diff, diff_strings = 0.0, 0
    for lp_ours, lp_theirs, (ctx, conts), args in zip(ours["logprobs"], theirs["logprobs"], ours["requests"],
                                                       theirs["arguments"]):
        max_diff = max([max_diff, *(abs(a - b) for a, b in zip(lp_ours, lp_theirs))])
        diff_strings += [(ctx, c) for c in conts] != list(args)
    return {"differing_predictions": diff_pred, "differing_predictions_norm": diff_norm,
            "max_abs_logprob_diff": max_diff,
            "differing_request_strings": diff_strings}


def bench_scoring(args: argparse.Namespace, hf_dir: Path, tmp: Path, data: dict[str, tuple]) -> list[dict]:
    device = "cuda" if args.gpu else "cpu"
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model, tokenizer = load_causal_lm(hf_dir, device, dtype=dtype)
    scorer = LoglikScorer(model, tokenizer, device)
    folder = tmp / "lm_eval_tasks"
    folder.mkdir()
    names = {name: write_lm_eval_task(folder, name, prompt, examples)
             for name, (prompt, examples, _) in data.items()}
    harness = LmEval(hf_dir, folder, device, args.dtype, args.lm_eval_max_batch_size)
    # warm-up, untimed: our scorer's first call probes the model; lm-eval's first call sets itself up
    first, (prompt, examples, _) = next(iter(data.items()))
    scorer.score([render(prompt, e) for e in examples[:4]])
    harness.run(*names[first], args.lm_eval_batch_size[0], limit=4)
    rows = []
    for name, (prompt, examples, source) in data.items():
        ours_runs, their_runs = [], []
        for _ in range(args.rounds):  # alternating; the fastest run of each side counts
            ours_runs += [run_ours(scorer, prompt, examples, b) for b in args.max_batch_tokens]
            their_runs += [harness.run(*names[name], bs) for bs in args.lm_eval_batch_size]
        ours = min(ours_runs, key=lambda r: r["seconds"])
        theirs = min(their_runs, key=lambda r: r["seconds"])
        n = len(examples)
        by_size: dict[str, float] = {}
        for r in their_runs:
            by_size[r["batch_size"]] = min(by_size.get(r["batch_size"], math.inf), r["seconds"])
        by_budget: dict[int, float] = {}
        for r in ours_runs:
            b = r["max_batch_tokens"]
            by_budget[b] = min(by_budget.get(b, math.inf), r["seconds"])
        row = {"task": name, "examples": n, "source": source, "choices": len(ours["requests"][0][1]),
               "ours_max_batch_tokens": ours["max_batch_tokens"], "ours_s_by_max_batch_tokens": by_budget,
               "lm_eval_batch_size": theirs["batch_size"], "lm_eval_s_by_batch_size": by_size,
               "ours_s": ours["seconds"], "ours_score_s": ours["score_seconds"],
               "lm_eval_s": theirs["seconds"], "lm_eval_loglikelihood_s": theirs["ll_seconds"],
               "ours_examples_per_s": n / ours["seconds"], "lm_eval_examples_per_s": n / theirs["seconds"],
               "ratio": theirs["seconds"] / ours["seconds"],
               "ratio_loglikelihood_only": theirs["ll_seconds"] / ours["score_seconds"],
               "ours_acc": ours["acc"], "lm_eval_acc": theirs["acc"],
               "ours_acc_norm": ours["acc_norm"], "lm_eval_acc_norm": theirs["acc_norm"],
               **compare(ours, theirs, examples)}
        rows.append(row)
        print(f"  {name}: ours {row['ours_s']:.2f} s, lm-eval {row['lm_eval_s']:.2f} s "
              f"({row['ratio']:.2f}x), acc {row['ours_acc']:.3f} / {row['lm_eval_acc']:.3f}, "
              f"differing predictions {row['differing_predictions']} (acc_norm "
              f"{row['differing_predictions_norm']})", flush=True)
    return rows


# -- fine-tuning ----------------------------------------------------------------------------------

def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def after_first_step(ends: list[tuple[float, float]], n_examples: int, batch_size: int) -> dict[str, float]:
    """Examples per wall second and per CPU second of this process, from the end of the first step to the
    end of the last (one epoch)."""
    n = n_examples - batch_size
    return {"examples_per_s_after_first_step": n / (ends[-1][0] - ends[0][0]),
            "examples_per_cpu_s_after_first_step": n / (ends[-1][1] - ends[0][1])}


def finetune_ours(hf_dir: Path, train: list[Example], cfg: FinetuneConfig, out: Path) -> dict[str, float]:
    stamps: list[tuple[float, float]] = []
    result = finetune(hf_dir, "classification", SST2_LABELS, train, [], cfg, out,
                      progress=lambda step, total: stamps.append(clocks()))
    # the loop's own figure: from the start of the first step to the end of the last
    return {"steps": len(stamps), "examples_per_s": result.train_examples_per_s,
            **after_first_step(stamps, len(train), cfg.batch_size)}


def finetune_trainer(hf_dir: Path, train: list[Example], cfg: FinetuneConfig, out: Path) -> dict[str, float]:
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        PrinterCallback,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    config, fmt, _ = task_config(hf_dir, "classification", SST2_LABELS, tokenizer, cfg.max_length)
    ids = encode_examples(tokenizer, fmt, "classification", train)  # the very sequences ours trains on
    dataset = [{"input_ids": g[0], "attention_mask": [1] * len(g[0]), "labels": e.label}
               for g, e in zip(ids, train)]
    torch.manual_seed(cfg.seed)
    with quiet_transformers():  # the new head's weights are reported missing by design
        model = AutoModelForSequenceClassification.from_pretrained(hf_dir, config=config, dtype=torch.float32)
    stamps: list[tuple[float, float]] = []

    class Stamp(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if not stamps:
                stamps.append(clocks())

        def on_step_end(self, args, state, control, **kw):
            sync()
            stamps.append(clocks())

    gpu = torch.cuda.is_available()
    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=cfg.batch_size, num_train_epochs=cfg.epochs,
        learning_rate=cfg.lr, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.grad_clip, lr_scheduler_type="cosine", train_sampling_strategy="group_by_length",
        save_strategy="no", logging_strategy="no", eval_strategy="no", report_to="none", use_cpu=not gpu,
        bf16=gpu and torch.cuda.is_bf16_supported(),  # ours: bf16 autocast on CUDA (precision "auto")
        disable_tqdm=True, dataloader_num_workers=0, seed=cfg.seed)
    trainer = Trainer(model=model, args=args, train_dataset=dataset,
                      data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
                      callbacks=[Stamp()])
    trainer.remove_callback(PrinterCallback)  # it prints the end-of-training summary (disable_tqdm's bar)
    trainer.train()
    return {"steps": len(stamps) - 1, "examples_per_s": len(train) / (stamps[-1][0] - stamps[0][0]),
            **after_first_step(stamps[1:], len(train), cfg.batch_size)}


def bench_finetune(args: argparse.Namespace, hf_dir: Path, tmp: Path, train: list[Example]) -> dict[str, Any]:
    cfg = FinetuneConfig(epochs=1, batch_size=args.ft_batch_size, checkpoint_every=0)
    runs: dict[str, list[dict[str, float]]] = {"ours": [], "trainer": []}
    for r in range(args.ft_rounds):
        for name, fn in (("ours", finetune_ours), ("trainer", finetune_trainer)):
            runs[name].append(fn(hf_dir, train, cfg, tmp / f"finetune-{name}-{r}"))
            figures = ", ".join(f"{k} {v:.1f}" for k, v in runs[name][-1].items())
            print(f"  fine-tune {name} round {r}: {figures}", flush=True)
    out: dict[str, Any] = {"examples": len(train), "batch_size": cfg.batch_size, "rounds": args.ft_rounds}
    for key in ("examples_per_s", "examples_per_s_after_first_step", "examples_per_cpu_s_after_first_step"):
        ours = max(r[key] for r in runs["ours"])
        theirs = max(r[key] for r in runs["trainer"])
        out[key] = {"ours": ours, "trainer": theirs, "ratio": ours / theirs}
    out["runs"] = runs
    return out


# -- output ---------------------------------------------------------------------------------------

SCORING_COLUMNS = (  # (header, row key, format)
    ("task", "task", "{}"), ("n", "examples", "{}"), ("ours s", "ours_s", "{:.2f}"),
    ("mbt", "ours_max_batch_tokens", "{}"), ("lm-eval s", "lm_eval_s", "{:.2f}"),
    ("bs", "lm_eval_batch_size", "{}"), ("ratio", "ratio", "{:.2f}x"),
    ("lm-eval ll s", "lm_eval_loglikelihood_s", "{:.2f}"),
    ("ll ratio", "ratio_loglikelihood_only", "{:.2f}x"),
    ("ours acc", "ours_acc", "{:.3f}"), ("lm-eval acc", "lm_eval_acc", "{:.3f}"),
    ("ours acc_n", "ours_acc_norm", "{:.3f}"), ("lm-eval acc_n", "lm_eval_acc_norm", "{:.3f}"),
    ("diff pred", "differing_predictions", "{}"), ("diff pred_n", "differing_predictions_norm", "{}"),
    ("max |dlp|", "max_abs_logprob_diff", "{:.1e}"), ("diff str", "differing_request_strings", "{}"),
)


def print_table(results: dict[str, Any]) -> None:
    rows = results.get("scoring", [])
    if rows:
        table = [[h for h, _, _ in SCORING_COLUMNS]]
        table += [[fmt.format(r[key]) for _, key, fmt in SCORING_COLUMNS] for r in rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(SCORING_COLUMNS))]
        print("\nlog-likelihood scoring (ratio: lm-eval seconds / ours; mbt: our fastest max_batch_tokens; "
              "bs: lm-eval's fastest batch size; ll: its loglikelihood call alone against our score call; "
              "diff pred: differing predictions; max |dlp|: largest log-likelihood difference; diff str: "
              "requests whose strings differ)")
        for row in table:
            print("  " + "  ".join(c.rjust(w) for c, w in zip(row, widths)))
        total_ours = sum(r["ours_s"] for r in rows)
        total_theirs = sum(r["lm_eval_s"] for r in rows)
        n = sum(r["examples"] for r in rows)
        print(f"  all tasks: ours {n / total_ours:.1f} examples/s, lm-eval {n / total_theirs:.1f} "
              f"examples/s, {total_theirs / total_ours:.2f}x (target >= 2x)")
    ft = results.get("finetune")
    if ft:
        print(f"\nfine-tuning SST-2, {ft['examples']} examples, batch {ft['batch_size']}, one epoch "
              "(examples/s; ratio ours / Trainer, target >= 1x)")
        for key, label in (("examples_per_s", "all steps"),
                           ("examples_per_s_after_first_step", "after the first step"),
                           ("examples_per_cpu_s_after_first_step", "per CPU s, after the first step")):
            v = ft[key]
            print(f"  {label:34s} ours {v['ours']:8.1f}  Trainer {v['trainer']:8.1f}  {v['ratio']:.2f}x")


def device_description(gpu: bool) -> str:
    if gpu:
        props = torch.cuda.get_device_properties(0)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB, torch {torch.__version__})"
    return f"CPU {platform.machine()} x{torch.get_num_threads()} threads (torch {torch.__version__})"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.evaluate", description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, help="a Hugging Face model directory or one of ours (exported "
                   "here); default: random weights in --shape")
    p.add_argument("--shape", choices=sorted(SHAPES), default="demo", help="model shape without --model")
    p.add_argument("--tasks", default=",".join(TASKS), help="comma-separated (default copa,boolq,cb)")
    p.add_argument("--limit", type=int, default=200, help="examples per task (default 200)")
    p.add_argument("--rounds", type=int, default=2, help="scoring rounds per task, the fastest counts "
                   "(default 2)")
    p.add_argument("--max-batch-tokens", help="our scorer's batch budget, comma-separated: each is run, "
                   "the fastest counts (default the evaluate stage's: 2048 on CPU; 32768,65536 on GPU)")
    p.add_argument("--lm-eval-batch-size", default=None, help="lm-eval's batch_size: numbers or auto, comma-"
                   "separated: each is run, the fastest counts (default 8,32 on CPU, 64,auto on GPU)")
    p.add_argument("--lm-eval-max-batch-size", type=int, default=256,
                   help="lm-eval's max_batch_size for auto (default 256)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="both sides' weights (default float32 "
                   "on CPU, bfloat16 on GPU)")
    p.add_argument("--ft-examples", type=int, default=4000,
                   help="SST-2 sentences fine-tuned on (default 4000)")
    p.add_argument("--ft-batch-size", type=int, default=16)
    p.add_argument("--ft-rounds", type=int, default=2, help="alternating fine-tuning rounds, the best counts "
                   "(default 2)")
    p.add_argument("--skip-scoring", action="store_true")
    p.add_argument("--skip-finetune", action="store_true")
    p.add_argument("--threads", type=int, help="torch CPU threads, both sides (default 1 on CPU, torch's "
                   "own on GPU)")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU on a GPU machine")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    args.gpu = torch.cuda.is_available() and not args.cpu
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    defaults = {"max_batch_tokens": "32768,65536" if args.gpu else "2048",
                "lm_eval_batch_size": "64,auto" if args.gpu else "8,32",
                "dtype": "bfloat16" if args.gpu else "float32", "threads": 0 if args.gpu else 1}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    sizes = [b.strip() for b in args.lm_eval_batch_size.split(",") if b.strip()]
    if not sizes or any(b != "auto" and not (b.isdigit() and int(b) > 0) for b in sizes):
        p.error(f"--lm-eval-batch-size {args.lm_eval_batch_size!r}: give positive numbers or auto, "
                "comma-separated")
    args.lm_eval_batch_size = [b if b == "auto" else int(b) for b in sizes]
    budgets = [b.strip() for b in args.max_batch_tokens.split(",") if b.strip()]
    if not budgets or any(not (b.isdigit() and int(b) >= 64) for b in budgets):
        p.error(f"--max-batch-tokens {args.max_batch_tokens!r}: give numbers >= 64, comma-separated")
    args.max_batch_tokens = [int(b) for b in budgets]
    if args.limit < 1 or args.ft_examples <= args.ft_batch_size:
        p.error("--limit must be >= 1 and --ft-examples larger than --ft-batch-size")
    return args


def quiet_libraries(scoring: bool) -> None:
    """Offline (the model and data are local); no progress bars or per-request warnings."""
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(key, "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if scoring:
        import datasets

        datasets.disable_progress_bars()
        logging.getLogger("lm_eval").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.skip_scoring:
        try:
            import lm_eval
        except ImportError:
            sys.exit("lm-eval is not installed: pip install 'llmpipe[bench]' (or --skip-scoring)")
    quiet_libraries(not args.skip_scoring)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = shared_data()
    started = time.perf_counter()
    data = {} if args.skip_scoring else {name: task_examples(name, root / "superglue", args.limit)
                                         for name in args.tasks}
    train = [] if args.skip_finetune else sst2(root, args.ft_examples)
    results: dict[str, Any] = {"device": device_description(args.gpu)}
    with tempfile.TemporaryDirectory(prefix="bench-evaluate-") as tmp_name:
        tmp = Path(tmp_name)
        if args.model:
            hf_dir, origin = model_dir(args.model, tmp), str(args.model)
        else:
            texts = corpus([e for _, examples, _ in data.values() for e in examples] + train)
            hf_dir = build_model(tmp, texts, SHAPES[args.shape])
            origin = f"random weights, shape {args.shape}"
        results["config"] = {"model": origin, **model_summary(hf_dir), "dtype": args.dtype,
                             "threads": torch.get_num_threads(), "limit": args.limit,
                             "max_batch_tokens": args.max_batch_tokens,
                             "lm_eval_batch_size": args.lm_eval_batch_size,
                             "lm_eval": None if args.skip_scoring else lm_eval.__version__}
        print(f"device: {results['device']}\nconfig: {results['config']}", flush=True)
        if data:
            sizes = ", ".join(f"{n} {len(ex)} ({src})" for n, (_, ex, src) in data.items())
            print(f"scoring: {sizes}", flush=True)
            results["scoring"] = bench_scoring(args, hf_dir, tmp, data)
        if train:
            print(f"fine-tuning: SST-2 {len(train)} examples", flush=True)
            results["finetune"] = bench_finetune(args, hf_dir, tmp, train)
    results["seconds"] = time.perf_counter() - started
    print_table(results)
    print(f"\n{results['seconds']:.0f} s in all")
    if args.out:
        args.out.write_text(json.dumps(rounded(results, 6), indent=2))
        print(f"results written to {args.out}")
    # in float32 both sides must pick the same choice for every example (bfloat16 may flip near-ties)
    disagree = [r["task"] for r in results.get("scoring", []) if r["differing_predictions"]]
    if disagree and args.dtype == "float32":
        print(f"ERROR: our predictions differ from lm-eval's on {', '.join(disagree)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
