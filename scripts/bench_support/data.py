"""The benchmark's database: which one, its schema (the real migrations), its items.

Items are loaded in bulk, straight into the tables the migrations made: COPY on
PostgreSQL, an executemany on SQLite. Each item also gets its `item_created` ledger row,
as CreateItem would write, so that an item's movements add up to its quantity.

About 400 lines, one file: the generated items, their two bulk loaders and the fixtures and
checks read back (quantities, ledger sums) must agree on one schema, so they change together.
"""

from __future__ import annotations

import io
import random
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Engine, create_engine, func, insert, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from inventory_svc.storage.tables import ITEM_COLUMNS, items, stock_movements

CUSTOMERS = 100
SEED = 20261125
DEFAULT_POSTGRES_SERVER = "postgresql://postgres@127.0.0.1:5432"
BENCH_DATABASE = "inventory_bench"
DEFAULT_ITEMS = 10_000

# Names that read like a shop's, so that a text search finds what a person would type.
NOUNS_BY_CATEGORY = {
    "peripherals": ["Keyboard", "Mouse", "Monitor", "Webcam", "Headset", "Docking Station"],
    "electronics": ["Tablet", "Smartphone", "Charger", "Power Bank", "Smartwatch", "Router"],
    "audio": ["Speaker", "Headphones", "Earbuds", "Soundbar", "Microphone", "Amplifier"],
    "office": ["Desk Lamp", "Office Chair", "Stapler", "Notebook", "Whiteboard", "Label Printer"],
    "kitchen": ["Kettle", "Coffee Grinder", "Toaster", "Blender", "Chef Knife", "Frying Pan"],
    "garden": ["Hose", "Pruning Shears", "Lawn Mower", "Planter", "Leaf Blower", "Garden Light"],
    "tools": ["Drill", "Screwdriver Set", "Tape Measure", "Hammer", "Jigsaw", "Work Light"],
    "sports": ["Yoga Mat", "Water Bottle", "Running Shoes", "Dumbbell", "Bike Helmet", "Backpack"],
}
CATEGORIES = list(NOUNS_BY_CATEGORY)
ADJECTIVES = [
    "Wireless",
    "Ergonomic",
    "Compact",
    "Heavy-Duty",
    "Portable",
    "Stainless",
    "Smart",
    "Classic",
    "Premium",
    "Quiet",
    "Rechargeable",
    "Waterproof",
]
BRANDS = [
    "Acme",
    "Northwind",
    "Contoso",
    "Globex",
    "Initech",
    "Umbrella",
    "Hooli",
    "Vandelay",
    "Stark",
    "Wayne",
    "Tyrell",
    "Soylent",
]
# Matches about one item in 576 (an adjective and a noun together).
DEFAULT_SEARCH = "wireless mouse"
# An item of the dataset starts with at least this much stock when it is used by the
# AdjustQuantity workload, so that -1 calls never run it out.
ADJUSTABLE_STOCK = 1_000
# Items the reservation workloads reserve from (well stocked too, none of AdjustQuantity's).
RESERVABLE_ITEMS = 256


@dataclass(frozen=True)
class Database:
    url: str
    kind: str  # "postgresql" or "sqlite"
    description: str
    # True when the benchmark made it and may drop or delete it.
    owned: bool


def customer_id(number: int) -> str:
    return f"cust-{number:03d}"


def _psycopg2(server_url: str) -> str:
    # SQLAlchemy 2.1 picks psycopg 3 for a bare postgresql:// URL; the project ships psycopg2.
    return server_url.replace("postgresql://", "postgresql+psycopg2://", 1)


def _postgres_reachable(server_url: str) -> bool:
    try:
        engine = create_engine(f"{_psycopg2(server_url)}/postgres", connect_args={"connect_timeout": 2})
        with engine.connect():
            pass
        engine.dispose()
        return True
    except SQLAlchemyError:
        return False


def choose_database(database_url: str | None, var_dir: Path, count: int) -> Database:
    """The one given, else a PostgreSQL database when a server answers, else SQLite. Each
    size but the default has its own database, so that a kept 1M-item load survives
    10,000-item runs in between."""
    if database_url:
        kind = make_url(database_url).get_backend_name()
        return Database(database_url, kind, f"{kind} ({make_url(database_url).render_as_string()})", owned=False)
    suffix = "" if count == DEFAULT_ITEMS else f"_{count}"
    if _postgres_reachable(DEFAULT_POSTGRES_SERVER):
        name = BENCH_DATABASE + suffix
        return Database(
            f"{DEFAULT_POSTGRES_SERVER}/{name}", "postgresql", f"PostgreSQL {name} on 127.0.0.1:5432", owned=True
        )
    path = var_dir / f"inventory{suffix}.db"
    return Database(f"sqlite:///{path}", "sqlite", f"SQLite {path} (no PostgreSQL on 127.0.0.1:5432)", owned=True)


