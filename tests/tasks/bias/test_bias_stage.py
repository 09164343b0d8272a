"""The bias stage's own logic: thresholds, the verdict, generation, and its config."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from tasks.bias.stage import STAGE, BiasConfig, Threshold, bias_artifacts, check_thresholds, verdict
from tasks.core.result import StageResult
from tasks.core.stage import RunContext, run_stage

FIGS = {"crows_pairs/pct_stereotype": {"value": 0.62, "ci": [0.55, 0.69], "n": 200, "chance": 0.5},
        "winobias/gap": {"value": 0.08, "ci": [-0.02, 0.18], "n": 400, "chance": 0.0},
        "probes/no_ci": {"value": 0.3, "ci": None, "n": 10, "chance": 0.0}}


def gates(rules, fail_when="interval"):
    return {g["figure"]: g for g in check_thresholds([Threshold(**r) for r in rules], FIGS, fail_when)}


def test_interval_rule_fails_only_when_the_whole_interval_is_past_the_bound():
    g = gates([{"figure": "crows_pairs/pct_stereotype", "min": 0.4, "max": 0.6},
               {"figure": "winobias/gap", "max": 0.05}])
    # 0.62 > 0.6 but the interval [0.55, 0.69] reaches below it: within noise, passed with a note
    assert g["crows_pairs/pct_stereotype"]["status"] == "pass"
    assert g["crows_pairs/pct_stereotype"]["value_past_bound"] is True
    assert "within noise" in g["crows_pairs/pct_stereotype"]["note"]
    assert g["winobias/gap"]["status"] == "pass"
    g = gates([{"figure": "crows_pairs/pct_stereotype", "max": 0.54}, {"figure": "winobias/gap", "min": 0.19}])
    assert g["crows_pairs/pct_stereotype"]["status"] == "fail"
    assert "above max 0.54" in g["crows_pairs/pct_stereotype"]["reason"]
    assert g["winobias/gap"]["status"] == "fail" and "below min 0.19" in g["winobias/gap"]["reason"]


def test_value_rule_and_figures_without_interval_use_the_point():
    g = gates([{"figure": "crows_pairs/pct_stereotype", "max": 0.6}], fail_when="value")
    assert g["crows_pairs/pct_stereotype"]["status"] == "fail"
    g = gates([{"figure": "probes/no_ci", "max": 0.2}])
    assert g["probes/no_ci"]["status"] == "fail" and g["probes/no_ci"]["judged_on"] == "value"


def test_unmeasured_figure_is_reported_not_passed():
    rules = [{"figure": "bbq/bias_score_ambig", "max": 0.1}, {"figure": "winobias/gap", "max": 0.5}]
    g = gates(rules)
    assert g["bbq/bias_score_ambig"]["status"] == "not_measured"
    assert "winobias/gap" in g["bbq/bias_score_ambig"]["reason"]  # lists the figures that exist
    v = verdict(list(g.values()))
    assert v == {"passed": True, "complete": False, "failed": [], "not_measured": ["bbq/bias_score_ambig"],
                 "thresholds": 2}
    v = verdict(check_thresholds([Threshold(figure="winobias/gap", max=-0.1)], FIGS, "interval"))
    assert v["passed"] is False and v["failed"] == ["winobias/gap"]


def test_config_errors_name_the_problem():
    with pytest.raises(ValidationError, match="give min, max or both"):
        Threshold(figure="x")
    with pytest.raises(ValidationError, match="above max"):
        Threshold(figure="x", min=1, max=0)
    with pytest.raises(ValidationError, match="unknown checks"):
        BiasConfig(checks=["crows", "bbq"])
    with pytest.raises(ValidationError, match="unknown checks"):
        BiasConfig(limits={"nope": 3})
    assert BiasConfig(limit=5, limits={"bbq": 9}).limit_for("bbq") == 9
    assert BiasConfig(limit=5).limit_for("winobias") == 5


@pytest.mark.usefixtures("torch_one_thread")
def test_batched_generation_matches_one_prompt_at_a_time(tiny_hf_dir):
    from tasks.bias.generate import generate
    from tasks.evaluate.score import load_causal_lm

    model, tok = load_causal_lm(tiny_hf_dir)
    prompts = ["the cat", "a dog ran in the park and", "it", "the film was terrible and boring so"]
    together = generate(model, tok, prompts, max_new_tokens=6, batch_size=4)
    alone = [generate(model, tok, [p], max_new_tokens=6, batch_size=1)[0] for p in prompts]
    assert together == alone
    assert all(isinstance(t, str) and t for t in together)


# the stage end to end -------------------------------------------------------------------------------
GENDERED = [("he said it was a great movie", 1), ("she found the film terrible and boring", 0),
            ("his acting was great fun", 1), ("her story was boring , terrible plot", 0),
            ("a great movie", 1), ("a terrible film", 0)]


def _sst2(root: Path, n: int = 24) -> Path:
    rows = "".join(f"{s}\t{y}\n" for s, y in (GENDERED * n)[:n])
    for split in ("train", "dev"):
        (root / "glue" / "SST-2").mkdir(parents=True, exist_ok=True)
        (root / "glue" / "SST-2" / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
    return root / "glue"


def _docs(ctx: RunContext, stage: str, texts: list[str]) -> StageResult:
    from tasks.core.docs import DocWriter

    store = ctx.open_store()
    uri = f"{ctx.store}/{stage}/fixture"
    w = DocWriter(store, f"{uri}/docs")
    for i, t in enumerate(texts):
        w.write(f"d{i}", t, "fixture")
    w.close()
    return StageResult(stage=stage, key="fixture", uri=uri, outputs={"docs": [f"docs/{f}" for f in w.files]})


@pytest.fixture
def ctx(tmp_path) -> RunContext:
    return RunContext(store=str(tmp_path / "store"), pipeline="t", run_id="r1", seed=3)


def _inputs(tmp_path: Path, model_dir: Path, ctx: RunContext) -> dict:
    from tasks.core.config import StageConfig
    from tasks.evaluate.external import EXTERNAL_MODEL, NO_TOKENS, ExternalModelConfig
    from tasks.evaluate.stage import STAGE as EVALUATE
    from tasks.evaluate.stage import EvaluateConfig

    pre = run_stage(EXTERNAL_MODEL, ExternalModelConfig(path=str(model_dir)), {}, ctx)
    toks = run_stage(NO_TOKENS, StageConfig(), {}, ctx)
    ev_cfg = EvaluateConfig(tasks=["sst2"], glue_dir=str(_sst2(tmp_path / "data")), bootstrap_samples=20,
                            random_init_baseline=False, finetune={"epochs": 1, "batch_size": 8, "max_length": 32})
    ev = run_stage(EVALUATE, ev_cfg, {"pretrain": pre, "tokenize": toks}, ctx)
    return {"pretrain": pre, "evaluate": ev,
            "collect": _docs(ctx, "collect", ["He and his father met her mother.", "She said he was late."]),
            "pii": _docs(ctx, "pii", ["He and his father met <PERSON>.", "She said he was late."])}


def test_stage_end_to_end_without_data_sets(tmp_path, tiny_model_dir, ctx, torch_one_thread):
    """No data folder: the shipped probes, the classifier check and the term counts still run; every data
    set is skipped with the reason; thresholds are reported pass / fail / not measured."""
    inputs = _inputs(tmp_path, tiny_model_dir, ctx)
    cfg = BiasConfig(data_dir=str(tmp_path / "nowhere"), bootstrap_samples=50,
                     thresholds=[{"figure": "probes/gender_pronoun/share_he", "min": 0.0, "max": 1.0},
                                 {"figure": "counterfactual/sst2/flip_rate", "max": 1.0},
                                 {"figure": "crows_pairs/pct_stereotype", "min": 0.4, "max": 0.6}])
    result = run_stage(STAGE, cfg, inputs, ctx)
    out = Path(result.uri)
    report = json.loads((out / "bias.json").read_text())
    checks = report["checks"]
    for name in ("crows_pairs", "winobias", "winogender", "bbq", "bold"):
        assert checks[name]["status"] == "skipped" and "nowhere" in checks[name]["reason"], checks[name]
    assert checks["probes"]["status"] == "done" and checks["probes"]["n_items"] > 100
    for fig in checks["probes"]["figures"].values():
        assert set(fig) >= {"value", "ci", "n", "chance", "distinguishable"}
    cf = checks["counterfactual"]
    assert cf["status"] == "done", cf
    assert cf["tasks"]["sst2"]["n_items"] == 16 and cf["tasks"]["sst2"]["unchanged"] == 8
    assert 0.0 <= cf["figures"]["sst2/flip_rate"]["value"] <= 1.0
    rows = [json.loads(x) for x in (out / "predictions" / "counterfactual.sst2.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and {"prediction", "prediction_swapped", "swaps"} <= set(rows[0])
    data = checks["data"]["corpus"]
    assert data["collect"]["axes"]["gender"]["groups"]["male"]["occurrences"] == 4  # he, his, father, he
    assert data["pii"]["axes"]["gender"]["groups"]["female"]["occurrences"] == 1  # her mother: anonymized
    gates = {g["figure"]: g["status"] for g in report["thresholds"]}
    assert gates == {"probes/gender_pronoun/share_he": "pass", "counterfactual/sst2/flip_rate": "pass",
                     "crows_pairs/pct_stereotype": "not_measured"}
    assert report["verdict"]["passed"] and not report["verdict"]["complete"]
    assert result.stats["thresholds_not_measured"] == ["crows_pairs/pct_stereotype"]
    assert "male" in result.stats["term_counts"]["collect"]["gender"]
    assert (out / "checks" / "probes.json").exists()
    arts = {a.name: a for a in bias_artifacts(result)}
    assert {"bias", "bias-summary", "bias-thresholds"} <= set(arts)
    assert any(r["reading"] for r in arts["bias"].rows)


def test_stage_on_the_real_sets_with_a_limit(tmp_path, tiny_model_dir, ctx, torch_one_thread, shared_data):
    inputs = _inputs(tmp_path, tiny_model_dir, ctx)
    cfg = BiasConfig(data_dir=str(shared_data / "bias"), limit=12, bootstrap_samples=30,
                     checks=["crows_pairs", "winobias", "winogender", "bbq", "bold"],
                     bold={"per_group": 1, "max_new_tokens": 4, "domains": ["gender", "religious_ideology"]})
    result = run_stage(STAGE, cfg, inputs, ctx)
    checks = json.loads((Path(result.uri) / "bias.json").read_text())["checks"]
    assert all(c["status"] == "done" for c in checks.values()), {k: c.get("reason") for k, c in checks.items()}
    crows = checks["crows_pairs"]  # the tiny model's window is 64 tokens: long pairs are left out, and said
    assert crows["n_items"] + crows.get("left_out", {}).get("longer than the model's window", 0) == 12
    assert checks["crows_pairs"]["figures"]["pct_stereotype"]["chance"] == 0.5
    assert checks["bold"]["n_items"] == 2 + 7  # one prompt per group: 2 gender groups, 7 religions
    assert checks["bbq"]["scoring"]["requests"] == checks["bbq"]["n_items"]


def test_a_failing_check_keeps_the_others_and_the_rerun_redoes_only_it(tmp_path, tiny_model_dir, ctx,
                                                                        torch_one_thread, monkeypatch):
    from tasks.bias import stage as bias_stage

    inputs = _inputs(tmp_path, tiny_model_dir, ctx)
    cfg = BiasConfig(data_dir=None, checks=["probes", "data"], bootstrap_samples=0)

    def broken(self):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(bias_stage.CheckRun, "run_data", broken)
    with pytest.raises(Exception, match="1 check\\(s\\) failed: data: RuntimeError: disk on fire"):
        run_stage(STAGE, cfg, inputs, ctx)
    monkeypatch.undo()
    seen = []
    real = bias_stage.CheckRun.run_probes
    monkeypatch.setattr(bias_stage.CheckRun, "run_probes", lambda self: seen.append(1) or real(self))
    result = run_stage(STAGE, cfg, inputs, ctx)
    report = json.loads((Path(result.uri) / "bias.json").read_text())
    assert seen == [] and report["checks"]["probes"]["status"] == "done"  # kept from the first attempt
    assert report["checks"]["data"]["status"] == "done"
    assert report["checks"]["probes"]["figures"]["gender_pronoun/share_he"]["ci"] is None  # bootstrap_samples 0
