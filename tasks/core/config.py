"""Base class for every stage's config section: frozen, unknown keys rejected."""
from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict


class StageConfig(BaseModel):
    """One section of pipelines.yaml. Frozen so a config can be hashed into a store key."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    def canonical(self) -> dict[str, Any]:
        """A JSON-safe dict with every field, defaults included (what the store key hashes)."""
        return self.model_dump(mode="json")

    def digest(self) -> str:
        return stable_hash(self.canonical())


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex digest of canonical JSON (sorted keys): equal configs give equal keys across runs."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
