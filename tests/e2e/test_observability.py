"""What a platform team sees of the running services: Prometheus metrics of the calls just
made, one JSON access-log line per call carrying the request id from CRM to inventory,
and OpenTelemetry traces that cross from one service to the other when turned on."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from crm.v1 import crm_pb2, crm_pb2_grpc
from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from tests.helpers import (
    ServiceProcess,
    authorized_channel,
    create,
    migrate,
    mint,
    rpc_error,
    service_env,
    service_process,
)

ITEMS = "inventory.v1.ItemService"
CRM = "crm.v1.CustomerItemsService"


@dataclass
class Deployment:
    inventory: ServiceProcess
    crm: ServiceProcess
    inventory_address: str
    crm_address: str


@contextmanager
def deployment(tmp_path: Path, **settings: str) -> Iterator[Deployment]:
    """Inventory and the CRM as two processes wired together, on a migrated SQLite file."""
    database_url = f"sqlite:///{tmp_path / 'inventory.db'}"
    migrate(database_url)
    env = service_env(
        INVENTORY_DATABASE_URL=database_url,
        INVENTORY_LISTEN_ADDRESS="127.0.0.1:0",
        CRM_LISTEN_ADDRESS="127.0.0.1:0",
        **settings,
    )
    with ExitStack() as stack:
        inventory = stack.enter_context(service_process("inventory_svc.server", env, tmp_path / "inventory.log"))
        inventory_address = inventory.wait_until_serving()
        crm = stack.enter_context(
            service_process("crm_svc.server", {**env, "CRM_INVENTORY_TARGET": inventory_address}, tmp_path / "crm.log")
        )
        yield Deployment(inventory, crm, inventory_address, crm.wait_until_serving())


def sample(metrics: dict, name: str, **labels: str) -> float:
    return metrics.get((name, frozenset(labels.items())), 0.0)


def series(metrics: dict, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of `name`: its labels and value."""
    return [(dict(labels), value) for (found, labels), value in metrics.items() if found == name]


@pytest.fixture
def services(tmp_path) -> Iterator[Deployment]:
    with deployment(tmp_path) as running:
        yield running


def items_stub(address: str, token: str | None = None) -> Any:
    channel = authorized_channel(address, token or mint()) if token != "" else grpc.insecure_channel(address)
    return inventory_pb2_grpc.ItemServiceStub(channel)


def crm_stub(address: str, customer: str) -> Any:
    return crm_pb2_grpc.CustomerItemsServiceStub(authorized_channel(address, mint(customer, ("customer",))))


def test_a_scrape_counts_the_calls_just_made_by_method_and_status(services):
    items = items_stub(services.inventory_address)
    create(items)
    rpc_error(items.GetItem, pb.GetItemRequest(id=999))
    rpc_error(items_stub(services.inventory_address, token="").ListItems, pb.ListItemsRequest())

    metrics = services.inventory.metrics()

    assert (
        sample(
            metrics,
            "grpc_server_handled_total",
            grpc_type="unary",
            grpc_service=ITEMS,
            grpc_method="CreateItem",
            grpc_code="OK",
        )
        == 1
    )
    assert (
        sample(
            metrics,
            "grpc_server_handled_total",
            grpc_type="unary",
            grpc_service=ITEMS,
            grpc_method="GetItem",
            grpc_code="NOT_FOUND",
        )
        == 1
    )
    assert (
        sample(
            metrics,
            "grpc_server_handled_total",
            grpc_type="unary",
            grpc_service=ITEMS,
            grpc_method="ListItems",
            grpc_code="UNAUTHENTICATED",
        )
        == 1
    )
    assert (
        sample(
            metrics, "grpc_server_handling_seconds_count", grpc_type="unary", grpc_service=ITEMS, grpc_method="GetItem"
        )
        == 1
    )
    assert sample(metrics, "grpc_server_in_flight", grpc_type="unary", grpc_service=ITEMS, grpc_method="GetItem") == 0
    assert sample(metrics, "db_pool_size") >= 1
    assert ("db_pool_connections_in_use", frozenset()) in metrics


