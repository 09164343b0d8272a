"""Evaluate stage: validation perplexity, then GLUE, SuperGLUE and your own tasks, fine-tuned or scored.

Reads the pretrain stage's Hugging Face export (any local HF causal LM when run by `llmpipe evaluate
--model`) and the tokenize stage's val split. Per task: fine-tuning where a train split exists (the
pretrained model plus a transformers task head, and the same architecture from random initialization
beside it), few-shot log-likelihood scoring where only a few-shot split exists, zero-shot otherwise.
Every score comes with a bootstrap 95% interval, the number of examples and the majority-class baseline.

    results.json            every task: status, protocol, metrics with intervals, baselines, bad rows
    tasks/<task>.json       the same per task, written as each finishes (a rerun keeps finished tasks)
    predictions/<task>.jsonl  per example: idx, gold, prediction, and the scores it came from
    classifiers/<task>/     each fine-tuned classifier: a directory transformers loads (`llmpipe predict`)
    metrics.json            the figures the registry reads: perplexity, bits per byte, task scores, averages

A task whose data is missing is `skipped` with the reason; a task that fails is recorded as `failed` with
its reason after every other task has run, and the stage then fails so nothing incomplete is certified;
the rerun redoes only the failed tasks.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tasks.core.artifacts import Artifact, Markdown, Table, rounded
from tasks.core.config import StageConfig
from tasks.core.errors import UserError
from tasks.core.records import file_stamps, raise_if_failed, run_once, write_json, write_jsonl
from tasks.core.result import StageResult
from tasks.core.stage import Inputs, RunContext, Stage, StageOutput
from tasks.core.stopping import raise_if_stopping
from tasks.evaluate import data as taskdata
from tasks.evaluate.finetune_config import FinetuneConfig
from tasks.evaluate.prompts import PromptSpec
from tasks.evaluate.results import averages, majority, score_task

log = logging.getLogger("llmpipe.evaluate")

Protocol = Literal["auto", "finetune", "fewshot", "zeroshot"]


class TaskOptions(StageConfig):
    """Per-task settings under `evaluate.options.<task>`; unset fields take the stage-wide value."""

    protocol: Protocol | None = None
    limit_train: int | None = Field(None, ge=1)
    limit_eval: int | None = Field(None, ge=1)
    fewshot_k: int | None = Field(None, ge=0)
    finetune_seeds: int | None = Field(None, ge=1)
    prompt: PromptSpec | None = None


class EvaluateConfig(StageConfig):
    """The `evaluate:` section of pipelines.yaml."""

    # task names (cola, sst2, ..., boolq, ...) and the groups glue and superglue; own tasks are added
    tasks: list[str] = Field(default_factory=lambda: ["glue", "superglue"])
    glue_dir: str | None = None  # download_glue_data layout (CoLA/train.tsv, ...); None = none
    superglue_dir: str | None = None  # official SuperGLUE JSONL layout (BoolQ/train.jsonl, ...)
    hub: bool = False  # fetch tasks or splits missing locally from the Hugging Face hub when it is reachable
    own: list[taskdata.OwnTaskConfig] = Field(default_factory=list)  # your tasks: local CSV/JSONL/Parquet
    # auto: fine-tune where a train split exists, few-shot where only a few-shot split does, else zero-shot
    protocol: Protocol = "auto"
    also_zeroshot: bool = False  # score fine-tuned tasks zero-shot too
    fewshot_k: int = Field(4, ge=0)  # demonstrations in a few-shot prompt
    limit_train: int | None = Field(None, ge=1)  # first N examples of each train split (quick runs)
    limit_eval: int | None = Field(None, ge=1)  # first N examples of each evaluation split
    options: dict[str, TaskOptions] = Field(default_factory=dict)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    # fine-tuning runs per model (seeds finetune.seed + pipeline seed + 0..K-1): a task's scores are the mean
    # over the runs, with the seed-to-seed sd; the first run's classifier is the one published and predicted with
    finetune_seeds: int = Field(1, ge=1)
    random_init_baseline: bool = True  # fine-tune the same architecture from random weights beside it
    bootstrap_samples: int = Field(1000, ge=0)  # 0 = no intervals
    perplexity_max_tokens: int = Field(0, ge=0)  # val tokens scored for perplexity; 0 = all
    # log-likelihood scoring batch budget in padded tokens; 0 = 2048 on a CPU, 32768 on a GPU
    max_batch_tokens: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # CPU threads (0 = torch's default, one per core); on a CPU shared with other work 1 is steadier
    cpu_threads: int = Field(0, ge=0)

    key_exclude = frozenset({"max_batch_tokens", "cpu_threads"})


# the stage ----------------------------------------------------------------------------------------
def run_evaluate(inputs: Inputs, out_uri: str, cfg: EvaluateConfig, ctx: RunContext) -> StageOutput:
    from tasks.evaluate.score import open_scorer

    store = ctx.open_store()
    out = store.local_path(out_uri)
    out.mkdir(parents=True, exist_ok=True)
    hf_dir = model_dir(inputs["pretrain"], store)
    scorer = open_scorer(hf_dir, cfg.device, cfg.cpu_threads, cfg.max_batch_tokens)
    model, tokenizer, device = scorer.model, scorer.tokenizer, scorer.device
    started = time.perf_counter()
    results: dict[str, Any] = {"model": str(hf_dir), "device": str(device)}
    results["perplexity"] = _perplexity(inputs.get("tokenize"), store, model, tokenizer, device, cfg)
    specs = _task_specs(cfg)
    done: dict[str, dict[str, Any]] = {}
    ordered = sorted(specs, key=lambda s: s.scored_with is not None)  # diagnostic sets after their model
    for i, spec in enumerate(ordered):
        raise_if_stopping(f"evaluate task {spec.name}")
        ctx.progress("evaluate", "tasks", i, len(ordered))
        done[spec.name] = _run_task_once(spec, cfg, out, hf_dir, scorer, done, ctx)
    ctx.progress("evaluate", "tasks", len(ordered), len(ordered))
    results["tasks"] = done
    results["averages"] = averages(done)
    results["seconds"] = round(time.perf_counter() - started, 3)
    write_json(out / "results.json", results)
    write_json(out / "metrics.json", model_metrics(results))
    raise_if_failed(done, "evaluate", "task", out)
    shutil.rmtree(out / "_work", ignore_errors=True)  # checkpoints and the random-init classifiers
    return StageOutput(outputs=_outputs(out), stats=_stats(results))


def model_dir(result: StageResult, store: Any) -> Path:
    """The Hugging Face directory of the pretrain stage's model (or of the model given to `--model`)."""
    files = result.files("hf_model") if "hf_model" in result.outputs else []
    if not files:
        raise UserError(f"evaluate: the pretrain result in {result.uri} has no Hugging Face export "
                        f"({result.stats.get('hf_export', 'no hf_model output')}); evaluate needs one")
    return store.local_path(files[0]).parent


