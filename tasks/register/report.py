"""What the registry shows people: the model card of a version, the metric history across versions (a table
and a plot), and a gate decision as a table. Plain functions; the stage and `llmpipe models` publish them."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from tasks.register.registry import Registry


def _f(x: Any, digits: int = 4) -> str:
    if x is None:
        return "n/a"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _ci(ci: Any) -> str:
    return f"[{_f(ci[0])}, {_f(ci[1])}]" if ci else ""


def model_card(version: str, registry: str, metrics: dict[str, Any], lineage: dict[str, Any]) -> str:
    """Markdown: data, training, results with intervals, bias with intervals and chance, limitations."""
    train, data = metrics.get("pretrain") or {}, lineage.get("data") or {}
    cfg = lineage.get("config") or {}
    model_cfg = (cfg.get("pretrain") or {})
    lines = [f"# Model card: {registry} {version}", "",
             f"Registered {lineage.get('registered_at', '')} by pipeline `{lineage.get('pipeline')}` "
             f"(run {lineage.get('run_id')}); code {lineage.get('git_commit') or 'unknown commit'}.",
             f"Parent version: {lineage.get('parent') or 'none (trained from random initialization)'}.", "",
             "## Data", ""]
    sources = lineage.get("sources") or {}
    if sources:
        lines += ["| source | documents in | kept |", "|---|---|---|"]
        lines += [f"| {n} | {c.get('docs_in', '')} | {c.get('docs_out', '')} |" for n, c in sorted(sources.items())]
        lines.append("")
    lines.append("Stage outputs (store keys and manifest digests): " + ", ".join(
        f"{stage} `{d.get('key')}` ({d.get('digest')})" for stage, d in data.items()) + ".")
    lines += [f"Tokenizer sha256: `{lineage.get('tokenizer_sha256')}`.", "", "## Training", "",
              "| figure | value |", "|---|---|"]
    shape = {k: model_cfg.get(k) for k in ("n_layer", "n_embd", "n_head", "block_size", "n_future") if k in model_cfg}
    lines.append(f"| shape | {', '.join(f'{k} {v}' for k, v in shape.items())} |")
    for key in ("params", "steps", "tokens", "train_loss", "val_loss", "val_unigram_baseline_nats",
                "val_bigram_baseline_nats", "device", "precision"):
        if train.get(key) is not None:
            lines.append(f"| {key} | {_f(train[key])} |")
    ev = metrics.get("evaluate") or {}
    lines += ["", "## Evaluation", ""]
    if ev:
        lines += [f"Validation perplexity {_f(ev.get('val_perplexity'), 2)}, {_f(ev.get('val_bits_per_byte'))} "
                  "bits per byte.", ""]
        avgs = {k: v for k, v in (ev.get("averages") or {}).items() if v is not None}
        if avgs:
            lines += ["| average | score |", "|---|---|"] + [f"| {k} | {_f(v)} |" for k, v in sorted(avgs.items())]
            lines.append("")
        tasks = ev.get("tasks") or {}
        if tasks:
            lines += ["| task | protocol | n | metric | value | 95% CI |", "|---|---|---|---|---|---|"]
            for name, t in sorted(tasks.items()):
                for m, v in sorted((t.get("metrics") or {}).items()):
                    lines.append(f"| {name} | {t.get('protocol')} | {t.get('n')} | {m} | {_f(v.get('value'))} | "
                                 f"{_ci(v.get('ci'))} |")
    else:
        lines.append("Not evaluated.")
    bias = metrics.get("bias") or {}
    lines += ["", "## Bias", ""]
    if bias:
        v = bias.get("verdict") or {}
        lines.append(f"Thresholds: {'passed' if v.get('passed') else 'FAILED: ' + ', '.join(v.get('failed') or [])}"
                     + (f"; not measured: {', '.join(v['not_measured'])}" if v.get("not_measured") else "") + ".")
        lines += ["", "| figure | value | 95% CI | n | chance | distinguishable from chance |",
                  "|---|---|---|---|---|---|"]
        for name, fig in sorted((bias.get("figures") or {}).items()):
            lines.append(f"| {name} | {_f(fig.get('value'))} | {_ci(fig.get('ci'))} | {fig.get('n')} | "
                         f"{_f(fig.get('chance'))} | {'yes' if fig.get('distinguishable') else 'no'} |")
    else:
        lines.append("No bias checks recorded.")
    lines += ["", "## Limitations", ""] + [f"- {x}" for x in limitations(metrics, lineage)]
    return "\n".join(lines) + "\n"


def limitations(metrics: dict[str, Any], lineage: dict[str, Any]) -> list[str]:
    out = []
    params = (metrics.get("pretrain") or {}).get("params")
    if params is not None and params < 50_000_000:
        out.append(f"A small model ({params:,} parameters): its task scores and bias figures are noisy; read "
                   "them with their intervals.")
    bias = metrics.get("bias") or {}
    figures = bias.get("figures") or {}
    if figures:
        flat = [n for n, f in figures.items() if f.get("value") is not None and not f.get("distinguishable")]
        if flat:
            out.append(f"{len(flat)} of {len(figures)} bias figures are not distinguishable from chance: absence "
                       "of evidence, not evidence of absence.")
    missing = (bias.get("verdict") or {}).get("not_measured") or []
    if missing:
        out.append(f"Bias thresholds not measured: {', '.join(missing)} (their data was not available).")
    skipped = (metrics.get("evaluate") or {}).get("skipped") or []
    if skipped:
        out.append(f"Tasks skipped in evaluation: {', '.join(skipped)}.")
    out.append("Trained on the sources listed above only; it inherits their language, topics and biases.")
    return out


# metric history ---------------------------------------------------------------------------------------
def history_rows(reg: Registry) -> list[dict[str, Any]]:
    """One row per version, in registration order: status, aliases, loss, averages, every bias figure."""
    rows = []
    for v in reg.versions():
        info = reg.info(v)
        m = info["metrics"] or {}
        ev, bias = m.get("evaluate") or {}, m.get("bias") or {}
        row = {"version": v, "created": info["created"], "status": info["status"],
               "aliases": ",".join(info["aliases"]), "val_loss": (m.get("pretrain") or {}).get("val_loss"),
               "val_bits_per_byte": ev.get("val_bits_per_byte")}
        for k, val in sorted((ev.get("averages") or {}).items()):
            row[f"{k}_average"] = val
        for name, fig in sorted(headline_figures(bias).items()):
            row[f"bias {name}"] = fig.get("value")
        rows.append(row)
    return rows


def gated_figures(reg: Registry) -> set[str]:
    """The bias figures any version was gated on."""
    out: set[str] = set()
    for v in reg.versions():
        bias = (reg.info(v)["metrics"] or {}).get("bias") or {}
        out |= {t.get("figure") for t in bias.get("thresholds") or []}
    return out


def headline_figures(bias: dict[str, Any]) -> dict[str, Any]:
    """The bias figures worth a line in the history: those with a threshold, every check's overall figures
    (`<check>/<figure>`), each probe axis's and BOLD's per-domain gaps; per-category, per-group and
    per-template breakdowns stay in the version's metrics."""
    gated = {t.get("figure") for t in bias.get("thresholds") or []}

    def headline(n: str) -> bool:
        depth = n.count("/")
        return n in gated or depth == 1 or (depth == 2 and (n.startswith("probes/") or "_gap/" in n))
    return {n: f for n, f in (bias.get("figures") or {}).items() if headline(n)}


