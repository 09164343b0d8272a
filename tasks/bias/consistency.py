"""Counterfactual consistency of evaluate's fine-tuned classifiers: swap demographic terms (the word-pair
list of the data-side augmentation) in a task's evaluation sentences and measure how often the predicted
label flips and how much the predicted class's probability moves. An unbiased classifier would give the
same answer for both versions: chance is 0 for both figures. Only examples where the swap changed the
text count; the rest are reported as `unchanged`.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np


def classifier_consistency(task: str, evaluate_dir: Path, pairs_file: str | None, limit: int | None,
                           samples: int, seed: int) -> dict[str, Any]:
    """A record for one task: status done (figures, outcomes) or skipped (reason)."""
    from tasks.bias.checks import figure, mean_metric
    from tasks.bias.counterfactual import load_pairs, swap
    from tasks.evaluate import data as taskdata
    from tasks.evaluate.finetune import predict_examples

    classifier = evaluate_dir / "classifiers" / task
    record_path = evaluate_dir / "tasks" / f"{task}.json"
    if not record_path.is_file():
        return {"status": "skipped", "reason": f"{task} was not evaluated in this run ({record_path} is missing)"}
    record = json.loads(record_path.read_text())
    if record.get("status") != "done" or not (classifier / "config.json").is_file():
        why = record.get("reason") or f"protocol {record.get('protocol')}, no fine-tuned classifier"
        return {"status": "skipped", "reason": f"{task}: {record.get('status')}: {why}"}
    if record.get("kind") != "classification":
        return {"status": "skipped", "reason": f"{task} is a {record.get('kind')} task; flips are defined for "
                                               "classification only"}
    specs = taskdata.all_specs()
    if task not in specs:
        return {"status": "skipped", "reason": f"{task} is not a GLUE/SuperGLUE task (own tasks: not supported)"}
    spec = specs[task]
    split_path = Path(record["eval_split"]["path"])
    loaded = taskdata.load_split(spec, record["eval_split"]["split"], split_path.parent.parent, limit=limit)
    if isinstance(loaded, taskdata.Skipped):
        return {"status": "skipped", "reason": loaded.reason}
    pairs = load_pairs(pairs_file)
    originals, swapped, swaps = [], [], []
    for ex in loaded.examples:
        text, n1 = swap(ex.text, pairs)
        pair, n2 = swap(ex.pair, pairs) if ex.pair else (ex.pair, 0)
        if n1 + n2:
            originals.append(ex)
            swapped.append(dataclasses.replace(ex, text=text, pair=pair))
            swaps.append(n1 + n2)
    if not originals:
        return {"status": "skipped", "reason": f"{task}: none of {len(loaded.examples)} evaluation examples "
                                               "holds a term of the word-pair list"}
    both = predict_examples(classifier, originals + swapped)  # one load of the classifier for both sets
    before, after = both[:len(originals)], both[len(originals):]
    flips = np.array([b["prediction"] != a["prediction"] for b, a in zip(before, after)], dtype=np.float64)
    delta = np.array([abs(b["scores"][b["prediction"]] - a["scores"][b["prediction"]])
                      for b, a in zip(before, after)], dtype=np.float64)
    figures = {name: figure(mean_metric(values), samples, seed, 0.0)
               for name, values in (("flip_rate", flips), ("mean_abs_delta_p", delta))}
    outcomes = [{"idx": o.idx, "swaps": s, "prediction": b["prediction"], "prediction_swapped": a["prediction"],
                 "p": round(b["scores"][b["prediction"]], 5), "p_swapped": round(a["scores"][b["prediction"]], 5)}
                for o, s, b, a in zip(originals, swaps, before, after)]
    return {"status": "done", "n_items": len(originals), "unchanged": len(loaded.examples) - len(originals),
            "eval_split": str(split_path), "figures": {k: f.to_dict() for k, f in figures.items()},
            "outcomes": outcomes}
