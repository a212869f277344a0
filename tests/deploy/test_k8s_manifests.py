"""The Kubernetes manifests in k8s/: valid for the API server, offline, and saying what a
user relies on (replicas, gRPC probes over TLS, mTLS to inventory, non-root, the CRM balancing over every inventory
pod, and every referenced name defined)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from crm.v1 import crm_pb2
from crm_svc.settings import CrmSettings
from inventory.v1 import inventory_pb2
from inventory_svc.settings import InventorySettings
from servicekit import health_probe
from servicekit.jwt import AuthSettings, TokenVerifier

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((ROOT / "k8s").glob("*.yaml"))
# The oldest Kubernetes we support and the newest kubernetes-validate ships schemas for.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
# kubernetes-validate (dev extra) installs its command beside the interpreter.
KUBERNETES_VALIDATE = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent)) or shutil.which(
    "kubernetes-validate"
)

SERVERS = {
    # Deployment: (its settings prefix, the service its readiness probe asks about, gRPC port)
    "inventory": ("INVENTORY", inventory_pb2.DESCRIPTOR.services_by_name["ItemService"].full_name, 50051),
    "crm": ("CRM", crm_pb2.DESCRIPTOR.services_by_name["CustomerItemsService"].full_name, 50052),
}
METRICS_PORTS = {"inventory": 9051, "crm": 9052}

Resources = dict[tuple[str, str], dict[str, Any]]  # every resource in k8s/, by (kind, name)


class UniqueKeyLoader(yaml.SafeLoader):
    """Refuses a key given twice in one mapping, as the API server's strict field
    validation does; plain PyYAML silently keeps the last one."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        repeated = sorted({str(key) for key in keys if keys.count(key) > 1})
        if repeated:
            raise yaml.constructor.ConstructorError(None, None, f"keys given twice: {repeated}", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load(path: Path) -> list[dict[str, Any]]:
    return [document for document in yaml.load_all(path.read_text(), Loader=UniqueKeyLoader) if document]


def validation_problems(paths: list[Path], version: str) -> str:
    """What kubernetes-validate --strict finds wrong, or "" when nothing is. Its warnings
    count: a kind it has no schema for (a typo in `kind`) is only a warning to it."""
    assert KUBERNETES_VALIDATE, "kubernetes-validate is not installed: it comes with the dev extra"
    result = subprocess.run(
        [KUBERNETES_VALIDATE, "--strict", "--quiet", "--kubernetes-version", version, *map(str, paths)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    problems = (result.stdout + result.stderr).strip()
    if result.returncode != 0 and not problems:
        problems = f"kubernetes-validate exited with {result.returncode}"
    return problems


@pytest.fixture(scope="module")
def resources() -> Resources:
    """Every resource in k8s/, by (kind, name)."""
    found: Resources = {}
    for path in MANIFESTS:
        for resource in load(path):
            key = (resource["kind"], resource["metadata"]["name"])
            assert key not in found, f"{key} is defined twice"
            found[key] = resource
    return found


def pod_specs(resources: Resources) -> dict[str, dict[str, Any]]:
    """The pod template of every Deployment and Job, by workload name."""
    return {
        name: resource["spec"]["template"]["spec"]
        for (kind, name), resource in resources.items()
        if kind in ("Deployment", "Job")
    }


def environment(resources: Resources, container: dict[str, Any]) -> dict[str, Any]:
    """A container's variables as the manifests set them: its ConfigMaps' (envFrom), then
    its own `env` on top (a `valueFrom` stays a dict)."""
    env: dict[str, Any] = {}
    for source in container.get("envFrom", []):
        env.update(resources[("ConfigMap", source["configMapRef"]["name"])]["data"])
    for variable in container.get("env", []):
        env[variable["name"]] = variable.get("value", variable.get("valueFrom"))
    return env


def grpc_container(resources: Resources, deployment: str) -> dict[str, Any]:
    (container,) = resources[("Deployment", deployment)]["spec"]["template"]["spec"]["containers"]
    return container


def port_named(container: dict[str, Any], name: str) -> int:
    (port,) = [port["containerPort"] for port in container["ports"] if port["name"] == name]
    return port


def secret_file(resources: Resources, pod: dict[str, Any], container: dict[str, Any], path: str) -> str | None:
    """The text a container finds at `path` when a mounted Secret holds it, else None."""
    file = PurePosixPath(path)
    mounts = {PurePosixPath(mount["mountPath"]): mount["name"] for mount in container.get("volumeMounts", [])}
    volumes = {volume["name"]: volume for volume in pod.get("volumes", [])}
    volume = volumes.get(mounts.get(file.parent, ""), {})
    secret = resources.get(("Secret", volume.get("secret", {}).get("secretName", "")))
    return None if secret is None else secret["stringData"].get(file.name)


def running_environment(
    resources: Resources, pod: dict[str, Any], container: dict[str, Any], files: Path
) -> dict[str, str]:
    """The variables as the process sees them, with Secrets and the namespace filled in
    and each *_FILE pointing to a copy, in `files`, of what the mounted Secret holds."""
    env: dict[str, str] = {}
    for name, value in environment(resources, container).items():
        if isinstance(value, dict) and "secretKeyRef" in value:
            reference = value["secretKeyRef"]
            value = resources[("Secret", reference["name"])]["stringData"][reference["key"]]
        elif isinstance(value, dict):
            assert value["fieldRef"]["fieldPath"] == "metadata.namespace", name
            value = "test-namespace"
        env[name] = re.sub(r"\$\((\w+)\)", lambda match: env[match[1]], value)
    for name, value in list(env.items()):
        if name.endswith("_FILE"):
            copy = files / name
            copy.write_text(secret_file(resources, pod, container, value) or "")
            env[name] = str(copy)
    return env


class RecordingEnv(dict[str, str]):
    """An environment that remembers which names the settings looked up."""

    def __init__(self, variables: dict[str, str]) -> None:
        super().__init__(variables)
        self.looked_up: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.looked_up.add(key)
        return super().get(key, default)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and selector.items() <= labels.items()


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_passes_strict_schema_validation(version):
    assert MANIFESTS, "k8s/ holds no manifests"

    assert validation_problems(MANIFESTS, version) == ""


@pytest.mark.parametrize(
    ("manifest", "problem"),
    [
        ("apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {clusterIp: None}\n", "clusterIp"),
        ("apiVersion: v1\nkind: Servise\nmetadata: {name: x}\n", "Servise"),
        ("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\nspec: {replicas: three}\n", "replicas"),
    ],
    ids=["unknown-field", "unknown-kind", "wrong-type"],
)
def test_schema_validation_reports_a_broken_manifest(tmp_path, manifest, problem):
    path = tmp_path / "broken.yaml"
    path.write_text(manifest)

    assert problem in validation_problems([path], KUBERNETES_VERSIONS[-1])


def test_a_key_given_twice_is_refused(tmp_path):
    path = tmp_path / "twice.yaml"
    path.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {A: '1', A: '2'}\n")

    with pytest.raises(yaml.constructor.ConstructorError, match="'A'"):
        load(path)


def test_inventory_runs_3_replicas_and_crm_2(resources):
    replicas = {name: resources[("Deployment", name)]["spec"]["replicas"] for name in SERVERS}

    assert replicas == {"inventory": 3, "crm": 2}


@pytest.mark.parametrize("deployment", SERVERS)
def test_readiness_and_liveness_are_grpc_health_probes_on_the_grpc_port(resources, deployment):
    # The kubelet's own gRPC probe speaks plaintext only: the image's probe speaks TLS.
    _, service, port = SERVERS[deployment]
    container = grpc_container(resources, deployment)
    probe = ["python", "-m", "servicekit.health_probe", f"0.0.0.0:{port}"]

    assert port_named(container, "grpc") == port
    assert container["readinessProbe"]["exec"]["command"] == [*probe, service]
    # "" is the whole server's status.
    assert container["livenessProbe"]["exec"]["command"] in ([*probe, ""], [*probe, service])


@pytest.mark.parametrize("deployment", SERVERS)
def test_servers_serve_tls_from_their_secret_and_their_probes_speak_it(resources, deployment):
    prefix, _, _ = SERVERS[deployment]
    pod = resources[("Deployment", deployment)]["spec"]["template"]["spec"]
    container = grpc_container(resources, deployment)
    env = environment(resources, container)
    files = [env[f"{prefix}_TLS_CERT_FILE"], env[f"{prefix}_TLS_KEY_FILE"], env[health_probe.TLS_VARIABLES["ca-file"]]]

    # One Secret as cert-manager writes it, mounted as a directory so that renewals arrive.
    assert [PurePosixPath(file).name for file in files] == ["tls.crt", "tls.key", "ca.crt"]
    assert len({PurePosixPath(file).parent for file in files}) == 1
    assert all(secret_file(resources, pod, container, file) is not None for file in files)
    assert not [mount for mount in container["volumeMounts"] if "subPath" in mount]


def test_inventory_requires_client_certificates_and_the_crm_presents_one(resources):
    inventory = environment(resources, grpc_container(resources, "inventory"))
    crm = environment(resources, grpc_container(resources, "crm"))

    assert inventory["INVENTORY_TLS_CLIENT_CA_FILE"]
    assert inventory[health_probe.TLS_VARIABLES["cert-file"]], "inventory's probe needs a client certificate"
    assert crm["CRM_INVENTORY_TLS_CA_FILE"] and crm["CRM_INVENTORY_TLS_CERT_FILE"] and crm["CRM_INVENTORY_TLS_KEY_FILE"]
    assert crm["CRM_INVENTORY_TLS_SERVER_NAME"] == inventory[health_probe.TLS_VARIABLES["server-name"]]


@pytest.mark.parametrize("deployment", SERVERS)
def test_servers_listen_on_the_pod_address_at_their_declared_ports(resources, deployment):
    prefix, _, _ = SERVERS[deployment]
    container = grpc_container(resources, deployment)
    env = environment(resources, container)

    # The kubelet's probes and Prometheus connect to the pod's IP, not to loopback.
    assert env[f"{prefix}_LISTEN_ADDRESS"] == f"0.0.0.0:{port_named(container, 'grpc')}"
    assert env[f"{prefix}_METRICS_ADDRESS"] == f"0.0.0.0:{port_named(container, 'metrics')}"
    assert port_named(container, "metrics") == METRICS_PORTS[deployment]


@pytest.mark.parametrize("deployment", SERVERS)
def test_termination_grace_outlasts_the_servers_drain_and_grace(resources, deployment):
    prefix, _, _ = SERVERS[deployment]
    pod = resources[("Deployment", deployment)]["spec"]["template"]["spec"]
    env = environment(resources, grpc_container(resources, deployment))

    shutdown_s = float(env[f"{prefix}_SHUTDOWN_DRAIN_S"]) + float(env[f"{prefix}_SHUTDOWN_GRACE_S"])
    assert pod["terminationGracePeriodSeconds"] > shutdown_s


def test_every_container_runs_as_non_root_without_privileges(resources):
    for workload, pod in pod_specs(resources).items():
        for container in pod["containers"]:
            security = {**pod.get("securityContext", {}), **container.get("securityContext", {})}
            assert security.get("runAsNonRoot") is True, workload
            assert security.get("allowPrivilegeEscalation") is False, workload
            assert security.get("readOnlyRootFilesystem") is True, workload
            assert security.get("capabilities", {}).get("drop") == ["ALL"], workload


def test_pods_get_no_service_link_variables(resources):
    # Services named inventory and crm would inject INVENTORY_* and CRM_* variables,
    # the very prefixes the settings read.
    for workload, pod in pod_specs(resources).items():
        assert pod.get("enableServiceLinks") is False, workload


def test_crm_balances_over_inventory_pods_through_the_headless_service(resources):
    crm = grpc_container(resources, "crm")
    target = environment(resources, crm)["CRM_INVENTORY_TARGET"]
    inventory_labels = resources[("Deployment", "inventory")]["spec"]["template"]["metadata"]["labels"]

    match = re.fullmatch(r"dns:///([a-z0-9-]+)\.(\$\(POD_NAMESPACE\)|[a-z0-9-]+)\.svc\.cluster\.local:(\d+)", target)
    assert match, f"CRM_INVENTORY_TARGET {target!r} is not dns:///<service>.<namespace>.svc.cluster.local:<port>"
    service = resources.get(("Service", match[1]))
    assert service is not None, f"no Service {match[1]!r} in k8s/"
    assert service["spec"].get("clusterIP") == "None", "a ClusterIP pins each CRM replica to one inventory pod"
    assert selects(service["spec"]["selector"], inventory_labels)
    assert int(match[3]) in [port["port"] for port in service["spec"]["ports"]]
    if match[2] == "$(POD_NAMESPACE)":
        # Kubernetes expands $(NAME) only from variables defined before it.
        names = [variable["name"] for variable in crm["env"]]
        (namespace,) = [variable for variable in crm["env"] if variable["name"] == "POD_NAMESPACE"]
        assert namespace["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
        assert names.index("POD_NAMESPACE") < names.index("CRM_INVENTORY_TARGET")


@pytest.mark.parametrize("deployment", SERVERS)
def test_each_deployment_has_a_pod_disruption_budget(resources, deployment):
    labels = resources[("Deployment", deployment)]["spec"]["template"]["metadata"]["labels"]
    budgets = [
        budget
        for (kind, _), budget in resources.items()
        if kind == "PodDisruptionBudget" and selects(budget["spec"]["selector"]["matchLabels"], labels)
    ]

    assert len(budgets) == 1


def test_migration_job_runs_inventory_migrate_from_the_inventory_image(resources):
    (job,) = [resource for (kind, _), resource in resources.items() if kind == "Job"]
    (container,) = job["spec"]["template"]["spec"]["containers"]

    assert container["command"] == ["inventory-migrate"]
    assert container["image"] == grpc_container(resources, "inventory")["image"]
    assert "INVENTORY_DATABASE_URL" in environment(resources, container)


def test_every_config_map_and_secret_referenced_is_defined_with_the_key_used(resources):
    for workload, pod in pod_specs(resources).items():
        for container in pod["containers"]:
            for source in container.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in resources, workload
            for variable in container.get("env", []):
                reference = variable.get("valueFrom", {}).get("secretKeyRef")
                if reference:
                    secret = resources.get(("Secret", reference["name"]))
                    assert secret is not None and reference["key"] in secret["stringData"], (workload, reference)
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                assert ("Secret", volume["secret"]["secretName"]) in resources, (workload, volume)


def test_every_file_a_setting_names_is_mounted_from_a_secret_holding_it(resources):
    for workload, pod in pod_specs(resources).items():
        for container in pod["containers"]:
            for name, value in environment(resources, container).items():
                if name.endswith("_FILE"):
                    assert secret_file(resources, pod, container, value) is not None, f"{workload}: {name}={value}"


@pytest.mark.parametrize(
    ("workload", "read_settings"),
    [
        ("inventory", InventorySettings.from_env),
        ("crm", CrmSettings.from_env),
        ("inventory-migrate", partial(InventorySettings.from_env, serving=False)),
    ],
)
def test_every_variable_set_is_a_setting_the_service_reads(resources, tmp_path, workload, read_settings):
    pod = pod_specs(resources)[workload]
    (container,) = pod["containers"]
    env = RecordingEnv(running_environment(resources, pod, container, tmp_path))

    read_settings(env)  # and the values parse

    # The probes (servicekit.health_probe) read their own.
    assert set(env) - {"POD_NAMESPACE", *health_probe.TLS_VARIABLES.values()} - env.looked_up == set()


def test_no_service_is_given_a_signing_key_or_shared_secret(resources):
    # RS256: the services verify with public keys; only the token issuer can sign.
    for workload, pod in pod_specs(resources).items():
        for container in pod["containers"]:
            env = environment(resources, container)
            assert not [name for name in env if "PRIVATE_KEY" in name or "JWT_SECRET" in name], workload
            if workload != "inventory-migrate":  # migrations never see a token: no key at all
                assert env["JWT_ALGORITHM"] == "RS256", workload


@pytest.mark.parametrize(("workload", "prefix"), [("inventory", "INVENTORY"), ("crm", "CRM")])
def test_the_placeholder_keys_stop_a_server_from_starting(resources, tmp_path, workload, prefix):
    # A dummy JWKS would load as a tiny RSA key anybody could forge tokens for.
    pod = pod_specs(resources)[workload]
    (container,) = pod["containers"]
    settings = AuthSettings.from_env(running_environment(resources, pod, container, tmp_path), prefix)

    with pytest.raises(ValueError):
        TokenVerifier(settings)
