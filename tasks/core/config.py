"""Base class for every stage's config section: frozen, unknown keys rejected."""
from __future__ import annotations

import hashlib
import json
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict


class StageConfig(BaseModel):
    """One section of pipelines.yaml. Frozen so a config can be hashed into a store key."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    # fields that change how a stage runs but not what it writes (workers, batch sizes): left out of
    # the store key, so changing them reuses finished outputs
    key_exclude: ClassVar[frozenset[str]] = frozenset()

    def canonical(self) -> dict[str, Any]:
        """A JSON-safe dict with every field, defaults included (saved in manifests and run dirs)."""
        return self.model_dump(mode="json")

    def key_dict(self) -> dict[str, Any]:
        """What the store key hashes: every field but the execution-only ones."""
        return {k: v for k, v in self.canonical().items() if k not in self.key_exclude}

    def digest(self) -> str:
        return stable_hash(self.key_dict())


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex digest of canonical JSON (sorted keys): equal configs give equal keys across runs."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
