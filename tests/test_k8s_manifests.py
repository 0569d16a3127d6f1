"""The Kubernetes manifests under deploy/k8s/ are valid, and agree with the code they run.

Every object validates against the Kubernetes API schema with unknown fields rejected
(`kubernetes-validate` ships the schemas: no cluster, no network). Then what a schema cannot
see and what would break a deployment: probes on the port the gateway listens on, grace periods
that cover the preStop sleep and the drain, budgets and Services that select real pods, env
names that `Settings` reads, resources and a restricted security context on every container,
and an nginx config that carries every directive of deploy/nginx.conf.
"""

from __future__ import annotations

import copy
import math
import os
import re
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml  # type: ignore[import-untyped]
from pydantic import BaseModel

from core.settings import Settings
from gateway.hosts import host_allowed

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
EXAMPLE_SECRET = K8S / "secret.example.yaml"
COMPOSE_NGINX = ROOT / "deploy" / "nginx.conf"
IMAGE = "approval-gateway"  # the Dockerfile's image, as docker-compose.yml names it
COMPONENT = "app.kubernetes.io/component"
VERSIONS = ("1.29", kubernetes_validate.latest_version())  # the oldest supported, the newest
COREDNS_TTL_S = 5  # CoreDNS's default TTL for Service records, which it caches as long
# BENCHMARKS.md, P4: one replica's RSS before it holds a stream, and what each one adds.
GATEWAY_IDLE_MIB = 113.5
GATEWAY_KIB_PER_HELD_STREAM = 37.2

Object = dict[str, Any]


@dataclass(frozen=True)
class Manifest:
    """One object of one YAML file under deploy/k8s/."""

    path: Path
    body: Object

    @property
    def kind(self) -> str:
        return str(self.body["kind"])

    @property
    def name(self) -> str:
        return str(self.body["metadata"]["name"])

    def __str__(self) -> str:
        return f"{self.path.relative_to(K8S)}:{self.kind}/{self.name}"


def _load(path: Path) -> list[Object]:
    return [document for document in yaml.safe_load_all(path.read_text()) if document]


KUSTOMIZATIONS: dict[Path, Object] = {
    path.parent: _load(path)[0] for path in sorted(K8S.rglob("kustomization.yaml"))
}
MANIFESTS = [
    Manifest(path, body)
    for path in sorted(K8S.rglob("*.yaml"))
    if path.name != "kustomization.yaml"
    for body in _load(path)
]
WORKLOADS = [m for m in MANIFESTS if m.kind in ("Deployment", "StatefulSet")]


def workload(component: str) -> Manifest:
    (found,) = [m for m in WORKLOADS if pod_labels(m).get(COMPONENT) == component]
    return found


def pod_labels(manifest: Manifest) -> dict[str, str]:
    return dict(manifest.body["spec"]["template"]["metadata"]["labels"])


def pod_spec(manifest: Manifest) -> Object:
    return dict(manifest.body["spec"]["template"]["spec"])


def containers(manifest: Manifest) -> list[Object]:
    return list(pod_spec(manifest)["containers"])


def runs_our_image(container: Object) -> bool:
    return str(container["image"]).rsplit("/", 1)[-1].split(":")[0] == IMAGE


def selected(selector: dict[str, str]) -> list[Manifest]:
    """The workloads whose pods carry every label of `selector`."""
    return [m for m in WORKLOADS if selector.items() <= pod_labels(m).items()]


def command_argv(container: Object) -> list[str]:
    """What the container runs; for an `sh -c` script, what its final `exec` runs."""
    argv = [*container.get("command", []), *container.get("args", [])]
    if argv[:2] != ["sh", "-c"]:
        return argv
    last = shlex.split(re.split(r"&&|;", argv[2])[-1])
    assert last[0] == "exec", f"{argv[2]!r}: end with exec, or SIGTERM stops at the shell"
    return last[1:]


def env_files(config_map: str) -> list[Path]:
    """The env files every kustomization generates ConfigMap `config_map` from."""
    return [
        directory / name
        for directory, kustomization in KUSTOMIZATIONS.items()
        for generator in kustomization.get("configMapGenerator", [])
        if generator["name"] == config_map
        for name in generator.get("envs", [])
    ]


