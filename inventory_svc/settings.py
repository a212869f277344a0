"""The inventory service's settings, read once from the environment."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from servicekit.jwt import AuthSettings
from servicekit.server_settings import ServerSettings
from servicekit.settings import EnvReader

DEFAULT_DATABASE_URL = "sqlite:///var/inventory.db"
SERVER_DEFAULTS = ServerSettings(listen_address="127.0.0.1:50051", metrics_address="127.0.0.1:9051")


@dataclass(frozen=True)
class InventorySettings:
    database_url: str = field(default=DEFAULT_DATABASE_URL, repr=False)  # may hold a password
    # Where it listens, processes, limits, shutdown, logs, metrics, traces: INVENTORY_LISTEN_ADDRESS...
    server: ServerSettings = field(default_factory=lambda: SERVER_DEFAULTS)
    # Threads that run database work, per process (calls themselves are coroutines).
    max_workers: int = 16
    # As many as those threads, so that no call waits for, or opens, a connection.
    db_pool_size: int = 16
    # Test each pooled connection with a round trip before a call uses it, so that a call
    # after a database restart or failover finds a fresh one instead of failing. Off saves
    # that round trip per call; then the one call that meets a dead connection answers
    # UNAVAILABLE (reads are retried by the clients) and the pool renews every connection.
    db_pool_pre_ping: bool = True
    # Idempotency keys (request_id) are kept this long, and purged this often.
    request_id_ttl_s: float = 24 * 3600.0
    request_id_purge_interval_s: float = 600.0
    # Low-stock watch streams open at once, per process, and per token subject in it.
    max_watchers: int = 64
    max_watches_per_subject: int = 4
    # A watcher re-reads the ledger at least this often even when no notification came.
    watch_poll_s: float = 1.0
    # Items kept in memory for GetItem, per process (PostgreSQL only; 0 turns it off).
    item_cache_size: int = 10_000
    # ...and served at most this long after they were read, whatever else happens.
    item_cache_max_age_s: float = 5.0
    # Every replica looks this often for reservations past their expire_time, and expires them.
    reservation_sweep_interval_s: float = 1.0
    auth: AuthSettings = field(default_factory=AuthSettings)

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, serving: bool = True) -> InventorySettings:
        """`serving=False` (migrations, seeding) leaves the JWT keys unchecked: those never
        see a token, and a migration Job needs no key mounted."""
        read = EnvReader(env, "INVENTORY")
        return cls(
            database_url=read.str("DATABASE_URL", cls.database_url),
            server=ServerSettings.from_env(read, SERVER_DEFAULTS),
            max_workers=read.int("MAX_WORKERS", cls.max_workers, minimum=1),
            db_pool_size=read.int("DB_POOL_SIZE", cls.db_pool_size, minimum=1),
            db_pool_pre_ping=read.bool("DB_POOL_PRE_PING", cls.db_pool_pre_ping),
            request_id_ttl_s=read.float("REQUEST_ID_TTL_S", cls.request_id_ttl_s),
            request_id_purge_interval_s=read.float(
                "REQUEST_ID_PURGE_INTERVAL_S", cls.request_id_purge_interval_s, positive=True
            ),
            max_watchers=read.int("MAX_WATCHERS", cls.max_watchers, minimum=1),
            max_watches_per_subject=read.int("MAX_WATCHES_PER_SUBJECT", cls.max_watches_per_subject, minimum=1),
            watch_poll_s=read.float("WATCH_POLL_S", cls.watch_poll_s),
            item_cache_size=read.int("ITEM_CACHE_SIZE", cls.item_cache_size),
            item_cache_max_age_s=read.float("ITEM_CACHE_MAX_AGE_S", cls.item_cache_max_age_s),
            reservation_sweep_interval_s=read.float(
                "RESERVATION_SWEEP_INTERVAL_S", cls.reservation_sweep_interval_s, positive=True
            ),
            auth=AuthSettings.from_env(env, "INVENTORY", check=serving),
        )
