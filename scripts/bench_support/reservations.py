"""What the reservation workloads need from the database and what they are checked by: stock
on the items they reserve, ACTIVE reservations for ConfirmReservation to confirm, the
oversell check, and expiring what a run leaves held.

The stock and the reservations are written straight into the tables, each with its ledger
rows as the service writes them, so that an item's ledger still adds up to its quantity and
its reserved units: the oversell check holds the bench's own writes to the same rule."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, insert, select, update

from bench_support.data import Database, connect, ledger_row
from inventory_svc.reservation_rules import ReservationState
from inventory_svc.stock import MovementReason
from inventory_svc.storage.tables import (
    items,
    reservation_lines,
    reservations,
    stock_movements,
)

# Available units each reserved item is given at the start of a run: more than any run
# reserves or sells (some thousands a second for seconds), and far from its low-stock
# threshold, so that no ledger row of the bench is a low-stock event.
RESERVABLE_STOCK = 1_000_000
SUPPLY_REFERENCE = "bench-confirm-supply"
# Longer than any run; what is left is expired at its end (expire_left).
SUPPLY_TTL = timedelta(hours=2)
ACTIVE = ReservationState.ACTIVE.value


def _now() -> datetime:
    return datetime.now(UTC)


def _set_reserved(connection: Any, reserved: dict[int, int], now: datetime) -> None:
    connection.execute(
        update(items)
        .where(items.c.id == bindparam("item_id"))
        .values(reserved_quantity=bindparam("reserved"), update_time=bindparam("now"), version=items.c.version + 1),
        [{"item_id": item_id, "reserved": units, "now": now} for item_id, units in reserved.items()],
    )


def _locked_items(connection: Any, item_ids: list[int]) -> list[Any]:
    c = items.c
    return list(
        connection.execute(
            select(c.id, c.sku, c.quantity, c.reserved_quantity, c.low_stock_threshold, c.customer_id, c.category)
            .where(c.id.in_(item_ids))
            .order_by(c.id)
            .with_for_update()
        ).all()
    )


def top_up(database: Database, item_ids: list[int]) -> None:
    """Each item gets RESERVABLE_STOCK units available, a restock in its ledger."""
    engine = connect(database)
    try:
        with engine.begin() as connection:
            now = _now()
            changes, ledger = [], []
            for item in _locked_items(connection, item_ids):
                quantity = item.reserved_quantity + RESERVABLE_STOCK
                if quantity == item.quantity:
                    continue
                changes.append({"item_id": item.id, "new_quantity": quantity, "now": now})
                ledger.append(
                    ledger_row(
                        item,
                        now,
                        delta=quantity - item.quantity,
                        quantity_after=quantity,
                        reason=MovementReason.RESTOCK.value,
                        note="bench: stock for the reservation workloads",
                        reserved_delta=0,
                        reserved_after=item.reserved_quantity,
                        reservation_id=None,
                    )
                )
            if changes:
                connection.execute(
                    update(items)
                    .where(items.c.id == bindparam("item_id"))
                    .values(
                        quantity=bindparam("new_quantity"), update_time=bindparam("now"), version=items.c.version + 1
                    ),
                    changes,
                )
                connection.execute(insert(stock_movements), ledger)
    finally:
        engine.dispose()


def add_confirmable(database: Database, item_ids: list[int], count: int, seed: int) -> list[int]:
    """`count` ACTIVE reservations of one unit of a random item of `item_ids` each, as
    ReserveStock would leave them (their lines, the items' reserved units, a RESERVED row
    each in the ledger); their ids, in the order made."""
    if count <= 0:
        return []
    rng = random.Random(seed)
    picked = [rng.choice(item_ids) for _ in range(count)]
    engine = connect(database)
    try:
        with engine.begin() as connection:
            now = _now()
            state = {item.id: item for item in _locked_items(connection, sorted(set(picked)))}
            made = connection.execute(
                insert(reservations).returning(reservations.c.id, sort_by_parameter_order=True),
                [
                    {
                        "state": ACTIVE,
                        "reference": SUPPLY_REFERENCE,
                        "principal": "bench",
                        "create_time": now,
                        "expire_time": now + SUPPLY_TTL,
                        "update_time": now,
                    }
                    for _ in picked
                ],
            )
            reservation_ids = [int(row.id) for row in made]
            connection.execute(
                insert(reservation_lines),
                [
                    {"reservation_id": reservation_id, "item_id": item_id, "position": 0, "quantity": 1}
                    for reservation_id, item_id in zip(reservation_ids, picked, strict=True)
                ],
            )
            reserved = {item_id: item.reserved_quantity for item_id, item in state.items()}
            ledger = []
            for reservation_id, item_id in zip(reservation_ids, picked, strict=True):
                reserved[item_id] += 1
                ledger.append(
                    ledger_row(
                        state[item_id],
                        now,
                        delta=0,
                        quantity_after=state[item_id].quantity,
                        reason=MovementReason.RESERVED.value,
                        reserved_delta=1,
                        reserved_after=reserved[item_id],
                        reservation_id=reservation_id,
                    )
                )
            connection.execute(insert(stock_movements), ledger)
            _set_reserved(connection, reserved, now)
    finally:
        engine.dispose()
    return reservation_ids


@dataclass
class Oversell:
    """What the check found: items with more reserved than in stock, and items whose reserved
    units or ledger disagree with their reservations or their row."""

    items: int
    active_reservations: int
    oversold: list[int] = field(default_factory=list)
    reserved_not_active_lines: list[int] = field(default_factory=list)
    ledger_not_adding_up: list[int] = field(default_factory=list)
    # The offending items' figures: id -> (quantity, reserved, units of ACTIVE lines, ledger delta, ledger reserved)
    figures: dict[int, tuple[int, int, int, int, int]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.oversold or self.reserved_not_active_lines or self.ledger_not_adding_up)

    def describe(self) -> str:
        parts = [
            f"oversold: {len(self.oversold)} of {self.items:,} items (reserved > quantity)",
            f"reserved units other than their ACTIVE reservations' lines ({self.active_reservations:,} "
            f"ACTIVE): {len(self.reserved_not_active_lines)}",
            f"ledger not adding up to quantity and reserved: {len(self.ledger_not_adding_up)}",
        ]
        if self.figures:
            shown = sorted(self.figures)[:10]
            parts.append(
                "offending items (id: quantity, reserved, ACTIVE lines' units, ledger sum(delta), "
                "ledger sum(reserved_delta)): "
                + "; ".join(f"{i}: {', '.join(str(v) for v in self.figures[i])}" for i in shown)
                + (f" (and {len(self.figures) - len(shown)} more)" if len(self.figures) > len(shown) else "")
            )
        return "; ".join(parts)


def check_oversell(database: Database) -> Oversell:
    """For every item: reserved <= quantity, reserved = the units of its ACTIVE reservations'
    lines, and its ledger's sum(delta) = quantity and sum(reserved_delta) = reserved."""
    i, lines, r, m = items.c, reservation_lines.c, reservations.c, stock_movements.c
    held = (
        select(lines.item_id, func.sum(lines.quantity).label("units"))
        .join(reservations, r.id == lines.reservation_id)
        .where(r.state == ACTIVE)
        .group_by(lines.item_id)
        .subquery()
    )
    ledger = (
        select(m.item_id, func.sum(m.delta).label("delta"), func.sum(m.reserved_delta).label("reserved"))
        .group_by(m.item_id)
        .subquery()
    )
    units = func.coalesce(held.c.units, 0)
    ledger_delta, ledger_reserved = func.coalesce(ledger.c.delta, 0), func.coalesce(ledger.c.reserved, 0)
    statement = (
        select(i.id, i.quantity, i.reserved_quantity, units, ledger_delta, ledger_reserved)
        .select_from(items.outerjoin(held, held.c.item_id == i.id).outerjoin(ledger, ledger.c.item_id == i.id))
        .where(
            (i.reserved_quantity > i.quantity)
            | (i.reserved_quantity != units)
            | (ledger_delta != i.quantity)
            | (ledger_reserved != i.reserved_quantity)
        )
    )
    engine = connect(database)
    try:
        with engine.connect() as connection:
            count = int(connection.execute(select(func.count()).select_from(items)).scalar_one())
            active = int(connection.execute(select(func.count()).where(r.state == ACTIVE)).scalar_one())
            found = Oversell(count, active)
            for item_id, quantity, reserved, active_units, delta, reserved_delta in connection.execute(statement):
                found.figures[int(item_id)] = (quantity, reserved, int(active_units), int(delta), int(reserved_delta))
                if reserved > quantity:
                    found.oversold.append(int(item_id))
                if reserved != active_units:
                    found.reserved_not_active_lines.append(int(item_id))
                if delta != quantity or reserved_delta != reserved:
                    found.ledger_not_adding_up.append(int(item_id))
    finally:
        engine.dispose()
    return found


