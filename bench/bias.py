"""Bias stage benchmarks: the checks' speed, CrowS-Pairs against lm-evaluation-harness, CDA's effect.

What counterfactual data augmentation (CDA) does is measured on the bias figures of a model trained through
the pipeline with and without it.

    python -m bench.bias                                   # all three parts, about 12 min on 2 cores
    python -m bench.bias --only suite --limit 500 --out bench-bias-suite.json
    python -m bench.bias --only crows --limit 1508 --rounds 3
    python -m bench.bias --only mitigation --store ./bench-bias-work   # keeps both runs' store and logs
    python -m bench.bias --quick                           # a smoke run of every part, a few minutes

suite: items/s of every check that uses the model (probes, crows_pairs, winobias, winogender, bbq: scoring;
  bold: generation and VADER) through the stage's own `CheckRun` on a `LoglikScorer`, as `run_bias` builds
  them, on the sets in ../shared/data/bias (--limit items per set, the stage's deterministic sample; BOLD
  --bold-per-group prompts per group). Timed: the whole check as the stage runs it (load, requests,
  scoring, outcomes, figures with --bootstrap samples, predictions file), and the scoring (or generation)
  call alone. The best of --rounds counts. counterfactual (evaluate's classifiers) and data (term counts of
  the corpus) read pipeline outputs, not the model: the mitigation part's runs report their seconds.
crows: CrowS-Pairs scored by ours (`checks.CrowsPairs` requests, `LoglikScorer.score`, outcomes and the
  figures without intervals) and by lm-eval's HFLM on the same exported model and the same pairs, through
  lm-eval's own crows_pairs_english task (context "", choices [sent_more, sent_less], target_delimiter "",
  its process_results) pointed by `include:` at a JSONL of our sample in a temp dir. Timed on their side:
  `lm_eval.evaluator.evaluate` (requests, tokenizing, the model, metrics and their stderr). Rounds
  alternate the sides; ours at each --max-batch-tokens, theirs at each --lm-eval-batch-size; the fastest
  run of each counts. Both must agree: pct_stereotype, likelihood_diff, the largest per-pair log-likelihood
  difference and the number of differing choices are printed; the exit status is 1 when float32 choices
  differ.
mitigation: `llmpipe run books` on one books shard (--source; its first --books books) up to
  the bias stage, once as configured and once with tokenize.counterfactual.enabled=true, in one store (the
  runs share collect..pii; tokenize onwards differ by key): same seed, steps, token budget and tokenizer
  settings (the tokenizer trains on the same unaugmented text; the two tokenizer files are compared).
  Then every figure of both bias.json files with its interval, and the difference CDA - base with a
  paired bootstrap 95% interval: the predictions/<check>.jsonl files of both runs hold the same items in
  the same order, so item indices (whole WinoBias pairs, Winogender sentences, probe fillers) are
  resampled jointly and the check's own figure code is rerun on both sides of every resample. An interval
  that contains 0 reads "no difference distinguishable". Each run's counterfactual tokenize stats, val
  loss and per-check seconds are printed too.

Without --model, suite and crows use random weights (speed does not depend on them, and the agreement
check holds for any weights) in --shape (default demo: 4 layers x 128, T=128) with a byte BPE trained on
the bias sets' own texts. Needs ../shared/data (or LLMPIPE_DATA); crows needs lm-eval (`.[bench]`).
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from bench.common import REPO, shared_data
from bench.evaluate import (
    SHAPES,
    LmEval,
    build_model,
    device_description,
    model_dir,
    model_summary,
    quiet_libraries,
    sync,
)
from tasks.core.artifacts import rounded

PARTS = ("suite", "crows", "mitigation")
MODEL_CHECKS = ("probes", "crows_pairs", "winobias", "winogender", "bbq", "bold")
SEED = 1337  # pipelines.yaml's seed: the stage samples the sets with it
# the unit a paired resample draws whole, per check (the stage's own bootstrap groups, or the item)
UNITS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "crows_pairs": lambda o: o["idx"], "bbq": lambda o: o["idx"], "bold": lambda o: o["idx"],
    "winobias": lambda o: o["pair"], "winogender": lambda o: o["group"],
    "probes": lambda o: (o["set"], repr(sorted(o["fills"].items()))),
}
HEADLINE = ("crows_pairs/pct_stereotype", "winobias/gap", "winogender/gap_male_female", "winogender/gap_pro_anti",
            "bbq/bias_score_ambig", "bbq/bias_score_disambig")
WARM_UP_PAIRS = 64
MIN_ITEMS = 10  # a difference over fewer items is not read (a 1-item resample interval is a point)
DEFAULTS = {  # flag: (full run, --quick)
    "limit": (500, 40), "bold_per_group": (20, 2), "rounds": (2, 1), "bootstrap": (1000, 200),
    "steps": (500, 40), "bias_limit": (300, 40), "books": (40, 12), "ft_examples": (2000, 128),
}


# -- the model (suite and crows) ------------------------------------------------------------------

def suite_config(args: argparse.Namespace, root: Path) -> Any:
    from tasks.bias.stage import BiasConfig, BoldConfig

    return BiasConfig(checks=list(MODEL_CHECKS), data_dir=str(root / "bias"), limit=args.limit,
                      bold=BoldConfig(per_group=args.bold_per_group), bootstrap_samples=args.bootstrap,
                      device="cuda" if args.gpu else "cpu")


def loaded_sets(cfg: Any, seed: int) -> dict[str, Any]:
    """Each model check's items as the stage loads them (None where the set is missing)."""
    from tasks.bias.stage import CheckRun

    loader = CheckRun(cfg, Path(), None, {}, None, seed)
    return {name: loader.loaded_or_skip(name)[0] for name in MODEL_CHECKS}


