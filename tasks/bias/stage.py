"""Bias stage: likelihood-based bias checks of the pretrained model, counterfactual consistency of the
fine-tuned classifiers, demographic term counts of the corpus, and thresholds to gate on.

Reads the pretrain stage's Hugging Face export (any local HF causal LM), evaluate's fine-tuned
classifiers where they exist, and the collect and pii stages' documents (term counts only). Every figure
carries a bootstrap 95% interval, its number of items and the value an unbiased model would have
(`chance`); a figure whose interval contains chance is reported as not distinguishable from it.

    bias.json               every check: status, figures with intervals and chance; thresholds; verdict
    checks/<check>.json     the same per check, written as each finishes (a rerun keeps finished checks)
    predictions/<check>.jsonl  per item: what was compared and the model's scores (BOLD: continuations)

A check whose data is missing is `skipped` with the reason. A check that fails is recorded as `failed`
after the others have run, and the stage then fails so nothing incomplete is certified; the rerun redoes
only the failed checks. Thresholds never fail the stage: they are reported (pass / fail / not_measured)
for the register stage to gate on.
"""
from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from tasks.core.artifacts import Artifact, Markdown, Table
from tasks.core.config import StageConfig
from tasks.core.errors import UserError
from tasks.core.records import file_stamps, raise_if_failed, run_once, write_json, write_jsonl
from tasks.core.result import StageResult
from tasks.core.stage import Inputs, RunContext, Stage, StageOutput
from tasks.core.stopping import raise_if_stopping

log = logging.getLogger("llmpipe.bias")

SCORED = ("probes", "crows_pairs", "winobias", "winogender", "bbq")  # log-likelihood checks
CHECKS = (*SCORED, "bold", "counterfactual", "data")
NEED_DATA_DIR = ("crows_pairs", "winobias", "winogender", "bbq", "bold")


class BoldConfig(StageConfig):
    """BOLD: continuations generated for a sample of each domain's and group's prompts, scored by VADER."""

    per_group: int = Field(20, ge=1)  # prompts per (domain, group)
    domains: list[str] | None = None  # gender, race, religious_ideology, political_ideology, profession
    max_new_tokens: int = Field(20, ge=1)
    batch_size: int = Field(32, ge=1)

    key_exclude = frozenset({"batch_size"})


class CounterfactualCheckConfig(StageConfig):
    """Counterfactual consistency of evaluate's classifiers: swap demographic terms in their evaluation
    sentences and count prediction flips."""

    tasks: list[str] = Field(default_factory=lambda: ["sst2"])  # evaluate tasks with a classifier
    pairs_file: str | None = None  # word pairs (tasks/bias/word_pairs.yaml format); None = the shipped list
    limit: int | None = Field(None, ge=1)  # evaluation examples read per task (before the swap filter)
    # an evaluate output directory (holding results.json, tasks/, classifiers/) to take the classifiers
    # from instead of this run's evaluate stage (`llmpipe bias --model DIR` runs no evaluate)
    evaluate_dir: str | None = None


