"""Startup time of the temporary Prefect server: Prefect's own (a child in our process group) against
llmpipe's (flows/server.py: the same server in a session of its own), alternating, in the same run.

    PYTHONPATH=$PWD python bench/temp_server.py [rounds]
"""
from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

from prefect.server.api.server import SubprocessASGIServer

from flows.server import SessionServer


def main(rounds: int) -> None:
    seconds: dict[str, list[float]] = {"prefect": [], "llmpipe": []}
    for _ in range(rounds):
        for name, cls in (("prefect", SubprocessASGIServer), ("llmpipe", SessionServer)):
            server = cls()
            start = time.perf_counter()
            server.start(timeout=90)
            seconds[name].append(time.perf_counter() - start)
            server.stop()
    for name, values in seconds.items():
        print(f"{name:8} median {statistics.median(values):.2f}s  ({', '.join(f'{v:.2f}' for v in values)})")
    ratio = statistics.median(seconds["llmpipe"]) / statistics.median(seconds["prefect"])
    print(f"llmpipe / prefect: {ratio:.2f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
