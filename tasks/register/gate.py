"""The promotion gate: a challenger against the champion, by rules from config, every rule with both values.

Absolute rules hold for every model (also the first, when there is no champion): every bias threshold
passes, the validation loss is below the unigram model's (a model that learned nothing is never promoted),
and optional ceilings. Comparative rules hold against the champion, on the same evaluation data: the
validation loss of both models on the challenger's val split (computed by the register stage; bits per byte
when their tokenizers differ, so the comparison stays fair), and every GLUE/SuperGLUE task both were scored
on. A tainted champion (trained on a forgotten source) is replaced by any challenger that passes the
absolute rules: the comparative rules are still reported, but do not block.
"""
from __future__ import annotations

from typing import Any

from pydantic import Field

from tasks.core.config import StageConfig


class GateConfig(StageConfig):
    """`register.gate`: when a challenger replaces the champion."""

    val_loss_margin: float = Field(
        0.01, description="the challenger's validation loss may exceed the champion's by at most this share "
                          "(0.01 = 1%); negative values demand an improvement")
    task_margin: float = Field(
        0.02, description="a GLUE/SuperGLUE metric fails when the challenger's whole 95% interval lies more "
                          "than this below the champion's value")
    tasks: bool = Field(True, description="compare GLUE/SuperGLUE tasks (false: loss and bias only)")
    bias_thresholds: bool = Field(True, description="every bias threshold must pass (bias.json's verdict)")
    bias_complete: bool = Field(False, description="also fail when a bias threshold was not measured")
    below_unigram: bool = Field(True, description="the validation loss must be below the unigram model's")
    max_val_loss: float | None = Field(None, description="absolute ceiling on the validation loss (nats/token)")


def rule(name: str, passed: bool | None, challenger: Any, champion: Any, why: str, kind: str,
         **extra: Any) -> dict[str, Any]:
    """One row of the decision: passed None = not applicable (neither passes nor blocks)."""
    return {"rule": name, "kind": kind, "passed": passed, "challenger": challenger, "champion": champion,
            "why": why, **extra}


def absolute_rules(cfg: GateConfig, metrics: dict[str, Any]) -> list[dict[str, Any]]:
    rules = []
    loss = metrics.get("val_loss")
    if cfg.below_unigram:
        unigram = metrics.get("val_unigram_baseline_nats")
        ok = loss is not None and unigram is not None and loss < unigram
        rules.append(rule("val_loss below unigram", ok, loss, None,
                          f"val loss {_f(loss)} vs the unigram model's {_f(unigram)} nats" if unigram is not None
                          else "no validation loss or unigram baseline recorded", "absolute", limit=unigram))
    if cfg.max_val_loss is not None:
        ok = loss is not None and loss <= cfg.max_val_loss
        rules.append(rule("max_val_loss", ok, loss, None, f"val loss {_f(loss)} <= {cfg.max_val_loss}",
                          "absolute", limit=cfg.max_val_loss))
    if cfg.bias_thresholds:
        verdict = (metrics.get("bias") or {}).get("verdict")
        if verdict is None:
            rules.append(rule("bias thresholds", False, None, None, "no bias verdict recorded (the bias stage "
                              "did not run or has no thresholds)", "absolute"))
        else:
            failed, missing = verdict.get("failed") or [], verdict.get("not_measured") or []
            ok = not failed and (not cfg.bias_complete or not missing)
            why = (f"failed: {', '.join(failed)}" if failed else "every measured threshold passes") + (
                f"; not measured: {', '.join(missing)}" if missing else "")
            rules.append(rule("bias thresholds", ok, {"failed": failed, "not_measured": missing}, None, why,
                              "absolute"))
    return rules


