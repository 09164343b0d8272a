"""pipelines.yaml: inheritance, typed overrides, env interpolation, and errors that name file, line and key."""
from __future__ import annotations

import textwrap

import pytest

from flows.config import apply_override, load_pipeline, validate_file
from tasks.core.errors import ConfigError

BASE = """\
defaults:
  store: /tmp/s
  seed: 1
  collect:
    max_docs: 5
pipelines:
  base:
    collect:
      sources:
        - name: a
          path: /tmp/a.txt
  child:
    extends: base
    seed: 2
    collect:
      oversize: drop
  env:
    store: ${LLMPIPE_TEST_STORE:-/tmp/default-store}
    collect:
      sources:
        - name: b
          path: ${LLMPIPE_TEST_DATA}/x.jsonl
"""


@pytest.fixture
def cfile(tmp_path):
    def write(text: str = BASE):
        p = tmp_path / "pipelines.yaml"
        p.write_text(textwrap.dedent(text))
        return p
    return write


def test_extends_merges_defaults_base_and_child(cfile):
    _, cfg = load_pipeline("child", cfile())
    assert cfg.seed == 2 and cfg.store == "/tmp/s"
    assert cfg.collect.max_docs == 5  # from defaults
    assert cfg.collect.oversize == "drop"  # from child
    assert cfg.collect.sources[0].path == "/tmp/a.txt"  # from base


def test_overrides_are_typed_and_win(cfile):
    _, cfg = load_pipeline("child", cfile(), ["collect.max_docs=100", "seed=7", "collect.sources.0.name=zz"])
    assert cfg.collect.max_docs == 100 and isinstance(cfg.collect.max_docs, int)
    assert cfg.seed == 7
    assert cfg.collect.sources[0].name == "zz"


def test_override_wrong_type_names_key_and_set(cfile):
    with pytest.raises(ConfigError, match=r"--set: pipeline 'child': collect\.max_docs"):
        load_pipeline("child", cfile(), ["collect.max_docs=lots"])


def test_unknown_key_names_file_line_and_path(cfile):
    text = BASE.replace("    collect:\n      oversize: drop", "    collect:\n      oversise: drop")
    with pytest.raises(ConfigError) as err:
        load_pipeline("child", cfile(text))
    msg = str(err.value)
    assert "pipelines.yaml, line 16" in msg and "collect.oversise" in msg and "unknown key" in msg


def test_wrong_type_in_file(cfile):
    text = BASE.replace("  seed: 1\n", "  seed: one\n")
    with pytest.raises(ConfigError, match=r"line 3: pipeline 'base': seed"):
        load_pipeline("base", cfile(text))


def test_env_interpolation_default_and_missing(cfile, monkeypatch):
    monkeypatch.delenv("LLMPIPE_TEST_DATA", raising=False)
    monkeypatch.delenv("LLMPIPE_TEST_STORE", raising=False)
    with pytest.raises(ConfigError) as err:
        load_pipeline("env", cfile())
    assert "LLMPIPE_TEST_DATA" in str(err.value) and "line 22" in str(err.value)
    assert "collect.sources[0].path" in str(err.value)
    monkeypatch.setenv("LLMPIPE_TEST_DATA", "/data")
    _, cfg = load_pipeline("env", cfile())
    assert cfg.collect.sources[0].path == "/data/x.jsonl"
    assert cfg.store == "/tmp/default-store"
    monkeypatch.setenv("LLMPIPE_TEST_STORE", "/elsewhere")
    assert load_pipeline("env", cfile())[1].store == "/elsewhere"


def test_validate_reports_needed_variables(cfile, monkeypatch):
    monkeypatch.delenv("LLMPIPE_TEST_DATA", raising=False)
    notes = validate_file(cfile())
    assert notes["env"] == ["needs ${LLMPIPE_TEST_DATA} at run time"]
    assert notes["base"] == []


