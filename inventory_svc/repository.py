"""The only module that speaks SQL: the items table, its repository and the unit of work."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Iterable

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    ColumnElement,
    Connection,
    DateTime,
    Dialect,
    Engine,
    Float,
    Index,
    Integer,
    Select,
    String,
    Text,
    UniqueConstraint,
    and_,
    delete,
    event,
    func,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from inventory_svc.domain import Item, ItemFields, ItemQuery, Money
from servicekit.errors import AlreadyExists


class UtcDateTime(TypeDecorator[datetime]):
    """Stores UTC without a zone (the same on both databases), reads back zone-aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.astimezone(timezone.utc).replace(tzinfo=None) if value else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=timezone.utc) if value else value


class Base(DeclarativeBase):
    pass


class ItemRow(Base):
    __tablename__ = "items"
    __table_args__ = (
        CheckConstraint("quantity >= 0", name="ck_items_quantity_not_negative"),
        UniqueConstraint("sku", name="uq_items_sku"),
        Index("ix_items_customer_id_id", "customer_id", "id"),
        Index("ix_items_category_id", "category", "id"),
        Index("ix_items_brand_id", "brand", "id"),
        Index("ix_items_price_nanos", "price_nanos"),
        Index("ix_items_quantity", "quantity"),
        Index("ix_items_is_active", "is_active"),
        # Ids are never reused, so a client never mistakes a new item for a deleted one.
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    sku: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(255))
    description: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(String(100))
    brand: Mapped[str] = mapped_column(String(100))
    currency_code: Mapped[str] = mapped_column(String(3))
    price_nanos: Mapped[int] = mapped_column(BigInteger)
    cost_nanos: Mapped[int | None] = mapped_column(BigInteger)
    quantity: Mapped[int] = mapped_column(Integer)
    low_stock_threshold: Mapped[int] = mapped_column(Integer)
    max_quantity: Mapped[int | None] = mapped_column(Integer)
    is_active: Mapped[bool] = mapped_column(Boolean)
    weight_kg: Mapped[float | None] = mapped_column(Float)
    dimensions: Mapped[str] = mapped_column(String(100))
    customer_id: Mapped[str] = mapped_column(String(100))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)
    version: Mapped[int] = mapped_column(Integer)


items = ItemRow.__table__
# Columns searched by the free-text query; PostgreSQL has a trigram index on lower() of each.
TEXT_SEARCH_COLUMNS = ("name", "sku", "brand", "category")
_LIKE_ESCAPE = "/"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _contains_pattern(text: str) -> str:
    """A LIKE pattern matching `text` anywhere, case-folded, with % and _ taken literally."""
    escaped = (
        text.lower()
        .replace(_LIKE_ESCAPE, _LIKE_ESCAPE * 2)
        .replace("%", _LIKE_ESCAPE + "%")
        .replace("_", _LIKE_ESCAPE + "_")
    )
    return f"%{escaped}%"


def _icontains(column: Any, text: str) -> ColumnElement[bool]:
    return func.lower(column).like(_contains_pattern(text), escape=_LIKE_ESCAPE)


def _row_values(fields: ItemFields) -> dict[str, Any]:
    return {
        "sku": fields.sku,
        "name": fields.name,
        "description": fields.description,
        "category": fields.category,
        "brand": fields.brand,
        "currency_code": fields.price.currency_code,
        "price_nanos": fields.price.nanos,
        "cost_nanos": fields.cost.nanos if fields.cost else None,
        "quantity": fields.quantity,
        "low_stock_threshold": fields.low_stock_threshold,
        "max_quantity": fields.max_quantity,
        "is_active": fields.is_active,
        "weight_kg": fields.weight_kg,
        "dimensions": fields.dimensions,
        "customer_id": fields.customer_id,
    }


def _item_from_row(row: Any) -> Item:
    currency = row.currency_code
    return Item(
        id=row.id,
        sku=row.sku,
        name=row.name,
        description=row.description,
        category=row.category,
        brand=row.brand,
        price=Money(currency, row.price_nanos),
        cost=None if row.cost_nanos is None else Money(currency, row.cost_nanos),
        quantity=row.quantity,
        low_stock_threshold=row.low_stock_threshold,
        max_quantity=row.max_quantity,
        is_active=row.is_active,
        weight_kg=row.weight_kg,
        dimensions=row.dimensions,
        customer_id=row.customer_id,
        create_time=row.create_time,
        update_time=row.update_time,
        version=row.version,
    )


def _conditions(query: ItemQuery) -> Iterable[ColumnElement[bool]]:
    c = items.c
    if query.category:
        yield c.category == query.category
    if query.brand:
        yield c.brand == query.brand
    if query.customer_id:
        yield c.customer_id == query.customer_id
    if query.is_active is not None:
        yield c.is_active == query.is_active
    if query.name_contains:
        yield _icontains(c.name, query.name_contains)
    if query.text:
        yield or_(*(_icontains(c[name], query.text) for name in TEXT_SEARCH_COLUMNS))
    for bound, compare in ((query.min_price, c.price_nanos.__ge__), (query.max_price, c.price_nanos.__le__)):
        if bound is not None:
            yield compare(bound.nanos)
            if bound.currency_code:
                yield c.currency_code == bound.currency_code
    if query.min_quantity is not None:
        yield c.quantity >= query.min_quantity
    if query.max_quantity is not None:
        yield c.quantity <= query.max_quantity
    if query.in_stock_only:
        yield c.quantity > 0
    if query.low_stock_only:
        yield c.quantity <= c.low_stock_threshold
    if query.low_stock_at_most is not None:
        yield c.quantity <= query.low_stock_at_most


