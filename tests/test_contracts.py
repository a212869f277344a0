"""The contracts in protos/ pass `buf lint` (STANDARD) and make no breaking change against
the previous commit (or CONTRACT_BASELINE). buf runs offline: see buf.yaml.

The previous commit's protos are copied out of git into a workspace that uses today's
buf.yaml and third_party/, so the check works even when that commit had neither."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
# What the working tree must stay compatible with: the previous commit, unless
# CONTRACT_BASELINE names another (e.g. origin/main, to check a push of several commits).
BASELINE = os.environ.get("CONTRACT_BASELINE", "")
REQUIRE_BASELINE = os.environ.get("TEST_REQUIRE_CONTRACT_BASELINE") == "1"


@pytest.fixture(scope="session")
def buf(tmp_path_factory: pytest.TempPathFactory):
    """Runs buf (from the dev extra) in a folder, with its cache in a temporary folder."""
    executable = shutil.which("buf", path=str(Path(sys.executable).parent)) or shutil.which("buf")
    if executable is None:
        pytest.fail("buf is not installed: it comes with the dev extra (buf-bin)")
    env = {**os.environ, "BUF_CACHE_DIR": str(tmp_path_factory.mktemp("buf-cache"))}

    def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
        return subprocess.run([executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)

    return run


def workspace(folder: Path, protos: dict[str, str]) -> Path:
    """A buf workspace in `folder`: today's buf.yaml and third_party/, with these protos
    (path under protos/ -> text)."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "buf.yaml", folder / "buf.yaml")
    shutil.copytree(ROOT / "third_party", folder / "third_party")
    for name, text in protos.items():
        path = folder / "protos" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def working_tree_protos() -> dict[str, str]:
    return {str(path.relative_to(ROOT / "protos")): path.read_text() for path in (ROOT / "protos").rglob("*.proto")}


def git(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def committed_protos(revision: str) -> dict[str, str]:
    """The protos of a commit, or {} when it had none."""
    names = git("ls-tree", "-r", "--name-only", revision, "--", "protos").stdout.splitlines()
    return {
        name.removeprefix("protos/"): git("show", f"{revision}:{name}").stdout
        for name in names
        if name.endswith(".proto")
    }


def test_protos_pass_buf_lint_standard(buf):
    result = buf("lint")

    assert result.returncode == 0, f"buf lint:\n{result.stdout}{result.stderr}"


def test_buf_lint_refuses_a_message_that_is_not_pascal_case(buf, tmp_path):
    protos = working_tree_protos()
    protos["inventory/v1/inventory.proto"] += "\n// Badly named.\nmessage low_stock_item {}\n"

    result = buf("lint", cwd=workspace(tmp_path, protos))

    assert result.returncode != 0
    assert "low_stock_item" in result.stdout


def test_protos_make_no_breaking_change_against_the_previous_commit(buf, tmp_path):
    revision = BASELINE or "HEAD~1"
    # CI sets TEST_REQUIRE_CONTRACT_BASELINE=1: there a missing baseline fails instead of skipping.
    missing = pytest.fail if BASELINE or REQUIRE_BASELINE else pytest.skip
    if git("rev-parse", "--is-inside-work-tree").returncode != 0:
        missing("not a git checkout: there is no previous commit to compare with")
    if git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}").returncode != 0:
        missing(f"{revision} names no commit (the first commit, or a shallow clone)")
    previous = committed_protos(revision)
    if not previous:
        missing(f"{revision} has no protos/ to compare with")

    result = buf("breaking", "--against", str(workspace(tmp_path, previous)))

    assert result.returncode == 0, f"breaking changes against {revision}:\n{result.stdout}{result.stderr}"
    baseline = reading_methods_of(buf, workspace(tmp_path / "baseline-image", previous), tmp_path / "baseline.binpb")
    today = reading_methods_of(buf, ROOT, tmp_path / "today.binpb")
    assert baseline <= today, f"reads made writes since {revision} (read-only tokens lose them): {baseline - today}"


def reading_methods_of(buf, folder: Path, image: Path) -> set[str]:
    """The methods the protos in `folder` mark NO_SIDE_EFFECTS, as package.Service.Method."""
    result = buf("build", "--as-file-descriptor-set", "-o", str(image), cwd=folder)
    assert result.returncode == 0, f"buf build:\n{result.stdout}{result.stderr}"
    files = descriptor_pb2.FileDescriptorSet.FromString(image.read_bytes()).file
    return {
        f"{file.package}.{service.name}.{method.name}"
        for file in files
        for service in file.service
        for method in service.method
        if method.options.idempotency_level == descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
    }


def test_a_read_turned_write_is_found(buf, tmp_path):
    protos = working_tree_protos()
    inventory = protos["inventory/v1/inventory.proto"]
    marked_get = (
        "rpc GetItem(GetItemRequest) returns (GetItemResponse) {\n    option idempotency_level = NO_SIDE_EFFECTS;\n  }"
    )
    assert marked_get in inventory, "the protos changed: update this test"
    protos["inventory/v1/inventory.proto"] = inventory.replace(
        marked_get, "rpc GetItem(GetItemRequest) returns (GetItemResponse) {}"
    )

    before = reading_methods_of(buf, workspace(tmp_path / "before", working_tree_protos()), tmp_path / "before.binpb")
    after = reading_methods_of(buf, workspace(tmp_path / "after", protos), tmp_path / "after.binpb")

    assert before - after == {"inventory.v1.ItemService.GetItem"}


def test_buf_breaking_reports_a_deleted_field_and_a_renamed_rpc(buf, tmp_path):
    protos = working_tree_protos()
    inventory = protos["inventory/v1/inventory.proto"]
    changed = inventory.replace("  string etag = 18;\n", "").replace("rpc GetItem(", "rpc FetchItem(")
    assert changed.count("\n") == inventory.count("\n") - 1 and "FetchItem" in changed, (
        "the protos changed: update this test"
    )
    protos["inventory/v1/inventory.proto"] = changed
    unchanged = workspace(tmp_path / "unchanged", working_tree_protos())

    result = buf("breaking", "--against", str(unchanged), cwd=workspace(tmp_path / "changed", protos))

    assert result.returncode != 0
    assert '"etag"' in result.stdout, result.stdout
    assert '"GetItem"' in result.stdout, result.stdout
