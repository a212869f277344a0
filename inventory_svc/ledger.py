"""The ledger row of a change, written in the change's unit of work."""

from __future__ import annotations

from inventory_svc.domain import Item
from inventory_svc.ports import UnitOfWork
from inventory_svc.stock import MovementReason, movement_between


def record_movement(
    uow: UnitOfWork,
    before: Item | None,
    after: Item | None,
    reason: MovementReason,
    *,
    note: str = "",
    principal: str = "",
    request_id: str = "",
    reservation_id: int = 0,
) -> None:
    """Adds the movement from `before` to `after` (None: not there) to the ledger, if any
    moved: see stock.movement_between."""
    movement = movement_between(
        before, after, reason, note=note, principal=principal, request_id=request_id, reservation_id=reservation_id
    )
    if movement is not None:
        uow.movements.add(movement)
