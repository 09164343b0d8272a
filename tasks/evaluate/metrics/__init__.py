"""Metric modules for `evaluate` shipped with llmpipe, and compute(name, ...) that runs them offline.

Each metric is a directory `name/name.py` holding an `evaluate.Metric`, loaded with
evaluate.load(<that directory>): no hub access. evaluate copies the script into its modules cache
(evaluate.config.HF_MODULES_CACHE, from $HF_MODULES_CACHE, default ~/.cache/huggingface/modules) and
imports it from there; when that directory is not writable (a read-only home) a temporary one of this
process is used instead. Predictions are kept in memory (no arrow files); the metric's scratch directory
is a temporary one, removed at exit. The formulas themselves are in formulas.py (numpy).
"""
from __future__ import annotations

import atexit
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tasks.core.errors import UserError
from tasks.evaluate.metrics.formulas import OUTPUTS

log = logging.getLogger("llmpipe.evaluate")

METRICS: tuple[str, ...] = tuple(OUTPUTS)  # module names; OUTPUTS[name] are the keys compute returns
MODULES_DIR = Path(__file__).resolve().parent

_loaded: dict[str, Any] = {}
_scratch: list[str] = []


def module_path(name: str) -> Path:
    """The directory of the evaluate module `name` (what evaluate.load takes)."""
    if name not in METRICS:
        raise UserError(f"unknown metric {name!r}; known: {', '.join(METRICS)}")
    return MODULES_DIR / name


def _scratch_dir() -> Path:
    """A temporary directory of this process, removed at exit."""
    if not _scratch:
        _scratch.append(tempfile.mkdtemp(prefix="llmpipe-evaluate-"))
        atexit.register(shutil.rmtree, _scratch[0], ignore_errors=True)
    return Path(_scratch[0])


def _writable(directory: Path) -> bool:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=directory).close()
        return True
    except OSError:
        return False


def load(name: str):
    """The evaluate module `name`, loaded once per process."""
    path = module_path(name)
    if name not in _loaded:
        import evaluate
        import evaluate.config

        if not _writable(Path(evaluate.config.HF_MODULES_CACHE)):
            fallback = _scratch_dir() / "modules"
            log.info("evaluate's modules cache %s is not writable; using %s",
                     evaluate.config.HF_MODULES_CACHE, fallback)
            evaluate.config.HF_MODULES_CACHE = fallback
        _loaded[name] = evaluate.load(str(path), keep_in_memory=True,
                                      cache_dir=str(_scratch_dir() / "metrics"))
    return _loaded[name]


def _plain(values) -> list:
    return values.tolist() if hasattr(values, "tolist") else list(values)


def compute(name: str, predictions, references=None, **extra) -> dict[str, float]:
    """Run the metric module `name` through evaluate: {output: value} (see formulas.OUTPUTS for the keys).

    extra: more inputs of the module, e.g. groups= for multirc and gender_parity (ids, turned into str).
    gender_parity takes no references."""
    module = load(name)
    inputs = {"predictions": _plain(predictions)}
    if references is not None:
        inputs["references"] = [_plain(r) if name == "record" else r for r in _plain(references)]
    if "groups" in extra:
        extra = {**extra, "groups": [str(g) for g in _plain(extra["groups"])]}
    result = module.compute(**inputs, **extra)
    return {key: float(value) for key, value in result.items()}
