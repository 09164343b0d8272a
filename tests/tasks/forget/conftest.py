"""A real small store: two JSONL sources run through the real stages; `gone` is the one to forget."""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from flows.config import load_pipeline
from flows.stages import BY_NAME
from tasks.core.result import StageResult
from tasks.core.stage import RunContext, run_stage
from tasks.core.store import Store

WORDS = "river mill letter sister market evening garden horse window bread winter music north money friend".split()
KEEP_DOCS, GONE_DOCS = 12, 8


def gone_sentence(i: int) -> str:
    """One sentence that only document i of the forgotten source holds."""
    return f"The keeper of the Zephyrine lighthouse counted {i * 7 + 3} gulls over the quay of Brisvane"


def _line(rng: random.Random, lead: str) -> str:
    notes = " ".join(rng.choice(WORDS) for _ in range(60))
    return json.dumps({"text": f"{lead}. Notes: {notes}. That is all for now.", "title": lead[:20]})


def write_sources(root: Path) -> tuple[Path, Path]:
    """`keep.jsonl` (12 documents, one line that is not JSON) and `gone.jsonl` (8 documents, each with its
    own sentence, one line that is not JSON, and a copy of a `keep` document that dedup removes)."""
    rng = random.Random(1)
    keep = [_line(rng, f"The miller of Ashcombe wrote letter {i} about the harvest") for i in range(KEEP_DOCS)]
    gone = [_line(rng, gone_sentence(i)) for i in range(GONE_DOCS)]
    (root / "keep.jsonl").write_text("\n".join(keep[:6] + ["{not json at all"] + keep[6:]) + "\n")
    (root / "gone.jsonl").write_text("\n".join(gone[:4] + ["{broken: Zephyrine"] + gone[4:] + [keep[0]]) + "\n")
    return root / "keep.jsonl", root / "gone.jsonl"


@dataclass
class Built:
    cfg: Any
    ctx: RunContext
    results: dict[str, StageResult] = field(default_factory=dict)

    @property
    def store(self) -> Store:
        return Store(self.cfg.store)

    @property
    def root(self) -> Path:
        return Path(self.cfg.store)

    def run(self, until: str, run_id: str = "r") -> dict[str, StageResult]:
        """The real stages in order, each through the stage contract (no Prefect)."""
        self.ctx = self.ctx.model_copy(update={"run_id": run_id})
        self.results = {}
        for name in ("collect", "clean", "dedup", "pii", "tokenize"):
            stage = BY_NAME[name]
            self.results[name] = run_stage(stage, getattr(self.cfg, name),
                                           {r: self.results[r] for r in stage.reads}, self.ctx)
            if name == until:
                break
        return self.results


def pipeline(tmp_path: Path, *overrides: str) -> Built:
    keep, gone = write_sources(tmp_path)
    sources = f"[{{name: keep, path: '{keep}'}}, {{name: gone, path: '{gone}'}}]"
    _, cfg = load_pipeline("demo", None, [f"store={tmp_path / 'store'}", f"collect.sources={sources}",
                                          "runner.workers=1", "collect.quarantine_raw=true", "pii.nlp_model=null", "pii.evaluate=false",
                                          "tokenize.vocab_size=300", *overrides])
    ctx = RunContext(store=cfg.store, pipeline="forgetful", run_id="r", seed=cfg.seed, runner=cfg.runner)
    return Built(cfg, ctx)


@pytest.fixture
def built(tmp_path) -> Built:
    return pipeline(tmp_path)