def read_env_file(path: Path) -> dict[str, str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    pairs = [line.split("=", 1) for line in lines if line and not line.startswith("#")]
    return {name: value for name, value in pairs}


def container_env(container: Object, *, overlays: bool = True) -> dict[str, str | None]:
    """Each variable the container gets, with its value (None: from a Secret)."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        assert "configMapRef" in source, f"{source}: only generated ConfigMaps show their names"
        files = env_files(source["configMapRef"]["name"])
        assert files, f"no kustomization generates {source['configMapRef']['name']}"
        for path in files if overlays else [p for p in files if p.parent == BASE]:
            env.update(read_env_file(path))
    for variable in container.get("env", []):
        env[variable["name"]] = variable.get("value")
    return env


@pytest.fixture
def settings_of(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable[[Object], Settings]:
    """The Settings a container of the production base runs with (Secrets left out)."""
    monkeypatch.chdir(tmp_path)  # away from a developer's .env

    def build(container: Object) -> Settings:
        prefix = Settings.model_config.get("env_prefix", "").upper()
        for name in [name for name in os.environ if name.upper().startswith(prefix)]:
            monkeypatch.delenv(name)
        for name, value in container_env(container, overlays=False).items():
            if value is not None:
                monkeypatch.setenv(name, value)
        return Settings()

    return build


def setting_env_names() -> set[str]:
    """Every variable Settings reads: prefix + field, and prefix + group + `__` + field."""
    prefix = Settings.model_config.get("env_prefix", "")
    nested = Settings.model_config.get("env_nested_delimiter") or ""
    names = set()
    for name, field in Settings.model_fields.items():
        names.add(f"{prefix}{name}".upper())
        group = field.annotation
        if nested and isinstance(group, type) and issubclass(group, BaseModel):
            names |= {f"{prefix}{name}{nested}{sub}".upper() for sub in group.model_fields}
    return names


def listen_port(container: Object, settings: Settings) -> int:
    argv = command_argv(container)
    return int(argv[argv.index("--port") + 1]) if "--port" in argv else settings.port


def container_port(container: Object, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(number)


def prestop_sleep_s(container: Object) -> float:
    hook = container["lifecycle"]["preStop"]
    if "sleep" in hook:
        return float(hook["sleep"]["seconds"])
    program, seconds = hook["exec"]["command"]
    assert program == "sleep"
    return float(seconds)


_QUANTITY_UNITS = {"": 1.0, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2.0**10}
_QUANTITY_UNITS |= {"Mi": 2.0**20, "Gi": 2.0**30}


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (`250m`, `512Mi`, `2`) as a number."""
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value))
    assert match is not None, value
    return float(match[1]) * _QUANTITY_UNITS[match[2]]


class Directive(NamedTuple):
    """One nginx directive (a block's opening too), with the blocks it sits in."""

    context: tuple[str, ...]
    name: str
    args: tuple[str, ...]


