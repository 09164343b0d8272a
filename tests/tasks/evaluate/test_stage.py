"""The evaluate stage end to end on a tiny model and tiny task files in both standard layouts."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from tasks.core.config import StageConfig
from tasks.core.errors import UserError
from tasks.core.stage import RunContext, run_stage
from tasks.evaluate.external import EXTERNAL_MODEL, NO_TOKENS, ExternalModelConfig
from tasks.evaluate.stage import STAGE, EvaluateConfig, TaskRun

POS = ["a great movie", "truly great fun", "great acting and a great story", "i loved it , great"]
NEG = ["a terrible film", "terrible and boring", "boring , terrible plot", "i hated it , terrible"]


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def task_dirs(root: Path, n: int = 24) -> tuple[Path, Path]:
    """Tiny GLUE (SST-2, RTE) and SuperGLUE (COPA, BoolQ few-shot only, RTE, AX-b) directories."""
    rng = random.Random(0)
    rows = [(rng.choice(POS), 1) if i % 2 else (rng.choice(NEG), 0) for i in range(n)]
    sst = "sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows)
    glue = root / "glue"
    _write(glue / "SST-2" / "train.tsv", sst)
    _write(glue / "SST-2" / "dev.tsv", sst)
    rte = "index\tsentence1\tsentence2\tlabel\n" + "".join(
        f"{i}\tthe cat sat on the mat\tthe cat sat\t{'entailment' if i % 2 else 'not_entailment'}\n"
        for i in range(n))
    _write(glue / "RTE" / "train.tsv", rte)
    _write(glue / "RTE" / "dev.tsv", rte + "99\tonly two columns\n")  # a bad row: counted, not fatal
    sg = root / "superglue"
    copa = "".join(json.dumps({"premise": "the sky was dark", "choice1": "it rained", "choice2": "it was sunny",
                               "question": "effect", "label": i % 2, "idx": i}) + "\n" for i in range(n))
    _write(sg / "COPA" / "train.jsonl", copa)
    _write(sg / "COPA" / "val.jsonl", copa)
    boolq = "".join(json.dumps({"question": "is the sky blue", "passage": "the sky is blue", "label": bool(i % 2),
                                "idx": i}) + "\n" for i in range(8))
    _write(sg / "BoolQ" / "train32.jsonl", boolq)
    _write(sg / "BoolQ" / "val.jsonl", boolq)
    rte_sg = "".join(json.dumps({"premise": "a dog ran in the park", "hypothesis": "a dog ran",
                                 "label": "entailment" if i % 2 else "not_entailment", "idx": i}) + "\n"
                     for i in range(n))
    _write(sg / "RTE" / "train.jsonl", rte_sg)
    _write(sg / "RTE" / "val.jsonl", rte_sg)
    axb = "".join(json.dumps({"sentence1": "a dog ran in the park", "sentence2": "a dog ran",
                              "label": "entailment" if i % 2 else "not_entailment", "idx": i}) + "\n"
                  for i in range(10))
    _write(sg / "AX-b" / "AX-b.jsonl", axb)
    return glue, sg


def fast_cfg(glue: Path, sg: Path, **kw) -> EvaluateConfig:
    base = {"tasks": ["sst2", "rte", "qnli", "copa", "boolq", "axb"], "glue_dir": str(glue),
            "superglue_dir": str(sg), "bootstrap_samples": 50, "fewshot_k": 2,
            "finetune": {"epochs": 1, "batch_size": 8, "eval_batch_size": 16, "max_length": 32}}
    return EvaluateConfig(**(base | kw))


def model_inputs(model_dir: Path, ctx: RunContext) -> dict:
    return {"pretrain": run_stage(EXTERNAL_MODEL, ExternalModelConfig(path=str(model_dir)), {}, ctx),
            "tokenize": run_stage(NO_TOKENS, StageConfig(), {}, ctx)}


@pytest.fixture
def ctx(tmp_path) -> RunContext:
    return RunContext(store=str(tmp_path / "store"), pipeline="t", run_id="r1", seed=3)


def test_stage_end_to_end(tmp_path, tiny_model_dir, ctx, torch_one_thread):
    glue, sg = task_dirs(tmp_path / "data")
    result = run_stage(STAGE, fast_cfg(glue, sg), model_inputs(tiny_model_dir, ctx), ctx)
    out = Path(result.uri)
    res = json.loads((out / "results.json").read_text())
    tasks = res["tasks"]
    assert res["perplexity"]["status"] == "skipped"
    # fine-tuned where a train split exists, with the random-init baseline and the majority class beside it
    for name in ("sst2", "rte", "copa", "rte_sg"):
        t = tasks[name]
        assert t["status"] == "done" and t["protocol"] == "finetune", (name, t)
        assert set(t["random_init"]) == set(t["metrics"]) == set(t["transfer"])
        for m, d in t["transfer"].items():  # the paired difference: pretrained minus random init
            assert d["value"] == pytest.approx(t["metrics"][m]["value"] - t["random_init"][m]["value"])
            assert d["ci"][0] <= d["value"] <= d["ci"][1] and isinstance(d["separated"], bool)
        for v in t["metrics"].values():
            assert v["ci"][0] <= v["value"] <= v["ci"][1]
        assert (out / "predictions" / f"{name}.jsonl").exists()
        assert (out / "predictions" / f"{name}.random_init.jsonl").exists()
        assert (out / "classifiers" / name / "config.json").exists()
    assert tasks["sst2"]["majority"]["from"] == "train" and tasks["sst2"]["n_eval"] == 24
    assert tasks["sst2"]["finetune"]["head"] == "linear" and "linear_why" not in tasks["sst2"]["finetune"]
    assert tasks["rte"]["bad_rows"]["rte/dev"]["rows"] == 1
    # only a few-shot split: scored by log-likelihood with demonstrations; acc and acc_norm both reported
    assert tasks["boolq"]["protocol"] == "fewshot" and "metrics_norm" in tasks["boolq"]
    assert any("fewshot" in n or "few-shot" in n for n in tasks["boolq"]["notes"])
    rows = [json.loads(line) for line in (out / "predictions" / "boolq.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and len(rows[0]["logprobs"]) == 2 and rows[0]["idx"] == 0
    # a missing task is skipped with the reason; a diagnostic set is scored with its parent's classifier
    assert tasks["qnli"]["status"] == "skipped" and "QNLI" in tasks["qnli"]["reason"]
    assert tasks["axb"]["status"] == "done" and "rte_sg" in tasks["axb"]["scored_with"]
    assert "glue" in res["averages"] and "superglue_random_init" in res["averages"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tasks"]["sst2"]["accuracy"] == tasks["sst2"]["metrics"]["accuracy"]["value"]
    assert result.stats["tasks_done"] == 6 and result.stats["tasks_skipped"] == ["qnli"]
    assert not (out / "_work").exists()
    # the classifier loads with transformers and labels text
    from tasks.evaluate.finetune import predict

    (label, prob), = predict(out / "classifiers" / "sst2", ["a great movie"])
    assert label in ("0", "1") and 0.0 <= prob <= 1.0


def test_a_failing_task_keeps_the_others_and_the_rerun_redoes_only_it(tmp_path, tiny_model_dir, ctx,
                                                                       monkeypatch, torch_one_thread):
    glue, sg = task_dirs(tmp_path / "data")
    cfg = fast_cfg(glue, sg, tasks=["sst2", "boolq"], random_init_baseline=False)
    inputs = model_inputs(tiny_model_dir, ctx)
    real_run = TaskRun.run

    def broken(self):
        if self.spec.name == "boolq":
            raise RuntimeError("disk hiccup")
        return real_run(self)

    monkeypatch.setattr(TaskRun, "run", broken)
    with pytest.raises(UserError, match="boolq: RuntimeError: disk hiccup"):
        run_stage(STAGE, cfg, inputs, ctx)
    out = next((tmp_path / "store" / "evaluate").iterdir())
    sst2 = out / "tasks" / "sst2.json"
    assert json.loads(sst2.read_text())["status"] == "done"
    assert json.loads((out / "tasks" / "boolq.json").read_text())["status"] == "failed"
    before = sst2.stat().st_mtime_ns
    monkeypatch.setattr(TaskRun, "run", real_run)
    result = run_stage(STAGE, cfg, inputs, ctx)
    assert sst2.stat().st_mtime_ns == before  # kept, not recomputed
    assert result.stats["tasks_done"] == 2


def test_own_task_from_csv(tmp_path, tiny_model_dir, ctx, torch_one_thread):
    rows = "review,sentiment\n" + "".join(f"{s},pos\n" for s in POS * 3) + "".join(f"{s},neg\n" for s in NEG * 3)
    (tmp_path / "train.csv").write_text(rows.replace(" , ", " "))
    (tmp_path / "dev.csv").write_text(rows.replace(" , ", " "))
    cfg = EvaluateConfig(tasks=[], bootstrap_samples=20, random_init_baseline=False,
                         own=[{"name": "reviews", "train": str(tmp_path / "train.csv"), "dev": str(tmp_path / "dev.csv"),
                               "text_field": "review", "label_field": "sentiment"}],
                         finetune={"epochs": 1, "batch_size": 8, "max_length": 32})
    result = run_stage(STAGE, cfg, model_inputs(tiny_model_dir, ctx), ctx)
    t = json.loads((Path(result.uri) / "results.json").read_text())["tasks"]["reviews"]
    assert t["protocol"] == "finetune" and set(t["metrics"]) == {"accuracy", "macro_f1"}
    from tasks.evaluate.finetune import predict

    (label, _), = predict(Path(result.uri) / "classifiers" / "reviews", ["a great movie"])
    assert label in ("neg", "pos")


def test_own_task_with_a_prompt_head_and_two_fine_tuning_seeds(tmp_path, tiny_model_dir, ctx, torch_one_thread):
    glue, sg = task_dirs(tmp_path / "data", n=8)
    rows = "review,sentiment\n" + "".join(f"{s},pos\n" for s in POS * 3) + "".join(f"{s},neg\n" for s in NEG * 3)
    (tmp_path / "train.csv").write_text(rows.replace(" , ", " "))
    # the tiny tokenizer's " so bad" and " great" start with distinct tokens (most words start with " ")
    own = {"name": "reviews", "train": str(tmp_path / "train.csv"), "dev": str(tmp_path / "train.csv"),
           "text_field": "review", "label_field": "sentiment", "labels": ["neg", "pos"],
           "prompt": {"template": "{text}. It was", "choices": [" so bad", " great"]}}
    cfg = EvaluateConfig(tasks=["sst2", "copa"], glue_dir=str(glue), superglue_dir=str(sg), bootstrap_samples=20,
                         own=[own], finetune_seeds=2, finetune={"epochs": 1, "batch_size": 8, "max_length": 32,
                                                                "head": "prompt"})
    out = Path(run_stage(STAGE, cfg, model_inputs(tiny_model_dir, ctx), ctx).uri)
    t = json.loads((out / "results.json").read_text())["tasks"]["reviews"]
    assert t["finetune"]["head"] == "prompt" and t["finetune"]["seeds"] == 2
    acc, rand = t["metrics"]["accuracy"], t["random_init"]["accuracy"]
    assert acc["runs"] == 2 and acc["value"] == pytest.approx(sum(acc["run_values"]) / 2) and rand["runs"] == 2
    assert t["transfer"]["accuracy"]["value"] == pytest.approx(acc["value"] - rand["value"])
    for name in ("reviews", "reviews.seed1", "reviews.random_init", "reviews.random_init.seed1"):
        assert len((out / "predictions" / f"{name}.jsonl").read_text().splitlines()) == 24
    config = json.loads((out / "classifiers" / "reviews" / "config.json").read_text())
    assert config["llmpipe_task"]["format"] == "prompt" and config["llmpipe_task"]["template"] == "{text}. It was"
    # the tiny tokenizer splits " negative" and " positive" into " " and the rest: no prompt head, and why;
    # a multiple-choice task gets the linear head without a reason to give
    sst2, copa = (json.loads((out / "results.json").read_text())["tasks"][n]["finetune"] for n in ("sst2", "copa"))
    assert sst2["head"] == "linear" and "do not start with distinct tokens" in sst2["linear_why"]
    assert copa["head"] == "linear" and "linear_why" not in copa


def test_missing_data_directories_skip_every_task_with_the_reason(tmp_path, tiny_model_dir, ctx, torch_one_thread):
    cfg = EvaluateConfig(tasks=["sst2", "boolq"], glue_dir=str(tmp_path / "nowhere"), superglue_dir=None)
    result = run_stage(STAGE, cfg, model_inputs(tiny_model_dir, ctx), ctx)
    tasks = json.loads((Path(result.uri) / "results.json").read_text())["tasks"]
    assert tasks["sst2"]["status"] == tasks["boolq"]["status"] == "skipped"
    assert "evaluate.glue_dir" in tasks["sst2"]["reason"] and "not a directory" in tasks["sst2"]["reason"]
    assert "evaluate.superglue_dir is not set" in tasks["boolq"]["reason"]
    assert result.stats["tasks_done"] == 0


def test_a_diagnostic_set_whose_parent_has_no_data_is_skipped(tmp_path, tiny_model_dir, ctx, torch_one_thread):
    glue, sg = task_dirs(tmp_path / "data")
    for f in (sg / "RTE").iterdir():
        f.unlink()
    result = run_stage(STAGE, fast_cfg(glue, sg, tasks=["axb"]), model_inputs(tiny_model_dir, ctx), ctx)
    tasks = json.loads((Path(result.uri) / "results.json").read_text())["tasks"]
    assert tasks["rte_sg"]["status"] == "skipped"
    assert tasks["axb"]["status"] == "skipped" and "scored with rte_sg" in tasks["axb"]["reason"]


def test_also_zeroshot_and_a_protocol_override(tmp_path, tiny_model_dir, ctx, torch_one_thread):
    glue, sg = task_dirs(tmp_path / "data")
    cfg = fast_cfg(glue, sg, tasks=["sst2", "boolq"], also_zeroshot=True, random_init_baseline=False,
                   options={"boolq": {"protocol": "zeroshot"}})
    result = run_stage(STAGE, cfg, model_inputs(tiny_model_dir, ctx), ctx)
    out = Path(result.uri)
    tasks = json.loads((out / "results.json").read_text())["tasks"]
    # a fine-tuned task is also scored zero-shot, its predictions beside the fine-tuned ones
    assert tasks["sst2"]["protocol"] == "finetune" and tasks["sst2"]["zeroshot"]["protocol"] == "zeroshot"
    assert (out / "predictions" / "sst2.jsonl").exists() and (out / "predictions" / "sst2.zeroshot.jsonl").exists()
    # options.<task>.protocol: zero-shot although a few-shot split exists; its predictions keep the plain name
    assert tasks["boolq"]["protocol"] == "zeroshot" and tasks["boolq"]["fewshot_k"] == 0
    assert (out / "predictions" / "boolq.jsonl").exists()
    assert not (out / "predictions" / "boolq.zeroshot.jsonl").exists()
