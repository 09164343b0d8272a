"""The store's tombstone, `<store>/forgotten.json`: the sources that were forgotten, which collect then skips.

Without it the next run would collect a forgotten source again from its files. An entry holds the source's
name, when it was forgotten, the audit record's id and where the source was read from (paths, URLs, dataset
names): never text. Collect imports this module, so it is part of collect's code version; it depends on the
store alone and stays small.

A configured source is skipped when its name is forgotten, or when it reads a location a forgotten source
read. Names that `--source` makes up (`cli-0`, `cli-1`, ...) say nothing about the data, so for those only the
location counts: forgetting `cli-0` must not skip every later run's first `--source`.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from tasks.core.errors import UserError
from tasks.core.store import Store

TOMBSTONE = "forgotten.json"
AUTO_NAME = re.compile(r"cli-\d+")  # the names collect.source_from_arg gives to `--source` values


def tombstone_uri(store: Store) -> str:
    return store.join(TOMBSTONE)


def read_tombstone(store: Store) -> dict[str, dict[str, Any]]:
    """{source name: entry} of every forgotten source (empty when nothing was forgotten)."""
    uri = tombstone_uri(store)
    if not store.exists(uri):
        return {}
    try:
        data = store.read_json(uri)
        sources = data["sources"]
        if not isinstance(sources, dict):
            raise TypeError("`sources` is not a mapping")
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{uri} is not a valid list of forgotten sources ({exc}). Restore it from the audit "
                        f"records in {store.join('audit')} (one per forgotten source), or rerun "
                        "`llmpipe forget --source NAME` for each of them.") from None
    return sources


def write_tombstone(store: Store, sources: dict[str, dict[str, Any]]) -> None:
    store.write_json(tombstone_uri(store), {"sources": sources})


def location(source: Mapping[str, Any]) -> str | None:
    """Where a source (a `collect.sources` entry, as a dict) reads from: `path:<absolute path or glob>`,
    `url:<url>`, `hub:<dataset>[:<config>]` or `demo`."""
    if source.get("path"):
        return "path:" + os.path.abspath(os.path.expanduser(source["path"]))
    if source.get("url"):
        return "url:" + source["url"]
    if source.get("dataset"):
        return "hub:" + source["dataset"] + (f":{source['config_name']}" if source.get("config_name") else "")
    return "demo" if source.get("kind") == "demo" else None


def forgotten_match(source: Mapping[str, Any], tombstone: dict[str, dict[str, Any]]) -> str | None:
    """The name of the tombstone entry that makes collect skip this configured source, or None."""
    name = source.get("name", "")
    if name in tombstone and not AUTO_NAME.fullmatch(name):
        return name
    where = location(source)
    for forgotten, entry in sorted(tombstone.items()):
        if where is not None and where in entry.get("locations", []):
            return forgotten
    return None


def skipped_sources(sources: list[Mapping[str, Any]], store: Store) -> dict[str, str]:
    """{configured source name: the forgotten source it matches} for the sources collect must skip."""
    tombstone = read_tombstone(store)
    if not tombstone:
        return {}
    found = {src["name"]: forgotten_match(src, tombstone) for src in sources}
    return {name: match for name, match in found.items() if match is not None}


def lift_hint(name: str) -> str:
    return f"`llmpipe forget --lift --source {name} PIPELINE` collects it again"

