"""A tiny pipeline for the flow-level tests (maintenance, deployments): real stages, seconds to run."""
from __future__ import annotations

import json
from pathlib import Path
from pydoc_data.topics import topics

TOPICS = sorted(topics)  # 79 pydoc topics: real prose, offline


def write_batch(src: Path, name: str, start: int, count: int) -> None:
    """`<src>/<name>.jsonl`: the pydoc topics start..start+count, one document each."""
    rows = [{"id": f"{name}-{t}", "text": topics[t]} for t in TOPICS[start:start + count]]
    (src / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def tiny_config(path: Path, store: Path, sources: dict[str, Path], steps: int = 20, **sections: str) -> Path:
    """pipelines.yaml with pipeline `mt` reading `<dir>/*.jsonl` for each named source; `sections` adds or
    replaces defaults sections, e.g. maintenance="{max_steps: 4}"."""
    defaults = {
        "store": str(store), "seed": "1", "runner": "{workers: 1}", "pii": "{nlp_model: null}",
        "tokenize": "{vocab_size: 384, val_fraction: 0.2}",
        "pretrain": f"{{n_layer: 2, n_embd: 32, n_head: 2, block_size: 32, micro_batch: 8, max_steps: {steps}, "
                    "eval_every: 10, checkpoint_every: 10, warmup_steps: 2}",
        "evaluate": "{tasks: [], random_init_baseline: false}",
        "bias": "{checks: [probes], bootstrap_samples: 50, thresholds: []}",
        "register": "{gate: {below_unigram: false}}", **sections}
    srcs = ", ".join(f'{{name: {n}, path: "{d}/*.jsonl", text_field: text}}' for n, d in sources.items())
    path.write_text("defaults:\n" + "".join(f"  {k}: {v}\n" for k, v in defaults.items())
                    + f"pipelines:\n  mt:\n    collect:\n      sources: [{srcs}]\n")
    return path
