"""SHA-256 of a local file, streamed (shards and models run to gigabytes). Standard library only, so the
training code that imports it still runs on a bare GPU machine (torch + accelerate + numpy)."""
from __future__ import annotations

import hashlib
import os


def sha256_of(path: str | os.PathLike) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
