"""One writer per stage output: a lock file with its owner and a heartbeat, broken when stale.

Two runs on one store that reach the same stage output take turns: the second waits (and says so)
while the first writes, then finds the output finished and reuses it. A lock whose heartbeat stopped
(its process was killed, its machine died) is broken after `stale_after` seconds, or at once when its
owner is a process on this machine that no longer exists.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Any, Callable

from tasks.core.store import Store

log = logging.getLogger("llmpipe")
LOCK = "_LOCK.json"


class StageLock:
    def __init__(self, store: Store, stage_uri: str, owner: dict[str, Any], *, heartbeat: float = 10.0,
                 stale_after: float = 60.0, poll: float = 1.0, on_wait: Callable[[dict], None] | None = None):
        self.store, self.uri = store, f"{stage_uri}/{LOCK}"
        self.owner = {**owner, "host": socket.gethostname(), "pid": os.getpid(), "token": uuid.uuid4().hex}
        self.heartbeat, self.stale_after, self.poll, self.on_wait = heartbeat, stale_after, poll, on_wait
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> StageLock:
        said = False
        while not self._try_take():
            holder = self._holder()
            if holder is not None and self._stale(holder):
                log.warning("breaking the stale lock on %s (owner: run %s, pid %s on %s)", self.uri,
                            holder.get("run_id"), holder.get("pid"), holder.get("host"))
                self.store.rm(self.uri)
                continue
            if not said and holder is not None:
                said = True
                log.warning("waiting for run %s (pid %s on %s), which is writing %s", holder.get("run_id"),
                            holder.get("pid"), holder.get("host"), self.uri.rsplit("/", 1)[0])
                if self.on_wait:
                    self.on_wait(holder)
            time.sleep(self.poll)
        self._beat = threading.Thread(target=self._beating, name="llmpipe-lock-heartbeat", daemon=True)
        self._beat.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
        holder = self._holder()
        if holder is not None and holder.get("token") == self.owner["token"]:
            self.store.rm(self.uri)

    def _try_take(self) -> bool:
        self.store.makedirs(self.uri.rsplit("/", 1)[0])
        data = json.dumps(self.owner).encode()
        if self.store.local:
            try:
                fd = os.open(self.uri, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        # object stores have no exclusive create: write, then read back who won (best effort)
        if self.store.exists(self.uri):
            return False
        self.store.fs.pipe(self.uri, data)
        holder = self._holder()
        return holder is not None and holder.get("token") == self.owner["token"]

    def _holder(self) -> dict[str, Any] | None:
        try:
            holder = self.store.read_json(self.uri)
        except (FileNotFoundError, ValueError):
            return None
        holder["_age"] = time.time() - _mtime(self.store, self.uri)
        return holder

    def _stale(self, holder: dict[str, Any]) -> bool:
        if holder["_age"] > self.stale_after:
            return True
        if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
            return not _alive(holder["pid"])
        return False

    def _beating(self) -> None:
        while not self._stop.wait(self.heartbeat):
            try:
                if self.store.local:
                    os.utime(self.uri)
                else:
                    self.store.fs.touch(self.uri, truncate=False)
            except OSError as exc:  # the lock is gone or the disk is full: the run itself will say so
                log.debug("lock heartbeat failed: %s", exc)


def _mtime(store: Store, uri: str) -> float:
    if store.local:
        return os.path.getmtime(uri)
    info = store.fs.info(uri)
    stamp = info.get("mtime") or info.get("LastModified") or info.get("created")
    return stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp or time.time())


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