def _filtered(statement: Select[Any], query: ItemQuery) -> Select[Any]:
    return statement.where(and_(true(), *_conditions(query)))


def _is_unique_violation(error: IntegrityError) -> bool:
    pgcode = getattr(error.orig, "pgcode", None)
    if pgcode is not None:
        return bool(pgcode == "23505")
    return "UNIQUE constraint failed" in str(error.orig)


class SqlItemRepository:
    """Items in one transaction. Missing rows come back as None; rules live in the service."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def add(self, fields: ItemFields) -> Item:
        now = _utcnow()
        statement = (
            insert(items)
            .values(**_row_values(fields), create_time=now, update_time=now, version=1)
            .returning(*items.c)
        )
        try:
            # A savepoint keeps the transaction usable after a clash (PostgreSQL aborts it otherwise).
            with self._connection.begin_nested():
                row = self._connection.execute(statement).one()
        except IntegrityError as error:
            if _is_unique_violation(error):
                raise AlreadyExists(f"an item with sku {fields.sku!r} already exists") from None
            raise
        return _item_from_row(row)

    def get(self, item_id: int) -> Item | None:
        row = self._connection.execute(select(items).where(items.c.id == item_id)).first()
        return _item_from_row(row) if row else None

    def list_page(self, query: ItemQuery, after_id: int, limit: int) -> list[Item]:
        statement = (
            _filtered(select(items), query)
            .where(items.c.id > after_id)
            .order_by(items.c.id)
            .limit(limit)
        )
        return [_item_from_row(row) for row in self._connection.execute(statement)]

    def count(self, query: ItemQuery) -> int:
        statement = _filtered(select(func.count()).select_from(items), query)
        return int(self._connection.execute(statement).scalar_one())

    def replace_fields(self, item_id: int, expected_version: int, fields: ItemFields) -> Item | None:
        """Writes `fields` if the item is still at `expected_version`; None otherwise."""
        statement = (
            update(items)
            .where(items.c.id == item_id, items.c.version == expected_version)
            .values(**_row_values(fields), update_time=_utcnow(), version=items.c.version + 1)
            .returning(*items.c)
        )
        try:
            with self._connection.begin_nested():
                row = self._connection.execute(statement).first()
        except IntegrityError as error:
            if _is_unique_violation(error):
                raise AlreadyExists(f"an item with sku {fields.sku!r} already exists") from None
            raise
        return _item_from_row(row) if row else None

    def delete(self, item_id: int, expected_version: int | None) -> bool:
        statement = delete(items).where(items.c.id == item_id)
        if expected_version is not None:
            statement = statement.where(items.c.version == expected_version)
        return self._connection.execute(statement).rowcount == 1

    def add_to_quantity(self, item_id: int, delta: int, ceiling: int) -> Item | None:
        """Adds `delta` in one statement; None if the item is missing or the result leaves [0, ceiling]."""
        # The bounds are moved to the parameter side so that no database adds in int32 and overflows.
        statement = (
            update(items)
            .where(items.c.id == item_id, items.c.quantity >= -delta, items.c.quantity <= ceiling - delta)
            .values(quantity=items.c.quantity + delta, update_time=_utcnow(), version=items.c.version + 1)
            .returning(*items.c)
        )
        row = self._connection.execute(statement).first()
        return _item_from_row(row) if row else None

    def set_quantity(self, item_id: int, quantity: int) -> Item | None:
        statement = (
            update(items)
            .where(items.c.id == item_id)
            .values(quantity=quantity, update_time=_utcnow(), version=items.c.version + 1)
            .returning(*items.c)
        )
        row = self._connection.execute(statement).first()
        return _item_from_row(row) if row else None


_WRITE_OPTION = "inventory_write_transaction"


class SqlUnitOfWork:
    """One transaction. Leaving it always rolls back; only commit() keeps changes."""

    def __init__(self, engine: Engine, *, for_write: bool = False) -> None:
        self._engine = engine
        self._for_write = for_write

    def __enter__(self) -> "SqlUnitOfWork":
        self._connection = self._engine.connect()
        if self._for_write:
            self._connection.execution_options(**{_WRITE_OPTION: True})
        self._transaction = self._connection.begin()
        self.items = SqlItemRepository(self._connection)
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._transaction.is_active:
                self._transaction.rollback()
        finally:
            self._connection.close()

    def commit(self) -> None:
        self._transaction.commit()


def prepare_engine(engine: Engine) -> Engine:
    """Database-specific settings every connection needs; call once on a new engine."""
    if engine.dialect.name == "sqlite":

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None  # the "begin" hook below issues BEGIN itself
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=10000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Connection) -> None:
            # Writers take the write lock up front: a read lock upgraded later fails at once
            # with "database is locked" instead of waiting its turn.
            immediate = connection.get_execution_options().get(_WRITE_OPTION)
            connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine
