"""The store: stage outputs under <root>/<stage>/<key>/, a completion manifest written last.

The root is a local directory or any fsspec URL. Keys hash the stage config, the digests of the
stage's inputs and the code version, so a changed config writes elsewhere and an unchanged one is
found complete and skipped. Partial outputs (no `_SUCCESS.json`) are never read.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

import fsspec

from tasks.core.config import StageConfig, stable_hash
from tasks.core.errors import UserError
from tasks.core.hashing import sha256_of

MANIFEST = "_SUCCESS.json"


class Store:
    """A root directory (local path or fsspec URL) holding every stage's outputs."""

    def __init__(self, root: str | os.PathLike):
        root = str(root)
        try:
            self.fs, path = fsspec.core.url_to_fs(root)
        except (ImportError, ValueError) as exc:
            raise UserError(f"store '{root}' cannot be opened: {exc}. Set `store:` to a local directory "
                            "or an fsspec URL whose filesystem package is installed.") from exc
        self.local = _is_local(self.fs)
        if self.local:
            path = os.path.abspath(os.path.expanduser(path))
        self.root = path.rstrip("/")

    # paths --------------------------------------------------------------------------------------
    def join(self, *parts: str) -> str:
        return "/".join([self.root, *[p.strip("/") for p in parts if p]])

    def stage_dir(self, stage: str, key: str) -> str:
        return self.join(stage, key)

    def local_path(self, uri: str) -> Path:
        """A local filesystem path for a store URI (memory maps, tokenizer files need one)."""
        if not self.local:
            raise UserError(f"'{uri}' is in a remote store; this step needs a local store directory. "
                            "Set `store:` to a local path for tokenize/pretrain.")
        return Path(uri)

    # files --------------------------------------------------------------------------------------
    def open(self, uri: str, mode: str = "rb"):
        if "w" in mode or "a" in mode:
            self.fs.makedirs(uri.rsplit("/", 1)[0], exist_ok=True)
        return self.fs.open(uri, mode)

    def exists(self, uri: str) -> bool:
        return self.fs.exists(uri)

    def makedirs(self, uri: str) -> None:
        self.fs.makedirs(uri, exist_ok=True)

    def rm(self, uri: str) -> None:
        if self.fs.exists(uri):
            self.fs.rm(uri, recursive=True)

    def ls(self, uri: str) -> list[str]:
        if not self.fs.exists(uri):
            return []
        return sorted(self.fs.ls(uri, detail=False))

    def write_json(self, uri: str, obj: Any) -> None:
        """Write JSON atomically: a reader sees the old file or the whole new one, never a part."""
        data = json.dumps(obj, indent=2, sort_keys=True, default=str).encode()
        if self.local:
            tmp = f"{uri}.tmp-{uuid.uuid4().hex[:8]}"
            self.makedirs(os.path.dirname(uri))
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, uri)
        else:  # object stores publish a put atomically
            self.fs.pipe(uri, data)

    def read_json(self, uri: str) -> Any:
        with self.fs.open(uri, "rb") as f:
            return json.load(f)

    def commit(self, tmp_uri: str, final_uri: str) -> None:
        """Publish a finished file written under a temporary name."""
        if self.local:
            os.replace(tmp_uri, final_uri)
        else:
            self.fs.mv(tmp_uri, final_uri)

    def file_digest(self, uri: str) -> str:
        if self.local:
            return sha256_of(uri)
        h = hashlib.sha256()
        with self.fs.open(uri, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        return h.hexdigest()

    # completion manifests -----------------------------------------------------------------------
    def is_complete(self, stage_uri: str, hashes: bool = False) -> bool:
        """A manifest exists and every file it lists is there as recorded (see `check`)."""
        return self.exists(f"{stage_uri}/{MANIFEST}") and not self.check(stage_uri, hashes)

    def check(self, stage_uri: str, hashes: bool = False) -> list[str]:
        """What differs between a finished output and its manifest, one `path: what` line per file."""
        return [f"{path}: {why}" for path, why in self.damage(stage_uri, hashes).items()]

    def damage(self, stage_uri: str, hashes: bool = False) -> dict[str, str]:
        """{file: what differs} between a finished output and its manifest (empty: intact).

        Always: every listed file exists with its recorded size (cheap: one stat each). With `hashes`,
        also its SHA-256 (reads every byte: `llmpipe verify`, or `verify: hashes` in the config).
        """
        try:
            manifest = self.read_manifest(stage_uri)
        except FileNotFoundError:
            return {MANIFEST: "missing"}
        except (OSError, ValueError) as exc:
            return {MANIFEST: f"unreadable ({exc})"}
        damaged = {}
        purged = set((manifest.get("purged") or {}).get("files", []))
        for entry in manifest.get("files", []):
            if entry["path"] in purged:  # deleted on purpose (retain_raw: false); restored when needed
                continue
            uri = f"{stage_uri}/{entry['path']}"
            if not self.fs.exists(uri):
                damaged[entry["path"]] = "missing"
            elif (size := self.fs.size(uri)) != entry["bytes"]:
                damaged[entry["path"]] = f"{size:,} bytes, the manifest says {entry['bytes']:,}"
            elif hashes and self.file_digest(uri) != entry["sha256"]:
                damaged[entry["path"]] = "SHA-256 differs from the manifest (same size: changed bytes)"
        return damaged

    def make_private(self, uri: str) -> None:
        """Owner-only access (0700) to a directory and its parent, on a local store (remote stores
        control access with their own policies)."""
        self.makedirs(uri)
        if self.local:
            for path in (uri, os.path.dirname(uri)):
                os.chmod(path, 0o700)

    def sweep_temp(self, uri: str) -> int:
        """Remove the temporary files (`*.tmp`, `*.tmp-<id>`) a failed or killed attempt left under `uri`."""
        if not self.fs.exists(uri):
            return 0
        found = [p for p in self.fs.find(uri, withdirs=True) if _TEMP.search(p.rsplit("/", 1)[-1])]
        for path in sorted(found, key=len, reverse=True):  # files before the directories holding them
            if self.fs.exists(path):
                self.fs.rm(path, recursive=True)
        return len(found)

    def purge(self, stage_uri: str, groups: tuple[str, ...] = ("docs",)) -> int:
        """Delete the files of some output groups of a finished stage (its raw text) but keep its
        manifest, marked `purged`: the digest downstream keys hold stays valid, and a run that needs the
        files again reruns the stage. Returns the number of files deleted."""
        manifest = self.read_manifest(stage_uri)
        outputs = manifest.get("outputs", {})
        rels = [r for g in groups for r in ([outputs[g]] if isinstance(outputs.get(g), str) else outputs.get(g, []))]
        for rel in rels:
            self.rm(f"{stage_uri}/{rel}")
        stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        manifest["purged"] = {"when": stamp, "groups": list(groups), "files": sorted(rels)}
        self.write_json(f"{stage_uri}/{MANIFEST}", manifest)
        return len(rels)

    def invalidate(self, stage_uri: str) -> None:
        """Withdraw a manifest that no longer describes the files (kept beside them, for the record)."""
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        if self.exists(f"{stage_uri}/{MANIFEST}"):
            self.fs.mv(f"{stage_uri}/{MANIFEST}", f"{stage_uri}/_INVALID-{stamp}.json")

    def read_manifest(self, stage_uri: str) -> dict[str, Any]:
        return self.read_json(f"{stage_uri}/{MANIFEST}")

    def write_manifest(self, stage_uri: str, *, stage: str, key: str, config: dict, inputs: list[str],
                       outputs: dict[str, Any], stats: dict[str, Any], code_version: str) -> dict:
        """List every output file with its size and hash, then publish `_SUCCESS.json` last."""
        files = []
        for rel in _flatten(outputs):
            uri = f"{stage_uri}/{rel}"
            files.append({"path": rel, "bytes": self.fs.size(uri), "sha256": self.file_digest(uri)})
        manifest = {
            "stage": stage, "key": key, "code_version": code_version, "config": config,
            "inputs": inputs, "outputs": outputs, "stats": stats, "files": files,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        manifest["digest"] = stable_hash({"files": files, "outputs": outputs}, 24)
        self.write_json(f"{stage_uri}/{MANIFEST}", manifest)
        return manifest


_TEMP = re.compile(r"\.tmp(-[0-9a-z]+)?$|\.part$")


def _is_local(fs) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def _flatten(outputs: dict[str, Any]) -> list[str]:
    rels: list[str] = []
    for value in outputs.values():
        if isinstance(value, str):
            rels.append(value)
        elif isinstance(value, (list, tuple)):
            rels.extend(v for v in value if isinstance(v, str))
    return rels


def stage_key(stage: str, cfg: StageConfig | dict, inputs: list[str], code: str) -> str:
    """`<stage>-<hash>`: config, input digests and code version decide where a stage writes."""
    config = cfg.key_dict() if isinstance(cfg, StageConfig) else cfg
    return stable_hash({"stage": stage, "config": config, "inputs": sorted(inputs), "code": code}, 16)
