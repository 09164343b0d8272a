"""Helpers shared by the benchmarks: locating ../shared/data, timing subprocesses, peak RSS of a process tree."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    path = Path(os.environ.get("LLMPIPE_DATA") or REPO.parent / "shared" / "data")
    if not (path / "books").is_dir():
        sys.exit(f"benchmark data not found at {path}: set LLMPIPE_DATA to the folder holding books/")
    return path


def _children(pid: int) -> list[int]:
    kids = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                kids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return kids


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, in MB."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
        stack += _children(p)
    return total / 1024


def measure(cmd: list[str], env: dict | None = None, capture: bool = False) -> tuple[float, float, str]:
    """Run a command from the repo root; returns (wall seconds, peak RSS of its process tree in MB, stdout
    if captured). Raises if it fails."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=dict(os.environ, **(env or {})),
                            stdout=subprocess.PIPE if capture else None, text=True)
    peak = [0.0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss_mb(proc.pid))
            time.sleep(0.05)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, _ = proc.communicate()
    t.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return time.perf_counter() - start, peak[0], out or ""


def run_measured(args: list[str], env: dict | None = None) -> tuple[dict, float, float]:
    """Run `python ...args` in a subprocess that prints one JSON line last; returns (json, seconds, peak MB)."""
    wall, peak, out = measure([sys.executable, *args], env, capture=True)
    return json.loads(out.strip().splitlines()[-1]), wall, peak
