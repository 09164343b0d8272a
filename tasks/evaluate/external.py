"""`llmpipe evaluate --model DIR` and `llmpipe bias --model DIR`: a stage on a model directory instead of a
trained one.

The flow swaps two stages for these: `pretrain` becomes "take this model" (one of our model directories,
exported to Hugging Face form, or a Hugging Face causal LM directory, linked or copied into the store so
the result never changes under it; the store key holds the weights' digest) and `tokenize` becomes "no
val split" (perplexity is reported as skipped); for bias, collect, pii and evaluate become "absent" (the
checks that read them are skipped with the reason). Everything else (store, keys, caching, Prefect task, logs,
artifacts) is the pipeline's.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from tasks.core.config import StageConfig
from tasks.core.errors import UserError
from tasks.core.hashing import sha256_of
from tasks.core.stage import Inputs, RunContext, Stage, StageOutput

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt")


class ExternalModelConfig(StageConfig):
    path: str  # the model directory given with --model


def model_kind(path: Path) -> str:
    """'llmpipe' (our model directory), 'hf' (a transformers directory); an error names what is missing."""
    config = path / "config.json"
    if not path.is_dir():
        raise UserError(f"--model {path}: not a directory; give a model directory (ours: the pretrain stage's "
                        "model/ or hf/; or a Hugging Face causal LM directory)")
    if not config.is_file():
        raise UserError(f"--model {path}: no config.json in it; give a model directory (ours or a Hugging Face one)")
    try:
        meta = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{config}: not valid JSON ({exc})") from None
    if meta.get("architecture") == "llmpipe-gpt":
        return "llmpipe"
    if "model_type" in meta:
        return "hf"
    raise UserError(f"{config}: neither one of our model configs (architecture: llmpipe-gpt) nor a Hugging Face "
                    "one (model_type); give a model directory")


def model_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_file())


def external_key(cfg: ExternalModelConfig, ctx: RunContext) -> dict[str, Any]:
    """The store key holds the content of the model's config and weights, not only its path."""
    path = Path(cfg.path)
    model_kind(path)
    return {"files": {p.name: sha256_of(p) if p.suffix in WEIGHT_SUFFIXES or p.name.endswith(".json")
                      else p.stat().st_size for p in model_files(path)}}


def run_external_model(inputs: Inputs, out_uri: str, cfg: ExternalModelConfig, ctx: RunContext) -> StageOutput:
    path = Path(cfg.path)
    out = ctx.open_store().local_path(out_uri)
    hf = out / "hf"
    if hf.exists():
        shutil.rmtree(hf)
    kind = model_kind(path)
    if kind == "llmpipe":
        from tasks.pretrain.export import export_hf

        export_hf(path, hf)
    else:
        hf.mkdir(parents=True)
        for p in model_files(path):
            _link_or_copy(p, hf / p.name)
    return StageOutput(outputs={"hf_model": sorted(f"hf/{p.name}" for p in model_files(hf))},
                       stats={"model": str(path), "format": kind})


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # same filesystem: no copy, and the store's file stays even if the source is deleted
    except OSError:
        shutil.copy2(src, dst)


def run_no_tokens(inputs: Inputs, out_uri: str, cfg: StageConfig, ctx: RunContext) -> StageOutput:
    return StageOutput(outputs={}, stats={"note": "a model given by --model: no val split, no perplexity"})


EXTERNAL_MODEL = Stage(name="pretrain", config=ExternalModelConfig, run=run_external_model,
                       key_inputs=external_key, summary="a model directory given with --model")
NO_TOKENS = Stage(name="tokenize", run=run_no_tokens, summary="no val split (a model given with --model)")


def absent(name: str, note: str) -> Stage:
    """A stage that gives nothing: the stages reading it see no outputs and say so."""
    def run_absent(inputs: Inputs, out_uri: str, cfg: StageConfig, ctx: RunContext) -> StageOutput:
        return StageOutput(outputs={}, stats={"note": note})

    return Stage(name=name, run=run_absent, summary=note)
