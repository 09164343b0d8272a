"""The model registry: immutable model versions, aliases with their history, taint marks, metric history.

Layout under `<store>/registry/<name>/` (`name`: `register.name`, by default the pipeline's name):

    versions/v<N>/        one version, written under a temporary name and renamed when whole, never
                          changed afterwards: model/ (weights, config, tokenizer, metrics, lineage), hf/
                          (the Hugging Face export), metrics.json, lineage.json, evaluate.json, bias.json,
                          card.md, version.json
    registry.json         what changes: the versions' digests and status (tainted or not), the aliases
    history.jsonl         every alias change: alias, from, to, when, by (the gate or a user), why
    decisions/            every gate decision, one file each
    history.png           the metric history plot

Every change happens under one lock (`_LOCK.json`, the store's stage lock: heartbeat, broken when stale)
and is published by an atomic replace of registry.json, so two flows registering at once serialize, and a
reader sees the registry before or after a change, never half of one. A version is identified by the
digest of its weights, model config and tokenizer: registering the same model again returns its version.
"""
from __future__ import annotations

import datetime as _dt
import getpass
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tasks.core.errors import UserError
from tasks.core.hashing import sha256_of
from tasks.core.lock import StageLock
from tasks.core.store import Store

STATE = "registry.json"
HISTORY = "history.jsonl"
CHAMPION = "champion"


