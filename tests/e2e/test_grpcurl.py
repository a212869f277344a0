"""The shell experience: the real grpcurl binary, with reflection and no .proto files at hand."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sqlalchemy import event

from crm_svc.settings import CrmSettings
from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from inventory_svc.demo import seed_demo_items
from inventory_svc.server import build_item_service
from inventory_svc.settings import InventorySettings
from servicekit.server_settings import ServerSettings
from tests.helpers import (
    TEST_AUTH,
    authorized_channel,
    eventually,
    grpcurl,
    migrated_engine,
    mint,
    serving,
    serving_crm,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server of its own on SQLite: the shell experience does not depend on the database."""
    settings = InventorySettings(
        database_url=f"sqlite:///{tmp_path_factory.mktemp('grpcurl') / 'inventory.db'}",
        server=ServerSettings(),
        auth=TEST_AUTH,
    )
    with migrated_engine(settings) as engine, serving(settings, engine) as running:
        yield f"127.0.0.1:{running.port}"


def test_grpcurl_lists_the_services_without_a_token(address):
    result = grpcurl(address, "list")

    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
        "inventory.v1.ItemService",
        "inventory.v1.ReservationService",
    ]


def test_grpcurl_describes_the_item_service_and_its_messages(address):
    service = grpcurl(address, "describe", "inventory.v1.ItemService")
    message = grpcurl(address, "describe", "inventory.v1.Item")

    assert service.returncode == 0, service.stderr
    assert "rpc AdjustQuantity ( .inventory.v1.AdjustQuantityRequest )" in service.stdout
    assert ".google.type.Money price = 7;" in message.stdout


def test_grpcurl_creates_and_reads_an_item_as_json(address):
    token = mint()
    created = grpcurl(
        address,
        "inventory.v1.ItemService/CreateItem",
        token=token,
        data='{"item": {"sku": "CLI-1", "name": "From the shell", '
        '"price": {"currency_code": "EUR", "units": 3, "nanos": 500000000}, "quantity": 4}}',
    )
    assert created.returncode == 0, created.stderr
    item_id = json.loads(created.stdout)["item"]["id"]

    fetched = grpcurl(address, "inventory.v1.ItemService/GetItem", data=json.dumps({"id": item_id}), token=token)

    assert fetched.returncode == 0, fetched.stderr
    item = json.loads(fetched.stdout)["item"]
    assert (item["sku"], item["quantity"]) == ("CLI-1", 4)
    assert item["price"] == {"currency_code": "EUR", "units": "3", "nanos": 500000000}


def test_grpcurl_without_a_token_is_unauthenticated(address):
    result = grpcurl(address, "inventory.v1.ItemService/GetItem", data='{"id": 1}')

    assert result.returncode != 0
    assert "Code: Unauthenticated" in result.stderr


def test_grpcurl_shows_which_field_is_invalid(address):
    result = grpcurl(
        address, "inventory.v1.ItemService/CreateItem", data='{"item": {"sku": "X", "name": "no price"}}', token=mint()
    )

    assert result.returncode != 0
    assert "Code: InvalidArgument" in result.stderr
    assert '"field":"item.price"' in result.stderr.replace(" ", "")


def readme_grpcurl_block() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## A tour with grpcurl") :]
    start = section.index("```sh\n") + len("```sh\n")
    return section[start : section.index("```", start)]


def test_readme_grpcurl_examples_work_as_printed(tmp_path):
    settings = InventorySettings(
        database_url=f"sqlite:///{tmp_path / 'inventory.db'}", server=ServerSettings(), auth=TEST_AUTH
    )
    with (
        migrated_engine(settings) as engine,
        serving(settings, engine) as running,
        serving_crm(
            CrmSettings(
                server=ServerSettings(),
                inventory_target=f"127.0.0.1:{running.port}",
                auth=TEST_AUTH,
                inventory_auth=TEST_AUTH,
            )
        ) as crm_running,
    ):
        seed_demo_items(build_item_service(engine))
        block = (
            readme_grpcurl_block()
            .replace("127.0.0.1:50051", f"127.0.0.1:{running.port}")
            .replace("127.0.0.1:50052", f"127.0.0.1:{crm_running.port}")
        )
        commands = [line for line in block.replace("\\\n", " ").splitlines() if line.startswith(".venv/bin/grpcurl")]
        assert len(commands) >= 14
        # Each grpcurl line fails the script on its own: set -e stops at the first failing one.
        env = {
            **os.environ,
            "JWT_SECRET": TEST_AUTH.secret,
            "JWT_ISSUER": TEST_AUTH.issuer,
            "JWT_AUDIENCE": TEST_AUTH.audience,
        }
        result = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", block], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 0, result.stderr
    replies = json_documents(result.stdout)
    my_items, my_item = replies[-4], replies[-1]  # the CRM's ListMyItems and GetMyItem
    assert [item["sku"] for item in my_items["items"]] == ["KB-100", "MS-200", "MN-270"]
    assert (my_item["item"]["name"], "cost" in my_item["item"]) == ("Quiet keyboard", False)


