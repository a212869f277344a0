"""Reservations and their lines in one transaction; missing rows come back as None."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, select, update

from inventory_svc.reservation_rules import Reservation, ReservationLine, ReservationQuery, ReservationState
from inventory_svc.storage.rows import reservation_from_rows
from inventory_svc.storage.tables import reservation_lines, reservations


class SqlReservationRepository:
    """Reservations and their lines."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def add(
        self,
        lines: Sequence[ReservationLine],
        reference: str,
        principal: str,
        now: datetime,
        expire_time: datetime,
    ) -> Reservation:
        reservation_id = self._connection.execute(
            insert(reservations)
            .values(
                state=ReservationState.ACTIVE.value,
                reference=reference,
                principal=principal,
                create_time=now,
                expire_time=expire_time,
                update_time=now,
            )
            .returning(reservations.c.id)
        ).scalar_one()
        self._connection.execute(
            insert(reservation_lines),
            [
                {
                    "reservation_id": reservation_id,
                    "item_id": line.item_id,
                    "position": position,
                    "quantity": line.quantity,
                }
                for position, line in enumerate(lines)
            ],
        )
        return Reservation.made(reservation_id, lines, reference, principal, now, expire_time)

    def get(self, reservation_id: int, *, for_update: bool = False) -> Reservation | None:
        """With `for_update`, the reservation is locked until the transaction ends."""
        statement = select(reservations).where(reservations.c.id == reservation_id)
        if for_update:
            statement = statement.with_for_update()
        row = self._connection.execute(statement).first()
        return self._with_lines([row])[0] if row else None

    def set_state(self, reservation_id: int, state: ReservationState, now: datetime) -> None:
        self._connection.execute(
            update(reservations).where(reservations.c.id == reservation_id).values(state=state.value, update_time=now)
        )

    def set_expire_time(self, reservation_id: int, expire_time: datetime, now: datetime) -> None:
        self._connection.execute(
            update(reservations)
            .where(reservations.c.id == reservation_id)
            .values(expire_time=expire_time, update_time=now)
        )

    def list_page(self, query: ReservationQuery, after_id: int, limit: int) -> list[Reservation]:
        c = reservations.c
        statement = select(reservations).where(c.id > after_id)
        if query.state is not None:
            statement = statement.where(c.state == query.state.value)
        if query.reference:
            statement = statement.where(c.reference == query.reference)
        if query.item_id:
            holding = select(reservation_lines.c.reservation_id).where(reservation_lines.c.item_id == query.item_id)
            statement = statement.where(c.id.in_(holding))
        rows = self._connection.execute(statement.order_by(c.id).limit(limit)).all()
        return self._with_lines(rows)

    def take_due(self, now: datetime, limit: int) -> list[Reservation]:
        """Up to `limit` active reservations past their expire_time, locked; on PostgreSQL
        those another transaction holds are skipped, so that replicas sweeping at once never
        take the same one (SQLite's writers take turns)."""
        c = reservations.c
        statement = (
            select(reservations)
            .where(c.state == ReservationState.ACTIVE.value, c.expire_time <= now)
            .order_by(c.expire_time)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        return self._with_lines(self._connection.execute(statement).all())

    def _with_lines(self, rows: Sequence[Any]) -> list[Reservation]:
        if not rows:
            return []
        lines_of: defaultdict[int, list[Any]] = defaultdict(list)
        statement = select(reservation_lines).where(reservation_lines.c.reservation_id.in_([row.id for row in rows]))
        for line in self._connection.execute(statement):
            lines_of[line.reservation_id].append(line)
        return [reservation_from_rows(row, lines_of[row.id]) for row in rows]
