"""What the tests share: real servers and databases, building items, reading rich errors."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Callable

import grpc
from google.rpc import error_details_pb2
from google.type import money_pb2
from grpc_status import rpc_status

from sqlalchemy import Engine

from inventory.v1 import inventory_pb2 as pb
from crm_svc import server as crm_server
from crm_svc.service import CustomerItemsService
from crm_svc.settings import CrmSettings
from inventory_svc import migrations
from inventory_svc.server import build_engine, build_item_service, build_server
from inventory_svc.settings import InventorySettings
from servicekit.auth import AuthSettings, TokenIssuer
from servicekit.client import BearerTokenInterceptor
from servicekit.server import RunningServer

TEST_AUTH = AuthSettings(secret="test-secret-" + "x" * 40, issuer="test-issuer", audience="test-audience")
INVENTORY_ROLES = ("inventory.read", "inventory.write")


def mint(subject: str = "tester", roles: tuple[str, ...] = INVENTORY_ROLES, lifetime_s: float = 300,
         auth: AuthSettings = TEST_AUTH) -> str:
    return TokenIssuer(auth).mint(subject, roles, lifetime_s)


def authorized_channel(address: str, token: str) -> grpc.Channel:
    return grpc.intercept_channel(grpc.insecure_channel(address), BearerTokenInterceptor(lambda: token))

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
    engine = build_engine(settings)
    migrations.upgrade(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def serving(settings: InventorySettings, engine: Engine) -> Iterator[RunningServer]:
    running = build_server(settings, build_item_service(engine, settings))
    running.server.start()
    try:
        yield running
    finally:
        running.server.stop(grace=1).wait()


@contextmanager
def serving_crm(settings: CrmSettings) -> Iterator[RunningServer]:
    """A real CRM server wired as crm_svc.server wires it, to the inventory at settings.inventory_target."""
    with crm_server.connect_inventory(settings) as inventory:
        running = crm_server.build_server(settings, CustomerItemsService(inventory))
        running.server.start()
        try:
            yield running
        finally:
            running.server.stop(grace=1).wait()