def connect(database: Database) -> Engine:
    url = make_url(database.url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg2")  # what the service uses too
    return create_engine(url)


def item_count(database: Database) -> int | None:
    """Items in the database; None when it or its items table does not exist."""
    if database.kind == "sqlite" and not Path(database.url.removeprefix("sqlite:///")).exists():
        return None
    try:
        engine = connect(database)
        try:
            with engine.connect() as connection:
                return int(connection.execute(select(func.count()).select_from(items)).scalar_one())
        finally:
            engine.dispose()
    except SQLAlchemyError:  # no such database, or no items table yet
        return None


def recreate(database: Database) -> None:
    """Drops and recreates a database that the benchmark owns."""
    assert database.owned
    if database.kind == "sqlite":
        path = Path(database.url.removeprefix("sqlite:///"))
        for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
            leftover.unlink(missing_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    name = make_url(database.url).database
    engine = create_engine(f"{_psycopg2(DEFAULT_POSTGRES_SERVER)}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        connection.execute(text(f"CREATE DATABASE {name}"))
    engine.dispose()


def migrate(database: Database, env: dict[str, str]) -> None:
    """The schema comes from the real migrations, run as a user would run them."""
    migrate_script = Path(sys.executable).with_name("inventory-migrate")
    finished = subprocess.run(
        [str(migrate_script)],
        env={**env, "INVENTORY_DATABASE_URL": database.url},
        capture_output=True,
        text=True,
        check=False,
    )
    if finished.returncode != 0:
        raise SystemExit(f"bench: inventory-migrate failed:\n{finished.stdout}{finished.stderr}")


def generate_items(count: int) -> Iterator[dict[str, Any]]:
    """`count` items over CUSTOMERS customers, the same for the same count (seeded)."""
    rng = random.Random(SEED)
    now = datetime.now(UTC).replace(tzinfo=None)
    for number in range(count):
        category = CATEGORIES[number % len(CATEGORIES)]
        noun = rng.choice(NOUNS_BY_CATEGORY[category])
        adjective = rng.choice(ADJECTIVES)
        brand = rng.choice(BRANDS)
        price_cents = rng.randint(199, 49_999)
        # Most items are well stocked; one in twenty is low on stock.
        quantity = rng.randint(0, 10) if rng.random() < 0.05 else rng.randint(100, 5_000)
        yield {
            "sku": f"{category[:3].upper()}-{number + 1:07d}",
            "name": f"{adjective} {noun} {brand[:2].upper()}-{rng.randint(100, 999)}",
            "description": f"A {adjective.lower()} {noun.lower()} by {brand}.",
            "category": category,
            "brand": brand,
            "currency_code": "USD",
            "price_nanos": price_cents * 10_000_000,
            "cost_nanos": price_cents * 6_000_000,
            "quantity": quantity,
            "low_stock_threshold": 10,
            "max_quantity": None,
            "is_active": rng.random() >= 0.02,
            "weight_kg": round(rng.uniform(0.05, 25.0), 2),
            "dimensions": f"{rng.randint(5, 80)}x{rng.randint(5, 60)}x{rng.randint(1, 40)} cm",
            "customer_id": customer_id(number % CUSTOMERS),
            "create_time": now,
            "update_time": now,
            "version": 1,
            "reserved_quantity": 0,
        }


# What COPY loads: every column an Item is read from but the id, which the table assigns.
_COLUMNS = ITEM_COLUMNS[1:]
_LEDGER_FROM_ITEMS = """
    INSERT INTO stock_movements (item_id, sku, delta, quantity_after, reason, low_stock_change,
                                 low_stock_threshold, customer_id, category, note, principal,
                                 request_id, create_time)
    SELECT id, sku, quantity, quantity, 'item_created', 0, low_stock_threshold, customer_id, category,
           '', 'bench', '', create_time
    FROM items ORDER BY id
"""


def _copy_value(value: Any) -> str:
    if value is None:
        return r"\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    return str(value)  # the generated text holds no tab, newline or backslash


def load_items(database: Database, count: int, progress: Any = print) -> None:
    engine = connect(database)
    try:
        if database.kind == "postgresql":
            _copy_into_postgres(engine, count, progress)
        else:
            with engine.begin() as connection:
                batch: list[dict[str, Any]] = []
                for row in generate_items(count):
                    row["create_time"] = row["update_time"] = row["create_time"].replace(tzinfo=UTC)
                    batch.append(row)
                    if len(batch) == 10_000:
                        connection.execute(insert(items), batch)
                        batch.clear()
                if batch:
                    connection.execute(insert(items), batch)
                connection.exec_driver_sql(_LEDGER_FROM_ITEMS)
    finally:
        engine.dispose()


def _copy_into_postgres(engine: Engine, count: int, progress: Any) -> None:
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        chunk = io.StringIO()
        copy = f"COPY items ({', '.join(_COLUMNS)}) FROM STDIN"
        for number, row in enumerate(generate_items(count), 1):
            chunk.write("\t".join(_copy_value(row[name]) for name in _COLUMNS))
            chunk.write("\n")
            if number % 100_000 == 0 or number == count:
                chunk.seek(0)
                cursor.copy_expert(copy, chunk)
                chunk = io.StringIO()
                if count >= 200_000:
                    progress(f"  {number:,} items copied")
        cursor.execute(_LEDGER_FROM_ITEMS)
        raw.commit()
        cursor.close()
    finally:
        raw.close()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql("VACUUM ANALYZE items")
        connection.exec_driver_sql("VACUUM ANALYZE stock_movements")


@dataclass(frozen=True)
class Fixtures:
    """What the workloads ask for, read from the loaded data."""

    item_ids: list[int]  # random active items, for GetItem
    customer: str
    customer_item_ids: list[int]  # the customer's own active items, for GetMyItem
    customer_items: int
    adjust_item_ids: list[int]  # well-stocked items, for AdjustQuantity
    category_sizes: dict[str, int]
    reservable_item_ids: list[int]  # other well-stocked items, for the reservation workloads


def read_fixtures(database: Database, pool: int, customer: str) -> Fixtures:
    rng = random.Random(SEED + 1)
    c = items.c
    engine = connect(database)
    try:
        with engine.connect() as connection:
            top = int(connection.execute(select(func.max(c.id))).scalar_one() or 0)
            item_ids: list[int] = []
            while len(item_ids) < pool and top:
                candidates = [rng.randint(1, top) for _ in range(pool * 2)]
                found = connection.execute(select(c.id).where(c.id.in_(candidates), c.is_active)).scalars().all()
                item_ids.extend(sorted(set(found) - set(item_ids))[: pool - len(item_ids)])
            owned = (
                connection.execute(select(c.id).where(c.customer_id == customer, c.is_active).order_by(c.id))
                .scalars()
                .all()
            )
            adjustable = (
                connection.execute(
                    select(c.id).where(c.quantity >= ADJUSTABLE_STOCK, c.is_active).order_by(c.id).limit(pool * 20)
                )
                .scalars()
                .all()
            )
            sizes: dict[str, int] = dict(
                connection.execute(select(c.category, func.count()).group_by(c.category)).all()
            )
    finally:
        engine.dispose()
    rng.shuffle(item_ids)
    customer_item_ids = rng.sample(list(owned), min(pool, len(owned)))
    adjust_item_ids = rng.sample(list(adjustable), min(pool, len(adjustable)))
    others = [item_id for item_id in adjustable if item_id not in set(adjust_item_ids)]
    return Fixtures(
        item_ids=item_ids,
        customer=customer,
        customer_item_ids=customer_item_ids,
        customer_items=len(owned),
        adjust_item_ids=adjust_item_ids,
        category_sizes={str(name): int(size) for name, size in sizes.items()},
        reservable_item_ids=rng.sample(others, min(RESERVABLE_ITEMS, len(others))),
    )


def quantities(database: Database, item_ids: list[int]) -> dict[int, int]:
    engine = connect(database)
    try:
        with engine.connect() as connection:
            rows = connection.execute(select(items.c.id, items.c.quantity).where(items.c.id.in_(item_ids)))
            return {int(item_id): int(quantity) for item_id, quantity in rows}
    finally:
        engine.dispose()


def ledger_sums(database: Database, item_ids: list[int]) -> dict[int, int]:
    """Each item's movements added up: equal to its quantity when the ledger is whole."""
    m = stock_movements.c
    engine = connect(database)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(m.item_id, func.sum(m.delta)).where(m.item_id.in_(item_ids)).group_by(m.item_id)
            )
            return {int(item_id): int(total) for item_id, total in rows}
    finally:
        engine.dispose()


class PostgresCounters:
    """The database's session and transaction counts (pg_stat_database), read over one
    connection held for the whole run so that reading them opens no session."""

    def __init__(self, database: Database) -> None:
        self._engine = connect(database)
        # psycopg2's own connection, whose cursors are context managers (the DB-API's types say not).
        self._connection = cast(Any, self._engine.raw_connection())
        self._connection.driver_connection.autocommit = True

    def read(self) -> dict[str, int]:
        with self._connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute(
                "SELECT sessions, xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()"
            )
            sessions, transactions = cursor.fetchone()
        return {"sessions": int(sessions), "transactions": int(transactions)}

    def close(self) -> None:
        self._connection.close()
        self._engine.dispose()


def ledger_row(item: Any, now: datetime, **values: Any) -> dict[str, Any]:
    """A stock_movements row of the bench's own making for `item`, as the service writes one
    (no low-stock event, principal "bench"); `values` gives the rest."""
    return {
        "item_id": item.id,
        "sku": item.sku,
        "low_stock_change": 0,
        "low_stock_threshold": item.low_stock_threshold,
        "customer_id": item.customer_id,
        "category": item.category,
        "note": "",
        "principal": "bench",
        "request_id": "",
        "create_time": now,
        **values,
    }
