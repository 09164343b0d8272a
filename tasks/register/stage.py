"""The register stage: make the trained model a registry version, gate it against the champion, promote.

It reads the data stages (for the lineage), pretrain (the model), evaluate and bias (the metrics). The
version holds the weights, the Hugging Face export, the tokenizer, metrics, lineage and a model card
(tasks/register/registry.py, report.py). The gate (gate.py) compares it with the champion on the same
evaluation data: both models' validation loss is measured here on this run's val split. The decision,
every rule with both values, is recorded in the registry, the stage output and a Prefect artifact.

Its store key includes the champion it is compared with, so a rerun after the champion changed decides
again, and a rerun with nothing changed reuses the decision. A failure anywhere before the final locked
change leaves the champion as it was.
"""
from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tasks.core.artifacts import Artifact, Markdown, Table
from tasks.core.config import StageConfig
from tasks.core.errors import UserError
from tasks.core.hashing import sha256_of
from tasks.core.records import write_json
from tasks.core.result import StageResult
from tasks.core.stage import Inputs, RunContext, Stage, StageOutput
from tasks.register.gate import GateConfig, decide
from tasks.register.registry import CHAMPION, Registry, model_digest
from tasks.register.report import decision_markdown, decision_rows, history_markdown, history_plot, model_card

log = logging.getLogger("llmpipe.register")
DATA_STAGES = ("collect", "clean", "dedup", "pii", "tokenize", "pretrain", "evaluate", "bias")
TRAIN_STATS = ("params", "steps", "tokens", "train_loss", "val_loss", "val_unigram_baseline_nats",
               "val_bigram_baseline_nats", "val_below_unigram", "device", "precision", "tokens_per_s",
               "replay_ratio", "previous_train_tokens", "new_train_tokens")


class RegisterConfig(StageConfig):
    """The `register:` section of pipelines.yaml."""

    name: str | None = Field(None, description="the registry's name in the store; default: the pipeline's name")
    promote: bool = Field(True, description="promote a challenger the gate passes (false: register only)")
    gate: GateConfig = Field(default_factory=GateConfig)
    val_max_tokens: int = Field(
        200_000, ge=0, description="tokens of the val split on which challenger and champion losses are "
                                   "compared (0 = all)")
    device: Literal["auto", "cpu", "cuda"] = "auto"

    key_exclude = frozenset({"device"})


def registry_for(cfg: RegisterConfig, ctx: RunContext) -> Registry:
    return Registry(ctx.open_store(), cfg.name or ctx.pipeline)


def register_key_inputs(cfg: RegisterConfig, ctx: RunContext) -> dict[str, Any]:
    """The champion it will be compared with (and whether it is tainted): a new champion means a new decision."""
    reg = registry_for(cfg, ctx)
    champion = reg.alias(CHAMPION)
    entry = reg.state()["versions"].get(champion) if champion else None
    return {"registry": reg.name, "champion": champion, "champion_status": entry and entry["status"]}


def run_register(inputs: Inputs, out_uri: str, cfg: RegisterConfig, ctx: RunContext) -> StageOutput:
    store = ctx.open_store()
    out = store.local_path(out_uri)
    out.mkdir(parents=True, exist_ok=True)
    pretrain = inputs["pretrain"]
    model_dir = store.local_path(pretrain.uri) / "model"
    hf_dir = store.local_path(pretrain.uri) / "hf"
    if not (model_dir / "model.safetensors").exists():
        raise UserError(f"register: {model_dir} holds no model.safetensors; the pretrain output is incomplete")
    metrics = version_metrics(inputs, store)
    reg = registry_for(cfg, ctx)
    lineage = version_lineage(inputs, store, ctx, reg)
    files = {"model": model_dir, **({"hf": hf_dir} if hf_dir.is_dir() else {})}
    for name, result, output in (("evaluate.json", inputs.get("evaluate"), "results"),
                                 ("bias.json", inputs.get("bias"), "bias")):
        if result is not None and output in result.outputs:
            files[name] = store.local_path(result.files(output)[0])
    version, created = reg.register(files, metrics, lineage,
                                    lambda v: model_card(v, reg.name, metrics, lineage),
                                    sha256_of(model_dir / "model.safetensors"), model_digest(model_dir))
    log.info("register: %s %s of registry %s", "registered" if created else "found the same model as", version,
             reg.name)
    state = reg.state()
    champion = state["aliases"].get(CHAMPION)
    tainted = bool(champion and state["versions"][champion]["status"] == "tainted")
    champion_metrics = reg.info(champion)["metrics"] if champion else None
    val = None
    if champion and champion != version:
        val = compare_val_loss(reg, champion, hf_dir, inputs["tokenize"], store, cfg)
    decision = decide(cfg.gate, version, champion, metrics, champion_metrics, val, tainted)
    if not cfg.promote and decision["decision"] == "promote":
        decision = {**decision, "decision": "reject", "promoted": False,
                    "reasons": decision["reasons"] + ["passed, but register.promote is false: registered only"]}
    decision = reg.record_decision({**decision, "val": val, "run_id": ctx.run_id, "pipeline": ctx.pipeline},
                                   promote=decision["decision"] == "promote", run_id=ctx.run_id)
    log.info("register: gate %s %s (champion %s): %s", decision["decision"], version, champion or "none",
             "; ".join(decision["reasons"]))
    write_json(out / "decision.json", decision)
    (out / "card.md").write_text((reg.version_dir(version) / "card.md").read_text())
    history_plot(reg, reg.root / "history.png")
    now_champion = reg.alias(CHAMPION)
    stats = {"registry": reg.name, "version": version, "new_version": created, "decision": decision["decision"],
             "champion_before": champion, "champion": now_champion,
             "rules_failed": [r["rule"] for r in decision["rules"] if r["passed"] is False],
             "version_path": str(reg.version_dir(version))}
    return StageOutput(outputs={"decision": "decision.json", "card": "card.md"}, stats=stats)