def _perplexity(tokens: StageResult | None, store: Any, model: Any, tokenizer: Any, device: Any,
                cfg: EvaluateConfig) -> dict[str, Any]:
    from tasks.evaluate.perplexity import val_perplexity

    if tokens is None or "index" not in tokens.outputs:
        return {"status": "skipped", "reason": "no tokenize val split (a model given by --model is scored on "
                                               "tasks only)"}
    index = store.local_path(tokens.files("index")[0])
    try:
        figures = val_perplexity(model, tokenizer, index, device, block_size=model.config.max_position_embeddings,
                                 max_tokens=cfg.perplexity_max_tokens)
    except ValueError as exc:
        return {"status": "skipped", "reason": str(exc)}
    return {"status": "done", **figures}


def eval_split_of(spec: Any) -> str:
    """The split scored: dev (GLUE/SuperGLUE dev or val files), or an own task's `test` when it has no dev."""
    return "dev" if "dev" in spec.files or spec.suite != "own" else "test"


def _task_specs(cfg: EvaluateConfig) -> list[Any]:
    specs = taskdata.resolve(cfg.tasks) if cfg.tasks else []
    names = {s.name for s in specs}
    for i, own in enumerate(cfg.own):
        spec = taskdata.own_task_spec(own, key=f"evaluate.own[{i}]")
        if spec.name in names:
            raise UserError(f"evaluate.own[{i}].name: {spec.name!r} is given twice; rename one")
        specs.append(spec)
        names.add(spec.name)
    unknown = sorted(set(cfg.options) - names)
    if unknown:
        raise UserError(f"evaluate.options: {unknown} are not among the tasks evaluated ({sorted(names)})")
    missing_parents = [s.name for s in specs if s.scored_with and s.scored_with not in names]
    specs += [s for s in taskdata.resolve(sorted({p.scored_with for p in specs if p.name in missing_parents}))
              if s.name not in names]
    return specs