_NGINX_TOKEN = re.compile(r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|#[^\n]*|[{};]|[^\s{};'"]+""")


def nginx_directives(path: Path) -> Iterator[Directive]:
    context: list[str] = []
    words: list[str] = []
    for token in _NGINX_TOKEN.findall(path.read_text()):
        if token.startswith("#"):
            continue
        if token in (";", "{"):
            yield Directive(tuple(context), words[0], tuple(words[1:]))
            if token == "{":
                context.append(" ".join(words))
            words = []
        elif token == "}":
            context.pop()
        else:
            words.append(token)


def nginx_seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)?", value)
    assert match is not None, value
    return int(match[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match[2] or "s"]


# What the cluster's nginx.conf adds to deploy/nginx.conf (unprivileged paths, the DNS that
# finds the pods), and the directives whose values it must change.
UPSTREAM = ("http", "upstream gateway")
CLUSTER_ONLY = {((), "pid"), (("http",), "resolver"), (UPSTREAM, "zone")} | {
    (("http",), f"{kind}_temp_path")
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
}
CLUSTER_VALUES = {((), "worker_processes"), (UPSTREAM, "server")}


def cluster_nginx(name: str, context: tuple[str, ...] = ("http",)) -> list[Directive]:
    return [
        d for d in nginx_directives(BASE / "nginx.conf") if (d.context, d.name) == (context, name)
    ]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("manifest", MANIFESTS, ids=str)
def test_every_manifest_is_valid_against_the_kubernetes_schema(
    manifest: Manifest, version: str
) -> None:
    kubernetes_validate.validate(manifest.body, version, strict=True)


def test_the_validator_rejects_an_unknown_field() -> None:
    body = copy.deepcopy(workload("gateway").body)
    body["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(body, VERSIONS[-1], strict=True)


def test_kustomizations_apply_every_manifest_once_into_the_base_namespace() -> None:
    namespace = KUSTOMIZATIONS[BASE]["namespace"]
    applied: list[Path] = []
    for directory, kustomization in KUSTOMIZATIONS.items():
        targets = [directory / entry for entry in kustomization.get("resources", [])]
        assert all(target.exists() for target in targets), f"{directory}: {targets}"
        files = [target for target in targets if target.is_file()]
        if files:  # objects of its own: they must land beside the Secret and the Services
            assert kustomization.get("namespace") == namespace, directory
        applied += files
    assert BASE in [K8S / entry for entry in KUSTOMIZATIONS[K8S]["resources"]]
    manifests = {m.path for m in MANIFESTS}
    assert sorted(applied) == sorted(manifests - {EXAMPLE_SECRET})


def test_gateway_probes_ask_readyz_and_healthz_on_the_port_it_listens_on(
    settings_of: Callable[[Object], Settings],
) -> None:
    for container in containers(workload("gateway")):
        settings = settings_of(container)
        assert command_argv(container)[0] == "gateway"
        for probe, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = container[probe]["httpGet"]
            assert get["path"] == path, probe
            assert container_port(container, get["port"]) == listen_port(container, settings)
            headers = {h["name"].lower(): h["value"] for h in get.get("httpHeaders", [])}
            if settings.allowed_hosts:  # otherwise every Host is served (with API keys)
                assert host_allowed(headers.get("host", ""), settings.allowed_hosts), probe


def test_gateway_grace_period_covers_the_prestop_sleep_and_the_drain(
    settings_of: Callable[[Object], Settings],
) -> None:
    spec = pod_spec(workload("gateway"))
    for container in spec["containers"]:
        grace = settings_of(container).shutdown_grace_s
        # uvicorn waits up to the grace for connections; the lifespan shutdown then gives
        # webhook deliveries half of it (gateway/main.py, gateway/app.py).
        drain_s = grace + grace / 2
        assert spec["terminationGracePeriodSeconds"] > prestop_sleep_s(container) + drain_s


def test_gateway_prestop_sleep_outlasts_nginx_view_of_the_pod() -> None:
    (resolver,) = cluster_nginx("resolver")
    (valid,) = [arg.removeprefix("valid=") for arg in resolver.args if arg.startswith("valid=")]
    for container in containers(workload("gateway")):
        assert prestop_sleep_s(container) > nginx_seconds(valid) + COREDNS_TTL_S


def test_worker_grace_period_covers_its_last_read_and_its_calls_in_hand(
    settings_of: Callable[[Object], Settings],
) -> None:
    spec = pod_spec(workload("worker"))
    for container in spec["containers"]:
        worker = settings_of(container).worker
        needed_s = worker.block_ms / 1000 + worker.shutdown_grace_s
        assert spec["terminationGracePeriodSeconds"] > needed_s


def test_worker_probes_ask_the_health_port_it_serves_on_every_address(
    settings_of: Callable[[Object], Settings],
) -> None:
    for container in containers(workload("worker")):
        worker = settings_of(container).worker
        assert command_argv(container)[0] == "gateway-worker"
        assert worker.metrics_port != 0 and worker.metrics_host == "0.0.0.0"
        # Liveness asks /metrics, not /healthz: a Redis outage must not restart every worker.
        for probe, path in (("readinessProbe", "/healthz"), ("livenessProbe", "/metrics")):
            get = container[probe]["httpGet"]
            assert get["path"] == path, probe
            assert container_port(container, get["port"]) == worker.metrics_port, probe


def test_no_pod_is_killed_before_its_prestop_sleep_ends() -> None:
    for manifest in WORKLOADS:
        grace = pod_spec(manifest).get("terminationGracePeriodSeconds", 30)
        for container in containers(manifest):
            if "lifecycle" in container:
                assert grace > prestop_sleep_s(container), manifest


def test_each_disruption_budget_covers_the_pods_of_one_workload() -> None:
    covered = []
    for budget in [m for m in MANIFESTS if m.kind == "PodDisruptionBudget"]:
        assert set(budget.body["spec"]["selector"]) == {"matchLabels"}, budget
        (target,) = selected(budget.body["spec"]["selector"]["matchLabels"])
        covered.append(target.name)
    assert sorted(covered) == sorted(set(covered))  # a pod under two budgets cannot be evicted
    assert {"gateway", "worker"} <= set(covered)


def test_services_and_workloads_select_pods_that_exist() -> None:
    for service in [m for m in MANIFESTS if m.kind == "Service"]:
        assert selected(service.body["spec"]["selector"]), service
    for manifest in WORKLOADS:
        assert selected(manifest.body["spec"]["selector"]["matchLabels"]) == [manifest]


def test_nginx_finds_the_gateway_pods_through_a_headless_service(
    settings_of: Callable[[Object], Settings],
) -> None:
    (server,) = cluster_nginx("server", UPSTREAM)
    assert "resolve" in server.args and cluster_nginx("zone", UPSTREAM)
    host, port = server.args[0].rsplit(":", 1)
    namespace = KUSTOMIZATIONS[BASE]["namespace"]
    services = [m for m in MANIFESTS if m.kind == "Service"]
    (service,) = [s for s in services if f"{s.name}.{namespace}.svc.cluster.local" == host]
    assert service.body["spec"]["clusterIP"] == "None"  # a ClusterIP would be one upstream
    assert selected(service.body["spec"]["selector"]) == [workload("gateway")]
    (container,) = containers(workload("gateway"))
    assert int(port) == listen_port(container, settings_of(container))


def test_cluster_nginx_config_carries_every_directive_of_deploy_nginx_conf() -> None:
    compose = sorted(
        d for d in nginx_directives(COMPOSE_NGINX) if (d.context, d.name) not in CLUSTER_VALUES
    )
    cluster = sorted(
        d
        for d in nginx_directives(BASE / "nginx.conf")
        if (d.context, d.name) not in CLUSTER_VALUES | CLUSTER_ONLY
    )
    missing = [d for d in compose if d not in cluster]
    extra = [d for d in cluster if d not in compose]
    assert (missing, extra) == ([], []), "make deploy/k8s/base/nginx.conf follow deploy/nginx.conf"
    # The one server of the cluster stands for each of compose's, with their parameters.
    parameters = {
        d.args[1:]
        for d in nginx_directives(COMPOSE_NGINX)
        if (d.context, d.name) == (UPSTREAM, "server")
    }
    (server,) = cluster_nginx("server", UPSTREAM)
    assert parameters == {tuple(arg for arg in server.args[1:] if arg != "resolve")}


def test_nginx_runs_one_worker_per_core_of_its_cpu_limit() -> None:
    (directive,) = cluster_nginx("worker_processes", ())
    (container,) = containers(workload("nginx"))
    assert directive.args == (str(math.ceil(quantity(container["resources"]["limits"]["cpu"]))),)


def test_every_container_has_cpu_and_memory_requests_and_limits() -> None:
    for manifest in WORKLOADS:
        for container in containers(manifest):
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][bound]), manifest