class Threshold(StageConfig):
    """One gate: the figure (`<check>/<figure>`, as in bias.json) must stay within [min, max]."""

    figure: str
    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Threshold:
        if self.min is None and self.max is None:
            raise ValueError(f"threshold on {self.figure!r}: give min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"threshold on {self.figure!r}: min {self.min} is above max {self.max}")
        return self


class BiasConfig(StageConfig):
    """The `bias:` section of pipelines.yaml."""

    checks: list[str] = Field(default_factory=lambda: list(CHECKS))
    data_dir: str | None = None  # folder holding crows_pairs/, winobias/, winogender/, bbq/, bold/
    limit: int | None = Field(None, ge=1)  # items per data set (a deterministic sample that keeps pairs)
    limits: dict[str, int] = Field(default_factory=dict)  # per check, over `limit`
    winobias_split: Literal["dev", "test"] = "test"
    bbq_categories: list[str] | None = None  # None = every category file present
    probes_file: str | None = None  # None = the probes shipped in tasks/bias/probes.yaml
    bold: BoldConfig = Field(default_factory=BoldConfig)
    counterfactual: CounterfactualCheckConfig = Field(default_factory=CounterfactualCheckConfig)
    lexicons_file: str | None = None  # term lists of the data-level counts; None = tasks/bias/lexicons.yaml
    thresholds: list[Threshold] = Field(default_factory=list)
    # interval: a threshold fails only when the whole 95% interval is past it; value: when the point is
    fail_when: Literal["interval", "value"] = "interval"
    bootstrap_samples: int = Field(1000, ge=0)  # 0 = no intervals
    max_batch_tokens: int = Field(0, ge=0)  # scoring batch budget; 0 = 2048 on a CPU, 32768 on a GPU
    device: Literal["auto", "cpu", "cuda"] = "auto"
    cpu_threads: int = Field(0, ge=0)

    key_exclude = frozenset({"max_batch_tokens", "cpu_threads"})

    @model_validator(mode="after")
    def _known(self) -> BiasConfig:
        unknown = [c for c in [*self.checks, *self.limits] if c not in CHECKS]
        if unknown:
            raise ValueError(f"unknown checks {unknown}; known: {', '.join(CHECKS)}")
        bad = [k for k, v in self.limits.items() if v < 1]
        if bad:
            raise ValueError(f"limits {bad} must be >= 1")
        return self

    def limit_for(self, check: str) -> int | None:
        return self.limits.get(check, self.limit)


# the stage ----------------------------------------------------------------------------------------
def run_bias(inputs: Inputs, out_uri: str, cfg: BiasConfig, ctx: RunContext) -> StageOutput:
    from tasks.evaluate.score import open_scorer
    from tasks.evaluate.stage import model_dir

    store = ctx.open_store()
    out = store.local_path(out_uri)
    out.mkdir(parents=True, exist_ok=True)
    hf_dir = model_dir(inputs["pretrain"], store)
    scorer = open_scorer(hf_dir, cfg.device, cfg.cpu_threads, cfg.max_batch_tokens)
    device = scorer.device
    run = CheckRun(cfg, out, scorer, inputs, store, ctx.seed)
    started = time.perf_counter()
    records: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(cfg.checks):
        raise_if_stopping(f"bias check {name}")
        ctx.progress("bias", "checks", i, len(cfg.checks))
        records[name] = run.once(name)
    ctx.progress("bias", "checks", len(cfg.checks), len(cfg.checks))
    figures = all_figures(records)
    gates = check_thresholds(cfg.thresholds, figures, cfg.fail_when)
    report = {"model": str(hf_dir), "device": str(device), "checks": records, "thresholds": gates,
              "verdict": verdict(gates), "seconds": round(time.perf_counter() - started, 3)}
    write_json(out / "bias.json", report)
    raise_if_failed(records, "bias", "check", out)
    return StageOutput(outputs=_outputs(out), stats=_stats(report))


class CheckRun:
    """Runs one check at a time against the stage's one model and scorer."""

    def __init__(self, cfg: BiasConfig, out: Path, scorer: Any, inputs: Inputs, store: Any, seed: int):
        self.cfg, self.out, self.scorer, self.inputs, self.store, self.seed = cfg, out, scorer, inputs, store, seed

    def once(self, name: str) -> dict[str, Any]:
        """A finished check's record from an earlier attempt, else run it; a failure becomes a record."""
        record = run_once(self.out / "checks" / f"{name}.json", {"check": name}, getattr(self, f"run_{name}"),
                          log, f"bias: {name}")
        _log_record(record)
        return record

    # data sets ------------------------------------------------------------------------------------
    def data_root(self, name: str) -> Path | dict[str, Any]:
        if self.cfg.data_dir is None:
            return _skipped(f"{name}: bias.data_dir is not set (set it, or LLMPIPE_DATA to the folder holding "
                            "bias/)")
        root = Path(self.cfg.data_dir)
        if not root.is_dir():
            return _skipped(f"{name}: bias.data_dir {root} is not a directory (set LLMPIPE_DATA to the folder "
                            "holding bias/)")
        return root

    def load(self, name: str) -> Any:
        from tasks.bias import data

        if name == "probes":
            return data.load_probes(self.cfg.probes_file)
        root = self.data_root(name)
        if isinstance(root, dict):
            return root
        limit, seed = self.cfg.limit_for(name), self.seed
        if name == "crows_pairs":
            return data.load_crows_pairs(root, limit=limit, seed=seed)
        if name == "winobias":
            return data.load_winobias(root, split=self.cfg.winobias_split, limit=limit, seed=seed)
        if name == "winogender":
            return data.load_winogender(root, limit=limit, seed=seed)
        if name == "bbq":
            return data.load_bbq(root, limit=limit, seed=seed, categories=self.cfg.bbq_categories)
        if name == "bold":
            bold = self.cfg.bold
            return data.load_bold(root, per_group=bold.per_group, seed=seed, domains=bold.domains)
        raise AssertionError(name)

    def loaded_or_skip(self, name: str) -> tuple[Any, dict[str, Any] | None]:
        from tasks.bias.data import Skipped

        loaded = self.load(name)
        if isinstance(loaded, dict):
            return None, loaded
        if isinstance(loaded, Skipped):
            return None, _skipped(loaded.reason)
        if not loaded.items:
            return None, _skipped(f"{name}: {loaded.path}: no usable items")
        return loaded, None

    # log-likelihood checks --------------------------------------------------------------------------
    def scored(self, name: str) -> dict[str, Any]:
        from tasks.bias import checks

        loaded, skipped = self.loaded_or_skip(name)
        if skipped:
            return skipped
        check = checks.CHECKS[name]
        items = loaded.items
        requests = check.requests(items)
        start = time.perf_counter()
        scored = self.scorer.score(requests, skip_too_long=True)
        seconds = time.perf_counter() - start
        too_long = sum(s is None for s in scored)
        if too_long:  # a small model's window: said in the record, never silently dropped
            log.warning("bias: %s: %d of %d items are longer than the model's window of %d tokens; left out",
                        name, too_long, len(items), self.scorer.max_length)
            if too_long == len(items):
                return _skipped(f"{name}: every item is longer than the model's window of "
                                f"{self.scorer.max_length} tokens")
        items = [it for it, sc in zip(items, scored) if sc is not None]
        scores = [sc for sc in scored if sc is not None]
        outcomes = check.outcomes(items, scores)
        self.write_predictions(name, outcomes)
        figures = check.figures(items, outcomes, self.cfg.bootstrap_samples, self.seed)
        return {"status": "done", "n_items": len(items), "path": loaded.path,
                "figures": {k: f.to_dict() for k, f in figures.items()}, **_bad_rows(loaded),
                **({"left_out": {"longer than the model's window": too_long}} if too_long else {}),
                "scoring": {"requests": len(items), "seconds": round(seconds, 3),
                            "items_per_s": round(len(items) / seconds, 2) if seconds else None}}

    def run_probes(self) -> dict[str, Any]:
        return self.scored("probes")

    def run_crows_pairs(self) -> dict[str, Any]:
        return self.scored("crows_pairs")

    def run_winobias(self) -> dict[str, Any]:
        return self.scored("winobias")

    def run_winogender(self) -> dict[str, Any]:
        return self.scored("winogender")

    def run_bbq(self) -> dict[str, Any]:
        return self.scored("bbq")

    # generation -------------------------------------------------------------------------------------
    def run_bold(self) -> dict[str, Any]:
        from tasks.bias.checks import Bold
        from tasks.bias.generate import generate

        loaded, skipped = self.loaded_or_skip("bold")
        if skipped:
            return skipped
        items = loaded.items
        start = time.perf_counter()
        continuations = generate(self.scorer.model, self.scorer.tokenizer, [it.prompt for it in items],
                                 max_new_tokens=self.cfg.bold.max_new_tokens, batch_size=self.cfg.bold.batch_size,
                                 device=self.scorer.device)
        seconds = time.perf_counter() - start
        check = Bold()
        figures = check.figures(items, continuations, self.cfg.bootstrap_samples, self.seed)
        self.write_predictions("bold", check.outcomes(items, continuations))
        return {"status": "done", "n_items": len(items), "path": loaded.path,
                "figures": {k: f.to_dict() for k, f in figures.items()}, **_bad_rows(loaded),
                "generation": {"prompts": len(items), "max_new_tokens": self.cfg.bold.max_new_tokens,
                               "seconds": round(seconds, 3),
                               "items_per_s": round(len(items) / seconds, 2) if seconds else None}}

    # classifiers ------------------------------------------------------------------------------------
    def run_counterfactual(self) -> dict[str, Any]:
        from tasks.bias.consistency import classifier_consistency

        cc = self.cfg.counterfactual
        evaluation = self.inputs.get("evaluate")
        if cc.evaluate_dir:
            results_file = Path(cc.evaluate_dir) / "results.json"
        elif evaluation is not None and evaluation.files("results"):
            results_file = self.store.local_path(evaluation.files("results")[0])
        else:
            return _skipped("counterfactual: no evaluate results in this run (with --model, set "
                            "bias.counterfactual.evaluate_dir to an evaluate output directory)")
        if not results_file.is_file():
            return _skipped(f"counterfactual: {results_file} is missing")
        tasks: dict[str, Any] = {}
        figures: dict[str, Any] = {}
        for task in cc.tasks:
            rec = classifier_consistency(task, results_file.parent, cc.pairs_file, cc.limit,
                                         self.cfg.bootstrap_samples, self.seed)
            if rec["status"] == "done":
                figures |= {f"{task}/{k}": v for k, v in rec.pop("figures").items()}
                self.write_predictions(f"counterfactual.{task}", rec.pop("outcomes"))
            tasks[task] = rec
        if not figures:
            reasons = "; ".join(f"{t}: {r.get('reason', r['status'])}" for t, r in tasks.items())
            return _skipped(f"counterfactual: no classifier to check ({reasons})") | {"tasks": tasks}
        return {"status": "done", "tasks": tasks, "figures": figures,
                "n_items": sum(r.get("n_items", 0) for r in tasks.values())}

    # the corpus -------------------------------------------------------------------------------------
    def run_data(self) -> dict[str, Any]:
        from tasks.bias.counterfactual import corpus_term_counts, load_lexicons

        lexicons = load_lexicons(self.cfg.lexicons_file)
        counts = {}
        for stage in ("collect", "pii"):
            result = self.inputs.get(stage)
            if result is None or "docs" not in result.outputs:
                counts[stage] = {"status": "skipped", "reason": f"no {stage} documents in this run"}
                continue
            counts[stage] = corpus_term_counts(self.store, result.files("docs"), lexicons)
        if all(c.get("status") == "skipped" for c in counts.values()):
            return _skipped("data: no collect or pii documents in this run") | {"corpus": counts}
        return {"status": "done", "corpus": counts}

    def write_predictions(self, name: str, rows: list[dict[str, Any]]) -> None:
        write_jsonl(self.out / "predictions" / f"{name}.jsonl", rows)


def _skipped(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}


def _bad_rows(loaded: Any) -> dict[str, Any]:
    if not loaded.bad_rows:
        return {}
    log.warning("bias: %s: %d bad rows skipped (%s)", loaded.path, loaded.bad_rows,
                ", ".join(f"{k}: {v}" for k, v in loaded.bad_reasons.items()))
    return {"bad_rows": {"rows": loaded.bad_rows, "reasons": loaded.bad_reasons, "examples": loaded.bad_examples}}


# thresholds ---------------------------------------------------------------------------------------
def all_figures(records: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every figure of the finished checks by its full name, `<check>/<figure>`."""
    return {f"{check}/{name}": fig for check, rec in records.items() if rec.get("status") == "done"
            for name, fig in rec.get("figures", {}).items()}


def check_thresholds(rules: list[Threshold], figures: dict[str, dict[str, Any]],
                     fail_when: str) -> list[dict[str, Any]]:
    """pass / fail / not_measured per rule, with the measured value and interval beside its bounds.

    With fail_when=interval a rule fails only when the whole interval lies past a bound (the figure is
    then past it beyond sampling noise); a figure without an interval is judged on its value."""
    gates = []
    for rule in rules:
        fig = figures.get(rule.figure)
        gate: dict[str, Any] = {"figure": rule.figure, "min": rule.min, "max": rule.max}
        value = None if fig is None else fig.get("value")
        if value is None or (isinstance(value, float) and math.isnan(value)):
            known = ", ".join(sorted(figures)) or "none"
            why = "not measured in this run" if fig is None else "undefined on these items"
            gates.append(gate | {"status": "not_measured", "reason": f"{rule.figure} is {why} (figures: {known})"})
            continue
        ci = fig.get("ci")
        lo, hi = (ci[0], ci[1]) if ci and fail_when == "interval" else (value, value)
        reasons = []
        if rule.max is not None and lo > rule.max:
            reasons.append(f"above max {rule.max}" + (f" (whole interval [{lo:.4f}, {hi:.4f}])" if ci and
                                                      fail_when == "interval" else f" ({value:.4f})"))
        if rule.min is not None and hi < rule.min:
            reasons.append(f"below min {rule.min}" + (f" (whole interval [{lo:.4f}, {hi:.4f}])" if ci and
                                                      fail_when == "interval" else f" ({value:.4f})"))
        point_past = (rule.max is not None and value > rule.max) or (rule.min is not None and value < rule.min)
        gate |= {"value": value, "ci": ci, "status": "fail" if reasons else "pass", "judged_on": fail_when
                 if ci else "value", "value_past_bound": point_past}
        if reasons:
            gate["reason"] = "; ".join(reasons)
        elif point_past:
            gate["note"] = "the value is past the bound but its interval is not wholly: within noise"
        gates.append(gate)
    return gates


def verdict(gates: list[dict[str, Any]]) -> dict[str, Any]:
    """What register gates on: passed = no threshold failed; complete = every threshold was measured."""
    failed = [g["figure"] for g in gates if g["status"] == "fail"]
    missing = [g["figure"] for g in gates if g["status"] == "not_measured"]
    return {"passed": not failed, "complete": not missing, "failed": failed, "not_measured": missing,
            "thresholds": len(gates)}


# results ----------------------------------------------------------------------------------------
def _stats(report: dict[str, Any]) -> dict[str, Any]:
    checks = report["checks"]
    by_status: dict[str, list[str]] = {}
    for name, r in checks.items():
        by_status.setdefault(r["status"], []).append(name)
    figures = all_figures(checks)
    v = report["verdict"]
    stats = {"checks_done": by_status.get("done", []), "checks_skipped": by_status.get("skipped", []),
             "figures": len(figures),
             "distinguishable_from_chance": sorted(k for k, f in figures.items() if f.get("distinguishable")),
             "thresholds_passed": v["passed"], "thresholds_failed": v["failed"],
             "thresholds_not_measured": v["not_measured"], "seconds": report["seconds"]}
    data = checks.get("data", {})
    if data.get("status") == "done":
        stats["term_counts"] = {stage: _axis_shares(c) for stage, c in data["corpus"].items()}
    return stats


def _axis_shares(counts: dict[str, Any]) -> dict[str, Any]:
    """The compact view of term counts for the stage stats: per axis, each group's share."""
    if counts.get("status") == "skipped":
        return counts
    return {axis: {g: v.get("share") for g, v in groups.get("groups", {}).items()}
            for axis, groups in counts.get("axes", {}).items()}


def _outputs(out: Path) -> dict[str, Any]:
    def rel(paths: list[Path]) -> list[str]:
        return sorted(str(p.relative_to(out)) for p in paths if p.is_file())

    return {"bias": "bias.json", "checks": rel(list((out / "checks").glob("*.json"))),
            "predictions": rel(list((out / "predictions").glob("*.jsonl")))}


def _log_record(record: dict[str, Any]) -> None:
    if record["status"] != "done":
        log.info("bias: %-14s %s: %s", record["check"], record["status"], record.get("reason", ""))
        return
    n = record.get("n_items")
    log.info("bias: %-14s done (%s items, %d figures, %d distinguishable from chance)", record["check"],
             n if n is not None else "-", len(record.get("figures", {})),
             sum(bool(f.get("distinguishable")) for f in record.get("figures", {}).values()))


def bias_key_inputs(cfg: BiasConfig, ctx: RunContext) -> dict[str, Any]:
    """The data sets' and user files' sizes and modification times: editing one reruns the stage."""
    paths = []
    if cfg.data_dir and Path(cfg.data_dir).is_dir():
        paths += [p for p in sorted(Path(cfg.data_dir).rglob("*")) if p.is_file()]
    paths += [Path(p) for p in (cfg.probes_file, cfg.lexicons_file, cfg.counterfactual.pairs_file)
              if p and Path(p).is_file()]
    if cfg.counterfactual.evaluate_dir:  # the classifiers' results: another evaluate run means a rerun
        paths += [p for p in [Path(cfg.counterfactual.evaluate_dir) / "results.json"] if p.is_file()]
    return {"files": file_stamps(paths)}


def bias_preflight(cfg: BiasConfig) -> None:
    """User files named in the config must exist before anything runs."""
    for key, path in (("bias.probes_file", cfg.probes_file), ("bias.lexicons_file", cfg.lexicons_file),
                      ("bias.counterfactual.pairs_file", cfg.counterfactual.pairs_file)):
        if path and not Path(path).is_file():
            raise UserError(f"{key}: {path} does not exist; give an existing file or remove the key to use "
                            "the shipped one")
    ev = cfg.counterfactual.evaluate_dir
    if ev and not (Path(ev) / "results.json").is_file():
        raise UserError(f"bias.counterfactual.evaluate_dir: {ev} holds no results.json; give an evaluate stage "
                        "output directory (<store>/evaluate/<key>)")


# artifacts --------------------------------------------------------------------------------------
def _fmt_ci(fig: dict[str, Any]) -> str:
    ci = fig.get("ci")
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def _fmt(v: Any) -> str:
    return "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def figure_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for check, rec in report["checks"].items():
        if rec["status"] != "done":
            rows.append({"check": check, "figure": "", "value": "", "95% CI": "", "n": "", "chance": "",
                         "reading": f"{rec['status']}: {rec.get('reason', '')}"})
            continue
        for name, fig in rec.get("figures", {}).items():
            rows.append({"check": check, "figure": name, "value": _fmt(fig.get("value")), "95% CI": _fmt_ci(fig),
                         "n": fig.get("n", ""), "chance": _fmt(fig.get("chance")), "reading": reading(fig)})
    return rows


def reading(fig: dict[str, Any]) -> str:
    if fig.get("distinguishable") is None:
        return ""
    return "distinguishable from chance" if fig["distinguishable"] else "not distinguishable from chance"


def threshold_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"figure": g["figure"], "min": _fmt(g["min"]), "max": _fmt(g["max"]), "value": _fmt(g.get("value")),
             "95% CI": _fmt_ci(g), "status": g["status"], "why": g.get("reason", g.get("note", ""))}
            for g in report["thresholds"]]


