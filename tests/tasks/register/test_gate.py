"""The promotion gate's rules, each with both values, and its decisions."""
from __future__ import annotations

from tasks.register.gate import GateConfig, decide


def metrics(loss=4.0, unigram=6.0, failed=(), missing=(), tasks=None):
    return {"val_loss": loss, "val_unigram_baseline_nats": unigram,
            "bias": {"verdict": {"passed": not failed, "failed": list(failed), "not_measured": list(missing)}},
            "evaluate": {"tasks": tasks or {}}}


def task(value, ci, n=100, protocol="finetune"):
    return {"n": n, "protocol": protocol, "metrics": {"accuracy": {"value": value, "ci": ci}}}


def rules_by_name(d):
    return {r["rule"]: r for r in d["rules"]}


def test_first_model_is_promoted_when_it_passes_the_absolute_rules():
    d = decide(GateConfig(), "v1", None, metrics(), None, None)
    assert d["decision"] == "promote" and "no champion yet" in d["reasons"][0]
    assert {r["kind"] for r in d["rules"]} == {"absolute"}


def test_absolute_rules_reject():
    d = decide(GateConfig(), "v1", None, metrics(loss=6.5), None, None)
    assert d["decision"] == "reject" and rules_by_name(d)["val_loss below unigram"]["passed"] is False
    d = decide(GateConfig(), "v1", None, metrics(failed=["winobias/gap"]), None, None)
    assert d["decision"] == "reject" and "winobias/gap" in d["reasons"][0]
    d = decide(GateConfig(), "v1", None, metrics(missing=["bbq/bias_score_ambig"]), None, None)
    assert d["decision"] == "promote", "not measured passes unless bias_complete"
    d = decide(GateConfig(bias_complete=True), "v1", None, metrics(missing=["bbq/bias_score_ambig"]), None, None)
    assert d["decision"] == "reject"
    d = decide(GateConfig(max_val_loss=3.0), "v1", None, metrics(), None, None)
    assert d["decision"] == "reject" and rules_by_name(d)["max_val_loss"]["challenger"] == 4.0


def test_val_loss_against_the_champion_on_the_same_split():
    val = {"unit": "nats/token", "challenger": 4.05, "champion": 4.0}
    d = decide(GateConfig(val_loss_margin=0.02), "v2", "v1", metrics(), metrics(), val)
    r = rules_by_name(d)["val_loss vs champion"]
    assert d["decision"] == "promote" and r["passed"] and (r["challenger"], r["champion"]) == (4.05, 4.0)
    d = decide(GateConfig(val_loss_margin=0.01), "v2", "v1", metrics(), metrics(), val)
    assert d["decision"] == "reject" and "4.05 vs 4" in d["reasons"][0]
    d = decide(GateConfig(val_loss_margin=-0.5), "v2", "v1", metrics(), metrics(), {**val, "challenger": 3.9})
    assert d["decision"] == "reject", "a negative margin demands an improvement"
    d = decide(GateConfig(), "v2", "v1", metrics(), metrics(), {"challenger": None, "champion": 4.0, "why": "x"})
    assert d["decision"] == "reject"


def test_a_task_fails_only_when_the_whole_interval_is_below_the_margin():
    champ = metrics(tasks={"sst2": task(0.80, [0.75, 0.85])})
    val = {"unit": "nats/token", "challenger": 4.0, "champion": 4.0}
    cfg = GateConfig(task_margin=0.02)
    within = decide(cfg, "v2", "v1", metrics(tasks={"sst2": task(0.70, [0.60, 0.79])}), champ, val)
    assert within["decision"] == "promote", "0.80 - 0.79 = 0.01 <= 0.02: within noise"
    beyond = decide(cfg, "v2", "v1", metrics(tasks={"sst2": task(0.70, [0.65, 0.75])}), champ, val)
    assert beyond["decision"] == "reject" and rules_by_name(beyond)["task sst2/accuracy"]["passed"] is False
    other_data = decide(cfg, "v2", "v1", metrics(tasks={"sst2": task(0.9, [0.85, 0.95], n=50)}), champ, val)
    assert other_data["decision"] == "reject" and "not comparable" in other_data["reasons"][0]
    missing = decide(cfg, "v2", "v1", metrics(), champ, val)
    assert missing["decision"] == "reject" and "could hide a drop" in missing["reasons"][0]
    off = decide(GateConfig(tasks=False), "v2", "v1", metrics(), champ, val)
    assert off["decision"] == "promote"


def test_a_tainted_champion_is_replaced_by_any_model_passing_the_absolute_rules():
    val = {"unit": "nats/token", "challenger": 5.0, "champion": 4.0}
    d = decide(GateConfig(), "v2", "v1", metrics(loss=5.0), metrics(), val, champion_tainted=True)
    assert d["decision"] == "promote" and "tainted" in d["reasons"][0]
    assert rules_by_name(d)["val_loss vs champion"]["passed"] is False, "still reported"
    d = decide(GateConfig(), "v2", "v1", metrics(failed=["winobias/gap"]), metrics(), val, champion_tainted=True)
    assert d["decision"] == "reject"


def test_the_champion_against_itself_is_kept():
    d = decide(GateConfig(), "v1", "v1", metrics(), metrics(), None)
    assert d["decision"] == "keep" and not d["promoted"]