def _run_task_once(spec: Any, cfg: EvaluateConfig, out: Path, hf_dir: Path, scorer: Any,
                   done: dict[str, dict[str, Any]], ctx: RunContext) -> dict[str, Any]:
    """A finished task's record from a previous attempt, else run it; a failure becomes a record."""
    record = run_once(out / "tasks" / f"{spec.name}.json", {"task": spec.name, "suite": spec.suite},
                      TaskRun(spec, cfg, out, hf_dir, scorer, done, ctx.seed).run, log, f"evaluate: {spec.name}")
    _log_record(record)
    return record


class TaskRun:
    """One task: load its splits, choose the protocol, predict, score, write predictions."""

    def __init__(self, spec: Any, cfg: EvaluateConfig, out: Path, hf_dir: Path, scorer: Any,
                 done: dict[str, dict[str, Any]], seed: int):
        self.spec, self.cfg, self.out, self.hf_dir = spec, cfg, out, hf_dir
        self.scorer, self.done = scorer, done  # the stage's one LoglikScorer: its model stays loaded
        self.opts = cfg.options.get(spec.name, TaskOptions())
        self.seed = seed
        self.notes: list[str] = []
        self.bad: dict[str, Any] = {}

    def option(self, name: str) -> Any:
        value = getattr(self.opts, name)
        return getattr(self.cfg, name) if value is None else value

    def prompt(self) -> PromptSpec | None:
        """options.<task>.prompt, else the task's own (tasks.yaml), else None."""
        return self.opts.prompt or (PromptSpec(**self.spec.prompt) if self.spec.prompt else None)

    def load(self, spec: Any, split: str, limit: int | None) -> Any:
        """A split from its local directory, else (with `hub: true`) the Hugging Face hub; Skipped if neither."""
        source = self.source(spec)
        if spec.suite != "own" and (source is None or not Path(source).is_dir()):
            key = f"evaluate.{spec.suite}_dir"
            where = f"{key} is not set" if source is None else f"{key}: {source} is not a directory"
            result = taskdata.Skipped(spec.name, split, f"{where} (set it, or LLMPIPE_DATA to the folder holding "
                                                        "glue/ and superglue/)")
        else:
            result = taskdata.load_split(spec, split, source, limit=limit)
        if isinstance(result, taskdata.Skipped) and self.cfg.hub and spec.suite != "own":
            hub = taskdata.load_split(spec, split, "hub", limit=limit)
            if isinstance(hub, taskdata.Skipped):
                return taskdata.Skipped(spec.name, split, f"{result.reason}; hub: {hub.reason}")
            result = hub
        if isinstance(result, taskdata.Skipped):
            return result
        if result.bad_rows:
            self.bad[f"{spec.name}/{split}"] = {"rows": result.bad_rows, "reasons": result.bad_reasons,
                                                "examples": result.bad_examples}
            log.warning("evaluate: %s %s: %d bad rows skipped (%s)", spec.name, split, result.bad_rows,
                        ", ".join(f"{k}: {v}" for k, v in result.bad_reasons.items()))
        return result

    def source(self, spec: Any) -> str | None:
        if spec.suite == "glue":
            return self.cfg.glue_dir
        if spec.suite == "superglue":
            return self.cfg.superglue_dir
        return None  # own tasks carry their file paths

    def run(self) -> dict[str, Any]:
        spec = self.spec
        record: dict[str, Any] = {"task": spec.name, "suite": spec.suite, "kind": spec.kind,
                                  "metric_names": list(spec.metrics)}
        eval_name = eval_split_of(spec)
        eval_split = self.load(spec, eval_name, self.option("limit_eval"))
        if isinstance(eval_split, taskdata.Skipped):
            return record | {"status": "skipped", "reason": eval_split.reason}
        evaluation = eval_split.examples
        if not evaluation:
            return record | {"status": "skipped", "reason": f"{eval_split.path}: no usable examples"}
        parent = self.done.get(spec.scored_with) if spec.scored_with else None
        if spec.scored_with and (parent is None or parent.get("status") != "done"):
            why = f"{parent['status']}: {parent.get('reason', '')}" if parent else "not evaluated"
            return record | {"status": "skipped",
                             "reason": f"scored with {spec.scored_with}'s model, which has none ({why})"}
        if spec.scored_with:
            record |= self.run_diagnostic(evaluation)
        else:
            record |= self.run_own_model(evaluation)
        record["n_eval"] = len(evaluation)
        record["eval_split"] = {"split": eval_name, "path": str(eval_split.path)}
        if self.notes:
            record["notes"] = self.notes
        if self.bad:
            record["bad_rows"] = self.bad
        return record | {"status": "done"}

    # protocols ------------------------------------------------------------------------------------
    def run_own_model(self, evaluation: list[Any]) -> dict[str, Any]:
        spec, protocol = self.spec, self.option("protocol")
        train = fewshot = None
        if protocol in ("auto", "finetune"):
            train = self.load(spec, "train", self.option("limit_train"))
            if isinstance(train, taskdata.Skipped):
                self.notes.append(f"{train.reason}; {'few-shot' if 'fewshot' in spec.files else 'zero-shot'}"
                                  " only")
                train = None
            elif not train.examples:
                self.notes.append(f"{train.path}: no usable train examples; not fine-tuned")
                train = None
        if train is None and protocol in ("auto", "fewshot") and "fewshot" in spec.files:
            fewshot = self.load(spec, "fewshot", None)
            if isinstance(fewshot, taskdata.Skipped):
                self.notes.append(fewshot.reason)
                fewshot = None
        if train is not None:
            rec = self.finetuned(train.examples, evaluation)
            rec["n_train"] = len(train.examples)
            if self.cfg.also_zeroshot:
                rec["zeroshot"] = self.scored(evaluation, [], "zeroshot", suffix=".zeroshot")
            majority_from = train.examples
        else:
            demos = fewshot.examples if fewshot is not None and protocol != "zeroshot" else []
            rec = self.scored(evaluation, demos, "fewshot" if demos else "zeroshot")
            majority_from = demos or None
        rec["majority"] = self.majority(majority_from, evaluation)
        return rec

    def run_diagnostic(self, evaluation: list[Any]) -> dict[str, Any]:
        """AX (with MNLI's model), AX-b and AX-g (with RTE's): predict with the parent task's classifier,
        or score with the parent's protocol when it was not fine-tuned."""
        parent = self.done[self.spec.scored_with]
        if parent["protocol"] != "finetune":
            rec = self.scored(evaluation, [], "zeroshot")
            rec["scored_with"] = f"{self.spec.scored_with} ({parent['protocol']})"
        else:
            from tasks.evaluate.finetune import predict_examples

            rec = {"protocol": "finetune", "scored_with": f"{self.spec.scored_with} (fine-tuned)"}
            preds = predict_examples(self.out / "classifiers" / self.spec.scored_with, evaluation)
            rec["metrics"] = self.score(evaluation, [p["prediction"] for p in preds])
            self.write_predictions(evaluation, preds, "")
            random_dir = self.out / "_work" / "random_init" / self.spec.scored_with / "classifier"
            if random_dir.exists():
                rpreds = predict_examples(random_dir, evaluation)
                rec["random_init"] = self.score(evaluation, [p["prediction"] for p in rpreds])
                rec["transfer"] = self.transfer(evaluation, [[p["prediction"] for p in preds]],
                                                [[p["prediction"] for p in rpreds]])
                self.write_predictions(evaluation, rpreds, ".random_init")
        rec["majority"] = self.majority(None, evaluation)
        return rec

    def finetuned(self, train: list[Any], evaluation: list[Any]) -> dict[str, Any]:
        from tasks.evaluate.finetune import finetune

        spec = self.spec
        base_cfg = self.cfg.finetune.model_copy(update={"seed": self.cfg.finetune.seed + self.seed})
        rec: dict[str, Any] = {"protocol": "finetune"}
        work = self.out / "_work"
        prompt = self.prompt()
        seeds = self.option("finetune_seeds")
        results, rands = [], []
        for k in range(seeds):  # run k trains in <task> (k = 0, as with one seed) or <task>.seed<k>
            ft_cfg = base_cfg.model_copy(update={"seed": base_cfg.seed + k})
            name = spec.name if k == 0 else f"{spec.name}.seed{k}"
            results.append(finetune(self.hf_dir, spec.kind, spec.labels, train, evaluation, ft_cfg,
                                    work / "pretrained" / name, prompt=prompt))
            if self.cfg.random_init_baseline:
                rands.append(finetune(self.hf_dir, spec.kind, spec.labels, train, evaluation, ft_cfg,
                                      work / "random_init" / name, random_init=True, prompt=prompt))
        result = results[0]
        target = self.out / "classifiers" / spec.name
        if target.exists():
            shutil.rmtree(target)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(result.classifier_dir), target)
        runs = [[p["prediction"] for p in r.predictions] for r in results]
        rec["metrics"] = self.score(evaluation, runs[0], runs[1:])
        rec["finetune"] = {"steps": result.steps, "seconds": round(sum(r.seconds for r in results), 3),
                           "train_examples_per_s": round(result.train_examples_per_s, 2), "head": result.head,
                           "seeds": seeds}
        if result.linear_why and spec.kind == "classification":  # a prompt head was asked for and not possible
            rec["finetune"]["linear_why"] = result.linear_why
        for k, r in enumerate(results):
            self.write_predictions(evaluation, r.predictions, "" if k == 0 else f".seed{k}")
        if rands:
            rand_runs = [[p["prediction"] for p in r.predictions] for r in rands]
            rec["random_init"] = self.score(evaluation, rand_runs[0], rand_runs[1:])
            rec["transfer"] = self.transfer(evaluation, runs, rand_runs)
            for k, r in enumerate(rands):
                self.write_predictions(evaluation, r.predictions, ".random_init" + ("" if k == 0 else f".seed{k}"))
        return rec

    def scored(self, evaluation: list[Any], demos: list[Any], protocol: str, suffix: str = "") -> dict[str, Any]:
        """Zero- or few-shot: the summed log-likelihood of each answer continuation; the length-normalized
        choice is reported beside it (`metrics_norm`)."""
        from tasks.evaluate.prompts import draw_demos, predict_from_scores, render

        spec = self.spec
        prompt = self.prompt()
        if prompt is None:
            raise UserError(f"{spec.name}: no prompt for zero-shot scoring; set evaluate.options.{spec.name}"
                            ".prompt (template and choices) or give the task a train split")
        k = self.option("fewshot_k") if demos else 0
        requests = [render(prompt, ex, draw_demos(demos, k, self.seed, ex)) for ex in evaluation]
        start = time.perf_counter()
        scores = self.scorer.score(requests)
        seconds = time.perf_counter() - start
        picks = [predict_from_scores(s) for s in scores]
        preds = [self.choice_prediction(ex, p[0]) for ex, p in zip(evaluation, picks)]
        preds_norm = [self.choice_prediction(ex, p[1]) for ex, p in zip(evaluation, picks)]
        rows = [{"idx": ex.idx, "prediction": pred, "prediction_norm": pn, "choice": p[0], "choice_norm": p[1],
                 "logprobs": [round(c.logprob, 5) for c in s], "n_tokens": [c.n_tokens for c in s],
                 "n_chars": [c.n_chars for c in s]}
                for ex, pred, pn, p, s in zip(evaluation, preds, preds_norm, picks, scores)]
        self.write_predictions(evaluation, rows, suffix)
        return {"protocol": protocol, "fewshot_k": k, "metrics": self.score(evaluation, preds),
                "metrics_norm": self.score(evaluation, preds_norm),
                "scoring": {"requests": len(requests), "seconds": round(seconds, 3),
                            "examples_per_s": round(len(requests) / seconds, 2) if seconds else None}}

    def choice_prediction(self, ex: Any, choice: int) -> Any:
        """What the task's metrics compare: the class index, or for ReCoRD the chosen entity string."""
        if self.spec.kind == "multiple_choice" and ex.answers is not None:
            return ex.choices[choice]
        return choice

    # scores -----------------------------------------------------------------------------------------
    def score(self, evaluation: list[Any], predictions: list[Any], more_runs: list[list[Any]] = ()) -> dict[str, Any]:
        return score_task(self.spec, evaluation, predictions, samples=self.cfg.bootstrap_samples, seed=self.seed,
                          more_runs=more_runs)

    def transfer(self, evaluation: list[Any], runs: list[list[Any]], random_runs: list[list[Any]]) -> dict[str, Any]:
        """The paired difference of the two models' mean scores over their runs (lists of predictions)."""
        from tasks.evaluate.results import transfer_effect

        return transfer_effect(self.spec, evaluation, runs[0], random_runs[0], samples=self.cfg.bootstrap_samples,
                               seed=self.seed, more_runs=runs[1:], more_baseline=random_runs[1:])

    def majority(self, train: list[Any] | None, evaluation: list[Any]) -> dict[str, Any]:
        return majority(self.spec, train, evaluation)

    def write_predictions(self, evaluation: list[Any], rows: list[dict[str, Any]], suffix: str) -> None:
        write_jsonl(self.out / "predictions" / f"{self.spec.name}{suffix}.jsonl",
                    ({"idx": ex.idx, "gold": ex.answers if ex.answers is not None else ex.label,
                      **{k: v for k, v in row.items() if k != "idx"}} for ex, row in zip(evaluation, rows)))


