"""A stage's code version covers the project code it can run, found from its imports, and nothing else."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tasks.core.codever import ROOT, code_version, source_files


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A copy of the project's packages, tests and benches, to edit without touching the real tree."""
    for name in ("tasks", "models", "tests", "bench", "flows"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def touch(path: Path) -> None:
    path.write_text(path.read_text() + "\n# changed\n")


def rel(files: tuple[Path, ...], root: Path) -> set[str]:
    return {str(f.relative_to(root)) for f in files}


def test_closure_holds_the_stage_package_core_and_models_it_imports():
    dedup = rel(source_files("tasks.dedup"), ROOT)
    assert {"tasks/dedup/stage.py", "tasks/dedup/minhash.py", "tasks/dedup/index.py",
            "tasks/core/store.py", "tasks/core/units.py"} <= dedup
    assert not any(f.startswith(("models/", "tasks/pii/", "tasks/clean/", "flows/")) for f in dedup)
    pretrain = rel(source_files("tasks.pretrain"), ROOT)
    # models/ and the loop are imported inside functions (torch loads late); they still count
    assert {"models/gpt.py", "models/mtp.py", "tasks/pretrain/loop.py", "tasks/core/token_shards.py"} <= pretrain


@pytest.mark.parametrize("changed, affected", [
    ("tasks/dedup/minhash.py", {"tasks.dedup"}),
    ("tasks/core/store.py", {"tasks.dedup", "tasks.pii", "tasks.pretrain"}),
    ("models/gpt.py", {"tasks.pretrain"}),
    ("tasks/pii/stage.py", {"tasks.pii"}),
    ("tests/tasks/dedup/test_dedup.py", set()),
    ("bench/dedup.py", set()),
    ("flows/pipeline.py", set()),
])
def test_a_change_changes_exactly_the_stages_that_run_it(repo, changed, affected):
    stages = ("tasks.dedup", "tasks.pii", "tasks.pretrain")
    before = {s: code_version(s, repo) for s in stages}
    touch(repo / changed)
    after = {s: code_version(s, repo) for s in stages}
    assert {s for s in stages if before[s] != after[s]} == affected


def test_a_new_import_joins_the_closure(repo):
    before = code_version("tasks.clean", repo)
    stage = repo / "tasks" / "clean" / "stage.py"
    stage.write_text(stage.read_text() + "\n\ndef _late():\n    from models import config  # noqa: F401\n")
    assert "models/config.py" in rel(source_files("tasks.clean", repo), repo)
    touch(repo / "models" / "config.py")
    assert code_version("tasks.clean", repo) != before
