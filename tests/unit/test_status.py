"""The error table: every error's status and google.rpc details, the typed clients'
unpacking of them, and the reasons table in docs/api.md, which must list exactly the reasons
the code has."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import crm_svc.service
import inventory_svc.domain
import inventory_svc.reservation_rules
import inventory_svc.stock
from inventory_svc.domain import EtagMismatch, ItemNotFound
from inventory_svc.reservation_rules import InsufficientStock, ReservationNotActive, ReservationState, ShortLine
from inventory_svc.stock import StockWouldGoNegative
from servicekit import errors
from servicekit.calls import error_from_rpc
from servicekit.status import STATUS_FOR_ERROR, error_domain, status_code_for, to_rpc_status

ROOT = Path(__file__).resolve().parents[2]
BOTH_DOMAINS = frozenset({"inventory.v1", "crm.v1"})
DOMAINS_OF_PACKAGE = {
    "servicekit": BOTH_DOMAINS,
    "inventory_svc": frozenset({"inventory.v1"}),
    "crm_svc": frozenset({"crm.v1"}),
}
MODULES_WITH_ERRORS = (
    errors,
    inventory_svc.domain,
    inventory_svc.stock,
    inventory_svc.reservation_rules,
    crm_svc.service,
)


def error_classes() -> list[type[errors.DomainError]]:
    """Every error with a status, from the modules that define them."""
    found, todo = [], [errors.DomainError]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if any(base in STATUS_FOR_ERROR for base in cls.__mro__) and cls.__module__.split(".")[0] in DOMAINS_OF_PACKAGE:
            found.append(cls)
    return found


def code_reasons() -> set[tuple[str, str, str]]:
    rows = set()
    for cls in error_classes():
        status = next(STATUS_FOR_ERROR[base] for base in cls.__mro__ if base in STATUS_FOR_ERROR)
        for domain in DOMAINS_OF_PACKAGE[cls.__module__.split(".")[0]]:
            rows.add((status.name, cls.reason, domain))
    return rows


def documented_reasons() -> set[tuple[str, str, str]]:
    text = (ROOT / "docs/api.md").read_text()
    section = text.split("## Error reasons", 1)[1]
    rows = set()
    for line in section.splitlines():
        match = re.match(r"\| `([A-Z_]+)` \| `([A-Z_]+)` \| ([^|]+) \|", line)
        if match:
            status, reason, domains = match.groups()
            rows.update((status, reason, domain) for domain in re.findall(r"`([a-z.0-9]+)`", domains))
    return rows


def test_every_reason_in_the_code_is_in_the_docs_table_and_no_other():
    assert MODULES_WITH_ERRORS  # imported so that their classes are subclasses
    assert code_reasons() == documented_reasons()


@pytest.mark.parametrize(
    ("proto", "domain"),
    [("protos/inventory/v1/inventory.proto", "inventory.v1"), ("protos/crm/v1/crm.proto", "crm.v1")],
)
def test_each_contract_lists_the_reasons_of_its_domain_under_their_status(proto, domain):
    comment = (ROOT / proto).read_text().split("\nservice ", 1)[0]
    listed = set()
    status = ""
    for line in re.findall(r"^//   (.*)$", comment, flags=re.MULTILINE):
        words = line.split()
        if not line.startswith(" "):  # a status; indented lines go on with its reasons
            status = words.pop(0)
        listed.update((status, word, domain) for word in re.findall(r"\b[A-Z][A-Z_]{3,}\b", " ".join(words)))
    expected = {row for row in code_reasons() if row[2] == domain}

    assert expected <= listed
    assert {reason for _, reason, _ in listed - expected} <= {"STOCK", "ETAG", "STATE"}  # PreconditionFailure types


def test_each_error_class_has_a_reason_of_its_own_within_its_domain():
    reasons: dict[tuple[str, str], type[errors.DomainError]] = {}
    for cls in error_classes():
        assert re.fullmatch(r"[A-Z][A-Z_]*[A-Z]", cls.reason), cls
        for domain in DOMAINS_OF_PACKAGE[cls.__module__.split(".")[0]]:
            assert reasons.setdefault((domain, cls.reason), cls) is cls, f"{cls} shares {cls.reason} in {domain}"


def details_of(error: errors.DomainError, domain: str = "inventory.v1") -> dict[str, object]:
    status = to_rpc_status(error, domain)
    proto = rpc_status.status_pb2.Status.FromString(dict(status.trailing_metadata)["grpc-status-details-bin"])
    found: dict[str, object] = {}
    for detail in proto.details:
        for kind in (
            error_details_pb2.ErrorInfo,
            error_details_pb2.BadRequest,
            error_details_pb2.PreconditionFailure,
            error_details_pb2.RetryInfo,
        ):
            message = kind()
            if detail.Unpack(message):
                found[kind.__name__] = message
    return found


def test_error_domain_is_the_package_of_the_method():
    assert error_domain("/inventory.v1.ItemService/GetItem") == "inventory.v1"
    assert error_domain("/crm.v1.CustomerItemsService/GetMyItem") == "crm.v1"


def test_every_answer_carries_error_info_with_the_class_reason_and_metadata():
    info = details_of(ItemNotFound(7))["ErrorInfo"]

    assert (info.reason, info.domain, dict(info.metadata)) == ("ITEM_NOT_FOUND", "inventory.v1", {"item_id": "7"})


def test_all_field_violations_go_in_one_bad_request():
    error = errors.InvalidField.of([errors.FieldViolation("a", "x"), errors.FieldViolation("b", "y")])

    bad_request = details_of(error)["BadRequest"]

    assert [(v.field, v.description) for v in bad_request.field_violations] == [("a", "x"), ("b", "y")]


@pytest.mark.parametrize(
    ("error", "kind"),
    [(StockWouldGoNegative(3), "STOCK"), (EtagMismatch(3, "1"), "ETAG")],
)
def test_stock_and_etag_failures_carry_a_precondition_failure_on_the_item(error, kind):
    (violation,) = details_of(error)["PreconditionFailure"].violations

    assert (violation.type, violation.subject) == (kind, "items/3")


@pytest.mark.parametrize(
    ("error", "delay_s"),
    [
        (errors.TooManyCalls("busy"), 1.0),
        (errors.ShuttingDown("bye"), 0.1),
        (crm_svc.service.InventoryUnavailable("down"), 0.1),
    ],
)
def test_unavailable_and_resource_exhausted_carry_retry_info(error, delay_s):
    info = details_of(error, "crm.v1")["RetryInfo"]

    assert info.retry_delay.ToNanoseconds() == int(delay_s * 1e9)


class AnsweredCall(grpc.RpcError):
    """What a failed call raises client side, built from a server's status."""

    def __init__(self, status: grpc.Status) -> None:
        self._status = status

    def code(self) -> grpc.StatusCode:
        return self._status.code

    def details(self) -> str:
        return self._status.details

    def trailing_metadata(self) -> tuple[tuple[str, bytes], ...]:
        return self._status.trailing_metadata


