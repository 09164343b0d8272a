"""pipelines.yaml -> PipelineConfig: defaults < extends chain < pipeline < --set overrides, ${VAR} interpolation.

Every error names the file, the line where there is one, and the dotted key path.
"""
from __future__ import annotations

import copy
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, create_model, field_validator

from flows.stages import STAGES
from tasks.core.config import StageConfig
from tasks.core.errors import ConfigError
from tasks.core.stage import RunnerConfig
from tasks.register.maintenance import MaintenanceConfig

REPO_CONFIG = Path(__file__).resolve().parent.parent / "pipelines.yaml"
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class DeployConfig(StageConfig):
    """The `deploy:` section: how `llmpipe deploy` and `llmpipe serve` set the pipeline up in Prefect."""

    cpu_pool: str = Field("llmpipe-cpu", min_length=1, description="process work pool for data work")
    gpu_pool: str = Field("llmpipe-gpu", min_length=1, description="work pool of the GPU machines (training)")
    gpu_slots: int = Field(1, ge=1, description="flow runs at once on the GPU pool (its concurrency limit)")
    # stages that a pipeline run started from a deployment on another pool sends to the GPU pool, each as a
    # run of the `llmpipe-stage` deployment; the command line runs every stage in-process
    gpu_stages: tuple[str, ...] = ("pretrain", "evaluate", "bias")
    pipeline_cron: str | None = Field(None, description="a schedule for the whole pipeline (default: none)")
    data_event: str = Field("llmpipe.data.arrived", description="the event that starts the maintenance deployment")
    # a Prefect notification block (`<block type>/<name>`, e.g. slack-webhook/ops); when set, `llmpipe deploy`
    # creates an automation sending failed runs and promotions there
    notify_block: str | None = None

    @field_validator("gpu_stages")
    @classmethod
    def _known_stages(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        names = [s.name for s in STAGES]
        unknown = [v for v in value if v not in names]
        if unknown:
            raise ValueError(f"unknown stages {unknown}; stages: {', '.join(names)}")
        return value


def _build_pipeline_model() -> type[StageConfig]:
    fields: dict[str, Any] = {
        "description": (str, ""),
        "store": (str, Field("./store", min_length=1)),
        "seed": (int, 1337),
        # how a finished stage output is checked before it is reused: file sizes (a stat per file) or
        # also SHA-256s (reads every byte)
        "verify": (Literal["sizes", "hashes"], "sizes"),
        # false: once pii has finished, delete the documents of the stages before it (raw, not yet
        # anonymized text); their manifests stay, so caching and incremental runs keep working, and a
        # run that needs the text again (e.g. a changed pii config) regenerates it from the sources
        "retain_raw": (bool, True),
        "runner": (RunnerConfig, Field(default_factory=RunnerConfig)),
    }
    for s in STAGES:
        fields[s.name] = (s.config, Field(default_factory=s.config))
    # the maintenance flow's settings (flows/maintenance.py): not a stage, the same stages composed again
    fields["maintenance"] = (MaintenanceConfig, Field(default_factory=MaintenanceConfig))
    fields["deploy"] = (DeployConfig, Field(default_factory=DeployConfig))
    with warnings.catch_warnings():  # the field `register` shadows ABCMeta.register; harmless on instances
        warnings.simplefilter("ignore", UserWarning)
        return create_model("PipelineConfig", __base__=StageConfig, **fields)


PipelineConfig = _build_pipeline_model()


@dataclass
class ConfigFile:
    """A parsed pipelines.yaml with the line of every key path, for error messages."""

    path: Path
    defaults: dict[str, Any]
    pipelines: dict[str, dict[str, Any]]
    lines: dict[tuple, int] = field(default_factory=dict)

    def line_of(self, path: tuple) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    def where(self, path: tuple) -> str:
        line = self.line_of(path)
        return f"{self.path}" + (f", line {line}" if line else "")


def default_config_path() -> Path:
    local = Path("pipelines.yaml")
    return local if local.exists() else REPO_CONFIG


def read_config_file(path: str | os.PathLike | None = None) -> ConfigFile:
    path = Path(path) if path else default_config_path()
    if not path.exists():
        raise ConfigError(f"config file '{path}' does not exist; pass -c PATH to a pipelines.yaml.")
    text = path.read_text(encoding="utf-8")
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    lines: dict[tuple, int] = {}
    if node is not None:
        _check_duplicates(node, (), path)
        _record_lines(node, (), lines)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with `defaults:` and `pipelines:`.")
    unknown = set(data) - {"defaults", "pipelines"}
    if unknown:
        key = sorted(unknown)[0]
        raise ConfigError(f"{path}, line {lines.get((key,), '?')}: unknown top-level key '{key}'; "
                          "expected `defaults:` and `pipelines:`.")
    pipelines = data.get("pipelines") or {}
    if not isinstance(pipelines, dict) or not pipelines:
        raise ConfigError(f"{path}: `pipelines:` must map pipeline names to their settings.")
    return ConfigFile(path=path, defaults=data.get("defaults") or {}, pipelines=pipelines, lines=lines)


def _check_duplicates(node: yaml.Node, path: tuple, file: Path) -> None:
    """YAML keeps the last of two equal keys silently; a config that says a thing twice is an error."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            line = key.start_mark.line + 1
            if key.value in seen:
                raise ConfigError(f"{file}: key '{_dotted(path + (key.value,))}' appears twice, on line "
                                  f"{seen[key.value]} and line {line}; keep one.")
            seen[key.value] = line
            _check_duplicates(value, path + (key.value,), file)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_duplicates(item, path + (i,), file)


def _record_lines(node: yaml.Node, path: tuple, lines: dict[tuple, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            child = path + (key.value,)
            lines[child] = key.start_mark.line + 1
            _record_lines(value, child, lines)
            lines[child] = key.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _record_lines(item, path + (i,), lines)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Mappings merge key by key; anything else (lists included) is replaced."""
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def raw_pipeline(cf: ConfigFile, name: str) -> tuple[dict[str, Any], list[tuple]]:
    """Merge defaults and the extends chain; also return the YAML prefixes to search for a key's line
    (most specific first)."""
    if name not in cf.pipelines:
        raise ConfigError(f"{cf.path}: no pipeline named '{name}'; pipelines here: {', '.join(cf.pipelines)}.")
    chain, current = [], name
    while current is not None:
        if current in chain:
            raise ConfigError(f"{cf.where(('pipelines', current))}: `extends:` loops: "
                              f"{' -> '.join(chain + [current])}.")
        if current not in cf.pipelines:
            raise ConfigError(f"{cf.where(('pipelines', chain[-1], 'extends'))}: pipeline '{chain[-1]}' "
                              f"extends '{current}', which does not exist.")
        chain.append(current)
        body = cf.pipelines[current] or {}
        if not isinstance(body, dict):
            raise ConfigError(f"{cf.where(('pipelines', current))}: pipeline '{current}' must be a mapping.")
        current = body.get("extends")
    merged = copy.deepcopy(cf.defaults)
    for pname in reversed(chain):
        body = {k: v for k, v in (cf.pipelines[pname] or {}).items() if k != "extends"}
        merged = deep_merge(merged, body)
    return merged, [("pipelines", p) for p in chain] + [("defaults",)]


def _locator(cf: ConfigFile, prefixes: list[tuple]):
    """where(path) -> 'file, line N' for the most specific place that sets `path` (or its parent)."""

    def where(path: tuple) -> str:
        for cut in range(len(path), 0, -1):
            for prefix in prefixes:
                if prefix + path[:cut] in cf.lines:
                    return f"{cf.path}, line {cf.lines[prefix + path[:cut]]}"
        return str(cf.path)

    return where


def apply_override(data: dict[str, Any], assignment: str) -> dict[str, Any]:
    """`a.b.c=value`: value parsed as YAML (so 100 is an int, true a bool, [a, b] a list)."""
    if "=" not in assignment:
        raise ConfigError(f"--set '{assignment}': expected KEY=VALUE, e.g. --set collect.max_docs=100.")
    key, _, raw = assignment.partition("=")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value '{raw}' is not valid YAML: {exc}") from exc
    parts = override_key(key)
    if not parts:
        raise ConfigError(f"--set '{assignment}': empty key.")
    out = copy.deepcopy(data)
    node: Any = out
    for part in parts[:-1]:
        node = _child(node, part, key=key)
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set {key}: '{last}' is not a valid index into a list of {len(node)} items.")
        node[int(last)] = value
    else:
        node[_dict_key(node, last)] = value
    return out


def override_key(key: str) -> list[str]:
    """`collect.sources[0].path` and `collect.sources.0.path` both give ['collect', 'sources', '0', 'path']."""
    return [p for p in re.sub(r"\[(\d+)\]", r".\1", key.strip()).split(".") if p]


def _dict_key(node: dict, part: str) -> Any:
    """An existing integer key (e.g. n-gram sizes) matches its digits; anything else is a string key."""
    if part.isdigit() and int(part) in node:
        return int(part)
    return part


def _child(node: Any, part: str, key: str) -> Any:
    if isinstance(node, list):
        if not part.isdigit() or int(part) >= len(node):
            raise ConfigError(f"--set {key}: '{part}' is not a valid index into a list of {len(node)} items.")
        return node[int(part)]
    if not isinstance(node, dict):
        raise ConfigError(f"--set {key}: '{part}' is inside a value that is not a mapping.")
    k = _dict_key(node, part)
    if node.get(k) is None:
        node[k] = {}  # a list can only be indexed where it exists already
    return node[k]


def interpolate(value: Any, path: tuple, where, strict: bool = True) -> Any:
    """Replace ${VAR} and ${VAR:-default} in every string; an unset VAR without default is an error."""
    if isinstance(value, dict):
        return {k: interpolate(v, path + (k,), where, strict) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, path + (i,), where, strict) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        var, default = m.group(1), m.group(2)
        if var in os.environ:
            return os.environ[var]
        if default is not None:
            return default
        if not strict:
            return m.group(0)
        hint = " (the folder holding books/, glue/, ...; e.g. ../shared/data)" if var == "LLMPIPE_DATA" else ""
        raise ConfigError(f"{where(path)}: {_dotted(path)} uses ${{{var}}}, which is not set. "
                          f"Set it{hint}: export {var}=..., or override the key with --set {_dotted(path)}=...")

    return _VAR.sub(sub, value)


def _dotted(path: tuple) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def load_pipeline(name: str = "demo", config_file: str | os.PathLike | None = None,
                  overrides: list[str] | None = None, sources: list[str] | None = None,
                  strict_env: bool = True) -> tuple[str, Any]:
    """The resolved, validated config of one pipeline: (name, PipelineConfig)."""
    cf = read_config_file(config_file)
    data, prefixes = raw_pipeline(cf, name)
    where = _locator(cf, prefixes)
    if sources:  # first, so that --set can adjust the sources --source made
        from tasks.collect.stage import source_from_arg

        data = deep_merge(data, {"collect": {}})
        data["collect"]["sources"] = [source_from_arg(s, i).model_dump(exclude_defaults=True)
                                      for i, s in enumerate(sources)]
    for assignment in overrides or []:
        data = apply_override(data, assignment)
    data = interpolate(data, (), where, strict_env)  # last: a value replaced above needs no variable
    try:
        return name, PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_explain(exc, where, name, overrides or [], bool(sources))) from None


