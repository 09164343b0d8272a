"""Imported once by the forkserver of the local process pool, so workers start with the stages loaded."""
import importlib
import os

for _name in os.environ.get("LLMPIPE_PRELOAD", "").split(","):
    if _name:
        try:  # a module that fails to import here fails loudly later, in the unit that needs it
            importlib.import_module(_name)
        except Exception:  # noqa: BLE001
            pass
