"""The import contracts of pyproject.toml ([tool.importlinter]) hold, and can break: the CRM
reaches inventory only through inventory_client, the kit knows no service, inventory's
domain knows no grpc and no SQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("crm_svc", "inventory_svc", "inventory_client", "servicekit", "gen")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports (from the dev extra) on the packages of `tree`, found there first."""
    executable = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join((str(tree), str(tree / "gen")))}
    return subprocess.run([executable, "--no-cache"], cwd=tree, env=env, capture_output=True, text=True, timeout=120)


def test_every_import_contract_is_kept():
    result = lint_imports(ROOT)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_a_crm_module_importing_inventory_svc_breaks_its_contract(tmp_path):
    for name in PACKAGES:
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    service = tmp_path / "crm_svc" / "service.py"
    service.write_text(service.read_text() + "\nfrom inventory_svc.domain import Item  # the forbidden import\n")

    result = lint_imports(tmp_path)

    assert result.returncode != 0
    assert "The CRM reaches inventory through inventory_client only BROKEN" in result.stdout
    assert "crm_svc.service -> inventory_svc.domain" in result.stdout