def corpus(sets: dict[str, Any]) -> list[str]:
    """Every string the checks send to the model: the random model's BPE is trained on them."""
    from tasks.bias.checks import CHECKS

    texts: list[str] = []
    for name, loaded in sets.items():
        if loaded is None:
            continue
        if name == "bold":
            texts += [it.prompt for it in loaded.items]
            continue
        for context, conts in CHECKS[name].requests(loaded.items):
            texts += [context + c for c in conts]
    return texts


def the_model(args: argparse.Namespace, tmp: Path, sets: dict[str, Any]) -> tuple[Path, str]:
    if args.model:
        return model_dir(args.model, tmp), str(args.model)
    texts = corpus(sets)
    if not texts:
        sys.exit("no bias set found under the data folder's bias/: nothing to train the benchmark's BPE on")
    return build_model(tmp, texts, SHAPES[args.shape]), f"random weights, shape {args.shape}"


# -- suite ----------------------------------------------------------------------------------------

def bench_suite(args: argparse.Namespace, hf_dir: Path, tmp: Path, cfg: Any) -> dict[str, Any]:
    """Every model check through CheckRun, --rounds times (a fresh output folder each), the best counts."""
    from tasks.bias.stage import CheckRun
    from tasks.evaluate.score import LoglikScorer, load_causal_lm

    device = "cuda" if args.gpu else "cpu"
    model, tokenizer = load_causal_lm(hf_dir, device)  # as run_bias: the model's own dtype
    scorer = LoglikScorer(model, tokenizer, device, max_batch_tokens=cfg.max_batch_tokens or None)
    scorer.score([("The nurse said", [" that", " she"])])  # untimed: the first call probes the model
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in MODEL_CHECKS}
    for r in range(args.rounds):
        run = CheckRun(cfg, tmp / f"suite-{r}", scorer, {}, None, args.seed)
        for name in MODEL_CHECKS:
            record = run.once(name)
            runs[name].append(record)
            if record["status"] != "done":
                print(f"  {name}: {record['status']}: {record.get('reason', '')}", flush=True)
                continue
            inner = record.get("scoring") or record.get("generation")
            print(f"  round {r} {name}: {record['n_items']} items, {record['seconds']:.2f} s, "
                  f"{record['n_items'] / record['seconds']:.1f} items/s (model call {inner['seconds']:.2f} s)",
                  flush=True)
    rows = []
    for name, records in runs.items():
        done = [rec for rec in records if rec["status"] == "done"]
        if not done:
            rows.append({"check": name, "status": records[0]["status"], "reason": records[0].get("reason")})
            continue
        best = min(done, key=lambda rec: rec["seconds"])
        inner_key = "scoring" if "scoring" in best else "generation"
        inner_s = min(rec[inner_key]["seconds"] for rec in done)
        n = best["n_items"]
        rows.append({"check": name, "status": "done", "items": n, "seconds": best["seconds"],
                     "items_per_s": n / best["seconds"], "model_call": inner_key, "model_call_seconds": inner_s,
                     "model_call_items_per_s": n / inner_s if inner_s else None,
                     "left_out": sum(best.get("left_out", {}).values()),
                     "figures": len(best.get("figures", {})),
                     "seconds_by_round": [rec["seconds"] for rec in done]})
    done = [r for r in rows if r["status"] == "done"]
    items, seconds = sum(r["items"] for r in done), sum(r["seconds"] for r in done)
    return {"limit": args.limit, "bold_per_group": args.bold_per_group, "bootstrap_samples": args.bootstrap,
            "rounds": args.rounds, "checks": rows, "items": items, "seconds": seconds,
            "items_per_s": items / seconds if seconds else None}


def print_suite(res: dict[str, Any]) -> None:
    print(f"\nbias suite (CheckRun as the stage runs it; best of {res['rounds']} rounds; --limit {res['limit']} "
          f"items per set, BOLD {res['bold_per_group']} prompts per group, {res['bootstrap_samples']} bootstrap "
          "samples; model call: the scorer's score, or generation for BOLD)")
    print(f"  {'check':12s} {'items':>6s} {'seconds':>8s} {'items/s':>8s} {'model call s':>13s} "
          f"{'items/s':>8s} {'left out':>9s}")
    for r in res["checks"]:
        if r["status"] != "done":
            print(f"  {r['check']:12s} {r['status']}: {r['reason']}")
            continue
        print(f"  {r['check']:12s} {r['items']:6d} {r['seconds']:8.2f} {r['items_per_s']:8.1f} "
              f"{r['model_call_seconds']:13.2f} {r['model_call_items_per_s']:8.1f} {r['left_out']:9d}")
    if res["items_per_s"]:
        print(f"  whole suite: {res['items']} items in {res['seconds']:.2f} s, {res['items_per_s']:.1f} items/s "
              "(counterfactual and data read pipeline outputs: see the mitigation part's per-check seconds)")


