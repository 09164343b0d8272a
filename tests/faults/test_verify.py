"""The store never certifies what it did not check: damaged outputs are found by name and redone."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.clean.stage import STAGE as CLEAN
from tasks.clean.stage import CleanConfig
from tasks.collect.stage import STAGE as COLLECT
from tasks.collect.stage import CollectConfig, SourceConfig
from tasks.core.docs import read_all
from tasks.core.stage import RunContext, RunnerConfig, plan_stage, run_stage
from tasks.core.store import MANIFEST, Store


@pytest.fixture
def built(tmp_path):
    """collect -> clean on a few demo documents; returns (ctx, collect result, clean result)."""
    ctx = RunContext(store=str(tmp_path / "store"), pipeline="t", run_id="r", runner=RunnerConfig(workers=1))
    col = run_stage(COLLECT, CollectConfig(sources=[SourceConfig(name="d", kind="demo")], max_docs=40), {}, ctx)
    cln = run_stage(CLEAN, CleanConfig(), {"collect": col}, ctx)
    return ctx, col, cln


def _docs(ctx, result):
    return read_all(Store(ctx.store), result.files("docs"))


def test_a_deleted_output_file_is_found_and_the_stage_redone(built):
    ctx, col, cln = built
    before = _docs(ctx, cln)
    victim = Path(cln.files("docs")[0])
    victim.unlink()
    plan = plan_stage(CLEAN, CleanConfig(), {"collect": col}, ctx)
    assert not plan.complete and plan.damaged == [f"docs/{victim.name}: missing"]
    again = run_stage(CLEAN, CleanConfig(), {"collect": col}, ctx)
    assert not again.cached and _docs(ctx, again) == before
    assert list(Path(cln.uri).glob("_INVALID-*.json")), "the withdrawn manifest is kept for the record"


def test_a_truncated_parquet_is_never_certified_again(built):
    ctx, col, cln = built
    before = _docs(ctx, cln)
    victim = Path(cln.files("docs")[0])
    victim.write_bytes(victim.read_bytes()[:100])
    (Path(cln.uri) / MANIFEST).unlink()  # even with the manifest gone, the unit markers must not vouch for it
    again = run_stage(CLEAN, CleanConfig(), {"collect": col}, ctx)
    assert not again.cached and again.stats["units_resumed"] < again.stats["units"]
    assert _docs(ctx, again) == before
    manifest = json.loads((Path(cln.uri) / MANIFEST).read_text())
    entry = next(f for f in manifest["files"] if f["path"] == f"docs/{victim.name}")
    assert entry["bytes"] == victim.stat().st_size > 100


def test_changed_bytes_of_the_same_size_need_the_hash_check(built):
    ctx, col, cln = built
    victim = Path(cln.files("docs")[0])
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert plan_stage(CLEAN, CleanConfig(), {"collect": col}, ctx).complete  # sizes still match
    deep = ctx.model_copy(update={"verify": "hashes"})
    plan = plan_stage(CLEAN, CleanConfig(), {"collect": col}, deep)
    assert not plan.complete and "SHA-256 differs" in plan.damaged[0]


def test_intact_units_are_reused_when_one_is_damaged(tmp_path):
    ctx = RunContext(store=str(tmp_path / "store"), pipeline="t", run_id="r", runner=RunnerConfig(workers=1))
    col = run_stage(COLLECT, CollectConfig(sources=[SourceConfig(name="d", kind="demo")], max_docs=1200), {}, ctx)
    cln = run_stage(CLEAN, CleanConfig(), {"collect": col}, ctx)
    assert cln.stats["units"] >= 2
    Path(cln.files("docs")[-1]).unlink()
    again = run_stage(CLEAN, CleanConfig(), {"collect": col}, ctx)
    assert again.stats["units_resumed"] == again.stats["units"] - 1


def test_verify_command_and_rerun_report_by_name(prefect_server, tmp_path, capsys):
    from flows.cli import main

    args = ["--set", f"store={tmp_path / 'store'}", "--set", "collect.max_docs=60"]
    summary = tmp_path / "s.json"
    assert main(["run", "demo", *args, "--until", "clean", "--summary", str(summary)]) == 0
    assert main(["verify", "demo", *args]) == 0
    out = capsys.readouterr().out
    assert "collect   ok" in out and "clean     ok" in out and "SHA-256s match" in out and "dedup     not built" in out
    clean = json.loads(summary.read_text())["stages"]["clean"]
    victim = Path(clean["uri"]) / clean["outputs"]["docs"][0]
    data = bytearray(victim.read_bytes())
    data[-20] ^= 0xFF
    victim.write_bytes(bytes(data))
    assert main(["verify", "demo", *args]) == 1
    out = capsys.readouterr().out
    assert f"clean     damaged      {clean['outputs']['docs'][0]}: SHA-256 differs" in out
    assert main(["run", "demo", *args, "--until", "clean", "--summary", str(summary)]) == 0
    rerun = json.loads(summary.read_text())["stages"]
    assert rerun["collect"]["status"] == "cached" and rerun["clean"]["status"] == "completed"
    assert main(["verify", "demo", *args]) == 0


def test_stages_holding_raw_text_are_owner_only(built):
    ctx, col, cln = built
    for result in (col, cln):
        for path in (Path(result.uri), Path(result.uri).parent):
            assert path.stat().st_mode & 0o077 == 0, path


def test_same_size_damage_found_by_hashes_redoes_the_unit_that_wrote_it(built):
    ctx, col, cln = built
    before = _docs(ctx, cln)
    victim = Path(cln.files("docs")[0])
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    deep = ctx.model_copy(update={"verify": "hashes"})
    again = run_stage(CLEAN, CleanConfig(), {"collect": col}, deep)
    assert not again.cached and again.stats["units_resumed"] == 0
    assert _docs(ctx, again) == before
    assert Store(ctx.store).check(again.uri, hashes=True) == []
