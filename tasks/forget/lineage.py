"""The store's stage outputs and what was made from what: which outputs derive from the ones that held a source.

An output is `<store>/<stage>/<key>/`, finished (it has `_SUCCESS.json`) or not (a killed run, a withdrawn
manifest). One output derives from another when its manifest lists the other's digest among its inputs,
or when one of its small JSON files (its manifest's config, unit markers, run.json, lineage.json) names the
other's directory: `tokenize.append_to` and `tokenizer_file`, `pretrain.init_from`, the plan of an unfinished
tokenize listing its input shards, a pretrain run's token index. Both are followed transitively.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from tasks.core.store import MANIFEST, Store

NOT_OUTPUTS = {"runs", "audit", "registry", "_forget"}  # top-level folders of the store that are not stage outputs
JSON_LIMIT = 1 << 20  # bigger JSON files are data (tokenizer vocabularies, results), not references


@dataclass
class Output:
    stage: str
    key: str
    uri: str
    manifest: dict[str, Any] | None
    store: Store = field(repr=False)

    @property
    def finished(self) -> bool:
        return self.manifest is not None

    @property
    def digest(self) -> str | None:
        return self.manifest.get("digest") if self.manifest else None

    @property
    def inputs(self) -> set[str]:
        return set(self.manifest.get("inputs", [])) if self.manifest else set()

    @cached_property
    def files(self) -> list[str]:
        """Every file under the output, as paths relative to it."""
        prefix = len(self.uri) + 1
        return sorted(p[prefix:] for p in self.store.fs.find(self.uri))

    @cached_property
    def references(self) -> str:
        """The text of its small JSON files, where the directories it was made from are named."""
        texts = []
        for rel in self.files:
            name = rel.rsplit("/", 1)[-1]
            if not name.endswith(".json") or name == "tokenizer.json":
                continue
            uri = f"{self.uri}/{rel}"
            if self.store.fs.size(uri) <= JSON_LIMIT:
                with self.store.open(uri, "rb") as f:
                    texts.append(f.read().decode("utf-8", "replace"))
        return "\n".join(texts)

    def names(self, other: Output) -> bool:
        """Whether its JSON files name `other`'s directory (the whole name, not a prefix of a longer one), or a
        file in it other than a collect ledger: a ledger holds hashes, and reading it (`collect.since_ledger`)
        takes no text from that output."""
        found = re.finditer(re.escape(other.uri) + r"(?![\w.-])(/[^\s\"']*)?", self.references)
        return any(not (m.group(1) or "").endswith("ledger.parquet") for m in found)


def list_outputs(store: Store) -> list[Output]:
    """Every stage output in the store, finished or not, in (stage, key) order."""
    found = []
    for stage_dir in store.ls(store.root):
        stage = stage_dir.rstrip("/").rsplit("/", 1)[-1]
        if stage in NOT_OUTPUTS or stage.startswith(".") or not store.fs.isdir(stage_dir):
            continue
        for out_dir in store.ls(stage_dir):
            key = out_dir.rstrip("/").rsplit("/", 1)[-1]
            if key.startswith(("_", ".")) or not store.fs.isdir(out_dir):  # dedup/_index: the persistent index
                continue
            uri = f"{store.root}/{stage}/{key}"
            manifest = store.read_manifest(uri) if store.exists(f"{uri}/{MANIFEST}") else None
            found.append(Output(stage=stage, key=key, uri=uri, manifest=manifest, store=store))
    return found


def derived_from(outputs: Iterable[Output], held: set[str]) -> set[str]:
    """The outputs (URIs) made, directly or not, from the outputs in `held` (which are not included)."""
    outputs = list(outputs)
    tainted = {o.uri: o for o in outputs if o.uri in held}
    digests = {o.digest for o in tainted.values() if o.digest}
    grew = True
    while grew:
        grew = False
        for o in outputs:
            if o.uri in tainted:
                continue
            if o.inputs & digests or any(o.names(t) for t in tainted.values()):
                tainted[o.uri] = o
                if o.digest:
                    digests.add(o.digest)
                grew = True
    return set(tainted) - held
