"""The tables as declarative rows, the channels PostgreSQL notifies and the advisory locks
that keep ids in commit order."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Computed,
    Connection,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Stores UTC without a zone (the same on both databases), reads back zone-aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.astimezone(UTC).replace(tzinfo=None) if value else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value else value


class Base(DeclarativeBase):
    pass


# The low-stock filter as each database renders it (see queries.CONDITION_FOR_FILTER), so that
# the planner matches the partial index below to the query.
LOW_STOCK_PREDICATE_POSTGRESQL = "is_low_stock"
# Judged on the available units (domain.is_low_on_stock).
LOW_STOCK_EXPRESSION = "is_active AND quantity - reserved_quantity <= low_stock_threshold"
LOW_STOCK_PREDICATE_SQLITE = "is_low_stock = 1"


class ItemRow(Base):
    __tablename__ = "items"
    __table_args__ = (
        CheckConstraint("quantity >= 0", name="ck_items_quantity_not_negative"),
        # The last guard against overselling: whatever the code above does, a write that
        # would reserve more than is in stock fails.
        CheckConstraint(
            "reserved_quantity >= 0 AND reserved_quantity <= quantity", name="ck_items_reserved_within_quantity"
        ),
        UniqueConstraint("sku", name="uq_items_sku"),
        Index("ix_items_customer_id_id", "customer_id", "id"),
        Index("ix_items_category_id", "category", "id"),
        Index("ix_items_brand_id", "brand", "id"),
        Index("ix_items_price_nanos", "price_nanos"),
        Index("ix_items_is_active", "is_active"),
        # No index holds quantity, so that a stock change is a HOT update on PostgreSQL (no
        # index entries written): the low-stock index filters on a column computed from it.
        Index(
            "ix_items_low_stock_id",
            "id",
            postgresql_where=text(LOW_STOCK_PREDICATE_POSTGRESQL),
            sqlite_where=text(LOW_STOCK_PREDICATE_SQLITE),
        ),
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
    reserved_quantity: Mapped[int] = mapped_column(Integer, server_default="0")
    # Changes only when an item crosses its threshold (or is (de)activated); never written.
    is_low_stock: Mapped[bool] = mapped_column(Boolean, Computed(LOW_STOCK_EXPRESSION))


class StockMovementRow(Base):
    __tablename__ = "stock_movements"
    __table_args__ = (
        Index("ix_stock_movements_item_id_id", "item_id", "id"),
        Index("ix_stock_movements_low_stock_change_id", "low_stock_change", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    # No foreign key: the ledger outlives a deleted item.
    item_id: Mapped[int] = mapped_column(BigInteger)
    sku: Mapped[str] = mapped_column(String(100))
    delta: Mapped[int] = mapped_column(Integer)
    quantity_after: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(String(20))
    low_stock_change: Mapped[int] = mapped_column(SmallInteger)
    low_stock_threshold: Mapped[int] = mapped_column(Integer)
    customer_id: Mapped[str] = mapped_column(String(100))
    category: Mapped[str] = mapped_column(String(100))
    note: Mapped[str] = mapped_column(String(500))
    principal: Mapped[str] = mapped_column(String(255))
    request_id: Mapped[str] = mapped_column(String(36))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    reserved_delta: Mapped[int] = mapped_column(Integer, server_default="0")
    reserved_after: Mapped[int] = mapped_column(Integer, server_default="0")
    reservation_id: Mapped[int | None] = mapped_column(BigInteger)


class ReservationRow(Base):
    __tablename__ = "reservations"
    __table_args__ = (
        # The sweep's scan: active reservations by expire_time.
        Index("ix_reservations_state_expire_time", "state", "expire_time"),
        Index("ix_reservations_reference_id", "reference", "id"),
        {"sqlite_autoincrement": True},
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    state: Mapped[str] = mapped_column(String(10))
    reference: Mapped[str] = mapped_column(String(100))
    principal: Mapped[str] = mapped_column(String(255))
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)
    expire_time: Mapped[datetime] = mapped_column(UtcDateTime)
    update_time: Mapped[datetime] = mapped_column(UtcDateTime)


class ReservationLineRow(Base):
    __tablename__ = "reservation_lines"
    __table_args__ = (Index("ix_reservation_lines_item_id_reservation_id", "item_id", "reservation_id"),)

    reservation_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), ForeignKey("reservations.id"), primary_key=True
    )
    # No foreign key to items: an item with units reserved cannot be deleted (the service
    # refuses), and a finished reservation keeps naming an item deleted since.
    item_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    # The line's place in the request, so that a reservation reads back in the order reserved.
    position: Mapped[int] = mapped_column(SmallInteger)
    quantity: Mapped[int] = mapped_column(Integer)


class RequestIdRow(Base):
    """Idempotency keys: the first result of each request_id, for replays."""

    __tablename__ = "request_ids"
    __table_args__ = (Index("ix_request_ids_create_time", "create_time"),)

    request_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    method: Mapped[str] = mapped_column(String(50))
    fingerprint: Mapped[str] = mapped_column(String(32))
    response: Mapped[str | None] = mapped_column(Text)
    create_time: Mapped[datetime] = mapped_column(UtcDateTime)


# The Core tables (typed as Table, which __table__ is not), for statements built once.
items = Base.metadata.tables[ItemRow.__tablename__]
stock_movements = Base.metadata.tables[StockMovementRow.__tablename__]
request_ids = Base.metadata.tables[RequestIdRow.__tablename__]
reservations = Base.metadata.tables[ReservationRow.__tablename__]
reservation_lines = Base.metadata.tables[ReservationLineRow.__tablename__]

# The columns an Item is read from, in the order rows.item_from_row unpacks them (is_low_stock
# is derived, and an Item derives it itself).
ITEM_COLUMNS = (
    "id",
    "sku",
    "name",
    "description",
    "category",
    "brand",
    "currency_code",
    "price_nanos",
    "cost_nanos",
    "quantity",
    "low_stock_threshold",
    "max_quantity",
    "is_active",
    "weight_kg",
    "dimensions",
    "customer_id",
    "create_time",
    "update_time",
    "version",
    "reserved_quantity",
)
ITEM = tuple(items.c[name] for name in ITEM_COLUMNS)

LOW_STOCK_CHANNEL = "inventory_low_stock"
# Notified by the triggers of migration 0003 with the changed item's id, or ALL_ITEMS.
ITEM_CHANGES_CHANNEL = "inventory_item_changes"
ALL_ITEMS = "*"
# Each listener NOTIFYs this channel itself to prove that notifications still reach it.
PROBE_CHANNEL = "inventory_listener_probe"

# PostgreSQL hands out sequence values before commit, so ids need not arrive in commit
# order, and a reader paging (or watching) by id could pass an id whose row commits later.
# Taking these transaction-scoped locks right before the INSERT makes the ids of items, and
# of low-stock events, increase in commit order. SQLite serialises its writers anyway.
ITEM_IDS_LOCK = 7_123_001
LOW_STOCK_EVENT_IDS_LOCK = 7_123_002
# Reservation ids take no such lock: it would make every reservation of every replica wait
# for the one before to commit. A listing may therefore miss a reservation made while it pages.


def lock_id_order(connection: Connection, lock: int) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(select(func.pg_advisory_xact_lock(lock)))
