"""The command lines as a user meets them: --help on every script and console command starts
nothing, a taken port is named in one line, mint_token refuses unknown roles, scripts/run says
"serving" once both services answer, and a call to the wrong port names what is there."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from crm.v1 import crm_pb2, crm_pb2_grpc
from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from servicekit.health_probe import serving_status
from tests.helpers import ROOT, free_port, migrate, service_env

SCRIPTS = ("run", "test", "mint_token", "gen_protos", "bench", "build_images", "container_prereqs")
CONSOLE_COMMANDS = ("inventory-server", "inventory-migrate", "inventory-seed-demo", "mint-token", "crm-server")
BIN = Path(sys.executable).parent


def command_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """Test keys, the database in tmp_path, addresses on free ports: what a command would
    create or bind is somewhere a test can look."""
    defaults = {
        "INVENTORY_DATABASE_URL": f"sqlite:///{tmp_path / 'inventory.db'}",
        "INVENTORY_LISTEN_ADDRESS": f"127.0.0.1:{free_port()}",
        "CRM_LISTEN_ADDRESS": f"127.0.0.1:{free_port()}",
        "INVENTORY_METRICS_ADDRESS": "off",
        "CRM_METRICS_ADDRESS": "off",
    }
    return service_env(**{**defaults, **settings})


def files_under(*folders: Path) -> set[tuple[str, float]]:
    return {(str(path), path.stat().st_mtime) for folder in folders if folder.exists() for path in folder.rglob("*")}


@pytest.mark.parametrize(
    "command",
    [*(ROOT / "scripts" / name for name in SCRIPTS), *(BIN / name for name in CONSOLE_COMMANDS)],
    ids=[*(f"scripts/{name}" for name in SCRIPTS), *CONSOLE_COMMANDS],
)
def test_help_prints_usage_and_starts_nothing(command, tmp_path):
    env = command_env(tmp_path)
    before = files_under(tmp_path, ROOT / "var", ROOT / "gen")

    # A server would still be serving at the timeout; each of these returns at once.
    shown = subprocess.run([str(command), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)

    assert shown.returncode == 0, shown.stderr
    assert "usage" in shown.stdout.lower()
    assert files_under(tmp_path, ROOT / "var", ROOT / "gen") == before


@pytest.mark.parametrize("setting", ["LISTEN_ADDRESS", "METRICS_ADDRESS"])
@pytest.mark.parametrize("module", ["inventory_svc.server", "crm_svc.server"])
def test_server_on_a_taken_port_exits_naming_the_address_in_one_line(module, setting, tmp_path):
    database_url = f"sqlite:///{tmp_path / 'inventory.db'}"
    migrate(database_url)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        env = command_env(tmp_path, INVENTORY_DATABASE_URL=database_url, CRM_INVENTORY_TARGET="127.0.0.1:1")
        prefix = "INVENTORY" if module.startswith("inventory") else "CRM"
        env[f"{prefix}_LISTEN_ADDRESS"] = "127.0.0.1:0"
        env[f"{prefix}_{setting}"] = address

        failed = subprocess.run(
            [sys.executable, "-m", module], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )

    assert failed.returncode == 1
    naming = [line for line in failed.stderr.splitlines() if f"cannot listen on {address}" in line]
    assert len(naming) == 1, failed.stderr
    assert "Traceback" not in failed.stderr


def test_run_script_names_a_taken_port_and_starts_nothing(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        address = f"127.0.0.1:{holder.getsockname()[1]}"

        failed = subprocess.run(
            [str(ROOT / "scripts" / "run")],
            env=command_env(tmp_path, INVENTORY_LISTEN_ADDRESS=address),
            capture_output=True,
            text=True,
            timeout=120,
        )

    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1] == (
        f"scripts/run: {address} is in use: stop what holds it or set INVENTORY_LISTEN_ADDRESS"
    )
    assert not (tmp_path / "inventory.db").exists()  # refused before migrating


def test_mint_token_refuses_an_unknown_role_naming_the_known_ones(tmp_path):
    refused = subprocess.run(
        [str(ROOT / "scripts" / "mint_token"), "--subject", "ops", "--roles", "inventory.read,inventory.reed"],
        env=command_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert refused.returncode == 2
    assert refused.stdout == ""  # no token to paste
    assert (
        "unknown role inventory.reed: the known roles are inventory.read, inventory.write, customer" in refused.stderr
    )


@pytest.fixture(scope="module")
def run_script(tmp_path_factory) -> Iterator[tuple[list[str], str, str]]:
    """scripts/run on free ports and a database of its own; yields its stderr lines up to
    "serving", and the two addresses."""
    tmp_path = tmp_path_factory.mktemp("run")
    env = command_env(tmp_path)
    inventory, crm = env["INVENTORY_LISTEN_ADDRESS"], env["CRM_LISTEN_ADDRESS"]
    script = subprocess.Popen(
        [str(ROOT / "scripts" / "run")], env=env, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    assert script.stderr is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 120
        while not (lines and lines[-1].startswith("serving")):
            line = script.stderr.readline()
            assert line, f"scripts/run ended: {''.join(lines)}"
            assert time.monotonic() < deadline, f"scripts/run did not serve: {''.join(lines)}"
            lines.append(line)
        yield lines, inventory, crm
    finally:
        script.send_signal(signal.SIGTERM)
        try:
            script.communicate(timeout=30)
        finally:
            if script.poll() is None:
                os.killpg(script.pid, signal.SIGKILL)
                script.wait()


def test_run_script_says_serving_once_both_services_answer_health(run_script):
    lines, inventory, crm = run_script

    # Read at once when the line came: both answered before it was printed.
    assert (serving_status(inventory), serving_status(crm)) == ("SERVING", "SERVING")
    assert lines[-1].startswith(f"serving: inventory on {inventory}, crm on {crm}")
    assert not any(line.startswith(("inventory serves", "serving")) for line in lines[:-1])


def test_inventory_method_on_the_crm_port_names_the_crm_without_a_token(run_script):
    _, _, crm = run_script
    with grpc.insecure_channel(crm) as channel, pytest.raises(grpc.RpcError) as raised:
        inventory_pb2_grpc.ItemServiceStub(channel).GetItem(pb.GetItemRequest(id=1), timeout=10)

    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert raised.value.details() == (
        "this server serves crm.v1.CustomerItemsService (and health, reflection); inventory.v1.ItemService is not here"
    )


def test_crm_method_on_the_inventory_port_names_inventory(run_script):
    _, inventory, _ = run_script
    with grpc.insecure_channel(inventory) as channel, pytest.raises(grpc.RpcError) as raised:
        crm_pb2_grpc.CustomerItemsServiceStub(channel).ListMyItems(crm_pb2.ListMyItemsRequest(), timeout=10)

    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert raised.value.details() == (
        "this server serves inventory.v1.ItemService, inventory.v1.ReservationService (and health, reflection); "
        "crm.v1.CustomerItemsService is not here"
    )


def test_unknown_method_of_a_served_service_is_named_as_such(run_script):
    _, _, crm = run_script
    with grpc.insecure_channel(crm) as channel, pytest.raises(grpc.RpcError) as raised:
        channel.unary_unary("/crm.v1.CustomerItemsService/DeleteMyItems")(b"", timeout=10)

    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert raised.value.details() == (
        "crm.v1.CustomerItemsService has no method DeleteMyItems on this server (is the client's contract newer?)"
    )
