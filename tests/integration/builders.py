"""Items to store: fields that pass validation, a fresh sku each."""

from __future__ import annotations

import uuid
from typing import Any

from inventory_svc.domain import ItemFields, Money


def new_fields(**overrides: Any) -> ItemFields:
    values: dict[str, Any] = dict(
        sku=f"SKU-{uuid.uuid4().hex[:10]}",
        name="Storage box",
        price=Money("USD", 4_500_000_000),
        category="storage",
        quantity=10,
        low_stock_threshold=3,
        customer_id="alice",
    )
    values.update(overrides)
    return ItemFields(**values)
