"""Use cases of the item service: check the rules, then work through a unit of work."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol

from inventory_svc.domain import (
    MAX_QUANTITY_VALUE,
    Item,
    ItemFields,
    ItemQuery,
    Page,
    StockWouldGoNegative,
    StockWouldOverflow,
    apply_changes,
    check_currency_code,
    validate_item_fields,
)
from servicekit.errors import Conflict, InvalidField, NotFound
from servicekit.page_tokens import decode_page_token, encode_page_token, query_fingerprint

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
MAX_QUERY_LENGTH = 100
# Optimistic update attempts when the caller sent no etag and others keep changing the item.
UPDATE_ATTEMPTS = 3


class ItemRepository(Protocol):
    def add(self, fields: ItemFields) -> Item: ...
    def get(self, item_id: int) -> Item | None: ...
    def list_page(self, query: ItemQuery, after_id: int, limit: int) -> list[Item]: ...
    def count(self, query: ItemQuery) -> int: ...
    def replace_fields(self, item_id: int, expected_version: int, fields: ItemFields) -> Item | None: ...
    def delete(self, item_id: int, expected_version: int | None) -> bool: ...
    def add_to_quantity(self, item_id: int, delta: int, ceiling: int) -> Item | None: ...
    def set_quantity(self, item_id: int, quantity: int) -> Item | None: ...


class UnitOfWork(Protocol):
    items: ItemRepository

    def __enter__(self) -> "UnitOfWork": ...
    def __exit__(self, *exc_info: object) -> None: ...
    def commit(self) -> None: ...


UnitOfWorkFactory = Callable[..., UnitOfWork]  # called as factory(for_write=bool)


def _check_id(item_id: int, field: str) -> None:
    if item_id <= 0:
        raise InvalidField(field, "must be greater than zero")


def _version_from_etag(etag: str, field: str) -> int:
    if not (etag.isascii() and etag.isdigit()):
        raise InvalidField(field, "is not an etag issued by this service")
    return int(etag)


def _page_limit(page_size: int) -> int:
    if page_size < 0:
        raise InvalidField("page_size", "must be zero or more")
    return min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


def _check_query(query: ItemQuery) -> None:
    if len(query.text) > MAX_QUERY_LENGTH:
        raise InvalidField("query", f"must be at most {MAX_QUERY_LENGTH} characters")
    if len(query.name_contains) > 255:
        raise InvalidField("name_contains", "must be at most 255 characters")
    for field, bound in (("min_price", query.min_price), ("max_price", query.max_price)):
        if bound is not None and bound.currency_code:
            check_currency_code(f"{field}.currency_code", bound.currency_code)


class ItemService:
    def __init__(self, unit_of_work: UnitOfWorkFactory) -> None:
        self._unit_of_work = unit_of_work

    def create_item(self, fields: ItemFields) -> Item:
        validate_item_fields(fields)
        with self._unit_of_work(for_write=True) as uow:
            item = uow.items.add(fields)
            uow.commit()
        return item

    def get_item(self, item_id: int) -> Item:
        _check_id(item_id, "id")
        with self._unit_of_work() as uow:
            item = uow.items.get(item_id)
        if item is None:
            raise NotFound(f"item {item_id} not found")
        return item

    def list_items(self, query: ItemQuery, page_size: int, page_token: str) -> Page:
        _check_query(query)
        return self._page("items", query, page_size, page_token)

    def list_customer_items(
        self, customer_id: str, include_inactive: bool, page_size: int, page_token: str
    ) -> Page:
        if not customer_id.strip() or len(customer_id) > 100:
            raise InvalidField("customer_id", "is required, at most 100 characters")
        query = ItemQuery(customer_id=customer_id, is_active=None if include_inactive else True)
        return self._page("customer-items", query, page_size, page_token)

    def list_low_stock_items(self, threshold: int | None, page_size: int, page_token: str) -> Page:
        if threshold is not None and threshold < 0:
            raise InvalidField("threshold", "must be zero or more")
        query = ItemQuery(
            is_active=True, low_stock_only=threshold is None, low_stock_at_most=threshold
        )
        return self._page("low-stock", query, page_size, page_token)

    def update_item(self, item_id: int, changes: Mapping[str, Any], etag: str) -> Item:
        _check_id(item_id, "item.id")
        expected_version = _version_from_etag(etag, "item.etag") if etag else None
        for _ in range(UPDATE_ATTEMPTS):
            with self._unit_of_work(for_write=True) as uow:
                current = uow.items.get(item_id)
                if current is None:
                    raise NotFound(f"item {item_id} not found")
                if expected_version is not None and current.version != expected_version:
                    raise Conflict(f"item {item_id} changed since etag {etag}: read it again")
                fields = apply_changes(current, changes)
                validate_item_fields(fields)
                updated = uow.items.replace_fields(item_id, current.version, fields)
                if updated is not None:
                    uow.commit()
                    return updated
            if expected_version is not None:
                raise Conflict(f"item {item_id} changed since etag {etag}: read it again")
        raise Conflict(f"item {item_id} kept changing while being updated: try again")

    def delete_item(self, item_id: int, etag: str) -> None:
        _check_id(item_id, "id")
        expected_version = _version_from_etag(etag, "etag") if etag else None
        with self._unit_of_work(for_write=True) as uow:
            if not uow.items.delete(item_id, expected_version):
                if expected_version is not None and uow.items.get(item_id) is not None:
                    raise Conflict(f"item {item_id} changed since etag {etag}: read it again")
                raise NotFound(f"item {item_id} not found")
            uow.commit()

    def adjust_quantity(self, item_id: int, *, delta: int | None = None, set_to: int | None = None) -> Item:
        _check_id(item_id, "id")
        if (delta is None) == (set_to is None):
            raise InvalidField("change", "set exactly one of delta or set_quantity")
        if delta == 0:
            raise InvalidField("delta", "must not be zero")
        if set_to is not None and set_to < 0:
            raise InvalidField("set_quantity", "must be zero or more")
        with self._unit_of_work(for_write=True) as uow:
            if delta is not None:
                item = uow.items.add_to_quantity(item_id, delta, MAX_QUANTITY_VALUE)
            else:
                item = uow.items.set_quantity(item_id, set_to or 0)
            if item is None:
                if uow.items.get(item_id) is None:
                    raise NotFound(f"item {item_id} not found")
                raise StockWouldGoNegative(item_id) if (delta or 0) < 0 else StockWouldOverflow(item_id)
            uow.commit()
        return item

    def _page(self, kind: str, query: ItemQuery, page_size: int, page_token: str) -> Page:
        limit = _page_limit(page_size)
        fingerprint = query_fingerprint(kind, query)
        after_id = decode_page_token(page_token, fingerprint) if page_token else 0
        with self._unit_of_work() as uow:
            found = uow.items.list_page(query, after_id, limit + 1)
            total = uow.items.count(query)
        page = found[:limit]
        next_token = encode_page_token(page[-1].id, fingerprint) if len(found) > limit else ""
        return Page(page, next_token, total)
