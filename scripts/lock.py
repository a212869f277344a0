"""Regenerate the locks in requirements/ from pyproject.toml: exact versions with hashes.

Usage: scripts/lock [--help]

  requirements/dev.txt        every extra (the `dev` one): what .venv, the tests and CI install
  requirements/crm.txt        the project's own and `tracing`: what the CRM image installs
  requirements/inventory.txt  crm.txt's set and `inventory`: what the inventory image installs

dev.txt is resolved first and constrains the other two, so a package has one version and one
set of hashes in all three: the tests run what the images ship. Each resolution is universal
(markers instead of this machine's platform). Each lock's first line records a digest of
pyproject.toml's dependency sections; tests/test_lock.py fails when it no longer matches.
uv (from the dev extra) resolves against PyPI unless UV_INDEX_URL / UV_EXTRA_INDEX_URL say otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
LOCK_DIR = ROOT / "requirements"
# Each lock and the extras it installs, in resolution order: dev first, as it constrains the rest.
LOCKS = {"dev": ["dev"], "crm": ["tracing"], "inventory": ["inventory", "tracing"]}
DIGEST_PREFIX = "# pyproject-dependencies-sha256: "


def dependencies_digest(pyproject: Path = PYPROJECT) -> str:
    """The sha256 of what a lock is resolved from: requires-python, dependencies and every extra."""
    project = tomllib.loads(pyproject.read_text())["project"]
    inputs = {name: project.get(name) for name in ("requires-python", "dependencies", "optional-dependencies")}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def lock_path(name: str) -> Path:
    return LOCK_DIR / f"{name}.txt"


def compile_lock(name: str, extras: list[str], out: Path, constraint: Path | None) -> None:
    uv = Path(sys.executable).with_name("uv")
    command = [str(uv if uv.exists() else "uv"), "pip", "compile", "--quiet", "--universal", "--generate-hashes"]
    command += ["--custom-compile-command", "scripts/lock", "--output-file", str(out), PYPROJECT.name]
    command += [flag for extra in extras for flag in ("--extra", extra)]
    if constraint:
        command += ["--constraint", str(constraint)]
    subprocess.run(command, check=True, cwd=ROOT)
    text = out.read_text()
    if constraint:  # the annotations name the constraint where it will lie, not the scratch copy
        text = text.replace(str(constraint), str(lock_path("dev").relative_to(ROOT)))
    out.write_text(f"{DIGEST_PREFIX}{dependencies_digest()}\n" + text)


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(
        prog="scripts/lock", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    ).parse_args(argv)
    LOCK_DIR.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        # Written aside and moved only when all three resolved: a failure leaves the old locks whole.
        outputs = {name: Path(scratch) / f"{name}.txt" for name in LOCKS}
        for name, extras in LOCKS.items():
            compile_lock(name, extras, outputs[name], constraint=None if name == "dev" else outputs["dev"])
        for name, output in outputs.items():
            shutil.move(output, lock_path(name))
            print(f"wrote {lock_path(name).relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
