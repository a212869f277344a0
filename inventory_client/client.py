"""InventoryClient and ReservationClient: inventory.v1.ItemService and ReservationService
over a synchronous grpc.Channel."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from inventory_client import requests
from inventory_client.requests import (
    ItemFilter,
    ItemServiceContract,
    ReservationLines,
    ReservationServiceContract,
    Ttl,
)
from servicekit.client import Page, ServiceClient


class InventoryClient(ItemServiceContract, ServiceClient[inventory_pb2_grpc.ItemServiceStub]):
    """One method per RPC of inventory.v1.ItemService, returning the reply's messages.

    Make one with InventoryClient.connect(target, token) and keep it: it owns a long-lived
    channel. Every call carries the bearer token and a deadline (the remaining time of the
    call being served, when there is one, capped at `timeout_s`) and forwards its request
    id; reads are retried on UNAVAILABLE and CANCELLED by the channel, writes that carry a
    request_id by the client; failures raise servicekit.errors.
    """

    def create_item(self, item: pb.Item, *, request_id: str = "") -> pb.Item:
        """Creates `item` (its writable fields; id, times and etag are the server's) and
        returns it as stored. Pass a request_id (a UUID) to make a retry of this call safe: the
        client then tries again itself when a server going away answers UNAVAILABLE or CANCELLED."""
        request = requests.create_item(item, request_id)
        return self._call(self._stub.CreateItem, request, retry_safe=bool(request_id)).item

    def get_item(self, item_id: int) -> pb.Item:
        """The item; NotFound when there is none with this id."""
        return self._call(self._stub.GetItem, pb.GetItemRequest(id=item_id)).item

    def list_items(self, where: ItemFilter | None = None, *, page_size: int = 0, page_token: str = "") -> Page[pb.Item]:
        """A page of the items matching `where` (all items when None), by id."""
        return Page.of(self._call(self._stub.ListItems, requests.list_items(where, page_size, page_token)))

    def update_item(self, item_id: int, changes: Mapping[str, Any], *, etag: str = "") -> pb.Item:
        """Sets the fields named in `changes` (a None value clears one; money fields take a
        google.type.Money) and returns the item; with `etag`, Conflict if it changed since."""
        return self._call(self._stub.UpdateItem, requests.update_item(item_id, changes, etag)).item

    def delete_item(self, item_id: int, *, etag: str = "") -> None:
        """Deletes the item; with `etag`, Conflict if it changed since."""
        self._call(self._stub.DeleteItem, pb.DeleteItemRequest(id=item_id, etag=etag))

    def list_customer_items(
        self,
        customer_id: str,
        *,
        include_inactive: bool = False,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[pb.Item]:
        """A page of one customer's items (active ones only unless include_inactive)."""
        request = requests.list_customer_items(customer_id, include_inactive, page_size, page_token)
        return Page.of(self._call(self._stub.ListCustomerItems, request))

    def adjust_quantity(
        self,
        item_id: int,
        *,
        delta: int | None = None,
        set_to: int | None = None,
        reason: int = 0,
        note: str = "",
        request_id: str = "",
    ) -> pb.Item:
        """Adds `delta` to the stock, or sets it to `set_to` (give one); `reason` is an
        inventory_pb2.StockMovementReason. Pass a request_id (a UUID) to make a retry
        safe: the client then tries again itself when a server going away answers UNAVAILABLE or CANCELLED."""
        request = requests.adjust_quantity(item_id, delta, set_to, reason, note, request_id)
        return self._call(self._stub.AdjustQuantity, request, retry_safe=bool(request_id)).item

    def batch_adjust_quantities(
        self, changes: Sequence[pb.AdjustQuantityRequest], *, request_id: str = ""
    ) -> Sequence[pb.Item]:
        """Makes every change (built with inventory_client.stock_change) or none; the items
        after, in the order of `changes`. With a request_id a retry is safe, as in adjust_quantity."""
        request = requests.batch_adjust_quantities(changes, request_id)
        return self._call(self._stub.BatchAdjustQuantities, request, retry_safe=bool(request_id)).items

    def list_low_stock_items(
        self,
        *,
        threshold: int | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[pb.Item]:
        """A page of the items at or below their own low-stock threshold, or `threshold`."""
        request = requests.list_low_stock_items(threshold, page_size, page_token)
        return Page.of(self._call(self._stub.ListLowStockItems, request))

    def batch_get_items(self, item_ids: Sequence[int]) -> Sequence[pb.Item]:
        """The items, in the order of `item_ids`; NotFound when one is missing."""
        return self._call(self._stub.BatchGetItems, requests.batch_get_items(item_ids)).items

    def list_stock_movements(
        self,
        item_id: int,
        *,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[pb.StockMovement]:
        """A page of the item's stock movements, newest first (no total_size)."""
        request = requests.list_stock_movements(item_id, page_size, page_token)
        return requests.movements_page(self._call(self._stub.ListStockMovements, request))

    def watch_low_stock(
        self,
        *,
        customer_id: str = "",
        category: str = "",
        after_cursor: int | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[pb.WatchLowStockResponse]:
        """Low-stock events as they happen (`kind` says which; `cursor` is where to resume
        with after_cursor). Runs until `timeout_s`, then raises DeadlineExceeded, or forever
        when None; closing the iterator ends the stream."""
        request = requests.watch_low_stock(customer_id, category, after_cursor)
        return self._stream(self._stub.WatchLowStock, request, timeout_s)


class ReservationClient(ReservationServiceContract, ServiceClient[inventory_pb2_grpc.ReservationServiceStub]):
    """One method per RPC of inventory.v1.ReservationService, returning its inventory.v1.Reservation.

        with ReservationClient.connect("127.0.0.1:50051", token=lambda: my_token) as reservations:
            held = reservations.reserve_stock({42: 2, 43: 1}, ttl=timedelta(minutes=5), reference="cart-7")
            reservations.confirm_reservation(held.id)

    Connect, deadlines, retries and errors as InventoryClient: GetReservation and
    ListReservations are retried by the channel, the other writes only when they carry a
    request_id. A short line raises FailedPrecondition (reason INSUFFICIENT_STOCK, one
    precondition violation per short item); a reservation no longer ACTIVE,
    FailedPrecondition (RESERVATION_NOT_ACTIVE, metadata state)."""

    def reserve_stock(
        self, lines: ReservationLines, *, ttl: Ttl | None = None, reference: str = "", request_id: str = ""
    ) -> pb.Reservation:
        """Holds every line or none: `lines` is {item_id: quantity} (or ReservationLine
        messages), 1 to 100 items. `ttl` (a timedelta, or seconds; 15 minutes when None, 1 s
        to 24 h) is how long the units stay held unless confirmed or released; `reference` is
        your order or cart id. Pass a request_id (a UUID) to make a retry safe, as in
        InventoryClient.adjust_quantity."""
        request = requests.reserve_stock(lines, ttl, reference, request_id)
        return self._call(self._stub.ReserveStock, request, retry_safe=bool(request_id)).reservation

    def confirm_reservation(self, reservation_id: int, *, request_id: str = "") -> pb.Reservation:
        """Sells the held units (they leave stock) and returns the reservation, CONFIRMED. With
        a request_id a retry is safe and answers the first result."""
        request = pb.ConfirmReservationRequest(id=reservation_id, request_id=request_id)
        return self._call(self._stub.ConfirmReservation, request, retry_safe=bool(request_id)).reservation

    def release_reservation(self, reservation_id: int, *, request_id: str = "") -> pb.Reservation:
        """Makes the held units available again and returns the reservation, RELEASED. With a
        request_id a retry is safe and answers the first result."""
        request = pb.ReleaseReservationRequest(id=reservation_id, request_id=request_id)
        return self._call(self._stub.ReleaseReservation, request, retry_safe=bool(request_id)).reservation

    def extend_reservation(self, reservation_id: int, ttl: Ttl) -> pb.Reservation:
        """Moves an ACTIVE reservation's expire_time to `ttl` from now (1 s to 24 h). It takes
        no request_id, so it is never sent twice."""
        request = requests.extend_reservation(reservation_id, ttl)
        return self._call(self._stub.ExtendReservation, request).reservation

    def get_reservation(self, reservation_id: int) -> pb.Reservation:
        """The reservation; NotFound (RESERVATION_NOT_FOUND) when there is none with this id."""
        return self._call(self._stub.GetReservation, pb.GetReservationRequest(id=reservation_id)).reservation

    def list_reservations(
        self,
        *,
        state: int = 0,
        reference: str = "",
        item_id: int = 0,
        page_size: int = 0,
        page_token: str = "",
    ) -> Page[pb.Reservation]:
        """A page of the reservations matching every filter given, by id (no total_size):
        `state` an inventory_pb2.ReservationState (0: any), `reference` exactly, `item_id` an
        item they hold (0: any)."""
        request = requests.list_reservations(state, reference, item_id, page_size, page_token)
        return requests.reservations_page(self._call(self._stub.ListReservations, request))
