"""The code stays as ruff (lint and format) and mypy --strict want it, by the rules in
pyproject.toml ([tool.ruff], [tool.mypy]): a finding fails the suite, and so CI."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def tool(name: str) -> str:
    """A tool of the dev extra, from this interpreter's environment first."""
    return shutil.which(name, path=str(Path(sys.executable).parent)) or name


def run(*command: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


# No cache: a stale one could hide a finding.
MYPY = (tool("mypy"), "--cache-dir", "/dev/null")
_mypy_of_the_whole_tree: subprocess.Popen[str] | None = None


def start_mypy() -> None:
    """Starts mypy on the product packages in the background (tests/conftest.py does, once
    the suite is collected), so that its seconds of CPU overlap the suite's waiting."""
    global _mypy_of_the_whole_tree
    if _mypy_of_the_whole_tree is None:
        _mypy_of_the_whole_tree = subprocess.Popen(
            MYPY, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )


def mypy_of_the_whole_tree() -> tuple[int, str]:
    start_mypy()
    assert _mypy_of_the_whole_tree is not None
    output, _ = _mypy_of_the_whole_tree.communicate(timeout=300)
    return _mypy_of_the_whole_tree.returncode, output


def test_ruff_finds_nothing_to_lint():
    result = run(tool("ruff"), "check", "--no-cache", ".")

    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_finds_nothing_to_format():
    result = run(tool("ruff"), "format", "--check", "--no-cache", ".")

    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_fails_on_a_finding(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "module.py").write_text("import os\n")  # an unused import

    result = run(tool("ruff"), "check", "--no-cache", ".", cwd=tmp_path)

    assert result.returncode == 1 and "F401" in result.stdout, result.stdout + result.stderr


def test_mypy_strict_finds_nothing_in_the_product_packages():
    returncode, output = mypy_of_the_whole_tree()

    assert returncode == 0, output
    assert "Success: no issues found" in output


def test_mypy_fails_on_a_type_error(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "module.py").write_text("def twice(n: int) -> int:\n    return n * 2\n\n\ntwice('two')\n")

    result = run(*MYPY, "module.py", cwd=tmp_path)

    assert result.returncode == 1 and "arg-type" in result.stdout, result.stdout + result.stderr