def expire_left(database: Database) -> int:
    """Expires every ACTIVE reservation at once, as the servers' sweep would (state EXPIRED,
    an expired row per line in the ledger, the items' reserved units given back): what a
    run left held must not expire under the next run's load, and the sweep gives back some
    hundreds a second. Only while no server runs, which would sweep them too. How many."""
    r, lines = reservations.c, reservation_lines.c
    engine = connect(database)
    try:
        with engine.begin() as connection:
            held = connection.execute(
                select(r.id, r.principal, lines.item_id, lines.quantity)
                .join(reservation_lines, lines.reservation_id == r.id)
                .where(r.state == ACTIVE)
                .order_by(lines.item_id, r.id)  # the sweep's order: each item's rows in reservation order
            ).all()
            if not held:
                return 0
            now = _now()
            state = {item.id: item for item in _locked_items(connection, sorted({row.item_id for row in held}))}
            reserved = {item_id: item.reserved_quantity for item_id, item in state.items()}
            ledger = []
            for row in held:
                item = state[row.item_id]
                reserved[row.item_id] -= row.quantity
                ledger.append(
                    ledger_row(
                        item,
                        now,
                        delta=0,
                        quantity_after=item.quantity,
                        reason=MovementReason.RESERVATION_EXPIRED.value,
                        principal=row.principal,
                        reserved_delta=-row.quantity,
                        reserved_after=reserved[row.item_id],
                        reservation_id=row.id,
                    )
                )
            connection.execute(insert(stock_movements), ledger)
            _set_reserved(connection, reserved, now)
            return int(
                connection.execute(
                    update(reservations)
                    .where(r.state == ACTIVE)
                    .values(state=ReservationState.EXPIRED.value, update_time=now)
                ).rowcount
            )
    finally:
        engine.dispose()
