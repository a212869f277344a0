"""Use cases of the item service: check the rules, then work through a unit of work."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from inventory_svc.domain import (
    MAX_QUANTITY_VALUE,
    EtagMismatch,
    Item,
    ItemFields,
    ItemHasReservations,
    ItemKeptChanging,
    ItemNotFound,
    ItemQuery,
    Page,
    apply_changes,
    check_id,
    check_text,
    page_limit,
    validate_item_fields,
)
from inventory_svc.idempotency import canonical_request_id, replay, request_fingerprint
from inventory_svc.item_cache import ItemCache
from inventory_svc.ledger import record_movement
from inventory_svc.ports import UnitOfWork, UnitOfWorkFactory
from inventory_svc.reservations import ReservationService
from inventory_svc.stock import (
    MovementReason,
    StockChange,
    StockMovement,
    StockReserved,
    checked_stock_change,
    stock_refusal,
)
from inventory_svc.watches import LowStockSignal, LowStockWatches
from servicekit.errors import DomainError, FieldChecks, InvalidField
from servicekit.page_tokens import PagePosition, decode_page_token, encode_page_token, query_fingerprint

# Optimistic update attempts when the caller sent no etag and others keep changing the item.
UPDATE_ATTEMPTS = 3
MAX_BATCH_SIZE = 100
DEFAULT_REQUEST_ID_TTL_S = 24 * 3600.0
MAX_VERSION = 2**31 - 1  # an item's version, and so its etag, is a 32-bit counter


def _version_from_etag(etag: str, field: str) -> int:
    # Versions are 32-bit counters: a longer digit string was never issued.
    if not (etag.isascii() and etag.isdigit() and len(etag) <= 10 and int(etag) <= MAX_VERSION):
        raise InvalidField(field, "is not an etag issued by this service")
    return int(etag)


def _request_parts(change: StockChange) -> tuple[object, ...]:
    """What a request_id of AdjustQuantity is stored with (kept as it was before StockChange,
    so that keys stored by an earlier release still match their retries)."""
    return (change.item_id, change.delta, change.set_to, change.reason, change.note)


class ItemService:
    def __init__(
        self,
        unit_of_work: UnitOfWorkFactory,
        *,
        low_stock_signal: LowStockSignal | None = None,
        request_id_ttl_s: float = DEFAULT_REQUEST_ID_TTL_S,
        max_watchers: int = 8,
        max_watches_per_subject: int = 2,
        item_cache: ItemCache | None = None,
    ) -> None:
        """`item_cache` answers GetItem while its invalidation is live (see item_cache)."""
        self._unit_of_work = unit_of_work
        self._cache = item_cache or ItemCache(capacity=0)
        self._request_id_ttl_s = request_id_ttl_s
        self.reservations = ReservationService(unit_of_work, request_id_ttl_s=request_id_ttl_s, item_cache=self._cache)
        self.watches = LowStockWatches(
            unit_of_work,
            low_stock_signal or LowStockSignal(),
            max_watchers=max_watchers,
            max_watches_per_subject=max_watches_per_subject,
        )

    def create_item(self, fields: ItemFields, *, principal: str = "", request_id: str = "") -> Item:
        validate_item_fields(fields)
        request_id = canonical_request_id(request_id)
        with self._unit_of_work(for_write=True, at_once=True) as uow:
            if uow.at_once is not None:
                item = uow.at_once.add_item(
                    fields,
                    principal=principal,
                    request_id=request_id,
                    method="CreateItem",
                    fingerprint=request_fingerprint("CreateItem", fields),
                )
                if item is not None:
                    uow.commit()
                    return item
            else:
                return self._create_item(uow, fields, principal, request_id)
        # A clash (sku, request_id) wrote nothing: the ordinary way tells which it was.
        with self._unit_of_work(for_write=True) as uow:
            return self._create_item(uow, fields, principal, request_id)

    def _create_item(self, uow: UnitOfWork, fields: ItemFields, principal: str, request_id: str) -> Item:
        if request_id:
            # The ids' lock before the request_id, as the one-statement way takes them: a
            # retry racing down that way must not wait on us while we wait on it.
            uow.items.lock_new_ids()
        replayed = replay(uow, self._request_id_ttl_s, request_id, Item, "CreateItem", fields)
        if replayed is not None:
            return replayed
        item = uow.items.add(fields)
        record_movement(uow, None, item, MovementReason.ITEM_CREATED, principal=principal, request_id=request_id)
        if request_id:
            uow.request_ids.complete(request_id, item)
        uow.commit()
        return item

    def batch_get_items(self, item_ids: Sequence[int]) -> list[Item]:
        if not 1 <= len(item_ids) <= MAX_BATCH_SIZE:
            raise InvalidField("ids", f"must name 1 to {MAX_BATCH_SIZE} items")
        if any(item_id <= 0 for item_id in item_ids):
            raise InvalidField("ids", "must all be greater than zero")
        with self._unit_of_work() as uow:
            found = uow.items.get_many(item_ids)
        missing = sorted(set(item_ids) - set(found))
        if missing:
            raise ItemNotFound.among(missing)
        return [found[item_id] for item_id in item_ids]

    def list_stock_movements(self, item_id: int, page_size: int, page_token: str) -> Page[StockMovement]:
        check_id(item_id, "item_id")
        limit = page_limit(page_size)
        fingerprint = query_fingerprint("stock-movements", item_id)
        before_id = decode_page_token(page_token, fingerprint).after_id if page_token else None
        with self._unit_of_work() as uow:
            found = uow.movements.list_page(item_id, before_id, limit + 1)
            if not found and before_id is None and not uow.items.get(item_id):
                raise ItemNotFound(item_id)
        page = found[:limit]
        next_token = encode_page_token(PagePosition(page[-1].id), fingerprint) if len(found) > limit else ""
        return Page(page, next_token)

    def purge_expired_request_ids(self) -> int:
        with self._unit_of_work(for_write=True) as uow:
            purged = uow.request_ids.purge_expired(self._request_id_ttl_s)
            uow.commit()
        return purged

    def cached_item(self, item_id: int) -> Item | None:
        """The item if the cache holds it: no database, nothing that blocks."""
        check_id(item_id, "id")
        return self._cache.get(item_id)

    def get_item(self, item_id: int) -> Item:
        cached = self.cached_item(item_id)
        if cached is not None:
            return cached
        generation, read_at = self._cache.generation(), time.monotonic()
        with self._unit_of_work() as uow:
            item = uow.items.get(item_id)
        if item is None:
            raise ItemNotFound(item_id)
        self._cache.put(item, generation, read_at)
        return item

    def list_items(self, query: ItemQuery, page_size: int, page_token: str) -> Page[Item]:
        query.check()
        return self._page("items", query, page_size, page_token)

    def list_customer_items(
        self, customer_id: str, include_inactive: bool, page_size: int, page_token: str
    ) -> Page[Item]:
        check_text("customer_id", customer_id, 100, required=True)
        query = ItemQuery(customer_id=customer_id, is_active=None if include_inactive else True)
        return self._page("customer-items", query, page_size, page_token)

    def list_low_stock_items(self, threshold: int | None, page_size: int, page_token: str) -> Page[Item]:
        if threshold is not None and threshold < 0:
            raise InvalidField("threshold", "must be zero or more")
        query = ItemQuery(is_active=True, low_stock_only=threshold is None, low_stock_at_most=threshold)
        return self._page("low-stock", query, page_size, page_token)

    def update_item(self, item_id: int, changes: Mapping[str, Any], etag: str, *, principal: str = "") -> Item:
        check_id(item_id, "item.id")
        expected_version = _version_from_etag(etag, "item.etag") if etag else None
        for _ in range(UPDATE_ATTEMPTS):
            with self._unit_of_work(for_write=True) as uow:
                current = uow.items.get(item_id)
                if current is None:
                    raise ItemNotFound(item_id)
                if expected_version is not None and current.version != expected_version:
                    raise EtagMismatch(item_id, etag)
                fields = apply_changes(current, changes)
                validate_item_fields(fields)
                if fields.quantity < current.reserved_quantity:
                    raise StockReserved(item_id, current.reserved_quantity)
                updated = uow.items.replace_fields(item_id, current.version, fields)
                if updated is not None:
                    record_movement(uow, current, updated, MovementReason.ITEM_UPDATED, principal=principal)
                    uow.commit()
                    self._cache.invalidate(item_id)  # now: this replica's readers must see their own write
                    return updated
            if expected_version is not None:
                raise EtagMismatch(item_id, etag)
        raise ItemKeptChanging(item_id)

    def delete_item(self, item_id: int, etag: str, *, principal: str = "") -> None:
        check_id(item_id, "id")
        expected_version = _version_from_etag(etag, "etag") if etag else None
        with self._unit_of_work(for_write=True) as uow:
            deleted = uow.items.delete(item_id, expected_version)
            if deleted is None:
                current = uow.items.get(item_id)
                if current is None:
                    raise ItemNotFound(item_id)
                if expected_version is not None and current.version != expected_version:
                    raise EtagMismatch(item_id, etag)
                raise ItemHasReservations(item_id, current.reserved_quantity)
            record_movement(uow, deleted, None, MovementReason.ITEM_DELETED, principal=principal)
            uow.commit()
        self._cache.invalidate(item_id)

    def adjust_quantity(
        self,
        item_id: int,
        *,
        delta: int | None = None,
        set_to: int | None = None,
        reason: MovementReason | None = None,
        note: str = "",
        principal: str = "",
        request_id: str = "",
    ) -> Item:
        change = StockChange(item_id, delta, set_to, reason, note)
        return self.change_stock(change, principal=principal, request_id=request_id)

    def change_stock(self, change: StockChange, *, principal: str = "", request_id: str = "") -> Item:
        """AdjustQuantity: one change of one item's stock."""
        change = checked_stock_change(change)
        request_id = canonical_request_id(request_id)
        after = None
        with self._unit_of_work(for_write=True, at_once=change.delta is not None) as uow:
            if uow.at_once is not None and change.delta is not None:
                after = uow.at_once.add_to_quantity(
                    change.item_id,
                    change.delta,
                    MAX_QUANTITY_VALUE,
                    change.reason or MovementReason.OTHER,
                    note=change.note,
                    principal=principal,
                    request_id=request_id,
                    method="AdjustQuantity",
                    fingerprint=request_fingerprint("AdjustQuantity", *_request_parts(change)),
                )
                if after is not None:
                    uow.commit()
            else:
                after = self._adjust_quantity(uow, change, principal, request_id)
        if after is None:
            # Nothing was written (a missing item, a bound, a request_id used before): the
            # ordinary way tells which, and answers a replay with its first result.
            with self._unit_of_work(for_write=True) as uow:
                after = self._adjust_quantity(uow, change, principal, request_id)
        self._cache.invalidate(change.item_id)
        return after

    def _adjust_quantity(self, uow: UnitOfWork, change: StockChange, principal: str, request_id: str) -> Item:
        if request_id:
            # The item before the request_id, as the one-statement way takes them: a retry
            # racing down that way must not wait on us while we wait on it.
            uow.items.lock([change.item_id])
        replayed = replay(uow, self._request_id_ttl_s, request_id, Item, "AdjustQuantity", *_request_parts(change))
        if replayed is not None:
            return replayed
        after = self._change_stock(uow, change, principal, request_id)
        if request_id:
            uow.request_ids.complete(request_id, after)
        uow.commit()
        return after

    def _change_stock(self, uow: UnitOfWork, change: StockChange, principal: str, request_id: str) -> Item:
        """Makes one checked change in `uow` with its ledger row, or raises why it cannot."""
        before, after = self._move_stock(uow, change)
        self._record_change(uow, before, after, change, principal, request_id)
        return after

    @staticmethod
    def _move_stock(uow: UnitOfWork, change: StockChange) -> tuple[Item, Item]:
        """The item before and after one checked change in `uow`, or why it cannot be made."""
        if change.delta is not None:
            after = uow.items.add_to_quantity(change.item_id, change.delta, MAX_QUANTITY_VALUE)
            before = replace(after, quantity=after.quantity - change.delta) if after else None
        else:
            before = uow.items.get_for_update(change.item_id)
            after = uow.items.set_quantity(change.item_id, change.set_to or 0) if before else None
        if before is None or after is None:
            raise stock_refusal(uow.items.get(change.item_id), change)
        return before, after

    def _record_change(
        self, uow: UnitOfWork, before: Item, after: Item, change: StockChange, principal: str, request_id: str
    ) -> None:
        reason = change.reason or MovementReason.OTHER
        record_movement(uow, before, after, reason, note=change.note, principal=principal, request_id=request_id)

    def batch_adjust_quantities(
        self, changes: Sequence[StockChange], *, principal: str = "", request_id: str = ""
    ) -> list[Item]:
        """Every change or none, in one transaction; items in the order of `changes`."""
        if not 1 <= len(changes) <= MAX_BATCH_SIZE:
            raise InvalidField("requests", f"must hold 1 to {MAX_BATCH_SIZE} changes, got {len(changes)}")
        checks = FieldChecks()
        checked: list[StockChange] = []
        first_of: dict[int, int] = {}
        for index, change in enumerate(changes):
            try:
                checked.append(checked_stock_change(change, f"requests[{index}]."))
            except InvalidField as error:
                checks.violations.extend(error.field_violations)
            if change.item_id in first_of:
                checks.fail(f"requests[{index}].id", f"names the item of requests[{first_of[change.item_id]}] again")
            first_of.setdefault(change.item_id, index)
        checks.raise_if_any()
        request_id = canonical_request_id(request_id)
        with self._unit_of_work(for_write=True) as uow:
            replayed = replay(
                uow,
                self._request_id_ttl_s,
                request_id,
                tuple,
                "BatchAdjustQuantities",
                *(_request_parts(change) for change in checked),
            )
            if replayed is not None:
                return list(replayed)
            moved: dict[int, tuple[Item, Item]] = {}
            # In the order of item ids, as every writer of several items locks them, and every
            # item before any ledger row (whose low-stock events take a lock of their own): no
            # deadlock.
            for index, change in sorted(enumerate(checked), key=lambda indexed: indexed[1].item_id):
                try:
                    moved[index] = self._move_stock(uow, change)
                except DomainError as error:
                    error.metadata["request_index"] = str(index)
                    raise
            for index, (before, after) in sorted(moved.items(), key=lambda entry: entry[1][1].id):
                self._record_change(uow, before, after, checked[index], principal, request_id)
            items = [moved[index][1] for index in range(len(checked))]
            if request_id:
                uow.request_ids.complete(request_id, tuple(items))
            uow.commit()
        for item in items:
            self._cache.invalidate(item.id)
        return items

    def _page(self, kind: str, query: ItemQuery, page_size: int, page_token: str) -> Page[Item]:
        limit = page_limit(page_size)
        fingerprint = query_fingerprint(kind, query)
        # The total is counted on the first page only and carried by the token: counting
        # every match again costs more than the page itself on a large table.
        position = decode_page_token(page_token, fingerprint) if page_token else None
        with self._unit_of_work() as uow:
            if position is None:
                found, total = uow.items.first_page(query, limit + 1)
            else:
                found = uow.items.list_page(query, position.after_id, limit + 1)
                total = position.total
        page = found[:limit]
        next_token = encode_page_token(PagePosition(page[-1].id, total), fingerprint) if len(found) > limit else ""
        return Page(page, next_token, total)