def test_extends_loop_and_missing_parent(cfile):
    loop = BASE + "  x:\n    extends: y\n  y:\n    extends: x\n"
    with pytest.raises(ConfigError, match="loops"):
        load_pipeline("x", cfile(loop))
    missing = BASE + "  x:\n    extends: nowhere\n"
    with pytest.raises(ConfigError, match="extends 'nowhere', which does not exist"):
        load_pipeline("x", cfile(missing))


def test_unknown_pipeline_lists_known(cfile):
    with pytest.raises(ConfigError, match="no pipeline named 'nope'; pipelines here: base, child, env"):
        load_pipeline("nope", cfile())


def test_source_args_replace_sources(cfile, tmp_path):
    (tmp_path / "texts").mkdir()
    _, cfg = load_pipeline("base", cfile(), sources=[str(tmp_path / "texts"), "https://example.org/a.jsonl",
                                                     "demo", "some-org/some-dataset"])
    kinds = [s.kind for s in cfg.collect.sources]
    assert kinds == ["files", "url", "demo", "hub"]


def test_apply_override_rejects_malformed():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        apply_override({}, "collect.max_docs")


def test_shipped_pipelines_validate(monkeypatch):
    notes = validate_file(None)
    assert "demo" in notes and "books" in notes
    _, demo = load_pipeline("demo")
    assert demo.collect.sources[0].kind == "demo"


def test_set_after_source_and_on_list_items(cfile, tmp_path, monkeypatch):
    data = tmp_path / "body.jsonl"
    data.write_text('{"body": "x"}\n')
    _, cfg = load_pipeline("base", cfile(), ["collect.sources.0.text_field=body"], sources=[str(data)])
    assert cfg.collect.sources[0].text_field == "body" and cfg.collect.sources[0].path == str(data)
    _, cfg = load_pipeline("base", cfile(), ["collect.sources[0].name=bracket"])
    assert cfg.collect.sources[0].name == "bracket"
    with pytest.raises(ConfigError, match=r"--set: pipeline 'base': collect\.sources\[0\]\.text_field"):
        load_pipeline("base", cfile(), ["collect.sources.0.text_field=[1]"])


def test_set_replaces_a_value_that_needs_an_unset_variable(cfile, monkeypatch):
    monkeypatch.delenv("LLMPIPE_TEST_DATA", raising=False)
    _, cfg = load_pipeline("env", cfile(), ["collect.sources.0.path=/given"])
    assert cfg.collect.sources[0].path == "/given"


def test_set_on_integer_keyed_mapping():
    _, cfg = load_pipeline("demo", None, ["clean.repeated_ngrams.top_ngram_max_char_fraction.2=0.3"])
    assert cfg.clean.repeated_ngrams.top_ngram_max_char_fraction[2] == 0.3


def test_duplicate_keys_name_both_lines(tmp_path):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("pipelines:\n  demo:\n    pretrain:\n      lr: 0.1\n      max_steps: 3\n      lr: 0.2\n")
    with pytest.raises(ConfigError, match=r"'pipelines.demo.pretrain.lr' appears twice, on line 4 and line 6"):
        load_pipeline("demo", cfg)


def test_empty_store_is_a_config_error():
    with pytest.raises(ConfigError, match="store"):
        load_pipeline("demo", overrides=["store="])


@pytest.mark.parametrize("setting, key", [
    ("pretrain.lr=-1", "pretrain.lr"), ("pretrain.block_size=0", "pretrain.block_size"),
    ("pretrain.checkpoint_every=-3", "pretrain.checkpoint_every"), ("pretrain.eval_every=-1", "pretrain.eval_every"),
    ("pretrain.keep_checkpoints=0", "pretrain.keep_checkpoints"), ("pretrain.dropout=1.5", "pretrain.dropout"),
])
def test_out_of_range_values_are_config_errors_naming_the_key(setting, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_pipeline("demo", overrides=[setting])
