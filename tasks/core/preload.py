"""Imported once by the forkserver of the local process pool, so workers start with the stages loaded.

The forkserver and its workers ignore SIGINT and SIGTERM: a Ctrl-C or `docker stop` reaches the whole
process group, and the parent (`llmpipe`) decides what stops and when (tasks/core/units.py)."""
import importlib
import os
import signal

signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)

for _name in os.environ.get("LLMPIPE_PRELOAD", "").split(","):
    if _name:
        try:  # a module that fails to import here fails loudly later, in the unit that needs it
            importlib.import_module(_name)
        except Exception:  # noqa: BLE001
            pass
