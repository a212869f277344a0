"""The clients' distribution as another team meets it: clients/ built into a wheel, the wheel
installed into a fresh virtual environment (from the package index alone), and the examples
of docs/clients.md run from there against real servers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import mint

ROOT = Path(__file__).resolve().parents[1]
# What only a server needs: none of it may come with the clients.
SERVER_ONLY_DISTRIBUTIONS = {
    "sqlalchemy",
    "alembic",
    "psycopg2",
    "psycopg2-binary",
    "prometheus-client",
    "grpcio-reflection",
    "grpcio-health-checking",
    "opentelemetry-sdk",
}
SERVER_ONLY_MODULES = {"server", "pipeline", "observability", "tracing", "health_probe", "workers", "main", "auth"}


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, **kwargs)
    assert result.returncode == 0, f"{command}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(ROOT / "clients")])
    (built,) = out.glob("inventory_crm_clients-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh virtual environment holding the wheel and its dependencies."""
    venv = tmp_path_factory.mktemp("client-venv")
    run([sys.executable, "-m", "venv", str(venv)])
    python = venv / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--quiet", str(wheel)], env=outside_env())
    return python


def outside_env(**extra: str) -> dict[str, str]:
    """The environment of a program outside this repository: nothing points into its sources."""
    env = {key: value for key, value in os.environ.items() if key not in {"PYTHONPATH", "VIRTUAL_ENV"}}
    return env | extra


def run_outside(python: Path, code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    # Run from a directory of its own, so that the repository's packages cannot be imported by accident.
    return run([str(python), "-c", code], cwd=tmp_path, env=outside_env(**env))


def test_the_wheel_ships_the_protos_and_py_typed_and_no_server_code(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())

    assert {"inventory/v1/inventory.proto", "crm/v1/crm.proto"} <= names
    assert {
        f"{package}/py.typed" for package in ("inventory_client", "crm_client", "servicekit", "inventory", "crm")
    } <= names
    assert not {name for name in names if name.startswith(("inventory_svc/", "crm_svc/"))}
    assert not {f"servicekit/{module}.py" for module in SERVER_ONLY_MODULES} & names
    with zipfile.ZipFile(wheel) as archive:
        assert (
            archive.read("inventory/v1/inventory.proto") == (ROOT / "protos/inventory/v1/inventory.proto").read_bytes()
        )


def test_the_installed_clients_import_without_the_servers_stack(installed, tmp_path):
    imported = run_outside(
        installed,
        "import crm_client, inventory_client, importlib.resources as r;"
        "print(inventory_client.__file__); print(crm_client.__file__);"
        "print((r.files('inventory.v1') / 'inventory.proto').is_file(), (r.files('crm.v1') / 'crm.proto').is_file())",
        tmp_path,
    )
    listed = run([str(installed), "-m", "pip", "list", "--format=freeze"], env=outside_env())

    inventory_file, crm_file, protos_found = imported.stdout.splitlines()
    venv = installed.parent.parent
    assert Path(inventory_file).is_relative_to(venv) and Path(crm_file).is_relative_to(venv)
    assert protos_found == "True True"
    distributions = {line.split("==")[0].lower().replace("_", "-") for line in listed.stdout.splitlines()}
    assert {"inventory-crm-clients", "grpcio", "protobuf"} <= distributions
    assert distributions & SERVER_ONLY_DISTRIBUTIONS == set()


def test_the_clients_distribution_asks_for_the_servers_own_dependency_ranges():
    servers = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    clients = tomllib.loads((ROOT / "clients" / "pyproject.toml").read_text())["project"]

    assert set(clients["dependencies"]) <= set(servers["dependencies"])
    assert clients["version"] == servers["version"]


def documented_examples() -> list[str]:
    text = (ROOT / "docs" / "clients.md").read_text()
    section = text[text.index("## Using from Python") :]
    return re.findall(r"^```python\n(.*?)^```", section, flags=re.DOTALL | re.MULTILINE)


def test_the_documented_examples_run_as_printed_from_the_installed_clients(
    installed, inventory_address, crm_address, tmp_path
):
    sync_example, asyncio_example, reservation_example = documented_examples()
    env = dict(
        INVENTORY_TARGET=inventory_address,
        INVENTORY_TOKEN=mint(subject="ops"),
        CRM_TARGET=crm_address,
        CRM_TOKEN=mint(subject="alice", roles=("customer",)),
    )

    synchronous = run_outside(installed, sync_example, tmp_path, **env).stdout.splitlines()
    asynchronous = run_outside(installed, asyncio_example, tmp_path, **env).stdout.splitlines()
    reserving = run_outside(installed, reservation_example, tmp_path, **env).stdout.splitlines()

    tools, not_found, crm_items = synchronous
    assert tools == "tools: [('DOC-HAMMER', 7)]"
    assert not_found.startswith("not found: ") and "999999" in not_found  # the wording is the server's
    assert crm_items == "alice's items: ['Claw hammer']"
    assert asynchronous == ["saws: ['DOC-SAW-30', 'DOC-SAW-45', 'DOC-SAW-60'] low on stock: 3"]
    assert reserving == [
        "available while held: 1",
        "refused: INSUFFICIENT_STOCK ['2 asked, 1 available']",
        "in stock after the sale: 1",
    ]
