"""`llmpipe evaluate --model DIR` and `llmpipe bias --model DIR` (one stage alone, under Prefect), `llmpipe predict`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.cli import main
from tests.tasks.conftest import write_tiny_model
from tests.tasks.evaluate.test_stage import task_dirs


def test_evaluate_a_model_directory_then_predict(tmp_path, capsys, prefect_server, torch_one_thread):
    model = write_tiny_model(tmp_path / "model")
    glue, sg = task_dirs(tmp_path / "data")
    summary = tmp_path / "s.json"
    sets = [f"store={tmp_path / 'store'}", "evaluate.tasks=[sst2,boolq]", f"evaluate.glue_dir={glue}",
            f"evaluate.superglue_dir={sg}", "evaluate.bootstrap_samples=50", "evaluate.random_init_baseline=false",
            "evaluate.finetune.epochs=1", "evaluate.finetune.max_length=32"]
    args = [a for kv in sets for a in ("--set", kv)]
    assert main(["evaluate", "--model", str(model), *args, "--summary", str(summary)]) == 0
    s = json.loads(summary.read_text())
    assert set(s["stages"]) == {"pretrain", "tokenize", "evaluate"}
    assert s["stages"]["pretrain"]["stats"]["format"] == "llmpipe"  # ours: exported to Hugging Face form first
    ev = s["stages"]["evaluate"]
    assert ev["status"] == "completed" and ev["stats"]["protocols"] == {"sst2": "finetune", "boolq": "fewshot"}
    results = json.loads((Path(ev["uri"]) / "results.json").read_text())
    assert results["perplexity"]["status"] == "skipped"
    # the same model again: every stage comes from the store
    assert main(["evaluate", "--model", str(model), *args, "--summary", str(summary)]) == 0
    assert {e["status"] for e in json.loads(summary.read_text())["stages"].values()} == {"cached"}
    capsys.readouterr()
    assert main(["predict", str(Path(ev["uri"]) / "classifiers" / "sst2"), "a great movie"]) == 0
    label, prob = capsys.readouterr().out.strip().split("\t")
    assert label in ("0", "1") and 0.0 <= float(prob) <= 1.0
    # the bias stage alone on the same model, with the classifiers of that evaluate output
    sets = [f"store={tmp_path / 'store'}", f"bias.data_dir={tmp_path / 'no-data'}", "bias.bootstrap_samples=20",
            f"bias.counterfactual.evaluate_dir={ev['uri']}"]
    args = [a for kv in sets for a in ("--set", kv)]
    assert main(["bias", "--model", str(model), *args, "--summary", str(summary)]) == 0
    s = json.loads(summary.read_text())
    assert set(s["stages"]) == {"collect", "pii", "pretrain", "evaluate", "bias"}
    bias = s["stages"]["bias"]
    assert bias["status"] == "completed" and bias["stats"]["checks_done"] == ["probes"]
    report = json.loads((Path(bias["uri"]) / "bias.json").read_text())
    # the classifier of that evaluate output was found; its sentences hold no gendered word to swap
    assert "sst2: none of 24 evaluation examples" in report["checks"]["counterfactual"]["reason"]
    assert "no collect or pii documents" in report["checks"]["data"]["reason"]
    assert "no-data" in report["checks"]["crows_pairs"]["reason"]
    assert capsys.readouterr().out.count("thresholds:") == 1  # the console line of the bias stage


def test_evaluate_names_a_bad_model_directory(tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["evaluate", "--model", str(tmp_path / "empty")]) == 2
    assert "no config.json" in capsys.readouterr().err


@pytest.mark.parametrize("pair", [None, "a second text"])
def test_predict_refuses_a_directory_that_is_not_a_classifier(tmp_path, capsys, pair):
    model = write_tiny_model(tmp_path / "model")
    args = ["predict", str(model), "text"] + (["--pair", pair] if pair else [])
    assert main(args) == 2
    assert "not a classifier" in capsys.readouterr().err