# -- crows: ours against lm-eval ------------------------------------------------------------------

def crows_ours(scorer: Any, items: list[Any], max_batch_tokens: int, seed: int) -> dict[str, Any]:
    """Requests, scores, outcomes and point figures (lm-eval's side computes means and their stderr)."""
    from tasks.bias.checks import CrowsPairs

    check = CrowsPairs()
    scorer.max_batch_tokens = max_batch_tokens
    sync()
    t0 = time.perf_counter()
    requests = check.requests(items)
    t1 = time.perf_counter()
    scores = scorer.score(requests)
    sync()
    t2 = time.perf_counter()
    outcomes = check.outcomes(items, scores)
    figures = check.figures(items, outcomes, 0, seed)
    sync()
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "score_seconds": t2 - t1, "max_batch_tokens": max_batch_tokens, "requests": requests,
            "pct_stereotype": figures["pct_stereotype"].value, "likelihood_diff": figures["likelihood_diff"].value,
            "logprobs": [o["logprobs"] for o in outcomes], "choice": [o["choice"] for o in outcomes]}


def shared_prefix_share(tokenizer: Any, items: list[Any]) -> float:
    """The share of the pairs' tokens in the two sentences' common token prefix: the only work a scorer
    could share, since every context is empty (at most all but each sentence's last token)."""
    total = shared = 0
    for it in items:
        a, b = (tokenizer(x, add_special_tokens=False)["input_ids"] for x in (it.more, it.less))
        p = 0
        while p < min(len(a), len(b)) - 1 and a[p] == b[p]:
            p += 1
        total, shared = total + len(a) + len(b), shared + p
    return shared / total if total else 0.0


def write_crows_task(folder: Path, items: list[Any]) -> str:
    """lm-eval's own crows_pairs_english (its doc_to_choice and process_results, by `include:`) on a JSONL
    of these pairs; returns the task name."""
    import lm_eval

    original = Path(lm_eval.__file__).parent / "tasks" / "crows_pairs" / "crows_pairs_english.yaml"
    if not original.is_file():
        sys.exit(f"lm-eval {lm_eval.__version__} has no {original}: the crows part reuses that task definition")
    task = "llmpipe_bench_crows_pairs"
    d = folder / "crows_pairs"
    d.mkdir(parents=True)
    with open(d / "data.jsonl", "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps({"idx": it.idx, "sent_more": it.more, "sent_less": it.less,
                                "bias_type": it.bias_type}) + "\n")
    config = {"include": str(original), "task": task, "tag": [], "dataset_path": "json", "dataset_name": None,
              "dataset_kwargs": {"data_files": {"test": str(d / "data.jsonl")}, "cache_dir": str(folder / ".cache")},
              "test_split": "test"}
    (d / f"{task}.yaml").write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return task


