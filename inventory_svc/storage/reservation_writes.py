"""Reservation steps that PostgreSQL makes in one statement (data-modifying CTEs): the items'
units, the reservation and its lines, the ledger rows, a NOTIFY for low-stock events and the
request_id's record, in one round trip, all or nothing.

Each statement locks its items first, in the order of their ids (a MATERIALIZED CTE with
ORDER BY ... FOR UPDATE, counted before any row is changed), as every writer of several
items does, so that it never deadlocks with another. Items are found by `id = ANY(ARRAY(...))`,
an index scan whatever the planner guesses of the lines' number (a join on its guess of
hundreds of lines scanned all of items). A statement that would change fewer
items than it locked fails on a division by zero, so that nothing of it is kept: that
cannot happen while the locks hold, and a half-made reservation must never be committed.
Nothing written answers None; the caller then takes the way of many statements, which tells
why (a short line, a missing item, a reservation no longer active, a request_id used before)."""

from __future__ import annotations

from sqlalchemy import BigInteger, Integer, String, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY

from inventory_svc.reservation_rules import ReservationState
from inventory_svc.stock import LowStockChange, MovementReason
from inventory_svc.storage.tables import (
    LOW_STOCK_CHANNEL,
    LOW_STOCK_EVENT_IDS_LOCK,
    UtcDateTime,
)

# The low-stock change of a changed item (RETURNING sees it after the change): `was_low` is
# the state before, from the change undone.
_LOW_STOCK_CHANGE = f"""
    CASE WHEN items.is_low_stock AND NOT ({{was_low}}) THEN {int(LowStockChange.BECAME_LOW)}
         WHEN ({{was_low}}) AND NOT items.is_low_stock THEN {int(LowStockChange.RECOVERED)}
         ELSE {int(LowStockChange.NONE)} END AS low_stock_change"""

# The ledger rows of `changed` (with line_quantity and low_stock_change), the NOTIFY of their
# events, and the request_id's record; a low-stock event first takes the event ids lock, so
# that event ids increase in commit order (see writes_at_once).
_LEDGER_AND_REQUEST_ID = f"""
event_ids_locked AS MATERIALIZED (
    SELECT pg_advisory_xact_lock({LOW_STOCK_EVENT_IDS_LOCK}) FROM changed
    WHERE low_stock_change <> {int(LowStockChange.NONE)} LIMIT 1
), recorded AS (
    INSERT INTO stock_movements (item_id, sku, delta, quantity_after, reason, low_stock_change,
                                 low_stock_threshold, customer_id, category, note, principal,
                                 request_id, create_time, reserved_delta, reserved_after, reservation_id)
    SELECT changed.id, changed.sku, {{delta}}, changed.quantity, :reason, changed.low_stock_change,
           changed.low_stock_threshold, changed.customer_id, changed.category, '', :principal,
           :request_id, :now, {{reserved_delta}}, changed.reserved_quantity, {{reservation_id}}
    FROM changed, {{reservation}}
    WHERE changed.low_stock_change = {int(LowStockChange.NONE)} OR EXISTS (SELECT FROM event_ids_locked)
    ORDER BY changed.id
    RETURNING low_stock_change
), notified AS (
    SELECT pg_notify('{LOW_STOCK_CHANNEL}', '') FROM recorded WHERE low_stock_change <> {int(LowStockChange.NONE)}
), claimed AS (
    INSERT INTO request_ids (request_id, method, fingerprint, response, create_time)
    SELECT :request_id, :method, :fingerprint, {{response}}, :now FROM {{reservation}} WHERE :request_id <> ''
)"""

_RESERVE_LOW_STOCK_CHANGE = _LOW_STOCK_CHANGE.format(
    was_low="items.is_active"
    " AND items.quantity - items.reserved_quantity + wanted.quantity <= items.low_stock_threshold"
)
_RESERVE_LEDGER = _LEDGER_AND_REQUEST_ID.format(
    delta="0",
    reserved_delta="changed.line_quantity",
    reservation_id="reservation.id",
    reservation="reservation",
    response="CAST(jsonb_set(CAST(:response AS jsonb), '{reservation,0}', to_jsonb(reservation.id)) AS text)",
)