# results ----------------------------------------------------------------------------------------
def model_metrics(results: dict[str, Any]) -> dict[str, Any]:
    """The compact figures the registry keeps with a model version."""
    ppl = results.get("perplexity", {})
    return {"val_perplexity": ppl.get("perplexity"), "val_bits_per_byte": ppl.get("bits_per_byte"),
            "tasks": {n: {m: v["value"] for m, v in r.get("metrics", {}).items()}
                      for n, r in results["tasks"].items() if r.get("status") == "done"},
            "averages": {k: v.get("score") for k, v in results.get("averages", {}).items()}}


def _stats(results: dict[str, Any]) -> dict[str, Any]:
    tasks = results["tasks"]
    by_status: dict[str, list[str]] = {}
    for name, r in tasks.items():
        by_status.setdefault(r["status"], []).append(name)
    ppl = results["perplexity"]
    stats = {"tasks_done": len(by_status.get("done", [])), "tasks_skipped": by_status.get("skipped", []),
             "val_perplexity": ppl.get("perplexity"), "val_bits_per_byte": ppl.get("bits_per_byte"),
             "seconds": results["seconds"]}
    for key, avg in results["averages"].items():
        stats[f"{key}_average"] = avg.get("score")
    stats["protocols"] = {n: r["protocol"] for n, r in tasks.items() if r["status"] == "done"}
    return stats


