"""Demo data for a first run: a few items of two customers, added once to an empty database."""

from __future__ import annotations

import argparse
import logging
import os

from inventory_svc.domain import ItemFields, ItemQuery, Money
from inventory_svc.server import build_item_service
from inventory_svc.service import ItemService
from inventory_svc.settings import InventorySettings
from inventory_svc.storage import build_engine
from servicekit.logging import configure_logging

log = logging.getLogger(__name__)


def _usd(amount: str) -> Money:
    units, _, cents = amount.partition(".")
    return Money("USD", int(units) * 1_000_000_000 + int(cents.ljust(2, "0")) * 10_000_000)


DEMO_ITEMS = (
    ItemFields(
        sku="KB-100",
        name="Mechanical keyboard",
        category="peripherals",
        brand="Keyco",
        price=_usd("89.90"),
        cost=_usd("41.00"),
        quantity=25,
        low_stock_threshold=5,
        max_quantity=60,
        weight_kg=0.95,
        dimensions="44 x 13 x 4 cm",
        customer_id="alice",
    ),
    ItemFields(
        sku="MS-200",
        name="Wireless mouse",
        category="peripherals",
        brand="Pointa",
        price=_usd("24.50"),
        quantity=3,
        low_stock_threshold=5,
        customer_id="alice",
    ),
    ItemFields(
        sku="MN-270",
        name="27 inch monitor",
        category="displays",
        brand="Viewo",
        price=_usd("239.00"),
        quantity=7,
        low_stock_threshold=2,
        customer_id="alice",
    ),
    ItemFields(
        sku="CB-USB-C",
        name="USB-C cable 2 m",
        category="cables",
        brand="Linkit",
        price=_usd("9.99"),
        quantity=140,
        low_stock_threshold=20,
        customer_id="bob",
    ),
    ItemFields(
        sku="HD-500",
        name="Noise cancelling headphones",
        category="audio",
        brand="Hushh",
        price=_usd("129.00"),
        quantity=0,
        low_stock_threshold=3,
        customer_id="bob",
    ),
    ItemFields(
        sku="ST-10",
        name="Laptop stand",
        category="accessories",
        brand="Keyco",
        price=_usd("35.00"),
        quantity=12,
        low_stock_threshold=4,
        is_active=False,
        customer_id="bob",
    ),
    ItemFields(
        sku="WC-1080",
        name="Webcam 1080p",
        category="peripherals",
        brand="Viewo",
        price=_usd("59.00"),
        quantity=18,
        low_stock_threshold=6,
    ),
)


def seed_demo_items(items: ItemService) -> int:
    """Adds the demo items if the database holds none; returns how many were added."""
    if items.list_items(ItemQuery(), page_size=1, page_token="").total_size:
        return 0
    for fields in DEMO_ITEMS:
        items.create_item(fields)
    return len(DEMO_ITEMS)


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(
        description=f"Adds {len(DEMO_ITEMS)} demo items (of customers alice and bob) to an empty inventory "
        "database (run inventory-migrate first); a database holding any item is left alone.",
        epilog="The database is INVENTORY_DATABASE_URL (or DATABASE_URL): docs/configuration.md.",
    ).parse_args(argv)
    settings = InventorySettings.from_env(os.environ, serving=False)
    configure_logging(settings.server.log_level)
    engine = build_engine(settings)
    try:
        added = seed_demo_items(build_item_service(engine))
    finally:
        engine.dispose()
    log.info("demo data: %d items added", added)
