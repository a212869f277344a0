"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and can break: the CRM
reaches inventory only through inventory_client, the kit knows no service, inventory's
layers import downwards only (servicer and storage over the use cases over the domain), only
server.py wires storage, and the CRM's service calls inventory through its client."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("crm_svc", "inventory_svc", "inventory_client", "crm_client", "servicekit", "gen")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports (from the dev extra) on the packages of `tree`, found there first."""
    executable = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(tree), str(tree / "gen")))}
    return subprocess.run([executable, "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=120)


def copy_with_import(tree: Path, module: str, statement: str) -> Path:
    """A copy of the packages and pyproject.toml in `tree`, with `statement` added to `module`."""
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tree / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree)
    path = tree / module
    path.write_text(path.read_text() + f"\n{statement}  # the forbidden import\n")
    return tree


def test_every_import_contract_is_kept():
    result = lint_imports(ROOT)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_crm_module_importing_inventory_svc_breaks_its_contract(tmp_path):
    tree = copy_with_import(tmp_path, "crm_svc/service.py", "from inventory_svc.domain import Item")

    result = lint_imports(tree)

    assert result.returncode != 0
    assert "The CRM reaches inventory through inventory_client only BROKEN" in result.stdout
    assert "crm_svc.service -> inventory_svc.domain" in result.stdout


@pytest.mark.parametrize(
    ("module", "statement", "broken_contract", "named_import"),
    [
        pytest.param(
            "inventory_svc/item_cache.py",
            "from inventory_svc.storage import SqlUnitOfWork",
            "inventory's storage is wired by server.py alone",
            "inventory_svc.item_cache -> inventory_svc.storage",
            id="a module beside the server importing storage",
        ),
        pytest.param(
            "inventory_svc/service.py",
            "from inventory_svc.storage.tables import items",
            "inventory's use cases know no grpc and no SQL",
            "inventory_svc.service -> inventory_svc.storage.tables",
            id="the service importing storage",
        ),
        pytest.param(
            "inventory_svc/servicer.py",
            "import sqlalchemy",
            "inventory's servicer translates: no storage and no SQL",
            "inventory_svc.servicer -> sqlalchemy",
            id="the servicer importing sqlalchemy",
        ),
        pytest.param(
            "inventory_svc/domain.py",
            "from inventory_svc.service import ItemService",
            "inventory's layers: server over servicer and storage, over service, over domain",
            "inventory_svc.domain -> inventory_svc.service",
            id="the domain importing the service",
        ),
        pytest.param(
            "crm_svc/service.py",
            "from crm_svc.servicer import CustomerItemsServicer",
            "the CRM's layers: server over servicer over service",
            "crm_svc.service -> crm_svc.servicer",
            id="the CRM's service importing its servicer",
        ),
        pytest.param(
            "crm_svc/service.py",
            "from inventory.v1 import inventory_pb2_grpc",
            "the CRM's service calls inventory through inventory_client, not through grpc or stubs",
            "crm_svc.service -> inventory.v1.inventory_pb2_grpc",
            id="the CRM's service importing inventory's stubs",
        ),
        pytest.param(
            "servicekit/calls.py",
            "import prometheus_client",
            "the installable clients import no server-side module and no server dependency",
            "servicekit.calls -> prometheus_client",
            id="a module the clients import importing a server dependency",
        ),
    ],
)
def test_an_import_against_the_layers_breaks_its_contract(tmp_path, module, statement, broken_contract, named_import):
    tree = copy_with_import(tmp_path, module, statement)

    result = lint_imports(tree)

    assert result.returncode != 0
    assert f"{broken_contract} BROKEN" in " ".join(result.stdout.split()), result.stdout
    assert named_import in result.stdout, result.stdout