def test_a_scrape_counts_calls_started_by_method_and_rpc_type_as_go_grpc_prometheus_does(services):
    items = items_stub(services.inventory_address)
    create(items)
    rpc_error(items.GetItem, pb.GetItemRequest(id=999))
    rpc_error(items_stub(services.inventory_address, token="").ListItems, pb.ListItemsRequest())
    rpc_error(lambda request: next(items.WatchLowStock(request, timeout=0.5)), pb.WatchLowStockRequest())

    metrics = services.inventory.metrics()

    started = {
        (labels["grpc_type"], labels["grpc_method"]): value
        for labels, value in series(metrics, "grpc_server_started_total")
        if labels["grpc_service"] == ITEMS
    }
    assert started == {
        ("unary", "CreateItem"): 1,
        ("unary", "GetItem"): 1,
        ("unary", "ListItems"): 1,  # counted before its token was refused
        ("server_stream", "WatchLowStock"): 1,
    }


def test_the_crm_counts_its_inventory_calls_by_status(services):
    item = create(items_stub(services.inventory_address), customer_id="alice")
    alice = crm_stub(services.crm_address, "alice")
    alice.GetMyItem(crm_pb2.GetMyItemRequest(id=item.id))
    rpc_error(alice.GetMyItem, crm_pb2.GetMyItemRequest(id=item.id + 1000))

    metrics = services.crm.metrics()

    client_labels = {"grpc_type": "unary", "grpc_service": ITEMS, "grpc_method": "GetItem"}
    assert sample(metrics, "grpc_client_started_total", **client_labels) == 2
    assert sample(metrics, "grpc_client_handling_seconds_count", **client_labels) == 2
    assert sample(metrics, "grpc_client_handling_seconds_bucket", **client_labels, le="+Inf") == 2
    assert (
        sample(
            metrics,
            "grpc_client_handled_total",
            grpc_type="unary",
            grpc_service=ITEMS,
            grpc_method="GetItem",
            grpc_code="OK",
        )
        == 1
    )
    assert (
        sample(
            metrics,
            "grpc_client_handled_total",
            grpc_type="unary",
            grpc_service=ITEMS,
            grpc_method="GetItem",
            grpc_code="NOT_FOUND",
        )
        == 1
    )
    assert (
        sample(
            metrics,
            "grpc_server_handled_total",
            grpc_type="unary",
            grpc_service=CRM,
            grpc_method="GetMyItem",
            grpc_code="NOT_FOUND",
        )
        == 1
    )


def access_lines(service: ServiceProcess, method: str) -> list[dict[str, Any]]:
    return [line for line in service.log_lines() if line.get("logger") == "access" and line["grpc_method"] == method]


def test_each_call_logs_one_json_line_with_the_request_id_it_carried_from_crm_to_inventory(services):
    item = create(items_stub(services.inventory_address), customer_id="alice")
    token = mint("alice", ("customer",))
    crm = crm_pb2_grpc.CustomerItemsServiceStub(authorized_channel(services.crm_address, token))
    crm.GetMyItem(crm_pb2.GetMyItemRequest(id=item.id), metadata=[("x-request-id", "order-4711")])
    services.crm.stop()
    services.inventory.stop()

    [crm_line] = access_lines(services.crm, f"/{CRM}/GetMyItem")
    [inventory_line] = access_lines(services.inventory, f"/{ITEMS}/GetItem")
    assert crm_line["request_id"] == inventory_line["request_id"] == "order-4711"
    assert (crm_line["subject"], crm_line["grpc_code"]) == ("alice", "OK")
    assert (inventory_line["subject"], inventory_line["grpc_code"]) == ("crm", "OK")
    assert crm_line["duration_ms"] > inventory_line["duration_ms"] > 0
    logs = services.crm.log_path.read_text() + services.inventory.log_path.read_text()
    assert token not in logs and "Bearer" not in logs


def spans(stdout: str) -> list[dict[str, Any]]:
    """The spans the console exporter printed: JSON objects one after another."""
    decoder, found, position = json.JSONDecoder(), [], 0
    while (start := stdout.find("{", position)) != -1:
        span, position = decoder.raw_decode(stdout, start)
        found.append(span)
    return found


