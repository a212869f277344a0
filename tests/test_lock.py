"""The locks in requirements/ are what pyproject.toml resolves to, with hashes, one version per
package across dev and the images, and .venv runs exactly the dev lock. Offline and fast: the
locks are read, not resolved again; `scripts/lock` rewrites them when a test here fails."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from scripts.lock import DIGEST_PREFIX, LOCKS, PYPROJECT, dependencies_digest, lock_path

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads(PYPROJECT.read_text())["project"]
STALE = "the locks are stale: run scripts/lock and commit requirements/"
PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>\S+)(?:\s*;\s*(?P<marker>[^\\]+?))?\s*\\?$")
HASH = re.compile(r"^\s+--hash=(sha256:[0-9a-f]{64})")
IMAGE_LOCKS = {"Dockerfile.crm": ["crm"], "Dockerfile.inventory": ["crm", "inventory"]}


@dataclass(frozen=True)
class Pin:
    version: str
    marker: str | None
    hashes: frozenset[str]

    def applies_here(self) -> bool:
        return self.marker is None or Marker(self.marker).evaluate()


def read_lock(name: str) -> dict[str, Pin]:
    pins: dict[str, Pin] = {}
    current: tuple[str, str, str | None] | None = None
    hashes: set[str] = set()
    for line in [*lock_path(name).read_text().splitlines(), ""]:
        if (pin := PIN.match(line)) or not line.startswith(" "):
            if current:
                pins[current[0]] = Pin(current[1], current[2], frozenset(hashes))
            current, hashes = None, set()
        if pin:
            current = (canonicalize_name(pin["name"]), pin["version"], pin["marker"])
        elif (hashed := HASH.match(line)) and current:
            hashes.add(hashed[1])
    return pins


def install_set(extras: list[str]) -> list[Requirement]:
    """The project's requirements with these extras, its own extras (inventory-crm[...]) expanded."""
    requirements, pending, seen = [Requirement(r) for r in PROJECT["dependencies"]], list(extras), set()
    while pending:
        extra = pending.pop()
        seen.add(extra)
        for requirement in map(Requirement, PROJECT["optional-dependencies"][extra]):
            if canonicalize_name(requirement.name) == canonicalize_name(PROJECT["name"]):
                pending += sorted(requirement.extras - seen)
            else:
                requirements.append(requirement)
    return requirements


def installed_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


@pytest.mark.parametrize("name", LOCKS)
def test_the_lock_was_made_from_pyproject_as_it_is(name):
    first_line = lock_path(name).read_text().partition("\n")[0]

    assert first_line == f"{DIGEST_PREFIX}{dependencies_digest()}", STALE


@pytest.mark.parametrize("name", LOCKS)
def test_every_package_of_the_lock_is_pinned_with_hashes(name):
    text = lock_path(name).read_text()
    pins = read_lock(name)
    requirement_lines = [line for line in text.splitlines() if line and not line.startswith(("#", " "))]

    assert len(pins) == len(requirement_lines) > 0
    assert [package for package, pin in pins.items() if not pin.hashes] == []


@pytest.mark.parametrize("name", LOCKS)
def test_the_lock_satisfies_every_requirement_of_its_install_set(name):
    pins = read_lock(name)
    unmet = [
        str(requirement)
        for requirement in install_set(LOCKS[name])
        if (requirement.marker is None or requirement.marker.evaluate({"extra": ""}))
        and not (
            (pin := pins.get(canonicalize_name(requirement.name)))
            and requirement.specifier.contains(pin.version, prereleases=True)
        )
    ]

    assert unmet == [], STALE


@pytest.mark.parametrize("name", [name for name in LOCKS if name != "dev"])
def test_an_image_lock_pins_the_versions_and_hashes_dev_pins(name):
    dev = read_lock("dev")

    assert {package: pin for package, pin in read_lock(name).items() if dev.get(package) != pin} == {}


def test_the_crm_lock_holds_no_database_stack():
    database_stack = {canonicalize_name(Requirement(r).name) for r in PROJECT["optional-dependencies"]["inventory"]}

    assert database_stack & read_lock("crm").keys() == set()


def test_the_venv_runs_exactly_the_dev_lock():
    expected = {package: pin.version for package, pin in read_lock("dev").items() if pin.applies_here()}
    installed = {package: installed_version(package) for package in expected}

    assert installed == expected, "the venv is older than the lock: scripts/test reinstalls it"


@pytest.mark.parametrize("dockerfile", IMAGE_LOCKS)
def test_the_image_installs_its_locks_with_hashes_required(dockerfile):
    instructions = (ROOT / dockerfile).read_text().replace("\\\n", " ")
    installs = re.findall(
        r"pip install [^\n]*--require-hashes [^\n]*--requirement (requirements/\w+\.txt)", instructions
    )

    assert installs == [f"requirements/{name}.txt" for name in IMAGE_LOCKS[dockerfile]]
