"""`llmpipe models ...` on a registry: list, show (with the metric history), promote, rollback, alias, history."""
from __future__ import annotations

import json

import pytest

from flows.cli import main
from tasks.register.registry import CHAMPION, Registry, model_digest, taint_versions
from tests.tasks.register.test_registry import fake_model


@pytest.fixture
def registry(tmp_path):
    store = tmp_path / "store"
    config = tmp_path / "pipelines.yaml"
    config.write_text(f"defaults:\n  store: {store}\npipelines:\n  mt:\n    description: test\n")
    reg = Registry(store, "mt")
    for i, loss in ((1, 5.0), (2, 4.5), (3, 4.2)):
        model = fake_model(tmp_path, i)
        metrics = {"pretrain": {"val_loss": loss, "steps": 10}, "val_loss": loss,
                   "evaluate": {"val_bits_per_byte": loss / 2, "averages": {"glue": 0.5 + i / 100}},
                   "bias": {"verdict": {"passed": True, "failed": [], "not_measured": []},
                            "figures": {"probes/he_share": {"value": 0.9 - i / 10, "ci": [0.1, 0.9], "n": 10}}}}
        reg.register({"model": model}, metrics, {"data": {"pii": {"digest": f"d{i}"}}, "parent": None},
                     lambda v: f"# {v}\n", f"w{i}", model_digest(model))
    reg.set_alias(CHAMPION, "v1", "gate", "first")
    reg.set_alias(CHAMPION, "v2", "gate", "better")
    return reg, config


def models(config, *args):
    return main(["models", "-p", "mt", "-c", str(config), *args])


def test_list_show_promote_rollback_alias(registry, capsys):
    reg, config = registry
    assert models(config, "list") == 0
    out = capsys.readouterr().out
    assert "v1" in out and "v3" in out and "champion" in out and "4.5000" in out
    assert models(config, "show") == 0  # the champion
    out = capsys.readouterr().out
    assert out.startswith("mt v2: ok (aliases: champion)") and "Metric history of mt" in out
    assert "bias probes/he_share" in out and (reg.root / "history.png").stat().st_size > 1000
    assert models(config, "promote", "v3", "--reason", "looks better") == 0
    assert reg.alias() == "v3" and reg.history()[-1]["why"] == "looks better"
    assert reg.history()[-1]["by"].startswith("manual (")
    assert models(config, "rollback") == 0 and reg.alias() == "v2"
    assert models(config, "alias", "staging", "v3") == 0 and reg.alias("staging") == "v3"
    assert models(config, "alias", "staging", "none") == 0 and reg.alias("staging") is None
    capsys.readouterr()
    assert models(config, "history") == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6 and "champion: v2 -> v3 by manual" in lines[2]


def test_tainted_versions_need_force_and_errors_name_what_exists(registry, capsys):
    reg, config = registry
    taint_versions(reg.store, {"d3"}, "forget books", "audit-1")
    assert models(config, "promote", "v3") == 2
    assert "tainted" in capsys.readouterr().err
    assert models(config, "promote", "v3", "--force") == 0 and reg.alias() == "v3"
    assert models(config, "show", "v9") == 2
    assert "no version or alias 'v9'" in capsys.readouterr().err
    assert models(config, "show", "v3") == 0
    assert "tainted: forget books" in capsys.readouterr().out
    assert main(["models", "-p", "mt", "-c", str(config), "--registry", "nope", "list"]) == 2
    assert "no registry 'nope'" in capsys.readouterr().err
    assert json.loads((reg.root / "registry.json").read_text())["versions"]["v3"]["status"] == "tainted"