def test_gateway_memory_request_holds_its_most_held_streams(
    settings_of: Callable[[Object], Settings],
) -> None:
    for container in containers(workload("gateway")):
        held = settings_of(container).max_held_streams
        needed_mib = GATEWAY_IDLE_MIB + held * GATEWAY_KIB_PER_HELD_STREAM / 1024
        assert quantity(container["resources"]["requests"]["memory"]) >= needed_mib * 2**20


def test_every_pod_runs_unprivileged_on_a_read_only_root() -> None:
    for manifest in WORKLOADS:
        spec = pod_spec(manifest)
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True and pod["runAsUser"] > 0, manifest
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, manifest
        assert spec["automountServiceAccountToken"] is False, manifest
        for container in spec["containers"]:
            assert container["securityContext"] == {
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            }, manifest


def test_pods_of_our_image_run_as_its_user_without_service_links() -> None:
    (uid,) = re.findall(r"--uid (\d+)", (ROOT / "Dockerfile").read_text())
    for manifest in WORKLOADS:
        if any(runs_our_image(c) for c in containers(manifest)):
            assert pod_spec(manifest)["securityContext"]["runAsUser"] == int(uid), manifest
            # A Service named gateway would set GATEWAY_PORT=tcp://…, which Settings reads.
            assert pod_spec(manifest)["enableServiceLinks"] is False, manifest


def test_every_variable_set_for_our_image_is_a_setting() -> None:
    known = setting_env_names()
    for manifest in WORKLOADS:
        for container in filter(runs_our_image, containers(manifest)):
            unknown = sorted(name for name in container_env(container) if name.upper() not in known)
            assert unknown == [], f"{manifest}: Settings reads no {unknown}"


def test_every_secret_key_the_pods_read_is_in_the_example_secret() -> None:
    (example,) = [m for m in MANIFESTS if m.path == EXAMPLE_SECRET]
    for manifest in WORKLOADS:
        for container in containers(manifest):
            for variable in container.get("env", []):
                ref = variable.get("valueFrom", {}).get("secretKeyRef")
                if ref is not None:
                    assert ref["name"] == example.name, manifest
                    assert ref["key"] in example.body["stringData"], manifest