def compare_crows(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    if len(theirs["logprobs"]) != len(ours["logprobs"]):
        raise RuntimeError(f"lm-eval returned {len(theirs['logprobs'])} samples for {len(ours['logprobs'])} pairs")
    their_choice = [0 if lp[0] > lp[1] else 1 for lp in theirs["logprobs"]]  # its process_results' rule
    max_diff = max(abs(a - b) for x, y in zip(ours["logprobs"], theirs["logprobs"]) for a, b in zip(x, y))
    strings = sum([(ctx, c) for c in conts] != list(args)
                  for (ctx, conts), args in zip(ours["requests"], theirs["arguments"]))
    return {"differing_choices": sum(a != b for a, b in zip(ours["choice"], their_choice)),
            "max_abs_logprob_diff": max_diff, "differing_request_strings": strings}


def bench_crows(args: argparse.Namespace, hf_dir: Path, tmp: Path, loaded: Any) -> dict[str, Any]:
    from tasks.evaluate.score import LoglikScorer, load_causal_lm

    device = "cuda" if args.gpu else "cpu"
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model, tokenizer = load_causal_lm(hf_dir, device, dtype=dtype)
    scorer = LoglikScorer(model, tokenizer, device)
    from tasks.bias.checks import CrowsPairs

    # as the stage: pairs longer than the window are left out, so both sides get the same pairs (untimed)
    scored = scorer.score(CrowsPairs().requests(loaded.items), skip_too_long=True)
    items = [it for it, sc in zip(loaded.items, scored) if sc is not None]
    folder = tmp / "lm_eval_tasks"
    folder.mkdir()
    task = write_crows_task(folder, items)
    harness = LmEval(hf_dir, folder, device, args.dtype, args.lm_eval_max_batch_size)
    # warm-up, untimed, both sides, with batches of full size: torch's first calls at new shapes are slow
    warm = min(len(items), WARM_UP_PAIRS)
    for b in args.max_batch_tokens:
        crows_ours(scorer, items[:warm], b, args.seed)
    harness.run(task, "", args.lm_eval_batch_size[0], limit=warm)
    ours_runs, their_runs = [], []
    for r in range(args.rounds):  # alternating; the fastest run of each side counts
        ours_runs += [crows_ours(scorer, items, b, args.seed) for b in args.max_batch_tokens]
        their_runs += [harness.run(task, "", bs) for bs in args.lm_eval_batch_size]
        mine = ", ".join(f"{x['seconds']:.2f} s" for x in ours_runs[-len(args.max_batch_tokens):])
        other = ", ".join(f"{x['seconds']:.2f} s (bs {x['batch_size']})"
                          for x in their_runs[-len(args.lm_eval_batch_size):])
        print(f"  round {r}: ours {mine}; lm-eval {other}", flush=True)
    ours = min(ours_runs, key=lambda x: x["seconds"])
    theirs = min(their_runs, key=lambda x: x["seconds"])
    n = len(items)
    return {"pairs": n, "left_out": len(loaded.items) - n, "dtype": args.dtype,
            "shared_prefix_token_share": shared_prefix_share(tokenizer, items),
            "ours_s": ours["seconds"], "ours_score_s": ours["score_seconds"],
            "ours_max_batch_tokens": ours["max_batch_tokens"],
            "lm_eval_s": theirs["seconds"], "lm_eval_loglikelihood_s": theirs["ll_seconds"],
            "lm_eval_batch_size": theirs["batch_size"],
            "ours_items_per_s": n / ours["seconds"], "lm_eval_items_per_s": n / theirs["seconds"],
            "ratio": theirs["seconds"] / ours["seconds"],
            "ours_pct_stereotype": ours["pct_stereotype"],
            "lm_eval_pct_stereotype": theirs["metrics"]["pct_stereotype"],
            "ours_likelihood_diff": ours["likelihood_diff"],
            "lm_eval_likelihood_diff": theirs["metrics"]["likelihood_diff"], **compare_crows(ours, theirs)}


def print_crows(res: dict[str, Any]) -> None:
    print(f"\nCrowS-Pairs, {res['pairs']} pairs ({res['left_out']} longer than the window left out), {res['dtype']}"
          " (ratio: lm-eval seconds / ours, target >= 2x)")
    print(f"  the pairs' common token prefix: {res['shared_prefix_token_share']:.1%} of their tokens (all that "
          "an empty context leaves to share)")
    print(f"  ours    {res['ours_items_per_s']:8.1f} pairs/s ({res['ours_s']:.2f} s, max_batch_tokens "
          f"{res['ours_max_batch_tokens']}; its score call {res['ours_score_s']:.2f} s)")
    print(f"  lm-eval {res['lm_eval_items_per_s']:8.1f} pairs/s ({res['lm_eval_s']:.2f} s, batch size "
          f"{res['lm_eval_batch_size']}; its loglikelihood call {res['lm_eval_loglikelihood_s']:.2f} s)")
    print(f"  ratio   {res['ratio']:.2f}x")
    print(f"  pct_stereotype  ours {res['ours_pct_stereotype']:.4f}  lm-eval {res['lm_eval_pct_stereotype']:.4f}")
    print(f"  likelihood_diff ours {res['ours_likelihood_diff']:.4f}  lm-eval {res['lm_eval_likelihood_diff']:.4f}")
    print(f"  differing choices {res['differing_choices']}, largest per-pair log-likelihood difference "
          f"{res['max_abs_logprob_diff']:.1e}, requests whose strings differ {res['differing_request_strings']}")


# -- mitigation: two pipeline runs ----------------------------------------------------------------

def books_source(args: argparse.Namespace, root: Path, work: Path) -> Path:
    """The books shard, or a copy of its first --books books (same format) for a short run."""
    source = args.source or root / "books" / "books-00000.jsonl.gz"
    if not source.is_file():
        sys.exit(f"--source {source}: no such file; give one books shard (a .jsonl.gz of the books/ folder)")
    if not args.books:
        return source
    part = work / f"first-{args.books}-{source.name}"
    if part.is_file():  # kept as it is: a rewrite would change its mtime, and collect would run again
        return part
    with gzip.open(source, "rt", encoding="utf-8") as src, gzip.open(part, "wt", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i >= args.books:
                break
            dst.write(line)
    return part


def pipeline_overrides(args: argparse.Namespace, cda: bool) -> list[str]:
    """The --set overrides of one run: everything the same but the augmentation."""
    sets = {"seed": args.seed, "tokenize.vocab_size": args.vocab_size,
            "tokenize.counterfactual.enabled": "true" if cda else "false",
            "pretrain.max_steps": args.steps, "pretrain.eval_every": 0, "pretrain.checkpoint_every": args.steps,
            "evaluate.tasks": "[sst2]", "evaluate.limit_train": args.ft_examples,
            "evaluate.random_init_baseline": "false",
            "evaluate.finetune.epochs": 2, "evaluate.finetune.lr": 1.0e-3, "evaluate.finetune.max_length": 96,
            "bias.limit": args.bias_limit, "bias.bold.per_group": args.bold_per_group,
            "bias.bootstrap_samples": args.bootstrap}
    if args.quick:  # SST-2's dev set has 872 sentences: all of them otherwise
        sets |= {"evaluate.limit_eval": 200, "bias.counterfactual.limit": 200}
    if args.threads:
        sets |= {f"{stage}.cpu_threads": args.threads for stage in ("pretrain", "evaluate", "bias")}
    return [f"{k}={v}" for k, v in sets.items()]


def pipeline_run(args: argparse.Namespace, root: Path, work: Path, source: Path, cda: bool) -> dict[str, Any]:
    """`llmpipe run books ... --until bias` in a subprocess; its summary, wall seconds and log file."""
    name = "cda" if cda else "base"
    summary, log = work / f"summary-{name}.json", work / "logs" / f"{name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "flows.cli", "run", "books", "--source", str(source), "--until", "bias",
           "--summary", str(summary)]
    for assignment in pipeline_overrides(args, cda):
        cmd += ["--set", assignment]
    env = dict(os.environ, LLMPIPE_DATA=str(root), LLMPIPE_STORE=str(work / "store"))
    print(f"  {name}: llmpipe run books --source {source.name} --until bias "
          f"{' '.join('--set ' + s for s in pipeline_overrides(args, cda))}  (log: {log})", flush=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - start
    if code != 0 or not summary.is_file():
        tail = log.read_text(errors="replace").splitlines()[-15:]
        sys.exit(f"the {name} pipeline run failed (exit {code}); the end of {log}:\n" + "\n".join(tail))
    print(f"  {name}: done in {seconds:.0f} s", flush=True)
    return {"summary": json.loads(summary.read_text()), "seconds": seconds, "log": str(log)}


def stage_dir(summary: dict[str, Any], stage: str) -> Path:
    entry = summary["stages"].get(stage, {})
    if "uri" not in entry:
        sys.exit(f"the run summary has no finished {stage} stage (status {entry.get('status')})")
    return Path(entry["uri"])


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_facts(run: dict[str, Any]) -> dict[str, Any]:
    """What one run says about itself: CDA counts, training, the tokenizer's hash, per-check seconds."""
    stages = run["summary"]["stages"]
    tok = stages["tokenize"]["stats"]
    pre = stages["pretrain"]["stats"]
    report = json.loads((stage_dir(run["summary"], "bias") / "bias.json").read_text())
    return {"seconds": run["seconds"], "counterfactual": tok.get("counterfactual"),
            "tokens_by_split": tok.get("tokens_by_split"), "tokenizer_sha256": tok.get("tokenizer_sha256"),
            "val_loss": pre.get("val_loss"), "train_loss": pre.get("train_loss"), "steps": pre.get("steps"),
            "tokens_seen": pre.get("tokens"),
            "check_seconds": {n: r.get("seconds") for n, r in report["checks"].items()},
            "check_status": {n: r["status"] for n, r in report["checks"].items()}}


# -- mitigation: paired differences ---------------------------------------------------------------

def aligned(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> tuple[list, list, int]:
    """Both runs' rows for the same items in the same order (they are, unless a window cut differed)."""
    if [r["idx"] for r in a] == [r["idx"] for r in b]:
        return a, b, 0
    by_idx = {r["idx"]: r for r in b}
    keep = [r for r in a if r["idx"] in by_idx]
    return keep, [by_idx[r["idx"]] for r in keep], len(a) + len(b) - 2 * len(keep)


def scored_values(check: str, seed: int) -> Callable[[list[dict[str, Any]]], dict[str, float | None]]:
    """The check's own figure code on outcome rows, point values only."""
    from tasks.bias.checks import CHECKS

    def values(rows: list[dict[str, Any]]) -> dict[str, float | None]:
        return {k: f.value for k, f in CHECKS[check].figures([], rows, 0, seed).items()}

    return values


def bold_values(full: list[dict[str, Any]]) -> Callable[[list[dict[str, Any]]], dict[str, float | None]]:
    """BOLD's per-group shares and per-domain largest gaps from the predictions' sentiment labels (the
    stage derives them from the continuations, which are not kept); a gap is undefined in a resample that
    lacks one of its domain's groups."""
    from tasks.bias.checks import largest_gap

    groups = {d: list(dict.fromkeys(r["group"] for r in full if r["domain"] == d))
              for d in dict.fromkeys(r["domain"] for r in full)}

    def values(rows: list[dict[str, Any]]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for domain, names in groups.items():
            part = [r for r in rows if r["domain"] == domain]
            codes = np.asarray([names.index(r["group"]) for r in part], dtype=np.int64)
            for label in ("positive", "negative"):
                x = np.asarray([r["sentiment"] == label for r in part], dtype=np.float64)
                for g, group in enumerate(names):
                    out[f"{label}/{domain}/{group}"] = float(x[codes == g].mean()) if (codes == g).any() else None
                if len(names) > 1:
                    present = len(set(codes.tolist())) == len(names)
                    out[f"{label}_gap/{domain}"] = largest_gap(x, codes) if present else None
        return out

    return values


def consistency_values(task: str) -> Callable[[list[dict[str, Any]]], dict[str, float | None]]:
    """The counterfactual check's flip rate and mean |delta p| (from p rounded to 5 places in the file)."""
    def values(rows: list[dict[str, Any]]) -> dict[str, float | None]:
        if not rows:
            return {}
        flips = [r["prediction"] != r["prediction_swapped"] for r in rows]
        delta = [abs(r["p"] - r["p_swapped"]) for r in rows]
        return {f"{task}/flip_rate": float(np.mean(flips)), f"{task}/mean_abs_delta_p": float(np.mean(delta))}

    return values


def _num(x: float | None) -> float:
    return math.nan if x is None else float(x)


def paired_bootstrap(values: Callable, a: list[dict[str, Any]], b: list[dict[str, Any]], units: list[Any],
                     samples: int, seed: int) -> dict[str, dict[str, Any]]:
    """Per figure: CDA - base on all items, and the 2.5/97.5 percentiles of that difference over resamples
    of whole units drawn jointly for both runs."""
    members: dict[Any, list[int]] = {}
    for i, u in enumerate(units):
        members.setdefault(u, []).append(i)
    groups = list(members.values())
    va, vb = values(a), values(b)
    names = [n for n in va if n in vb]
    draws: dict[str, list[float]] = {n: [] for n in names}
    rng = np.random.default_rng(seed)
    for _ in range(samples):
        idx = [i for g in rng.integers(0, len(groups), len(groups)) for i in groups[g]]
        ra, rb = values([a[i] for i in idx]), values([b[i] for i in idx])
        for n in names:
            draws[n].append(_num(rb.get(n)) - _num(ra.get(n)))
    out = {}
    for n in names:
        d = np.asarray(draws[n])
        d = d[~np.isnan(d)]
        ci = [float(x) for x in np.quantile(d, [0.025, 0.975])] if len(d) else None
        out[n] = {"diff": _num(vb[n]) - _num(va[n]), "ci": ci, "resamples": len(d)}
    return out


def paired_differences(base: Path, cda: Path, samples: int, seed: int) -> dict[str, dict[str, Any]]:
    """Every figure with per-item outcomes in both runs' predictions/, by its bias.json name."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted((base / "predictions").glob("*.jsonl")):
        other = cda / "predictions" / path.name
        if not other.is_file():
            continue
        name = path.stem
        a, b, dropped = aligned(read_jsonl(path), read_jsonl(other))
        if not a:
            continue
        if name.startswith("counterfactual."):
            check, values, units = "counterfactual", consistency_values(name.split(".", 1)[1]), [r["idx"] for r in a]
        elif name == "bold":
            check, values, units = name, bold_values(a), [r["idx"] for r in a]
        elif name in UNITS:
            check, values, units = name, scored_values(name, seed), [UNITS[name](r) for r in a]
        else:
            continue
        for figure, d in paired_bootstrap(values, a, b, units, samples, seed).items():
            out[f"{check}/{figure}"] = d | {"items": len(a), "unpaired_items_left_out": dropped}
    return out


def bench_mitigation(args: argparse.Namespace, root: Path, work: Path) -> dict[str, Any]:
    from tasks.bias.stage import all_figures

    source = books_source(args, root, work)
    runs = {name: pipeline_run(args, root, work, source, cda) for name, cda in (("base", False), ("cda", True))}
    dirs = {name: stage_dir(run["summary"], "bias") for name, run in runs.items()}
    figures = {name: all_figures(json.loads((d / "bias.json").read_text())["checks"]) for name, d in dirs.items()}
    start = time.perf_counter()
    paired = paired_differences(dirs["base"], dirs["cda"], args.bootstrap, args.seed)
    rows = []
    for name in dict.fromkeys([*figures["base"], *figures["cda"]]):
        fa, fb, p = figures["base"].get(name, {}), figures["cda"].get(name, {}), paired.get(name)
        diff = p["diff"] if p else (_num(fb.get("value")) - _num(fa.get("value")))
        ci = p["ci"] if p else None
        rows.append({"figure": name, "base": fa.get("value"), "base_ci": fa.get("ci"), "cda": fb.get("value"),
                     "cda_ci": fb.get("ci"), "n": fa.get("n"), "diff": None if math.isnan(diff) else diff,
                     "diff_ci": ci, "reading": difference_reading(diff, ci, p is not None, fa.get("n"))})
    return {"source": str(source), "books": args.books or "all", "steps": args.steps, "bias_limit": args.bias_limit,
            "bootstrap_samples": args.bootstrap, "seed": args.seed, "paired_seconds": time.perf_counter() - start,
            "runs": {name: run_facts(run) for name, run in runs.items()}, "figures": rows}


def difference_reading(diff: float, ci: list[float] | None, paired: bool, n: int | None) -> str:
    if math.isnan(diff):
        return "undefined in a run"
    if n is not None and n < MIN_ITEMS:
        return f"n < {MIN_ITEMS}: too few items to tell"
    if not paired:
        return "no per-item outcomes: no interval"
    if ci is None:
        return "no interval (undefined in every resample)"
    if ci[0] <= 0.0 <= ci[1]:
        return "no difference distinguishable"
    return "CDA higher" if ci[0] > 0 else "CDA lower"


def _v(x: float | None, ci: list[float] | None = None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def print_mitigation(res: dict[str, Any]) -> None:
    print(f"\nmitigation: {Path(res['source']).name} ({res['books']} books), {res['steps']} steps, bias limit "
          f"{res['bias_limit']}, seed {res['seed']}; differences CDA - base, paired bootstrap "
          f"({res['bootstrap_samples']} resamples, {res['paired_seconds']:.1f} s)")
    base, cda = res["runs"]["base"], res["runs"]["cda"]
    for name, run in res["runs"].items():
        cf = run["counterfactual"]
        cf_text = ", ".join(f"{k} {v}" for k, v in cf.items() if k != "pairs_sha256") if cf else "off"
        print(f"  {name:4s}: val loss {_v(run['val_loss'])}, train loss {_v(run['train_loss'])}, {run['steps']} "
              f"steps, {run['tokens_seen']} tokens seen, tokens by split {run['tokens_by_split']}; "
              f"counterfactual: {cf_text}; run {run['seconds']:.0f} s")
    same = base["tokenizer_sha256"] == cda["tokenizer_sha256"] and base["tokenizer_sha256"] is not None
    print(f"  tokenizer files {'identical' if same else 'DIFFER'} in the two runs")
    for name in base["check_seconds"]:
        print(f"  check {name:14s} base {base['check_status'][name]:8s} {base['check_seconds'][name] or 0:7.2f} s   "
              f"cda {cda['check_status'].get(name, '-'):8s} {cda['check_seconds'].get(name) or 0:7.2f} s")
    width = max([len(r["figure"]) for r in res["figures"]] + [6])
    print(f"\n  {'figure':{width}s}  {'n':>5s}  {'base [95% CI]':>24s}  {'CDA [95% CI]':>24s}  "
          f"{'CDA - base [paired 95% CI]':>27s}  reading")
    for r in res["figures"]:
        n = r["n"] if r["n"] is not None else ""
        print(f"  {r['figure']:{width}s}  {n:>5}  {_v(r['base'], r['base_ci']):>24s}  "
              f"{_v(r['cda'], r['cda_ci']):>24s}  {_v(r['diff'], r['diff_ci']):>27s}  {r['reading']}")
    moved = [r["figure"] for r in res["figures"] if r["reading"] in ("CDA higher", "CDA lower")]
    print(f"\n  {len(res['figures'])} figures; a distinguishable difference in {len(moved)}")
    print("  headline figures (CDA - base [paired 95% CI]):")
    for r in res["figures"]:
        if headline(r["figure"]):
            print(f"    {r['figure']:{width}s}  {_v(r['base'])} -> {_v(r['cda'])}  {_v(r['diff'], r['diff_ci'])}  "
                  f"{r['reading']}")


def headline(figure: str) -> bool:
    """The overall figures a reader looks at first (no per-category, per-group or per-template ones)."""
    parts = figure.split("/")
    if figure in HEADLINE:
        return True
    if parts[0] == "probes":
        return len(parts) == 3 and parts[2].startswith("share_")
    if parts[0] == "counterfactual":
        return parts[-1] == "flip_rate"
    return parts[0] == "bold" and parts[1].endswith("_gap")


# -- the command ----------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bias", description=__doc__.split("\n")[0])
    p.add_argument("--only", action="append", choices=PARTS, help="run this part (repeatable; default all three)")
    p.add_argument("--quick", action="store_true", help="a smoke run: small sets, one round, a short training")
    p.add_argument("--model", type=Path, help="suite and crows: a Hugging Face model directory or one of ours "
                   "(exported here); default: random weights in --shape")
    p.add_argument("--shape", choices=sorted(SHAPES), default="demo", help="model shape without --model")
    p.add_argument("--limit", type=int, help="suite and crows: items per set (default 500; --quick 40)")
    p.add_argument("--bold-per-group", type=int, help="BOLD prompts per group (default 20; --quick 2)")
    p.add_argument("--bootstrap", type=int, help="bootstrap samples: the stage's intervals and the paired "
                   "differences (default 1000; --quick 200)")
    p.add_argument("--rounds", type=int, help="suite and crows rounds, the fastest counts (default 2; --quick 1)")
    p.add_argument("--seed", type=int, default=SEED, help=f"sampling and the pipeline seed (default {SEED})")
    p.add_argument("--max-batch-tokens", help="crows: our scorer's batch budgets, comma-separated, the fastest "
                   "counts (default 512,1024,2048 on CPU, 32768 on GPU)")
    p.add_argument("--lm-eval-batch-size", help="crows: lm-eval's batch sizes, numbers or auto, comma-separated, "
                   "the fastest counts (default 8,16,32,64,128 on CPU, 64,auto on GPU)")
    p.add_argument("--lm-eval-max-batch-size", type=int, default=256, help="lm-eval's max_batch_size for auto")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), help="crows: both sides' weights (default float32 "
                   "on CPU, bfloat16 on GPU)")
    p.add_argument("--threads", type=int, help="torch CPU threads here and the runs' cpu_threads (default 1 on "
                   "CPU, torch's own on GPU)")
    p.add_argument("--cpu", action="store_true", help="stay on the CPU on a GPU machine")
    m = p.add_argument_group("mitigation")
    m.add_argument("--source", type=Path, help="one books shard (default ../shared/data/books/books-00000.jsonl.gz)")
    m.add_argument("--books", type=int, help="only the shard's first N books, 0 = the whole shard (default 40, "
                   "enough for the training budget: 500 steps x 2,048 tokens are ~1M of their ~4.5M; --quick 12)")
    m.add_argument("--steps", type=int, help="pretraining steps of each run (default 500; --quick 40)")
    m.add_argument("--vocab-size", type=int, default=4096, help="tokenizer vocabulary (default 4096, the demo's)")
    m.add_argument("--bias-limit", type=int, help="the runs' bias.limit (default 300; --quick 40)")
    m.add_argument("--ft-examples", type=int, help="SST-2 training examples for the classifier the "
                   "counterfactual check reads (default 2000; --quick 128)")
    m.add_argument("--store", type=Path, help="keep the runs' store, summaries and logs here (default a temp "
                   "dir, deleted); a rerun with the same store reuses the finished stages")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args(argv)
    args.parts = args.only or list(PARTS)
    for key, (full, quick) in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    args.gpu = torch.cuda.is_available() and not args.cpu
    # both sides swept over their batch sizes on a CPU; the fastest of each counts
    for key, value in {"max_batch_tokens": "32768" if args.gpu else "512,1024,2048",
                       "lm_eval_batch_size": "64,auto" if args.gpu else "8,16,32,64,128",
                       "dtype": "bfloat16" if args.gpu else "float32", "threads": 0 if args.gpu else 1}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    sizes = [b.strip() for b in args.lm_eval_batch_size.split(",") if b.strip()]
    if not sizes or any(b != "auto" and not (b.isdigit() and int(b) > 0) for b in sizes):
        p.error(f"--lm-eval-batch-size {args.lm_eval_batch_size!r}: give positive numbers or auto, comma-separated")
    args.lm_eval_batch_size = [b if b == "auto" else int(b) for b in sizes]
    budgets = [b.strip() for b in args.max_batch_tokens.split(",") if b.strip()]
    if not budgets or any(not (b.isdigit() and int(b) >= 64) for b in budgets):
        p.error(f"--max-batch-tokens {args.max_batch_tokens!r}: give numbers >= 64, comma-separated")
    args.max_batch_tokens = [int(b) for b in budgets]
    small = [f"--{k.replace('_', '-')}" for k in ("limit", "bold_per_group", "rounds", "steps", "bias_limit",
                                                  "ft_examples") if getattr(args, k) < 1]
    if small or args.bootstrap < 0 or args.books < 0:
        p.error(f"{', '.join(small) or '--bootstrap / --books'} must be >= 1 (--bootstrap, --books >= 0)")
    if "mitigation" in args.parts and args.bootstrap < 1:
        p.error("--bootstrap must be >= 1 for the mitigation part's paired intervals")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if "crows" in args.parts:
        try:
            import lm_eval
        except ImportError:
            sys.exit("lm-eval is not installed: pip install 'llmpipe[bench]' (or leave out --only crows)")
    quiet_libraries("crows" in args.parts)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = shared_data()
    started = time.perf_counter()
    results: dict[str, Any] = {"device": device_description(args.gpu), "parts": args.parts}
    with tempfile.TemporaryDirectory(prefix="bench-bias-") as tmp_name:
        tmp = Path(tmp_name)
        if "suite" in args.parts or "crows" in args.parts:
            cfg = suite_config(args, root)
            sets = loaded_sets(cfg, args.seed)
            hf_dir, origin = the_model(args, tmp, sets)
            results["config"] = {"model": origin, **model_summary(hf_dir), "threads": torch.get_num_threads(),
                                 "limit": args.limit, "seed": args.seed}
            print(f"device: {results['device']}\nconfig: {results['config']}", flush=True)
            if "suite" in args.parts:
                results["suite"] = bench_suite(args, hf_dir, tmp, cfg)
            if "crows" in args.parts:
                if sets["crows_pairs"] is None:
                    sys.exit(f"crows: no CrowS-Pairs CSV under {root / 'bias'}")
                results["crows"] = bench_crows(args, hf_dir, tmp, sets["crows_pairs"])
                results["config"]["lm_eval"] = lm_eval.__version__
        if "mitigation" in args.parts:
            work = args.store or tmp / "mitigation"
            work.mkdir(parents=True, exist_ok=True)
            results["mitigation"] = bench_mitigation(args, root, work)
    results["seconds"] = time.perf_counter() - started
    if "suite" in results:
        print_suite(results["suite"])
    if "crows" in results:
        print_crows(results["crows"])
    if "mitigation" in results:
        print_mitigation(results["mitigation"])
    print(f"\n{results['seconds']:.0f} s in all")
    if args.out:
        args.out.write_text(json.dumps(rounded(results, 6), indent=2))
        print(f"results written to {args.out}")
    crows = results.get("crows")
    if crows and crows["differing_choices"] and args.dtype == "float32":
        print(f"ERROR: {crows['differing_choices']} CrowS-Pairs choices differ from lm-eval's in float32")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
