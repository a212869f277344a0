"""Use cases of reservations: hold stock for a checkout, sell or give it back, and expire
what was left alone. Each step changes the items' reserved units and writes its ledger rows
in the transaction of the step.

Every writer that touches several items locks them in the order of their ids, as batches
of stock changes do, so that two of them never wait on each other (a deadlock)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from inventory_svc.domain import MAX_QUANTITY_VALUE, Item, ItemNotFound, Page, check_id, page_limit
from inventory_svc.idempotency import canonical_request_id, replay, request_fingerprint
from inventory_svc.item_cache import ItemCache
from inventory_svc.ledger import record_movement
from inventory_svc.ports import UnitOfWork, UnitOfWorkFactory
from inventory_svc.reservation_rules import (
    ENDINGS,
    MAX_REFERENCE_LENGTH,
    InsufficientStock,
    Reservation,
    ReservationLine,
    ReservationNotActive,
    ReservationNotFound,
    ReservationQuery,
    ReservationState,
    ShortLine,
    check_lines,
    check_ttl,
)
from inventory_svc.stock import MovementReason
from servicekit.errors import InvalidField
from servicekit.page_tokens import PagePosition, decode_page_token, encode_page_token, query_fingerprint

# Reservations one sweep expires in one transaction.
SWEEP_BATCH = 100


def _utcnow() -> datetime:
    return datetime.now(UTC)


class ReservationService:
    def __init__(
        self,
        unit_of_work: UnitOfWorkFactory,
        *,
        request_id_ttl_s: float,
        item_cache: ItemCache,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._unit_of_work = unit_of_work
        self._request_id_ttl_s = request_id_ttl_s
        self._cache = item_cache
        self._clock = clock

    def reserve(
        self,
        lines: Sequence[ReservationLine],
        ttl: timedelta | None,
        reference: str,
        *,
        principal: str = "",
        request_id: str = "",
    ) -> Reservation:
        check_lines(lines)
        ttl = check_ttl(ttl)
        if len(reference) > MAX_REFERENCE_LENGTH or "\x00" in reference:
            raise InvalidField("reference", f"must be at most {MAX_REFERENCE_LENGTH} characters, without NUL")
        request_id = canonical_request_id(request_id)
        lines = tuple(lines)
        request = (lines, ttl, reference)
        reservation: Reservation | None
        with self._unit_of_work(for_write=True, at_once=True) as uow:
            if uow.at_once is None:
                reservation = self._reserve(uow, request, principal, request_id)
            else:
                now = self._clock()
                reservation = uow.at_once.reserve(
                    lines,
                    reference,
                    principal,
                    now,
                    now + ttl,
                    request_id=request_id,
                    method="ReserveStock",
                    fingerprint=request_fingerprint("ReserveStock", *request) if request_id else "",
                )
                if reservation is not None:
                    uow.commit()
        if reservation is None:
            # Nothing was held (a short line, a missing item, a request_id used before): the
            # ordinary way tells which, and answers a replay with its first result.
            with self._unit_of_work(for_write=True) as uow:
                reservation = self._reserve(uow, request, principal, request_id)
        self._forget(lines)
        return reservation

    def _reserve(
        self,
        uow: UnitOfWork,
        request: tuple[tuple[ReservationLine, ...], timedelta, str],
        principal: str,
        request_id: str,
    ) -> Reservation:
        lines, ttl, reference = request
        if request_id:
            # Items before the request_id, as the one-statement way takes them: a retry racing
            # down that way must not wait on us while we wait on it.
            uow.items.lock([line.item_id for line in lines])
        replayed = replay(uow, self._request_id_ttl_s, request_id, Reservation, "ReserveStock", *request)
        if replayed is not None:
            return replayed
        held: list[tuple[ReservationLine, Item]] = []
        short: list[ReservationLine] = []
        for line in sorted(lines, key=lambda line: line.item_id):
            after = uow.items.add_to_quantity(line.item_id, 0, MAX_QUANTITY_VALUE, reserved_delta=line.quantity)
            if after is None:
                short.append(line)
            else:
                held.append((line, after))
        if short:
            raise self._why_short(uow, short)  # leaving the unit of work undoes what was held
        now = self._clock()
        reservation = uow.reservations.add(lines, reference, principal, now, now + ttl)
        for line, after in held:
            before = replace(after, reserved_quantity=after.reserved_quantity - line.quantity)
            record_movement(
                uow,
                before,
                after,
                MovementReason.RESERVED,
                principal=principal,
                request_id=request_id,
                reservation_id=reservation.id,
            )
        if request_id:
            uow.request_ids.complete(request_id, reservation)
        uow.commit()
        return reservation

    @staticmethod
    def _why_short(uow: UnitOfWork, short: Sequence[ReservationLine]) -> Exception:
        found = uow.items.get_many([line.item_id for line in short])
        missing = sorted(line.item_id for line in short if line.item_id not in found)
        if missing:
            return ItemNotFound.among(missing)
        return InsufficientStock(
            [ShortLine(line.item_id, line.quantity, found[line.item_id].available_quantity) for line in short]
        )

    def confirm(self, reservation_id: int, *, principal: str = "", request_id: str = "") -> Reservation:
        """The reserved units leave stock: a sale of every line."""
        return self._end(reservation_id, ReservationState.CONFIRMED, "ConfirmReservation", principal, request_id)

    def release(self, reservation_id: int, *, principal: str = "", request_id: str = "") -> Reservation:
        """The reserved units become available again."""
        return self._end(reservation_id, ReservationState.RELEASED, "ReleaseReservation", principal, request_id)

    def _end(
        self, reservation_id: int, state: ReservationState, method: str, principal: str, request_id: str
    ) -> Reservation:
        check_id(reservation_id, "id")
        request_id = canonical_request_id(request_id)
        ended = None
        with self._unit_of_work(for_write=True, at_once=True) as uow:
            if uow.at_once is None:
                ended = self._end_one(uow, reservation_id, state, method, principal, request_id)
            else:
                ended = uow.at_once.end_reservation(
                    reservation_id,
                    state,
                    self._clock(),
                    principal=principal,
                    request_id=request_id,
                    method=method,
                    fingerprint=request_fingerprint(method, reservation_id) if request_id else "",
                )
                if ended is not None:
                    uow.commit()
        if ended is None:
            # Not ended (missing, no longer active, past its time, a request_id used before):
            # the ordinary way tells which, and answers a replay with its first result.
            with self._unit_of_work(for_write=True) as uow:
                ended = self._end_one(uow, reservation_id, state, method, principal, request_id)
        self._forget(ended.lines)
        return ended

    def _end_one(
        self,
        uow: UnitOfWork,
        reservation_id: int,
        state: ReservationState,
        method: str,
        principal: str,
        request_id: str,
    ) -> Reservation:
        reservation = self._active(uow, reservation_id, request_id=request_id, method=method)
        if reservation.state is not ReservationState.ACTIVE:
            return reservation  # the first result of this request_id
        ended = self._end_all(uow, [reservation], state, principal, request_id)[0]
        if request_id:
            uow.request_ids.complete(request_id, ended)
        uow.commit()
        return ended

    def extend(self, reservation_id: int, ttl: timedelta | None) -> Reservation:
        """The reservation now expires `ttl` from now."""
        check_id(reservation_id, "id")
        if ttl is None:
            raise InvalidField("ttl", "is required")
        ttl = check_ttl(ttl)
        with self._unit_of_work(for_write=True) as uow:
            reservation = self._active(uow, reservation_id)
            now = self._clock()
            uow.reservations.set_expire_time(reservation_id, now + ttl, now)
            uow.commit()
        return replace(reservation, expire_time=now + ttl, update_time=now)

    def _active(self, uow: UnitOfWork, reservation_id: int, *, request_id: str = "", method: str = "") -> Reservation:
        """The reservation, locked, if it is active; with `request_id`, the first result of
        that request_id instead when it was used before. One past its time is expired
        first, for good: nothing else may be done with it."""
        reservation = uow.reservations.get(reservation_id, for_update=True)
        if reservation is None:
            raise ReservationNotFound(reservation_id)
        if reservation.is_due(self._clock()):
            self._end_all(uow, [reservation], ReservationState.EXPIRED, reservation.principal, "")
            uow.commit()
            self._forget(reservation.lines)
            raise ReservationNotActive(reservation_id, ReservationState.EXPIRED)
        replayed = replay(uow, self._request_id_ttl_s, request_id, Reservation, method, reservation_id)
        if replayed is not None:
            return replayed
        if reservation.state is not ReservationState.ACTIVE:
            raise ReservationNotActive(reservation_id, reservation.state)
        return reservation

    def expire_all_due(self) -> int:
        """Expires every reservation past its time, a batch per transaction; how many."""
        expired = total = self.expire_due()
        while expired == SWEEP_BATCH:
            expired = self.expire_due()
            total += expired
        return total

    def expire_due(self) -> int:
        """Expires up to SWEEP_BATCH active reservations past their time; how many it did.
        Every replica sweeps: on PostgreSQL each takes reservations no other holds, and a
        reservation's state changes once, so each expires exactly once."""
        with self._unit_of_work(for_write=True) as uow:
            due = uow.reservations.take_due(self._clock(), SWEEP_BATCH)
            if not due:
                return 0
            # The ledger's principal of an expiry is the reservation's: whose hold ran out.
            self._end_all(uow, due, ReservationState.EXPIRED, None, "")
            uow.commit()
        for reservation in due:
            self._forget(reservation.lines)
        return len(due)

    def _end_all(
        self,
        uow: UnitOfWork,
        reservations: Sequence[Reservation],
        state: ReservationState,
        principal: str | None,
        request_id: str,
    ) -> list[Reservation]:
        """Ends each reservation as `state`: its units move, each line in the ledger. The
        items are locked in the order of their ids across all the reservations."""
        ending = ENDINGS[state]
        steps = sorted(
            ((line, reservation) for reservation in reservations for line in reservation.lines),
            key=lambda step: (step[0].item_id, step[1].id),
        )
        # Every item is changed before any ledger row is written: a low-stock row takes the
        # event ids lock, and holding it while waiting for the next item could deadlock.
        moved: list[tuple[Item, Item, Reservation]] = []
        for line, reservation in steps:
            delta, reserved_delta = ending.quantity_per_unit * line.quantity, ending.reserved_per_unit * line.quantity
            after = uow.items.add_to_quantity(line.item_id, delta, MAX_QUANTITY_VALUE, reserved_delta=reserved_delta)
            if after is None:
                # Only an item removed behind the service's back holds no such units: there
                # is nothing to sell, and nothing left to give back.
                if state is ReservationState.CONFIRMED:
                    raise ItemNotFound(line.item_id)
                continue
            before = replace(
                after, quantity=after.quantity - delta, reserved_quantity=after.reserved_quantity - reserved_delta
            )
            moved.append((before, after, reservation))
        for before, after, reservation in moved:
            who = reservation.principal if principal is None else principal
            record_movement(
                uow, before, after, ending.reason, principal=who, request_id=request_id, reservation_id=reservation.id
            )
        now = self._clock()
        for reservation in reservations:
            uow.reservations.set_state(reservation.id, state, now)
        return [replace(reservation, state=state, update_time=now) for reservation in reservations]

    def _forget(self, lines: Sequence[ReservationLine]) -> None:
        for line in lines:
            self._cache.invalidate(line.item_id)  # now: this replica's readers see their own write

    def get(self, reservation_id: int) -> Reservation:
        check_id(reservation_id, "id")
        with self._unit_of_work() as uow:
            reservation = uow.reservations.get(reservation_id)
        if reservation is None:
            raise ReservationNotFound(reservation_id)
        return reservation

    def list(self, query: ReservationQuery, page_size: int, page_token: str) -> Page[Reservation]:
        query.check()
        limit = page_limit(page_size)
        fingerprint = query_fingerprint("reservations", query)
        after_id = decode_page_token(page_token, fingerprint).after_id if page_token else 0
        with self._unit_of_work() as uow:
            found = uow.reservations.list_page(query, after_id, limit + 1)
        page = found[:limit]
        next_token = encode_page_token(PagePosition(page[-1].id), fingerprint) if len(found) > limit else ""
        return Page(page, next_token)