def now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def who() -> str:
    """The user and machine behind a manual command."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid()) if hasattr(os, "getuid") else "unknown"
    return f"{user}@{socket.gethostname()}"


def model_digest(model_dir: Path) -> str:
    """What identifies a model: its weights, its config and its tokenizer."""
    parts = [sha256_of(model_dir / "model.safetensors"), sha256_of(model_dir / "config.json")]
    tok = model_dir / "tokenizer.json"
    parts.append(sha256_of(tok) if tok.exists() else "-")
    import hashlib

    return hashlib.sha256("/".join(parts).encode()).hexdigest()[:24]


class Registry:
    """One named registry in a store (a local directory: the models live beside their data)."""

    def __init__(self, store: Store | str, name: str):
        self.store = store if isinstance(store, Store) else Store(store)
        if not self.store.local:
            raise UserError(f"the registry needs a local store; store '{self.store.root}' is remote. Set "
                            "`store:` to a local (or mounted) directory.")
        if not name or "/" in name or name.startswith("."):
            raise UserError(f"register.name {name!r} is not a valid registry name (no '/', not empty)")
        self.name = name
        self.root = Path(self.store.root) / "registry" / name

    # reading ----------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        path = self.root / STATE
        if not path.exists():
            return {"versions": {}, "aliases": {}, "next": 1}
        return json.loads(path.read_text())

    def exists(self) -> bool:
        return (self.root / STATE).exists()

    def versions(self) -> list[str]:
        """Version ids in registration order."""
        return sorted(self.state()["versions"], key=lambda v: int(v.lstrip("v")))

    def alias(self, name: str = CHAMPION) -> str | None:
        return self.state()["aliases"].get(name)

    def version_dir(self, version: str) -> Path:
        return self.root / "versions" / version

    def info(self, version: str) -> dict[str, Any]:
        """The version's mutable entry (digest, status, taint) and its files' contents."""
        state = self.state()
        if version not in state["versions"]:
            known = ", ".join(self.versions()) or "none yet"
            raise UserError(f"registry {self.name!r} has no version {version!r} (versions: {known}); "
                            f"`llmpipe models list` shows them")
        d = self.version_dir(version)
        return {"version": version, **state["versions"][version],
                "aliases": sorted(a for a, v in state["aliases"].items() if v == version),
                "metrics": _read(d / "metrics.json"), "lineage": _read(d / "lineage.json"),
                "path": str(d)}

    def history(self) -> list[dict[str, Any]]:
        path = self.root / HISTORY
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def find_weights(self, weights_sha256: str) -> str | None:
        """The version whose weights have this SHA-256 (a warm start's parent)."""
        for v, entry in self.state()["versions"].items():
            if entry.get("weights_sha256") == weights_sha256:
                return v
        return None

    # changing ---------------------------------------------------------------------------------------
    @contextmanager
    def locked(self, owner: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
        """Hold the registry's lock; yields the current state, which the caller edits in place and which is
        published (atomically) when the block ends without an error."""
        self.root.mkdir(parents=True, exist_ok=True)
        with StageLock(self.store, str(self.root), {"what": "registry", **(owner or {})}, heartbeat=5.0,
                       stale_after=60.0, poll=0.2):
            state = self.state()
            yield state
            self.store.write_json(str(self.root / STATE), state)

    def register(self, files: dict[str, Path], metrics: dict[str, Any], lineage: dict[str, Any],
                 card: Any, weights_sha256: str, digest: str) -> tuple[str, bool]:
        """Add a version (or find it: the same digest is the same version). `files`: name in the version
        directory -> file or directory to copy in (hard links where the filesystem allows). `card` is
        called with the version id and returns the model card's markdown. Returns (version, created)."""
        with self.locked({"action": "register"}) as state:
            for v, entry in state["versions"].items():
                if entry["digest"] == digest:
                    return v, False
            version = f"v{state['next']}"
            tmp = self.root / "versions" / f".{version}.tmp-{uuid.uuid4().hex[:8]}"
            tmp.mkdir(parents=True)
            try:
                for name, src in files.items():
                    _copy(Path(src), tmp / name)
                created = now()
                _write(tmp / "metrics.json", metrics)
                _write(tmp / "lineage.json", lineage)
                _write(tmp / "version.json", {"version": version, "digest": digest, "created": created,
                                              "registry": self.name})
                (tmp / "card.md").write_text(card(version))
                final = self.version_dir(version)
                if final.exists():  # a crash after the rename but before registry.json: not published
                    shutil.rmtree(final)
                os.replace(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            state["versions"][version] = {"digest": digest, "created": created, "status": "ok",
                                          "weights_sha256": weights_sha256,
                                          "pipeline": lineage.get("pipeline"), "run_id": lineage.get("run_id")}
            state["next"] += 1
            return version, True

    def set_alias(self, alias: str, version: str | None, by: str, why: str,
                  expect: str | None | object = ..., run_id: str | None = None) -> dict[str, Any]:
        """Point `alias` at `version` (None removes it) and record the change. `expect`: compare-and-set,
        the change happens only if the alias still points where the caller saw it (else a UserError)."""
        with self.locked({"action": f"alias {alias}"}) as state:
            return self._set_alias(state, alias, version, by, why, expect, run_id)

    def _set_alias(self, state: dict[str, Any], alias: str, version: str | None, by: str, why: str,
                   expect: Any = ..., run_id: str | None = None, rollback: bool = False) -> dict[str, Any]:
        if version is not None and version not in state["versions"]:
            raise UserError(f"registry {self.name!r} has no version {version!r}; `llmpipe models list` shows them")
        current = state["aliases"].get(alias)
        if expect is not ... and current != expect:
            raise UserError(f"alias {alias!r} of registry {self.name!r} moved to {current} while this change "
                            f"(from {expect}) was being decided; decide again")
        event = {"when": now(), "alias": alias, "from": current, "to": version, "by": by, "why": why,
                 **({"run_id": run_id} if run_id else {}), **({"rollback": True} if rollback else {})}
        if version is None:
            state["aliases"].pop(alias, None)
        else:
            state["aliases"][alias] = version
        if alias == CHAMPION and version is not None and state["versions"][version]["status"] == "ok":
            state.pop("needs_retrain", None)  # an untainted champion: the retrain it needed has happened
        with open(self.root / HISTORY, "a") as f:  # one line, appended under the lock
            f.write(json.dumps(event, sort_keys=True) + "\n")
        return event

    def rollback(self, by: str, why: str) -> dict[str, Any]:
        """The champion goes back to the one it replaced; rolling back again goes further back (a rollback
        undoes a promotion, it is not itself undone by the next one)."""
        with self.locked({"action": "rollback"}) as state:
            current = state["aliases"].get(CHAMPION)
            stack: list[str] = []
            for e in self.history():
                if e["alias"] != CHAMPION:
                    continue
                if e.get("rollback"):
                    stack.pop()
                elif e["to"] is not None:
                    stack.append(e["to"])
            if current is None or len(stack) < 2:
                raise UserError(f"registry {self.name!r}: the champion ({current or 'none'}) has no earlier "
                                "version to roll back to; `llmpipe models promote VERSION` sets one")
            target = stack[-2]
            if state["versions"][target]["status"] != "ok":
                reason = state["versions"][target].get("taint", {}).get("reason")
                raise UserError(f"cannot roll back to {target}: it is tainted ({reason}); promote another version")
            return self._set_alias(state, CHAMPION, target, by, why, rollback=True)

    def record_decision(self, decision: dict[str, Any], promote: bool, run_id: str | None) -> dict[str, Any]:
        """Store a gate decision; when it promotes, move the champion in the same locked change, but only
        if the champion is still the one the gate compared against (compare-and-set)."""
        with self.locked({"action": "gate"}) as state:
            current = state["aliases"].get(CHAMPION)
            if promote and current != decision["champion"]:
                decision = {**decision, "decision": "reject", "promoted": False,
                            "reasons": decision["reasons"] + [
                                f"the champion changed to {current} while the gate compared against "
                                f"{decision['champion']}; rerun to compare against the new one"]}
                promote = False
            decision = {**decision, "recorded": now()}
            (self.root / "decisions").mkdir(exist_ok=True)
            stamp = decision["recorded"].replace(":", "").replace("-", "")
            _write(self.root / "decisions" / f"{stamp}-{decision['challenger']}-{uuid.uuid4().hex[:6]}.json",
                   decision)
            if promote:
                why = "; ".join(decision["reasons"]) or "passed every rule"
                self._set_alias(state, CHAMPION, decision["challenger"], "gate", why, run_id=run_id)
            return decision

    def decisions(self) -> list[dict[str, Any]]:
        folder = self.root / "decisions"
        return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.exists() else []

    def taint(self, digests: set[str], reason: str, audit: str) -> list[str]:
        """Mark every version whose lineage holds one of these stage-output digests as tainted; a tainted
        champion stays in place (serving goes on) but the registry records that it needs a retrain."""
        hit: list[str] = []
        with self.locked({"action": "taint"}) as state:
            for v, entry in state["versions"].items():
                lineage = _read(self.version_dir(v) / "lineage.json") or {}
                used = {d.get("digest") for d in (lineage.get("data") or {}).values()}
                if used & digests:
                    hit.append(v)
                    if entry["status"] != "tainted":
                        entry["status"] = "tainted"
                        entry["taint"] = {"reason": reason, "audit": audit, "when": now()}
            if state["aliases"].get(CHAMPION) in hit:
                state["needs_retrain"] = {"reason": reason, "audit": audit, "when": now(),
                                          "champion": state["aliases"][CHAMPION]}
        return sorted(hit, key=lambda v: int(v.lstrip("v")))

    def needs_retrain(self) -> dict[str, Any] | None:
        return self.state().get("needs_retrain")


def registries(store: Store | str) -> list[Registry]:
    """Every registry in a store."""
    store = store if isinstance(store, Store) else Store(store)
    root = Path(store.root) / "registry"
    if not root.is_dir():
        return []
    return [Registry(store, p.name) for p in sorted(root.iterdir()) if (p / STATE).exists()]


def taint_versions(store: Store | str, digests: set[str], reason: str, audit: str) -> dict[str, list[str]]:
    """`Registry.taint` over every registry of the store: {registry name: tainted versions}."""
    return {reg.name: hit for reg in registries(store) if (hit := reg.taint(set(digests), reason, audit))}


def _read(path: Path) -> Any:
    return json.loads(path.read_text()) if path.exists() else None


def _write(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str))


def _copy(src: Path, dst: Path) -> None:
    """Hard links where the filesystem allows (a version costs no second copy of its weights), else a copy.
    The store's files are never rewritten in place, so a link cannot change under the version."""
    if src.is_dir():
        dst.mkdir(parents=True, exist_ok=True)
        for child in sorted(src.iterdir()):
            if child.name.startswith(".") or child.name == "checkpoints":
                continue
            _copy(child, dst / child.name)
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
