"""The README and docs/ stay true to the tree: every relative link leads to a file that
exists (and to a heading there, when it names one); scripts/run does what they say of
--help and --fresh."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target): the target up to a space (a link title) or the closing parenthesis.
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)[^)]*\)")
FENCE = re.compile(r"^```.*?^```", flags=re.DOTALL | re.MULTILINE)


def relative_links(document: Path) -> list[str]:
    text = FENCE.sub("", document.read_text())  # code blocks hold no links
    return [target for target in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def heading_anchors(document: Path) -> set[str]:
    """The anchors GitHub makes of a document's headings: lower case, punctuation dropped, spaces as dashes."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", document.read_text()), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}


def test_there_are_the_documents_the_readme_promises():
    names = {document.name for document in DOCUMENTS}

    assert {"api.md", "configuration.md", "operations.md", "performance.md", "development.md"} <= names


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: str(path.relative_to(ROOT)))
def test_every_relative_link_points_at_a_file_that_exists(document):
    broken = []
    for target in relative_links(document):
        path, _, anchor = target.partition("#")
        linked = (document.parent / path).resolve() if path else document
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in heading_anchors(linked):
            broken.append(f"{target} (no such heading)")

    assert not broken, f"{document.name}: {broken}"


def test_the_link_check_sees_links_and_anchors(tmp_path):
    document = tmp_path / "page.md"
    document.write_text(
        "# A page: `with` code\n[here](#a-page-with-code), [gone](missing.md) and [web](https://x.org)\n"
    )

    assert relative_links(document) == ["#a-page-with-code", "missing.md"]
    assert heading_anchors(document) == {"a-page-with-code"}


def test_the_readme_stays_a_first_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 160


def test_scripts_run_help_prints_its_usage_and_starts_nothing():
    result = subprocess.run([ROOT / "scripts" / "run", "--help"], capture_output=True, text=True, timeout=30)

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: scripts/run [--fresh] [--help]")
    assert "inventory serves on" not in result.stdout + result.stderr


def test_scripts_run_refuses_an_unknown_argument():
    result = subprocess.run([ROOT / "scripts" / "run", "--fast"], capture_output=True, text=True, timeout=30)

    assert result.returncode == 2
    assert "unknown argument '--fast'" in result.stderr


def fake_checkout(tmp_path: Path) -> Path:
    """scripts/run in a tree of its own whose setup step stops the script: what happens
    before it (the --fresh removal) is all that runs."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "run", tmp_path / "scripts" / "run")
    (tmp_path / "scripts" / "_common.sh").write_text('ensure_venv() { echo "setup reached" >&2; exit 0; }\n')
    (tmp_path / "var").mkdir()
    for name in ("inventory.db", "inventory.db-wal", "inventory.db-shm", "dev-jwt-secret", "inventory.db.backup"):
        (tmp_path / "var" / name).write_text("kept until removed")
    return tmp_path


def test_scripts_run_fresh_removes_the_local_database_and_nothing_else(tmp_path):
    checkout = fake_checkout(tmp_path)
    env = {"PATH": "/usr/bin:/bin"}

    result = subprocess.run(
        [checkout / "scripts" / "run", "--fresh"], env=env, capture_output=True, text=True, timeout=30
    )

    assert result.returncode == 0, result.stderr
    assert "setup reached" in result.stderr
    assert sorted(path.name for path in (checkout / "var").iterdir()) == ["dev-jwt-secret", "inventory.db.backup"]


def test_scripts_run_without_fresh_keeps_the_database(tmp_path):
    checkout = fake_checkout(tmp_path)

    result = subprocess.run(
        [checkout / "scripts" / "run"], env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True, timeout=30
    )

    assert "setup reached" in result.stderr
    assert (checkout / "var" / "inventory.db").exists()


def test_scripts_run_fresh_leaves_a_configured_database_alone(tmp_path):
    checkout = fake_checkout(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": f"sqlite:///{checkout / 'var' / 'inventory.db'}"}

    result = subprocess.run(
        [checkout / "scripts" / "run", "--fresh"], env=env, capture_output=True, text=True, timeout=30
    )

    assert result.returncode == 2
    assert "--fresh removes only var/inventory.db" in result.stderr
    assert (checkout / "var" / "inventory.db").exists()