def _explain(exc: ValidationError, where, name: str, overrides: list[str], from_cli_sources: bool) -> str:
    msgs = []
    for err in exc.errors()[:5]:
        loc = tuple(err["loc"])
        dotted = _dotted(loc)
        loc_parts = [str(p) for p in loc]
        set_keys = [override_key(o.partition("=")[0]) for o in overrides]
        if any(k[:len(loc_parts)] == loc_parts or loc_parts[:len(k)] == k for k in set_keys):
            place = "--set"
        elif from_cli_sources and loc[:2] == ("collect", "sources"):
            place = "--source"
        else:
            place = where(loc)
        what = {"extra_forbidden": "unknown key (check the spelling; `llmpipe show-config` lists the keys)",
                "missing": "required key is missing"}.get(err["type"], err["msg"])
        got = f" (got {err['input']!r})" if err["type"] not in ("extra_forbidden", "missing") else ""
        msgs.append(f"{place}: pipeline '{name}': {dotted}: {what}{got}")
    more = f" (and {len(exc.errors()) - 5} more)" if len(exc.errors()) > 5 else ""
    return "invalid config: " + "; ".join(msgs) + more


def validate_file(config_file: str | os.PathLike | None = None) -> dict[str, list[str]]:
    """Validate every pipeline; returns notes (environment variables that runs will need)."""
    cf = read_config_file(config_file)
    notes: dict[str, list[str]] = {}
    for name in cf.pipelines:
        load_pipeline(name, cf.path, strict_env=False)
        data, _ = raw_pipeline(cf, name)
        missing = sorted({m.group(1) for m in _VAR.finditer(yaml.safe_dump(data))
                          if m.group(1) not in os.environ and m.group(2) is None})
        notes[name] = [f"needs ${{{v}}} at run time" for v in missing]
    return notes


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