def test_traces_are_off_by_default_and_cross_from_crm_to_inventory_when_on(tmp_path, services):
    item = create(items_stub(services.inventory_address), customer_id="alice")
    crm_stub(services.crm_address, "alice").GetMyItem(crm_pb2.GetMyItemRequest(id=item.id))
    assert spans(services.crm.stop()) == []

    with deployment(tmp_path / "traced", OTEL_TRACES_EXPORTER="console") as traced:
        item = create(items_stub(traced.inventory_address), customer_id="alice")
        alice = crm_stub(traced.crm_address, "alice")
        alice.GetMyItem(crm_pb2.GetMyItemRequest(id=item.id))
        rpc_error(alice.GetMyItem, crm_pb2.GetMyItemRequest(id=item.id + 1000))
        with grpc.insecure_channel(traced.crm_address) as channel:  # the wrong service's method, traced too
            wrong_port = rpc_error(channel.unary_unary(f"/{ITEMS}/GetItem"), b"", timeout=5)
        crm_spans, inventory_spans = spans(traced.crm.stop()), spans(traced.inventory.stop())

    assert wrong_port.code() == grpc.StatusCode.UNIMPLEMENTED
    assert f"{ITEMS} is not here" in wrong_port.details()

    crm_found, crm_missing = [span for span in crm_spans if span["name"] == f"/{CRM}/GetMyItem"]
    inventory_found, inventory_missing = [span for span in inventory_spans if span["name"] == f"/{ITEMS}/GetItem"]
    assert inventory_found["context"]["trace_id"] == crm_found["context"]["trace_id"]
    assert inventory_missing["context"]["trace_id"] == crm_missing["context"]["trace_id"]
    not_found = grpc.StatusCode.NOT_FOUND.value[0]
    assert [span["attributes"]["rpc.grpc.status_code"] for span in (inventory_found, inventory_missing)] == [
        0,
        not_found,
    ]
    assert crm_missing["attributes"]["rpc.grpc.status_code"] == not_found
    assert {span["resource"]["attributes"]["service.name"] for span in crm_spans} == {"crm"}
    assert {span["resource"]["attributes"]["service.name"] for span in inventory_spans} == {"inventory"}
    assert [span_ids(line) for line in access_lines(traced.crm, f"/{CRM}/GetMyItem")] == [
        span_ids(crm_found),
        span_ids(crm_missing),
    ]
    assert [span_ids(line) for line in access_lines(traced.inventory, f"/{ITEMS}/GetItem")] == [
        span_ids(inventory_found),
        span_ids(inventory_missing),
    ]
    untraced = [line for line in traced.inventory.log_lines() if "listening on" in line["message"]]
    assert untraced and all("trace_id" not in line for line in untraced)


def span_ids(span_or_log_line: dict[str, Any]) -> tuple[str, str]:
    """(trace_id, span_id) as 32 and 16 hex digits: the console exporter writes them with 0x."""
    ids = span_or_log_line.get("context", span_or_log_line)
    return ids["trace_id"].removeprefix("0x"), ids["span_id"].removeprefix("0x")


def test_spans_name_the_service_otel_service_name_gives(tmp_path):
    env = service_env(
        INVENTORY_DATABASE_URL=f"sqlite:///{tmp_path / 'inventory.db'}",
        INVENTORY_LISTEN_ADDRESS="127.0.0.1:0",
        OTEL_TRACES_EXPORTER="console",
        OTEL_SERVICE_NAME="inventory-eu-canary",
    )
    migrate(env["INVENTORY_DATABASE_URL"])
    with service_process("inventory_svc.server", env, tmp_path / "inventory.log") as inventory:
        rpc_error(items_stub(inventory.wait_until_serving()).GetItem, pb.GetItemRequest(id=999))
        found = [span for span in spans(inventory.stop()) if span["name"] == f"/{ITEMS}/GetItem"]

    assert [span["resource"]["attributes"]["service.name"] for span in found] == ["inventory-eu-canary"]


def test_a_stream_cut_by_its_deadline_is_counted_as_deadline_exceeded(services):
    watch = items_stub(services.inventory_address).WatchLowStock(pb.WatchLowStockRequest(), timeout=0.5)
    with pytest.raises(grpc.RpcError) as ended:
        for _ in watch:
            pass
    assert ended.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

    def counted_and_in_flight() -> tuple[float, float]:
        metrics = services.inventory.metrics()
        return (
            sample(
                metrics,
                "grpc_server_handled_total",
                grpc_type="server_stream",
                grpc_service=ITEMS,
                grpc_method="WatchLowStock",
                grpc_code="DEADLINE_EXCEEDED",
            ),
            sample(
                metrics,
                "grpc_server_in_flight",
                grpc_type="server_stream",
                grpc_service=ITEMS,
                grpc_method="WatchLowStock",
            ),
        )

    deadline = time.monotonic() + 10  # the server notices at its next look at the stream
    while counted_and_in_flight() != (1, 0) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert counted_and_in_flight() == (1, 0)