RESERVE = text(
    f"""
WITH wanted AS (
    SELECT item_id, quantity, CAST(position - 1 AS smallint) AS position
    FROM unnest(:item_ids, :quantities) WITH ORDINALITY AS w(item_id, quantity, position)
), locked AS MATERIALIZED (
    SELECT items.id, items.quantity - items.reserved_quantity AS available
    FROM items
    WHERE items.id = ANY(ARRAY(SELECT item_id FROM wanted))
    ORDER BY items.id
    FOR UPDATE
), enough AS MATERIALIZED (
    SELECT count(*) = :line_count AS ok
    FROM locked JOIN wanted ON locked.id = wanted.item_id
    WHERE locked.available >= wanted.quantity
), reservation AS (
    INSERT INTO reservations (state, reference, principal, create_time, expire_time, update_time)
    SELECT '{ReservationState.ACTIVE.value}', :reference, :principal, :now, :expire_time, :now
    FROM enough WHERE ok
    RETURNING id
), held AS (
    INSERT INTO reservation_lines (reservation_id, item_id, position, quantity)
    SELECT reservation.id, wanted.item_id, wanted.position, wanted.quantity FROM reservation, wanted
), changed AS (
    UPDATE items
    SET reserved_quantity = items.reserved_quantity + wanted.quantity,
        version = items.version + 1,
        update_time = :now
    FROM wanted, enough
    WHERE enough.ok AND items.id = wanted.item_id AND items.id = ANY(ARRAY(SELECT item_id FROM wanted))
      AND items.quantity - items.reserved_quantity >= wanted.quantity
    RETURNING items.id, items.sku, items.quantity, items.reserved_quantity, items.low_stock_threshold,
              items.customer_id, items.category, wanted.quantity AS line_quantity, {_RESERVE_LOW_STOCK_CHANGE}
), {_RESERVE_LEDGER}
SELECT reservation.id,
       1 / CASE WHEN (SELECT count(*) FROM changed) = :line_count THEN 1 ELSE 0 END AS whole,
       (SELECT count(*) FROM notified) AS low_stock_events
FROM reservation
"""
).bindparams(
    bindparam("item_ids", type_=ARRAY(BigInteger())),
    bindparam("quantities", type_=ARRAY(Integer())),
    bindparam("now", type_=UtcDateTime()),
    bindparam("expire_time", type_=UtcDateTime()),
    bindparam("reason", value=MovementReason.RESERVED.value, type_=String()),
)

_END_LOW_STOCK_CHANGE = _LOW_STOCK_CHANGE.format(
    was_low="items.is_active AND items.quantity - :per_unit_delta * wanted.quantity"
    " - items.reserved_quantity - wanted.quantity <= items.low_stock_threshold"
)
# The first result of a request_id: the ended reservation as rows.reservation_to_values writes it.
_ENDED_AS_JSON = (
    "CAST(jsonb_build_object('reservation', jsonb_build_array(ended.id, CAST(:state AS text), ended.reference,"
    " ended.principal, CAST(ended.create_time AS text), CAST(ended.expire_time AS text), CAST(:now AS text)),"
    " 'lines', (SELECT lines FROM lines)) AS text)"
)
_END_LEDGER = _LEDGER_AND_REQUEST_ID.format(
    delta=":per_unit_delta * changed.line_quantity",
    reserved_delta="-changed.line_quantity",
    reservation_id=":reservation_id",
    reservation="ended",
    response=_ENDED_AS_JSON,
)

# Ends an active reservation that is not past its time: confirmed (its units leave stock, as a
# sale), or released: `per_unit_delta` is the ending's quantity_per_unit (each unit reserved
# leaves the reserved ones: reservation_rules.ENDINGS).
END_RESERVATION = (
    text(
        f"""
WITH ended AS (
    UPDATE reservations SET state = :state, update_time = :now
    WHERE id = :reservation_id AND state = '{ReservationState.ACTIVE.value}' AND expire_time > :now
    RETURNING id, reference, principal, create_time, expire_time
), wanted AS MATERIALIZED (
    SELECT reservation_lines.item_id, reservation_lines.quantity, reservation_lines.position
    FROM reservation_lines JOIN ended ON reservation_lines.reservation_id = ended.id
), locked AS MATERIALIZED (
    SELECT items.id FROM items
    WHERE items.id = ANY(ARRAY(SELECT item_id FROM wanted))
    ORDER BY items.id
    FOR UPDATE
), all_locked AS MATERIALIZED (
    SELECT count(*) AS locked FROM locked
), changed AS (
    UPDATE items
    SET quantity = items.quantity + :per_unit_delta * wanted.quantity,
        reserved_quantity = items.reserved_quantity - wanted.quantity,
        version = items.version + 1,
        update_time = :now
    FROM wanted, all_locked
    WHERE all_locked.locked >= 0 AND items.id = wanted.item_id AND items.id = ANY(ARRAY(SELECT item_id FROM wanted))
      AND items.reserved_quantity >= wanted.quantity
    RETURNING items.id, items.sku, items.quantity, items.reserved_quantity, items.low_stock_threshold,
              items.customer_id, items.category, wanted.quantity AS line_quantity, {_END_LOW_STOCK_CHANGE}
), lines AS MATERIALIZED (
    SELECT jsonb_agg(jsonb_build_array(item_id, quantity) ORDER BY position) AS lines FROM wanted
), {_END_LEDGER}
SELECT ended.id, ended.reference, ended.principal, ended.create_time, ended.expire_time,
       CAST((SELECT lines FROM lines) AS text) AS lines,
       1 / CASE WHEN (SELECT count(*) FROM changed) = (SELECT count(*) FROM wanted) THEN 1 ELSE 0 END AS whole,
       (SELECT count(*) FROM notified) AS low_stock_events
FROM ended
"""
    )
    .bindparams(
        bindparam("now", type_=UtcDateTime()),
        bindparam("state", type_=String()),
        bindparam("reason", type_=String()),
    )
    .columns(
        id=BigInteger(),
        reference=String(),
        principal=String(),
        create_time=UtcDateTime(),
        expire_time=UtcDateTime(),
        lines=String(),
        whole=Integer(),
        low_stock_events=Integer(),
    )
)
