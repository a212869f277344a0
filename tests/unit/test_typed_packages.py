"""Every package ships `py.typed` (PEP 561), so that a user's mypy reads its types and the
generated .pyi stubs; pyproject's package-data puts those files in the wheel."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ["servicekit", "inventory_client", "inventory_svc", "crm_svc", "gen/inventory", "gen/crm"]


@pytest.mark.parametrize("package", PACKAGES)
def test_package_is_marked_typed(package):
    assert (ROOT / package / "py.typed").is_file()


def test_the_wheel_takes_the_markers_and_the_stubs():
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]

    assert {"py.typed", "*.pyi"} <= set(package_data["*"])
