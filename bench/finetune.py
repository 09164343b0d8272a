"""Fine-tuning speed: tasks/evaluate/finetune.py against transformers' Trainer on the same classifier.

    python -m bench.finetune                     # SST-2's first 2,000 sentences, the small shape, 1 thread
    python -m bench.finetune --examples 4000 --shape tiny --threads 2 --rounds 3

One exported model (our GPT with random weights, exported to a Hugging Face Llama directory; a BPE
tokenizer trained on the sentences) is fine-tuned as a 2-class classifier for one epoch by both:
  * ours: `finetune()` (the shared training loop, length-grouped batches padded to their longest);
  * transformers.Trainer on the very token ids ours trains on, with what a competent user writes: a
    DataCollatorWithPadding (dynamic padding), train_sampling_strategy="group_by_length", AdamW with
    the same lr, warmup, weight decay and clipping, no saving, no logging, no reporting, on the CPU.
Both are timed at the end of each optimizer step; examples/s is reported over all steps and over the
steps after the first (which pays one-time costs), per wall second and per CPU second of the process (with
one thread, the CPU figure suffers less from other load on the machine). Rounds alternate the two;
medians are printed with the ratios. Needs ../shared/data (or LLMPIPE_DATA) for SST-2.
"""
from __future__ import annotations

import argparse
import csv
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from bench.common import shared_data
from models.config import GPTConfig
from models.gpt import GPT
from tasks.evaluate.finetune import FinetuneConfig, encode_examples, finetune, task_config
from tasks.pretrain.checkpoint import is_tied, weights_for_saving
from tasks.pretrain.export import export_hf

SHAPES = {"tiny": {"n_layer": 2, "n_embd": 64, "n_head": 4, "n_kv_head": 2},
          "small": {"n_layer": 4, "n_embd": 256, "n_head": 4, "n_kv_head": 4}}


@dataclass
class Example:
    idx: int
    text: str
    pair: str | None = None
    label: int | None = None
    choices: list[str] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def sst2(n: int) -> list[Example]:
    path = shared_data() / "glue" / "SST-2" / "train.tsv"
    with open(path, newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:n + 1]
    return [Example(i, sentence.strip(), label=int(label)) for i, (sentence, label) in enumerate(rows)]


def build_model(d: Path, texts: list[str], shape: dict[str, int]) -> Path:
    """Our model directory (random weights, a 4k BPE trained on the texts), exported to d/hf."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    (d / "ours").mkdir(parents=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=4096, special_tokens=["<|endoftext|>", "<|pad|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(d / "ours" / "tokenizer.json"))
    cfg = GPTConfig(vocab_size=4096, block_size=256, n_future=1, mlp="swiglu", dropout=0.0, tie_embeddings=True,
                    **shape)
    model = GPT(cfg)
    save_file(weights_for_saving(model.state_dict(), is_tied(model)), str(d / "ours" / "model.safetensors"))
    (d / "ours" / "config.json").write_text(json.dumps({"architecture": "llmpipe-gpt", "eot_id": 0,
                                                        "model": cfg.to_dict(), "tokenizer": "tokenizer.json"}))
    return export_hf(d / "ours", d / "hf")


def run_ours(hf_dir: Path, train: list[Example], cfg: FinetuneConfig, out: Path) -> dict[str, float]:
    stamps: list[tuple[float, float]] = []
    result = finetune(hf_dir, "classification", ["negative", "positive"], train, [], cfg, out,
                      progress=lambda step, total: stamps.append(clocks()))
    # the loop's own figure: from the start of the first step to the end of the last
    return {"steps": len(stamps), "examples_per_s": result.train_examples_per_s,
            **after_first_step(stamps, len(train), cfg.batch_size)}


def run_trainer(hf_dir: Path, train: list[Example], cfg: FinetuneConfig, out: Path) -> dict[str, float]:
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainerCallback,
        TrainingArguments,
    )

    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    config, fmt = task_config(hf_dir, "classification", ["negative", "positive"], tokenizer, cfg.max_length)
    ids = encode_examples(tokenizer, fmt, "classification", train)  # the very sequences ours trains on
    dataset = [{"input_ids": g[0], "attention_mask": [1] * len(g[0]), "labels": e.label} for g, e in zip(ids, train)]
    torch.manual_seed(cfg.seed)
    model = AutoModelForSequenceClassification.from_pretrained(hf_dir, config=config, dtype=torch.float32)
    stamps: list[tuple[float, float]] = []

    class Stamp(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if not stamps:
                stamps.append(clocks())

        def on_step_end(self, args, state, control, **kw):
            stamps.append(clocks())

    args = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=cfg.batch_size, num_train_epochs=cfg.epochs,
        learning_rate=cfg.lr, warmup_steps=cfg.warmup_ratio, weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.grad_clip, lr_scheduler_type="cosine", train_sampling_strategy="group_by_length",
        save_strategy="no", logging_strategy="no", eval_strategy="no", report_to="none", use_cpu=True,
        disable_tqdm=True, dataloader_num_workers=0, seed=cfg.seed)
    Trainer(model=model, args=args, train_dataset=dataset, data_collator=DataCollatorWithPadding(tokenizer),
            processing_class=tokenizer, callbacks=[Stamp()]).train()
    return {"steps": len(stamps) - 1, "examples_per_s": len(train) / (stamps[-1][0] - stamps[0][0]),
            **after_first_step(stamps[1:], len(train), cfg.batch_size)}


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def after_first_step(ends: list[tuple[float, float]], n_examples: int, batch_size: int) -> dict[str, float]:
    """Examples per wall second and per CPU second of this process, from the end of the first step to the
    end of the last (one epoch)."""
    n = n_examples - batch_size
    return {"examples_per_s_after_first_step": n / (ends[-1][0] - ends[0][0]),
            "examples_per_cpu_s_after_first_step": n / (ends[-1][1] - ends[0][1])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=2000, help="SST-2 training sentences (default 2000)")
    ap.add_argument("--shape", choices=sorted(SHAPES), default="small", help="model size (default small: 4x256)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for both (default 1)")
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    train = sst2(args.examples)
    cfg = FinetuneConfig(epochs=1, batch_size=args.batch_size, checkpoint_every=0)
    results: dict[str, list[dict[str, float]]] = {"ours": [], "trainer": []}
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = build_model(Path(tmp), [e.text for e in train], SHAPES[args.shape])
        for r in range(args.rounds):
            for name, fn in (("ours", run_ours), ("trainer", run_trainer)):
                results[name].append(fn(hf_dir, train, cfg, Path(tmp) / f"{name}-{r}"))
                print(name, r, json.dumps(results[name][-1]), flush=True)
    summary = {"examples": len(train), "shape": args.shape, "threads": args.threads,
               "batch_size": args.batch_size, "device": "cpu"}
    for key in ("examples_per_s", "examples_per_s_after_first_step", "examples_per_cpu_s_after_first_step"):
        ours = statistics.median(r[key] for r in results["ours"])
        theirs = statistics.median(r[key] for r in results["trainer"])
        summary[key] = {"ours": round(ours, 1), "trainer": round(theirs, 1), "ratio": round(ours / theirs, 3)}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