def comparative_rules(cfg: GateConfig, challenger: dict[str, Any], champion: dict[str, Any],
                      val: dict[str, Any]) -> list[dict[str, Any]]:
    """`val`: both models' loss on the challenger's val split: {"unit", "challenger", "champion"}."""
    rules = []
    a, b, unit = val.get("challenger"), val.get("champion"), val.get("unit", "nats/token")
    if a is None or b is None:
        rules.append(rule("val_loss vs champion", False, a, b, f"the validation loss could not be measured for "
                          f"both models: {val.get('why', 'unknown reason')}", "comparative", unit=unit))
    else:
        limit = b * (1 + cfg.val_loss_margin)
        rules.append(rule("val_loss vs champion", a <= limit, a, b,
                          f"{_f(a)} vs {_f(b)} {unit} on the same val split (at most {_f(limit)} allowed: "
                          f"margin {cfg.val_loss_margin:+.1%})", "comparative", unit=unit, limit=limit))
    if cfg.tasks:
        rules += task_rules(cfg, (challenger.get("evaluate") or {}).get("tasks") or {},
                            (champion.get("evaluate") or {}).get("tasks") or {})
    return rules


def task_rules(cfg: GateConfig, mine: dict[str, Any], theirs: dict[str, Any]) -> list[dict[str, Any]]:
    """Each metric of each task the champion was scored on: fails when the challenger's whole interval is
    more than the margin below the champion's value, or the challenger was not scored on the same data."""
    rules = []
    for task, old in sorted(theirs.items()):
        new = mine.get(task)
        if new is None:
            rules.append(rule(f"task {task}", False, None, "scored", "the champion was scored on this task, the "
                              "challenger was not (evaluate config changed?); a missing score could hide a drop",
                              "comparative"))
            continue
        if new.get("n") != old.get("n") or new.get("protocol") != old.get("protocol"):
            rules.append(rule(f"task {task}", False, new.get("n"), old.get("n"),
                              f"not comparable: challenger {new.get('protocol')} on {new.get('n')} examples, "
                              f"champion {old.get('protocol')} on {old.get('n')}; evaluate both with the same "
                              "settings", "comparative"))
            continue
        for metric, m_old in sorted((old.get("metrics") or {}).items()):
            m_new = (new.get("metrics") or {}).get(metric) or {}
            v_old, v_new, ci = m_old.get("value"), m_new.get("value"), m_new.get("ci")
            if v_old is None or v_new is None:
                rules.append(rule(f"task {task}/{metric}", None, v_new, v_old, "undefined on one side", "comparative"))
                continue
            hi = ci[1] if ci else v_new
            ok = v_old - hi <= cfg.task_margin
            rules.append(rule(f"task {task}/{metric}", ok, v_new, v_old,
                              f"{_f(v_new)} (95% CI up to {_f(hi)}) vs {_f(v_old)}: "
                              + ("within" if ok else "dropped beyond") + f" the margin {cfg.task_margin}",
                              "comparative", ci=ci, margin=cfg.task_margin))
    return rules


def decide(cfg: GateConfig, challenger: str, champion: str | None, metrics: dict[str, Any],
           champion_metrics: dict[str, Any] | None, val: dict[str, Any] | None,
           champion_tainted: bool = False) -> dict[str, Any]:
    """The decision record: promote, reject or keep (the challenger is the champion already)."""
    rules = absolute_rules(cfg, metrics)
    if champion is not None and champion != challenger:
        rules += comparative_rules(cfg, metrics, champion_metrics or {}, val or {})
    blocking = [r for r in rules if r["passed"] is False and not (champion_tainted and r["kind"] == "comparative")]
    if champion == challenger:
        decision, reasons = "keep", [f"{challenger} is the champion already"]
    elif blocking:
        decision, reasons = "reject", [f"{r['rule']}: {r['why']}" for r in blocking]
    else:
        decision = "promote"
        if champion is None:
            reasons = ["no champion yet: the first model that passes the absolute rules becomes champion"]
        elif champion_tainted:
            reasons = [f"the champion {champion} is tainted (trained on a forgotten source): any challenger "
                       "that passes the absolute rules replaces it"]
        else:
            reasons = [f"passed every rule against the champion {champion}"]
    return {"decision": decision, "challenger": challenger, "champion": champion,
            "champion_tainted": champion_tainted, "rules": rules, "reasons": reasons,
            "promoted": decision == "promote"}


def _f(x: Any) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)