# metrics and lineage ----------------------------------------------------------------------------------
def version_metrics(inputs: Inputs, store: Any) -> dict[str, Any]:
    """What the registry keeps for comparisons and history: pretraining figures, evaluate's results (every
    task's metrics with intervals, n and protocol), bias figures and verdict."""
    metrics: dict[str, Any] = {"pretrain": {k: inputs["pretrain"].stats.get(k) for k in TRAIN_STATS
                                            if k in inputs["pretrain"].stats}}
    metrics["val_loss"] = metrics["pretrain"].get("val_loss")
    metrics["val_unigram_baseline_nats"] = metrics["pretrain"].get("val_unigram_baseline_nats")
    ev = inputs.get("evaluate")
    if ev is not None and "results" in ev.outputs:
        from tasks.evaluate.stage import model_metrics

        results = json.loads(store.local_path(ev.files("results")[0]).read_text())
        # evaluate's own compact figures, with each task's n, protocol and intervals for the gate
        metrics["evaluate"] = {
            **model_metrics(results),
            "tasks": {n: {"protocol": r.get("protocol"), "n": r.get("n_eval"), "suite": r.get("suite"),
                          "metrics": {m: {"value": v.get("value"), "ci": v.get("ci")}
                                      for m, v in (r.get("metrics") or {}).items()}}
                      for n, r in results.get("tasks", {}).items() if r.get("status") == "done"},
            "skipped": sorted(n for n, r in results.get("tasks", {}).items() if r.get("status") != "done")}
    bias = inputs.get("bias")
    if bias is not None and "bias" in bias.outputs:
        from tasks.bias.stage import all_figures

        report = json.loads(store.local_path(bias.files("bias")[0]).read_text())
        metrics["bias"] = {"verdict": report.get("verdict"), "thresholds": report.get("thresholds"),
                           "figures": all_figures(report.get("checks") or {})}
    return metrics


def version_lineage(inputs: Inputs, store: Any, ctx: RunContext, reg: Registry) -> dict[str, Any]:
    """The data it was trained on (every stage output's key and manifest digest), the tokenizer, the code,
    the parent version (a warm start), the resolved pipeline config."""
    from tasks.core.store import MANIFEST

    data, code = {}, {}
    for name in DATA_STAGES:
        r = inputs.get(name)
        if r is None:
            continue
        data[name] = {"key": r.key, "digest": r.digest, "uri": _relative(store, r.uri)}
        manifest = store.read_json(f"{r.uri}/{MANIFEST}") if store.exists(f"{r.uri}/{MANIFEST}") else {}
        code[name] = manifest.get("code_version")
    collect = inputs.get("collect")
    sources = (collect.stats.get("sources") if collect is not None else None) or {}
    model_lineage = store.local_path(inputs["pretrain"].uri) / "model" / "lineage.json"
    trained = json.loads(model_lineage.read_text()) if model_lineage.exists() else {}
    init_from = ((trained.get("stage_config") or {}).get("init_from")
                 or (inputs["pretrain"].stats.get("init_from")))
    parent = None
    if init_from and (Path(init_from) / "model.safetensors").exists():
        parent = reg.find_weights(sha256_of(Path(init_from) / "model.safetensors"))
    run_config = Path(store.root) / "runs" / ctx.run_id / "config.json"
    from tasks.register.registry import now

    # the dedup generations whose documents it was trained on: this run's, and its parent's when the tokens
    # were appended to the parent's (continued pretraining); the maintenance flow dedups new data against them
    generations = [inputs["dedup"].key] if inputs.get("dedup") is not None else []
    tokens = inputs.get("tokenize")
    appended = False
    if tokens is not None and "index" in tokens.outputs:
        appended = bool(json.loads(store.local_path(tokens.files("index")[0]).read_text()).get("appended_to"))
    if appended and parent:
        generations = (reg.info(parent)["lineage"] or {}).get("dedup_generations", []) + generations
    collect_ledger = None
    if collect is not None and "ledger" in collect.outputs:
        collect_ledger = _relative(store, collect.files("ledger")[0])

    return {"data": data, "dedup_generations": generations, "collect_ledger": collect_ledger,
            "code_versions": code, "git_commit": _git_commit(),
            "sources": {n: {k: c.get(k) for k in ("docs_in", "docs_out")} for n, c in sources.items()},
            "tokenizer_sha256": trained.get("tokenizer_sha256"), "token_index_sha256": trained.get("token_index_sha256"),
            "token_index": trained.get("token_index"), "init_from": init_from, "parent": parent,
            "config": json.loads(run_config.read_text()) if run_config.exists() else None,
            "pipeline": ctx.pipeline, "run_id": ctx.run_id, "registered_at": now()}