def history_plot(reg: Registry, path: Path) -> Path | None:
    """history.png: validation loss, GLUE/SuperGLUE averages and the bias figures across versions."""
    rows = history_rows(reg)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gated = gated_figures(reg)
    x = list(range(len(rows)))
    labels = [r["version"] for r in rows]
    panels = [("validation loss (nats/token)", [k for k in ("val_loss",)]),
              ("averages", sorted({k for r in rows for k in r if k.endswith("_average")})),
              ("bias figures with a threshold", sorted({k for r in rows for k in r if k.startswith("bias ")
                                                        and k.removeprefix("bias ") in gated}))]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), dpi=100)
    for ax, (title, keys) in zip(axes, panels):
        for k in keys:
            ys = [r.get(k) for r in rows]
            if any(y is not None for y in ys):
                ax.plot(x, [float("nan") if y is None else y for y in ys], "o-", label=k.removeprefix("bias "))
        ax.set_title(title)
        ax.set_xticks(x, labels)
        ax.grid(alpha=0.3)
        if keys and len(keys) <= 8:
            ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png")
    plt.close(fig)
    tmp.replace(path)
    return path


def history_markdown(reg: Registry, versions: int = 12) -> str:
    """One line per figure, one column per version (the latest `versions`), so it reads on a terminal."""
    rows = history_rows(reg)[-versions:]
    if not rows:
        return f"Registry {reg.name}: no versions yet."
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "version"]
    out = [f"## Metric history of {reg.name}", "", "| figure | " + " | ".join(r["version"] for r in rows) + " |",
           "|---|" + "---|" * len(rows)]
    for k in keys:
        out.append(f"| {k} | " + " | ".join(_f(r.get(k)) if r.get(k) is not None else "" for r in rows) + " |")
    return "\n".join(out)


def decision_rows(decision: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"rule": r["rule"], "kind": r["kind"],
             "passed": {True: "pass", False: "FAIL", None: "n/a"}[r["passed"]],
             "challenger": r["challenger"] if not isinstance(r["challenger"], dict) else str(r["challenger"]),
             "champion": r["champion"], "why": r["why"]} for r in decision["rules"]]


def decision_markdown(decision: dict[str, Any]) -> str:
    head = (f"## Gate: {decision['decision'].upper()} {decision['challenger']} "
            f"(champion: {decision['champion'] or 'none'}{', tainted' if decision.get('champion_tainted') else ''})")
    lines = [head, ""] + [f"- {r}" for r in decision["reasons"]] + ["", "| rule | result | challenger | champion | why |",
                                                                   "|---|---|---|---|---|"]
    for r in decision_rows(decision):
        lines.append(f"| {r['rule']} | {r['passed']} | {_f(r['challenger'])} | {_f(r['champion'])} | {r['why']} |")
    return "\n".join(lines)
