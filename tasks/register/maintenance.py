"""Maintenance retraining: what the champion was trained on, and the configs that extend it with new data.

The maintenance flow (flows/maintenance.py) composes the ordinary stages with these settings:
- data: collect only what the champion's collect ledger does not hold (`collect.since_ledger`), dedup it
  against the index generations of the champion's data (`dedup.against`), then clean and pii as always;
- continue (the default): tokenize the new documents with the champion's tokenizer, appended to the
  champion's token index (`tokenize.append_to`), and continue pretraining the champion (`pretrain.init_from`)
  on the new tokens mixed with a replay sample of the old ones (`pretrain.replay_ratio`);
- retrain: the pipeline as configured, from scratch, on everything (the stored corpus minus forgotten
  sources); what a tainted champion always gets.
Everything here is plain: the flow runs the stages and records the outcome.
"""
from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tasks.core.config import StageConfig
from tasks.core.errors import UserError
from tasks.register.registry import CHAMPION, Registry


class MaintenanceConfig(StageConfig):
    """The `maintenance:` section of pipelines.yaml (the maintenance flow; no stage of its own)."""

    mode: Literal["continue", "retrain"] = Field(
        "continue", description="continue pretraining the champion on new data with replay, or retrain the "
                                "pipeline from scratch on everything")
    min_new_docs: int = Field(1, ge=0, description="fewer new documents than this (after dedup and pii): "
                                                   "record it and train nothing")
    replay_ratio: float = Field(0.5, ge=0.0, le=1.0,
                                description="share of the continued-pretraining windows drawn from the "
                                            "champion's tokens (the rest from the new ones)")
    max_steps: int = Field(100, ge=1, description="optimizer steps of continued pretraining")
    lr: float | None = Field(None, gt=0.0, description="peak learning rate of continued pretraining "
                                                       "(default: pretrain.lr)")
    warmup_steps: int | None = Field(None, ge=0, description="warmup of continued pretraining "
                                                             "(default: pretrain.warmup_steps)")
    schedule: str = Field("0 3 * * 0", description="cron schedule of the maintenance deployment (weekly)")


@dataclass(frozen=True)
class ChampionBasis:
    """What the champion was trained on, as paths in the store."""

    version: str
    model_dir: Path  # the registry's immutable copy: model.safetensors, config.json, tokenizer.json
    tokenizer: Path
    token_index: Path | None
    ledger: Path | None
    generations: tuple[str, ...]
    tainted: bool


def champion_basis(reg: Registry) -> ChampionBasis | None:
    version = reg.alias(CHAMPION)
    if version is None:
        return None
    info = reg.info(version)
    lineage = info["lineage"] or {}
    root = Path(reg.store.root)
    model_dir = reg.version_dir(version) / "model"
    index = Path(lineage["token_index"]) if lineage.get("token_index") else None
    ledger = root / lineage["collect_ledger"] if lineage.get("collect_ledger") else None
    return ChampionBasis(version=version, model_dir=model_dir, tokenizer=model_dir / "tokenizer.json",
                         token_index=index, ledger=ledger,
                         generations=tuple(lineage.get("dedup_generations") or ()),
                         tainted=info["status"] == "tainted")


def data_config(cfg: Any, basis: ChampionBasis) -> Any:
    """The pipeline's config with the data stages set to take only what the champion has not seen."""
    if basis.ledger is None or not basis.ledger.is_file():
        raise UserError(f"maintenance: the champion {basis.version} records no collect ledger in the store "
                        f"({basis.ledger}); it cannot tell what is new. Set maintenance.mode: retrain.")
    collect = cfg.collect.model_copy(update={"incremental": True, "since_ledger": str(basis.ledger)})
    dedup = cfg.dedup.model_copy(update={"incremental": True, "against": basis.generations})
    return cfg.model_copy(update={"collect": collect, "dedup": dedup})


def continue_config(cfg: Any, basis: ChampionBasis, m: MaintenanceConfig) -> Any:
    """`data_config` plus: the champion's tokenizer and token index, warm start, replay, the budget."""
    if basis.token_index is None or not basis.token_index.is_file():
        raise UserError(f"maintenance: the champion {basis.version}'s token index {basis.token_index} is not in "
                        "the store any more (deleted, or the store moved); set maintenance.mode: retrain to "
                        "train a new model on everything")
    cfg = data_config(cfg, basis)
    tokenize = cfg.tokenize.model_copy(update={"tokenizer_file": str(basis.tokenizer),
                                               "append_to": str(basis.token_index)})
    update: dict[str, Any] = {"init_from": str(basis.model_dir), "replay_ratio": m.replay_ratio,
                              "max_steps": m.max_steps, "max_tokens": 0}
    if m.lr is not None:
        update["lr"] = m.lr
    if m.warmup_steps is not None:
        update["warmup_steps"] = m.warmup_steps
    pretrain = cfg.pretrain.model_copy(update=update)
    return cfg.model_copy(update={"tokenize": tokenize, "pretrain": pretrain})


def validated(cfg: Any) -> Any:
    """model_copy does not validate: build the config again from its values so a bad combination is an
    error naming the key before anything runs."""
    return type(cfg).model_validate(cfg.model_dump())


def new_documents(summary: dict[str, Any]) -> dict[str, Any]:
    """What the data phase found: new items collected, what dedup removed as seen before, what reached pii."""
    st = {n: (summary["stages"].get(n) or {}).get("stats") or {} for n in ("collect", "dedup", "pii")}
    return {"collected": st["collect"].get("new_docs", st["collect"].get("docs_out", 0)),
            "per_source": {n: c.get("docs_out") for n, c in (st["collect"].get("sources") or {}).items()},
            "seen_before": (st["dedup"].get("dedup") or {}).get("seen_before", 0),
            "after_dedup": st["dedup"].get("docs_out", 0),
            "documents": st["pii"].get("docs_out", 0)}


def write_record(reg: Registry, record: dict[str, Any]) -> Path:
    """`<registry>/maintenance/<UTC time>-<run id>.json`: every maintenance run leaves one."""
    folder = reg.root / "maintenance"
    folder.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{stamp}-{record['run_id'][:8]}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True, default=str))
    tmp.replace(path)
    return path


def records(reg: Registry) -> list[dict[str, Any]]:
    folder = reg.root / "maintenance"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


def record_markdown(record: dict[str, Any]) -> str:
    new = record.get("new") or {}
    lines = [f"## Maintenance of `{record['pipeline']}`: {record['outcome']}", "",
             f"- mode: {record['mode']} (champion before: {record.get('champion_before') or 'none'})",
             f"- new documents: {new.get('collected', 'n/a')} collected, {new.get('seen_before', 'n/a')} seen "
             f"before, {new.get('documents', 'n/a')} after dedup and pii (minimum {record['min_new_docs']})"]
    if record.get("trained"):
        t = record["trained"]
        lines.append(f"- trained: {t.get('steps')} steps, {t.get('tokens')} tokens, val loss {t.get('val_loss')}"
                     + (f", replay ratio {t['replay_ratio']}" if t.get("replay_ratio") is not None else ""))
    if record.get("decision"):
        d = record["decision"]
        lines.append(f"- gate: {d['decision']} {d['challenger']}: {'; '.join(d['reasons'])}")
    lines.append(f"- champion after: {record.get('champion_after') or 'none'}")
    if record.get("error"):
        lines.append(f"- error: {record['error']}")
    return "\n".join(lines)