def _outputs(out: Path) -> dict[str, Any]:
    def rel(paths: list[Path]) -> list[str]:
        return sorted(str(p.relative_to(out)) for p in paths if p.is_file())

    return {"results": "results.json", "metrics": "metrics.json",
            "tasks": rel(list((out / "tasks").glob("*.json"))),
            "predictions": rel(list((out / "predictions").glob("*.jsonl"))),
            "classifiers": rel(list((out / "classifiers").rglob("*")))}


def _log_record(record: dict[str, Any]) -> None:
    if record["status"] != "done":
        log.info("evaluate: %-8s %s: %s", record["task"], record["status"], record.get("reason", ""))
        return
    figures = ", ".join(f"{m} {v['value']:.3f}" for m, v in record.get("metrics", {}).items()
                        if v.get("value") is not None)
    log.info("evaluate: %-8s %s (%d examples): %s", record["task"], record["protocol"], record["n_eval"], figures)


def evaluate_key_inputs(cfg: EvaluateConfig, ctx: RunContext) -> dict[str, Any]:
    """The task files' sizes and modification times: editing a dataset reruns the stage."""
    roots = [Path(d) for d in (cfg.glue_dir, cfg.superglue_dir) if d]
    paths = [p for root in roots if root.is_dir() for p in sorted(root.rglob("*")) if p.is_file()]
    paths += [Path(p) for own in cfg.own for p in (own.train, own.dev, own.test) if p and Path(p).is_file()]
    return {"files": file_stamps(paths)}