# Errors built from domain objects rather than ids and messages.
SAMPLE_ARGUMENTS: dict[type[errors.DomainError], tuple[object, ...]] = {
    InsufficientStock: ([ShortLine(3, 5, 2), ShortLine(4, 1, 0)],),
    ReservationNotActive: (5, ReservationState.EXPIRED),
}


def instance_of(cls: type[errors.DomainError]) -> errors.DomainError:
    if cls in SAMPLE_ARGUMENTS:
        return cls(*SAMPLE_ARGUMENTS[cls])  # type: ignore[call-arg]
    if issubclass(cls, errors.InvalidField) and cls.__init__ is errors.InvalidField.__init__:
        return cls("item.sku", "is required")
    for arguments in ((), ("a message",), (5,), (5, "1")):
        try:
            return cls(*arguments)  # type: ignore[arg-type]  # tried by arity
        except TypeError:
            continue
    raise AssertionError(f"cannot build {cls}")


@pytest.mark.parametrize("cls", error_classes(), ids=lambda cls: f"{cls.__module__}.{cls.__name__}")
def test_a_typed_client_reads_back_every_reason_and_detail(cls):
    sent = instance_of(cls)

    received = error_from_rpc(AnsweredCall(to_rpc_status(sent, "inventory.v1")))

    assert status_code_for(received) == status_code_for(sent)
    assert (received.reason, received.domain, received.metadata) == (sent.reason, "inventory.v1", sent.metadata)
    assert received.field_violations == sent.field_violations
    assert received.precondition_violations == sent.precondition_violations
    assert received.retry_after_s == sent.retry_after_s
    assert str(received) == str(sent)


def trailer_bytes(status: grpc.Status) -> int:
    """What the answer's trailers take on the wire: grpc-message percent-encoded, the rest as sent."""
    message = status.details.encode()
    encoded = sum(1 if 0x20 <= byte < 0x7F and byte != 0x25 else 3 for byte in message)
    return encoded + sum(len(key) + len(value) for key, value in status.trailing_metadata)


def test_an_answer_naming_many_items_stays_within_the_trailers_a_client_accepts():
    short = [ShortLine(10**18 + n, 2**31 - 1, 2) for n in range(100)]

    status = to_rpc_status(InsufficientStock(short), "inventory.v1")

    assert trailer_bytes(status) < 8192  # grpc's default soft limit
    assert len(details_of(InsufficientStock(short))["PreconditionFailure"].violations) == 20
    assert status.details.endswith("(the details name the first 20 of 100)")


def test_long_text_far_from_ascii_in_every_violation_still_fits():
    error = errors.InvalidField.of([errors.FieldViolation("é" * 1000, "一" * 1000)] * 100, message="💥" * 5000)

    status = to_rpc_status(error, "inventory.v1")

    assert trailer_bytes(status) < 8192
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert status.details.endswith("of 100)")