def json_documents(text: str) -> list[dict]:
    """The JSON objects in grpcurl's output, skipping what `describe` prints."""
    decoder, documents, position = json.JSONDecoder(), [], 0
    while (start := text.find("{", position)) != -1:
        try:
            document, position = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            position = start + 1
            continue
        documents.append(document)
    return documents


def readme_watch_blocks() -> tuple[str, str]:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("**Watching low stock.**") :]
    blocks = section.split("```sh\n")[1:3]
    return blocks[0].split("```")[0], blocks[1].split("```")[0]


def test_readme_watch_example_shows_the_event_and_the_ledger(tmp_path):
    settings = InventorySettings(
        database_url=f"sqlite:///{tmp_path / 'inventory.db'}", server=ServerSettings(), auth=TEST_AUTH
    )
    env = {
        **os.environ,
        "JWT_SECRET": TEST_AUTH.secret,
        "JWT_ISSUER": TEST_AUTH.issuer,
        "JWT_AUDIENCE": TEST_AUTH.audience,
    }
    watch_block, adjust_block = readme_watch_blocks()
    with migrated_engine(settings) as engine, serving(settings, engine) as running:
        seed_demo_items(build_item_service(engine))
        # Only a watch reads the ledger here: its first read is where it starts.
        ledger_reads: list[str] = []

        @event.listens_for(engine, "before_cursor_execute")
        def note_ledger_read(_connection, _cursor, statement: str, *_args) -> None:
            if statement.startswith("SELECT") and "FROM stock_movements" in statement:
                ledger_reads.append(statement)

        port = f"127.0.0.1:{running.port}"
        watcher = subprocess.Popen(
            ["bash", "-c", watch_block.replace("127.0.0.1:50051", port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        watched: list[str] = []
        reader = threading.Thread(target=lambda: watched.extend(watcher.stdout), daemon=True)
        reader.start()
        try:
            assert eventually(lambda: ledger_reads, 30), "grpcurl's watch did not start"
            runs = [
                subprocess.run(
                    ["bash", "-euo", "pipefail", "-c", adjust_block.replace("127.0.0.1:50051", port)],
                    cwd=ROOT,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                for _ in range(2)
            ]
            assert all(run.returncode == 0 for run in runs), runs[-1].stderr
            assert eventually(lambda: "BECAME_LOW" in "".join(watched), 30), "no event in grpcurl's output"
            # A restock must show next: a wrong second event from the replayed sale would show before it.
            with authorized_channel(port, mint()) as channel:
                inventory_pb2_grpc.ItemServiceStub(channel).AdjustQuantity(
                    pb.AdjustQuantityRequest(id=3, delta=5), timeout=10
                )
            assert eventually(lambda: "RECOVERED" in "".join(watched), 30), "no recovery in grpcurl's output"
        finally:
            os.killpg(watcher.pid, signal.SIGTERM)
            try:
                watcher.wait(timeout=10)
                reader.join(timeout=10)
            finally:
                watcher.stdout.close()
                watcher.stderr.close()

    events = json_documents("".join(watched))
    assert [(e["item_id"], e["kind"], e["quantity"]) for e in events] == [
        ("3", "LOW_STOCK_EVENT_KIND_BECAME_LOW", 2),
        ("3", "LOW_STOCK_EVENT_KIND_RECOVERED", 7),
    ]
    ledger = json_documents(runs[-1].stdout)[-1]["movements"]
    assert [m["reason"] for m in ledger] == ["STOCK_MOVEMENT_REASON_SALE", "STOCK_MOVEMENT_REASON_ITEM_CREATED"]


# Docs whose ```console blocks are transcripts: `$ command` lines, each followed by what it printed.
TRANSCRIPT_DOCS = ("docs/api.md",)
# In a transcript, a line of just "..." stands for any number of lines left out.
ANY_LINES = "..."


@dataclass
class TranscriptExample:
    command: str
    printed: list[str] = field(default_factory=list)


def transcript_examples(markdown: str) -> list[TranscriptExample]:
    """Every `$ ` command of the document's console blocks, in order, with the lines under it."""
    examples: list[TranscriptExample] = []
    for block in re.findall(r"^```console\n(.*?)^```", markdown, flags=re.DOTALL | re.MULTILINE):
        for line in block.replace("\\\n", " ").splitlines():
            if line.startswith("$ "):
                examples.append(TranscriptExample(line[2:]))
            else:
                assert examples, f"output before any command in a console block: {line!r}"
                examples[-1].printed.append(line)
    return examples


def _normalised(lines: list[str]) -> list[str]:
    """Runs of blanks as one space (grpcurl indents details with a tab); no blank lines at the ends."""
    kept = [" ".join(line.split()) for line in lines]
    while kept and not kept[-1]:
        kept.pop()
    while kept and not kept[0]:
        kept.pop(0)
    return kept


def prints_as_shown(shown: list[str], printed: str) -> bool:
    pattern = "".join(
        r"(?:[^\n]*\n)*?" if line == ANY_LINES else re.escape(line) + r"\n" for line in _normalised(shown)
    )
    actual = "".join(line + "\n" for line in _normalised(printed.splitlines()))
    return re.fullmatch(pattern, actual) is not None


def run_transcript(examples: list[TranscriptExample], ports: dict[str, str]) -> list[str]:
    """Runs the commands in one shell, in order (so that variables carry over), and returns
    what each printed, stdout and stderr together, as a reader's terminal shows it."""
    script = []
    for number, example in enumerate(examples):
        command = example.command
        for printed_address, address in ports.items():
            command = command.replace(printed_address, address)
        script.append(f"printf '\\n@@@ %d\\n' {number}\n{{ {command} ; }} 2>&1")
    env = {
        **os.environ,
        "JWT_SECRET": TEST_AUTH.secret,
        "JWT_ISSUER": TEST_AUTH.issuer,
        "JWT_AUDIENCE": TEST_AUTH.audience,
    }
    result = subprocess.run(
        ["bash", "-uo", "pipefail", "-c", "\n".join(script)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    outputs = re.split(r"\n@@@ \d+\n", "\n" + result.stdout)[1:]
    assert len(outputs) == len(examples), result.stdout + result.stderr
    return outputs


@pytest.mark.parametrize("document", TRANSCRIPT_DOCS)
def test_documented_answers_are_what_the_servers_answer(tmp_path, document):
    examples = transcript_examples((ROOT / document).read_text())
    shown = "\n".join(line for example in examples for line in example.printed)
    # The status table's kinds of error each have a real example, the BadRequest one included.
    for code in ("InvalidArgument", "NotFound", "AlreadyExists", "Aborted", "FailedPrecondition"):
        assert f"Code: {code}" in shown, f"{document} shows no {code}"
    for code in ("Unauthenticated", "PermissionDenied"):
        assert f"Code: {code}" in shown, f"{document} shows no {code}"
    assert "google.rpc.BadRequest" in shown
    settings = InventorySettings(
        database_url=f"sqlite:///{tmp_path / 'inventory.db'}",
        server=ServerSettings(listen_address="127.0.0.1:0"),
        auth=TEST_AUTH,
    )
    with (
        migrated_engine(settings) as engine,
        serving(settings, engine) as running,
        serving_crm(
            CrmSettings(
                server=ServerSettings(listen_address="127.0.0.1:0"),
                inventory_target=f"127.0.0.1:{running.port}",
                auth=TEST_AUTH,
                inventory_auth=TEST_AUTH,
            )
        ) as crm_running,
    ):
        seed_demo_items(build_item_service(engine))
        outputs = run_transcript(
            examples,
            {"127.0.0.1:50051": f"127.0.0.1:{running.port}", "127.0.0.1:50052": f"127.0.0.1:{crm_running.port}"},
        )
    wrong = [
        f"$ {example.command}\nshown:\n" + "\n".join(example.printed) + f"\nprinted:\n{printed}"
        for example, printed in zip(examples, outputs, strict=True)
        if not prints_as_shown(example.printed, printed)
    ]
    assert not wrong, "\n\n".join(wrong)


def test_a_transcript_line_of_dots_stands_for_any_lines_and_nothing_else_differs():
    assert prints_as_shown(["{", "...", '  "etag": "2"', "}"], '{\n  "id": "4",\n  "x": 1,\n  "etag": "2"\n}\n')
    assert prints_as_shown(["1)\t{}"], "1)  {}\n\n")
    assert not prints_as_shown(["{", "...", '  "etag": "2"', "}"], '{\n  "etag": "3"\n}\n')
    assert not prints_as_shown(["ERROR:", "  Code: NotFound"], "ERROR:\n  Code: NotFound\n  Message: extra\n")
