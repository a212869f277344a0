"""The requests of inventory.v1.ItemService and ReservationService, built from plain Python
parameters: what the synchronous and the asyncio clients share, so that both send exactly the
same thing."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import timedelta
from decimal import Decimal
from typing import Any

from google.protobuf import duration_pb2, field_mask_pb2
from google.type import money_pb2

from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from servicekit.client import Page

_NANOS_PER_UNIT = 1_000_000_000


def money(currency_code: str, amount: str | int | Decimal) -> money_pb2.Money:
    """A google.type.Money for an exact amount: money("USD", "2.50")."""
    total = int(Decimal(amount) * _NANOS_PER_UNIT)
    units, nanos = divmod(abs(total), _NANOS_PER_UNIT)
    sign = -1 if total < 0 else 1
    return money_pb2.Money(currency_code=currency_code, units=sign * units, nanos=sign * nanos)


@dataclass(frozen=True, slots=True)
class ItemFilter:
    """The filters of ListItems (its request's fields of the same names); each one left at
    its default filters nothing, and the ones given must all match."""

    category: str = ""
    brand: str = ""
    customer_id: str = ""
    is_active: bool | None = None
    name_contains: str = ""
    # Words that must all appear in the name, description, SKU, category or brand.
    query: str = ""
    min_price: money_pb2.Money | None = None
    max_price: money_pb2.Money | None = None
    min_quantity: int | None = None
    max_quantity: int | None = None
    in_stock_only: bool = False
    low_stock_only: bool = False

    def request(self, page_size: int, page_token: str) -> pb.ListItemsRequest:
        # The constructor leaves a None unset, so optional fields keep their presence right.
        values = {field.name: getattr(self, field.name) for field in fields(self)}
        return pb.ListItemsRequest(page_size=page_size, page_token=page_token, **values)


def create_item(item: pb.Item, request_id: str) -> pb.CreateItemRequest:
    return pb.CreateItemRequest(item=item, request_id=request_id)


def list_items(where: ItemFilter | None, page_size: int, page_token: str) -> pb.ListItemsRequest:
    return (where or ItemFilter()).request(page_size, page_token)


def update_item(item_id: int, changes: Mapping[str, Any], etag: str) -> pb.UpdateItemRequest:
    """The UpdateItemRequest that changes exactly the fields named in `changes`; a None
    value clears the field."""
    item = pb.Item(id=item_id, etag=etag, **{name: value for name, value in changes.items() if value is not None})
    return pb.UpdateItemRequest(item=item, update_mask=field_mask_pb2.FieldMask(paths=sorted(changes)))


def list_customer_items(
    customer_id: str,
    include_inactive: bool,
    page_size: int,
    page_token: str,
) -> pb.ListCustomerItemsRequest:
    return pb.ListCustomerItemsRequest(
        customer_id=customer_id, include_inactive=include_inactive, page_size=page_size, page_token=page_token
    )


def adjust_quantity(
    item_id: int,
    delta: int | None,
    set_to: int | None,
    reason: int,
    note: str,
    request_id: str,
) -> pb.AdjustQuantityRequest:
    request = pb.AdjustQuantityRequest(
        id=item_id, reason=pb.StockMovementReason.ValueType(reason), note=note, request_id=request_id
    )
    if delta is not None:
        request.delta = delta
    if set_to is not None:  # the oneof keeps the last one set, as the constructor did
        request.set_quantity = set_to
    return request


def stock_change(
    item_id: int, *, delta: int | None = None, set_to: int | None = None, reason: int = 0, note: str = ""
) -> pb.AdjustQuantityRequest:
    """One change of a batch_adjust_quantities call (give delta or set_to)."""
    return adjust_quantity(item_id, delta, set_to, reason, note, "")


def batch_adjust_quantities(
    changes: Sequence[pb.AdjustQuantityRequest], request_id: str
) -> pb.BatchAdjustQuantitiesRequest:
    return pb.BatchAdjustQuantitiesRequest(requests=changes, request_id=request_id)


def list_low_stock_items(threshold: int | None, page_size: int, page_token: str) -> pb.ListLowStockItemsRequest:
    return pb.ListLowStockItemsRequest(threshold=threshold, page_size=page_size, page_token=page_token)


def batch_get_items(item_ids: Sequence[int]) -> pb.BatchGetItemsRequest:
    return pb.BatchGetItemsRequest(ids=item_ids)


def list_stock_movements(item_id: int, page_size: int, page_token: str) -> pb.ListStockMovementsRequest:
    return pb.ListStockMovementsRequest(item_id=item_id, page_size=page_size, page_token=page_token)


def watch_low_stock(customer_id: str, category: str, after_cursor: int | None) -> pb.WatchLowStockRequest:
    return pb.WatchLowStockRequest(customer_id=customer_id, category=category, after_cursor=after_cursor)


def movements_page(reply: pb.ListStockMovementsResponse) -> Page[pb.StockMovement]:
    return Page(reply.movements, reply.next_page_token)


class ItemServiceContract:
    """What both clients say of inventory.v1.ItemService: its stub and its descriptor, whose
    reads (marked NO_SIDE_EFFECTS) the channel retries on UNAVAILABLE."""

    stub_class = inventory_pb2_grpc.ItemServiceStub  # a grpc.aio channel takes the same stub
    service = pb.DESCRIPTOR.services_by_name["ItemService"]


# Lines of a reservation: {item_id: quantity}, or ReservationLine messages (a reservation's own).
ReservationLines = Mapping[int, int] | Iterable[pb.ReservationLine]
# A reservation's time to live: a timedelta, or seconds.
Ttl = timedelta | float


def duration(ttl: Ttl) -> duration_pb2.Duration:
    message = duration_pb2.Duration()
    message.FromTimedelta(ttl if isinstance(ttl, timedelta) else timedelta(seconds=ttl))
    return message


def reserve_stock(lines: ReservationLines, ttl: Ttl | None, reference: str, request_id: str) -> pb.ReserveStockRequest:
    if isinstance(lines, Mapping):
        lines = [pb.ReservationLine(item_id=item_id, quantity=quantity) for item_id, quantity in lines.items()]
    return pb.ReserveStockRequest(
        lines=lines, ttl=None if ttl is None else duration(ttl), reference=reference, request_id=request_id
    )


def extend_reservation(reservation_id: int, ttl: Ttl) -> pb.ExtendReservationRequest:
    return pb.ExtendReservationRequest(id=reservation_id, ttl=duration(ttl))


def list_reservations(
    state: int, reference: str, item_id: int, page_size: int, page_token: str
) -> pb.ListReservationsRequest:
    return pb.ListReservationsRequest(
        state=pb.ReservationState.ValueType(state),
        reference=reference,
        item_id=item_id,
        page_size=page_size,
        page_token=page_token,
    )


def reservations_page(reply: pb.ListReservationsResponse) -> Page[pb.Reservation]:
    return Page(reply.reservations, reply.next_page_token)


class ReservationServiceContract:
    """What both reservation clients say of inventory.v1.ReservationService: its stub and
    its descriptor, whose reads (GetReservation, ListReservations) the channel retries."""

    stub_class = inventory_pb2_grpc.ReservationServiceStub
    service = pb.DESCRIPTOR.services_by_name["ReservationService"]
