"""Reflection under both of its names, over real servers: buf curl asks for
grpc.reflection.v1 (as Node clients and newer grpcurl do), grpcurl 1.8 and older tools
for grpc.reflection.v1alpha; each lists, describes and calls without a .proto at hand."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from crm_svc.settings import CrmSettings
from inventory_svc.settings import InventorySettings
from servicekit.server_settings import ServerSettings
from tests.helpers import TEST_AUTH, grpcurl, migrated_engine, mint, serving, serving_crm

BUF = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
PROTOCOLS = ("grpc-v1", "grpc-v1alpha")
ITEMS = "inventory.v1.ItemService"
CRM = "crm.v1.CustomerItemsService"


@pytest.fixture(scope="module")
def addresses(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Inventory and the CRM, by the service each serves."""
    settings = InventorySettings(
        database_url=f"sqlite:///{tmp_path_factory.mktemp('reflection') / 'inventory.db'}",
        server=ServerSettings(),
        auth=TEST_AUTH,
    )
    with (
        migrated_engine(settings) as engine,
        serving(settings, engine) as inventory,
        serving_crm(
            CrmSettings(
                server=ServerSettings(),
                inventory_target=f"127.0.0.1:{inventory.port}",
                auth=TEST_AUTH,
                inventory_auth=TEST_AUTH,
            )
        ) as crm,
    ):
        yield {ITEMS: f"127.0.0.1:{inventory.port}", CRM: f"127.0.0.1:{crm.port}"}


@pytest.fixture(scope="module")
def buf_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("buf-cache")


def buf_curl(
    cache: Path, protocol: str, url: str, *args: str, data: str | None = None, token: str = ""
) -> subprocess.CompletedProcess[str]:
    assert BUF, "buf is not installed: it comes with the dev extra (bufbuild)"
    command = [BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge", "--reflect-protocol", protocol]
    if token:
        command += ["-H", f"authorization: Bearer {token}"]
    if data is not None:
        command += ["-d", data]
    env = {**os.environ, "BUF_CACHE_DIR": str(cache)}
    return subprocess.run([*command, *args, url], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("service", [ITEMS, CRM])
def test_buf_curl_lists_the_methods_by_either_reflection_protocol(addresses, buf_cache, protocol, service):
    result = buf_curl(buf_cache, protocol, f"http://{addresses[service]}", "--list-methods")

    assert result.returncode == 0, result.stderr
    methods = result.stdout.split()
    assert "grpc.health.v1.Health/Check" in methods
    assert "grpc.reflection.v1.ServerReflection/ServerReflectionInfo" in methods
    assert "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo" in methods
    assert any(method.startswith(f"{service}/") for method in methods)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("service", [ITEMS, CRM])
def test_buf_curl_checks_health_by_either_reflection_protocol(addresses, buf_cache, protocol, service):
    url = f"http://{addresses[service]}/grpc.health.v1.Health/Check"
    result = buf_curl(buf_cache, protocol, url, data=json.dumps({"service": service}))

    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "SERVING"}


def test_buf_curl_calls_a_method_by_reflection_v1_with_a_token(addresses, buf_cache):
    url = f"http://{addresses[ITEMS]}/{ITEMS}/GetItem"
    result = buf_curl(buf_cache, "grpc-v1", url, data=json.dumps({"id": 999}), token=mint())

    assert result.returncode != 0
    assert "not_found" in result.stderr.lower()


@pytest.mark.parametrize("service", [ITEMS, CRM])
def test_grpcurl_describes_by_reflection_v1alpha(addresses, service):
    result = grpcurl(addresses[service], "describe", service)

    assert result.returncode == 0, result.stderr
    assert f"{service} is a service" in result.stdout
