"""The images as a platform runs them: the migration as a one-off container, then inventory
and the CRM in containers against this machine's PostgreSQL, called from the host.

Needs podman and the images (scripts/container_prereqs && scripts/build_images) and
TEST_POSTGRES_URL. Without podman or the images the module is skipped; with
TEST_REQUIRE_CONTAINERS=1 (CI) it fails instead.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from inventory.v1 import inventory_pb2_grpc
from inventory_svc import migrations
from inventory_svc.server import build_engine
from inventory_svc.settings import InventorySettings
from servicekit.health_probe import serving_status
from tests.conftest import throwaway_postgres_database
from tests.helpers import TEST_AUTH, authorized_channel, create, grpcurl, mint

ROOT = Path(__file__).resolve().parents[2]
TAG = os.environ.get("TEST_IMAGE_TAG", "dev")
IMAGES = {"inventory": f"localhost/inventory-crm/inventory:{TAG}", "crm": f"localhost/inventory-crm/crm:{TAG}"}
HEALTH_SERVICE = {"inventory": "inventory.v1.ItemService", "crm": "crm.v1.CustomerItemsService"}
REQUIRE_CONTAINERS = os.environ.get("TEST_REQUIRE_CONTAINERS") == "1"
READY_WITHIN_S = 60
STOP_TIMEOUT_S = 30
# Passed as `-e NAME` with the value in podman's environment, so the secret is not on a command line.
JWT_ENV = {"JWT_SECRET": TEST_AUTH.secret, "JWT_ISSUER": TEST_AUTH.issuer, "JWT_AUDIENCE": TEST_AUTH.audience}
# PostgreSQL listens on 127.0.0.1 only, so the containers share the host's network: they reach
# it, and each other, on loopback, each server on a free port of its own (set through the
# LISTEN_ADDRESS variables, which the images' health checks follow). slirp4netns could reach
# the host's loopback too, but only through an alias address.
NETWORK = ("--network", "host")


def podman(*args: str, env: Mapping[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    environment = {"CONTAINERS_CONF": str(ROOT / "docker" / "containers.conf"), **os.environ, **(env or {})}
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, env=environment)


def why_containers_cannot_run() -> str:
    if not shutil.which("podman"):
        return "podman is not installed (scripts/container_prereqs installs it)"
    for image in IMAGES.values():
        if podman("image", "exists", image).returncode != 0:
            return f"the image {image} is not built (scripts/build_images builds it)"
    return ""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def env_flags(env: Mapping[str, str]) -> list[str]:
    return [flag for name in env for flag in ("-e", name)]


@dataclass(frozen=True)
class Service:
    name: str  # the container's
    address: str  # host:port of its gRPC server, from the host


@pytest.fixture(scope="module")
def images() -> None:
    reason = why_containers_cannot_run()
    if reason and REQUIRE_CONTAINERS:
        pytest.fail(f"TEST_REQUIRE_CONTAINERS=1 but {reason}")
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def migrated_url(images: None, postgres_url: str) -> Iterator[str]:
    """A throwaway database of this module's own (postgres_url is shared by the session, and
    may be migrated already), migrated by the image's own command in a one-off container,
    which is given the database and nothing else (no JWT key)."""
    with throwaway_postgres_database(postgres_url) as url:
        env = {"INVENTORY_DATABASE_URL": url}
        result = podman(
            "run",
            "--rm",
            "--no-healthcheck",
            *NETWORK,
            *env_flags(env),
            IMAGES["inventory"],
            "inventory-migrate",
            env=env,
        )
        assert result.returncode == 0, result.stderr
        yield url


def wait_until_serving(service: Service, health_service: str) -> None:
    deadline = time.monotonic() + READY_WITHIN_S
    while True:
        try:
            if serving_status(service.address, health_service, timeout_s=2) == "SERVING":
                return
        except grpc.RpcError:
            pass
        state = podman("inspect", "--format", "{{.State.Status}}", service.name).stdout.strip()
        if state != "running" or time.monotonic() > deadline:
            logs = podman("logs", service.name)
            pytest.fail(f"{service.name} is {state} and not serving on {service.address}:\n{logs.stdout}{logs.stderr}")
        time.sleep(0.5)


@pytest.fixture(scope="module")
def services(migrated_url: str) -> Iterator[dict[str, Service]]:
    """Inventory and the CRM wired to it, serving; the containers are removed at the end."""
    run = uuid.uuid4().hex[:8]
    services = {kind: Service(f"{kind}-test-{run}", f"127.0.0.1:{free_port()}") for kind in IMAGES}
    envs = {
        "inventory": {
            **JWT_ENV,
            "INVENTORY_DATABASE_URL": migrated_url,
            "INVENTORY_LISTEN_ADDRESS": services["inventory"].address,
            "INVENTORY_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        },
        "crm": {
            **JWT_ENV,
            "CRM_INVENTORY_TARGET": services["inventory"].address,
            "CRM_LISTEN_ADDRESS": services["crm"].address,
            "CRM_METRICS_ADDRESS": f"127.0.0.1:{free_port()}",
        },
    }
    try:
        for kind, service in services.items():
            started = podman(
                "run",
                "--detach",
                "--name",
                service.name,
                *NETWORK,
                *env_flags(envs[kind]),
                IMAGES[kind],
                env=envs[kind],
            )
            assert started.returncode == 0, started.stderr
            wait_until_serving(service, HEALTH_SERVICE[kind])
        yield services
    finally:
        for service in services.values():
            podman("rm", "--force", "--time", "0", service.name)


@pytest.fixture(scope="module")
def alices_sku(services: dict[str, Service]) -> str:
    """An item of customer alice's, made through inventory's port with an inventory.write token."""
    with authorized_channel(services["inventory"].address, mint()) as channel:
        item = create(inventory_pb2_grpc.ItemServiceStub(channel), customer_id="alice", name="Container tea")
    return item.sku


def my_items(crm: Service, customer: str) -> list[dict]:
    result = grpcurl(
        crm.address, "crm.v1.CustomerItemsService/ListMyItems", data="{}", token=mint(customer, ("customer",))
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout).get("items", [])


def test_the_migrate_command_brings_the_database_to_the_newest_schema(migrated_url):
    engine = build_engine(InventorySettings(database_url=migrated_url))
    try:
        with engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
        head = ScriptDirectory.from_config(migrations.alembic_config(engine)).get_current_head()
    finally:
        engine.dispose()
    assert current == head


def test_a_customer_sees_their_item_through_the_crm_container(services, alices_sku):
    assert [item["sku"] for item in my_items(services["crm"], "alice")] == [alices_sku]


def test_another_customer_does_not_see_it(services, alices_sku):
    assert alices_sku not in [item["sku"] for item in my_items(services["crm"], "bob")]


@pytest.mark.parametrize("kind", ["inventory", "crm"])
def test_the_image_health_check_passes(services, kind):
    result = podman("healthcheck", "run", services[kind].name)

    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("kind", ["inventory", "crm"])
def test_the_health_probe_fails_for_a_service_the_server_does_not_have(services, kind):
    result = subprocess.run(
        [sys.executable, "-m", "servicekit.health_probe", services[kind].address, "no.such.Service"],
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 1
    assert "NOT_FOUND" in result.stderr


@pytest.mark.parametrize("kind", ["inventory", "crm"])
def test_the_server_is_pid_1_and_not_root(services, kind):
    user = podman("exec", services[kind].name, "id", "-u")
    pid_1 = podman("exec", services[kind].name, "cat", "/proc/1/cmdline")

    assert user.returncode == 0, user.stderr
    assert int(user.stdout) != 0
    assert pid_1.stdout.split("\0")[1] == f"/opt/venv/bin/{kind}-server"


# Last, as it stops them: the CRM first, as a platform would.
@pytest.mark.parametrize("kind", ["crm", "inventory"])
def test_stop_ends_the_server_gracefully_well_within_the_kill_timeout(services, kind):
    started = time.monotonic()
    stopped = podman("stop", "--time", str(STOP_TIMEOUT_S), services[kind].name, timeout=STOP_TIMEOUT_S + 30)
    took_s = time.monotonic() - started
    exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", services[kind].name).stdout.strip()
    logs = podman("logs", services[kind].name).stderr

    assert stopped.returncode == 0, stopped.stderr
    assert exit_code == "0", logs
    assert "stopping on SIGTERM" in logs
    assert took_s < STOP_TIMEOUT_S / 2, f"stopping {kind} took {took_s:.1f} s"


def test_the_crm_image_holds_no_inventory_server_code_and_no_database_driver(images):
    # The image's own python, with its own site-packages: what a CRM container could import.
    probe = (
        "import importlib.util, sys; "
        "found = [m for m in ('inventory_svc', 'sqlalchemy', 'psycopg2', 'alembic') if importlib.util.find_spec(m)]; "
        "import inventory_client, crm_svc.server; print(found)"
    )
    result = podman("run", "--rm", "--no-healthcheck", "--entrypoint", "python", IMAGES["crm"], "-c", probe)
    files = podman(
        "run", "--rm", "--no-healthcheck", "--entrypoint", "find", IMAGES["crm"], "/opt/venv", "-name", "inventory_svc*"
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert (files.returncode, files.stdout) == (0, "")