def evaluate_artifacts(result: StageResult) -> list[Artifact]:
    results_file = result.files("results")
    if not results_file or not Path(results_file[0]).is_file():
        return []
    results = json.loads(Path(results_file[0]).read_text())
    return [Table("results", results_table(results), "every task: score with 95% interval, baselines, n"),
            Markdown("summary", summary_markdown(results), "perplexity and the GLUE/SuperGLUE averages")]


def _fmt(v: dict[str, Any] | None) -> str:
    if not v or v.get("value") is None:
        return ""
    ci = v.get("ci")
    return f"{v['value']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def results_table(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, r in results["tasks"].items():
        if r["status"] != "done":
            rows.append({"task": name, "status": r["status"], "protocol": "", "metric": "", "score [95% CI]": "",
                         "random init": "", "pretrained - random init [paired 95% CI]": "", "majority": "", "n": "",
                         "note": r.get("reason", "")})
            continue
        majority = r.get("majority", {}).get("metrics", {})
        for metric, value in r["metrics"].items():
            rows.append({"task": name, "status": "done", "protocol": r["protocol"], "metric": metric,
                         "score [95% CI]": _fmt(value), "random init": _fmt(r.get("random_init", {}).get(metric)),
                         "pretrained - random init [paired 95% CI]": _fmt(r.get("transfer", {}).get(metric)),
                         "majority": rounded(majority.get(metric, {}).get("value")), "n": r["n_eval"],
                         "note": "; ".join(r.get("notes", []))})
    return rows


def summary_markdown(results: dict[str, Any]) -> str:
    ppl = results.get("perplexity", {})
    lines = ["## Evaluation", ""]
    if ppl.get("status") == "done":
        lines.append(f"Validation perplexity {ppl['perplexity']:.2f}, {ppl['bits_per_byte']:.3f} bits per byte "
                     f"({ppl['tokens']:,} tokens).")
    lines += ["", "| average | score | tasks |", "|---|---|---|"]
    for key, avg in results.get("averages", {}).items():
        lines.append(f"| {key} | {rounded(avg.get('score'))} | {', '.join(t['task'] for t in avg.get('tasks', []))} |")
    return "\n".join(lines)


STAGE = Stage(name="evaluate", config=EvaluateConfig, run=run_evaluate, reads=("pretrain", "tokenize"),
              key_inputs=evaluate_key_inputs, artifacts=evaluate_artifacts, uses_pipeline_seed=True,
              resumable=True, retries=1,
              summary="perplexity, then GLUE, SuperGLUE and your own tasks: fine-tuned or scored, with intervals")