def _relative(store: Any, uri: str) -> str:
    root = store.root.rstrip("/") + "/"
    return uri[len(root):] if uri.startswith(root) else uri


def _git_commit() -> str | None:
    """The commit of the code that registered the model, when it runs from a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, text=True,
                             capture_output=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=Path(__file__).resolve().parent, text=True, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


# the comparison on the same data ---------------------------------------------------------------------
def compare_val_loss(reg: Registry, champion: str, hf_dir: Path, tokens: StageResult, store: Any,
                     cfg: RegisterConfig) -> dict[str, Any]:
    """Both models' loss on this run's val split: nats per token when they share a tokenizer, else bits
    per byte (tokenizer-independent)."""
    import torch

    from tasks.evaluate.perplexity import val_perplexity
    from tasks.evaluate.score import load_causal_lm

    index = store.local_path(tokens.files("index")[0]) if "index" in tokens.outputs else None
    champ_hf = reg.version_dir(champion) / "hf"
    if index is None or not champ_hf.is_dir() or not hf_dir.is_dir():
        why = "no val split" if index is None else "no Hugging Face export of one of the models"
        return {"unit": None, "challenger": None, "champion": None, "why": why}
    same_tok = sha256_of(champ_hf / "tokenizer.json") == sha256_of(hf_dir / "tokenizer.json")
    device = torch.device("cuda" if cfg.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    out: dict[str, Any] = {"unit": "nats/token" if same_tok else "bits/byte", "tokens": None}
    for side, path in (("challenger", hf_dir), ("champion", champ_hf)):
        model, tokenizer = load_causal_lm(path, device)
        try:
            fig = val_perplexity(model, tokenizer, index, device, block_size=model.config.max_position_embeddings,
                                 max_tokens=cfg.val_max_tokens)
        except (ValueError, IndexError, RuntimeError) as exc:
            return {**out, "challenger": None, "champion": None, "why": f"{side}: {exc}"}
        finally:
            del model
        out[side] = fig["nll_nats"] if same_tok else fig["bits_per_byte"]
        out["tokens"] = fig["tokens"]
    return out


# the Prefect UI ----------------------------------------------------------------------------------------
def register_artifacts(result: StageResult) -> list[Artifact]:
    decision_file = result.files("decision")
    if not decision_file or not Path(decision_file[0]).is_file():
        return []
    decision = json.loads(Path(decision_file[0]).read_text())
    items: list[Artifact] = [Markdown("decision", decision_markdown(decision), "the gate's decision and its rules"),
                             Table("gate-rules", decision_rows(decision), "every rule with both values")]
    version_path = result.stats.get("version_path")
    if version_path:
        reg_root = Path(version_path).parent.parent
        reg = Registry(str(reg_root.parent.parent), reg_root.name)
        png = reg.root / "history.png"
        image = ""
        if png.exists():
            import base64

            image = f"\n\n![metric history](data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()})"
        items.append(Markdown("history", history_markdown(reg) + image, "metric history across versions"))
    return items


STAGE = Stage(name="register", config=RegisterConfig, run=run_register, reads=DATA_STAGES,
              key_inputs=register_key_inputs, artifacts=register_artifacts, retries=1,
              summary="register the model, gate it against the champion, write the model card")