def summary_markdown(report: dict[str, Any]) -> str:
    v = report["verdict"]
    lines = ["## Bias checks", ""]
    if v["thresholds"]:
        state = "all passed" if v["passed"] else f"FAILED: {', '.join(v['failed'])}"
        lines.append(f"Thresholds: {state}" + (f"; not measured: {', '.join(v['not_measured'])}"
                                                if v["not_measured"] else "") + ".")
    else:
        lines.append("No thresholds are configured (bias.thresholds).")
    figures = all_figures(report["checks"])
    sig = sorted(k for k, f in figures.items() if f.get("distinguishable"))
    lines += ["", f"{len(figures)} figures; {len(sig)} distinguishable from chance"
              + (f": {', '.join(sig)}" if sig else "") + ". Small models and small samples are noisy: a figure "
              "whose interval contains chance is no evidence of bias either way."]
    data = report["checks"].get("data", {})
    if data.get("status") == "done":
        lines += ["", "| corpus | axis | group | occurrences | share |", "|---|---|---|---|---|"]
        for stage, counts in data["corpus"].items():
            for axis, groups in counts.get("axes", {}).items():
                for g, c in groups.get("groups", {}).items():
                    lines.append(f"| after {stage} | {axis} | {g} | {c.get('occurrences', '')} | "
                                 f"{_fmt(c.get('share'))} |")
    return "\n".join(lines)


def bias_artifacts(result: StageResult) -> list[Artifact]:
    files = result.files("bias")
    if not files or not Path(files[0]).is_file():
        return []
    report = json.loads(Path(files[0]).read_text())
    arts: list[Artifact] = [Table("bias", figure_rows(report), "every figure: value, 95% interval, n, chance"),
                            Markdown("bias-summary", summary_markdown(report), "thresholds and term counts")]
    if report["thresholds"]:
        arts.append(Table("bias-thresholds", threshold_rows(report), "pass / fail per threshold"))
    return arts


STAGE = Stage(name="bias", config=BiasConfig, run=run_bias, reads=("collect", "pii", "pretrain", "evaluate"),
              key_inputs=bias_key_inputs, preflight=bias_preflight, artifacts=bias_artifacts,
              uses_pipeline_seed=True, resumable=True, retries=1,
              summary="CrowS-Pairs, WinoBias, Winogender, BBQ, BOLD, probes, classifier consistency, term "
                      "counts; thresholds")
