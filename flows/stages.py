"""The stage registry: order, one-line description, config model and Prefect task of every stage."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from tasks.core.config import StageConfig


class NotBuiltConfig(StageConfig):
    """Config section of a stage that is not implemented yet: it accepts no keys."""


@dataclass(frozen=True)
class StageSpec:
    name: str
    summary: str
    module: str | None  # None: not implemented yet (reported as `not_implemented` when run)
    config: str = ""
    task: str = ""

    @property
    def built(self) -> bool:
        return self.module is not None

    def config_model(self) -> type[StageConfig]:
        if not self.built:
            return NotBuiltConfig
        return getattr(importlib.import_module(self.module), self.config)

    def prefect_task(self) -> Any:
        return getattr(importlib.import_module(self.module), self.task)


STAGES: list[StageSpec] = [
    StageSpec("collect", "read files, globs, directories, URLs, hub datasets or the demo corpus into Parquet shards",
              "tasks.collect.stage", "CollectConfig", "collect_task"),
    StageSpec("clean", "normalize text, strip markup, drop low-quality documents, split into passages",
              "tasks.clean.stage", "CleanConfig", "clean_task"),
    StageSpec("dedup", "remove exact and MinHash-LSH near duplicates, against a persistent index",
              "tasks.dedup.stage", "DedupConfig", "dedup_task"),
    StageSpec("pii", "detect personal data with presidio and anonymize it; counts only in reports",
              "tasks.pii.stage", "PiiConfig", "pii_task"),
    StageSpec("tokenize", "train a byte-level BPE tokenizer and pack token shards with a train/val split",
              "tasks.tokenizer.stage", "TokenizeConfig", "tokenize_task"),
    StageSpec("pretrain", "train a GPT (next-token or multi-token prediction) with Accelerate",
              "tasks.pretrain.stage", "PretrainConfig", "pretrain_task"),
    StageSpec("evaluate", "perplexity, GLUE and SuperGLUE fine-tuning and scoring", None),
    StageSpec("bias", "CrowS-Pairs, WinoBias, BBQ and other bias probes", None),
    StageSpec("register", "register the model, gate it against the champion, write the model card", None),
]
STAGE_NAMES = [s.name for s in STAGES]


def spec(name: str) -> StageSpec:
    for s in STAGES:
        if s.name == name:
            return s
    raise KeyError(name)
