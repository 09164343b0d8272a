"""The bias stage's own logic: thresholds, the verdict, generation, and its config."""
from __future__ import annotations

import pytest
from pydantic import ValidationError

from tasks.bias.stage import BiasConfig, Threshold, check_thresholds, verdict

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
