"""Whether the connections this service may open fit in what PostgreSQL allows: checked once
at startup, so that "too many clients already" is a warning in the log before it is an
outage under load."""

from __future__ import annotations

from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError

# Connections left for everything else: migrations, an operator's psql, monitoring. (A rolling
# deploy runs old and new processes side by side for a while: count both in `processes`.)
DEFAULT_HEADROOM = 10
# Each serving process holds one connection of its own outside its pool: the change listener's.
CONNECTIONS_OUTSIDE_THE_POOL = 1

_LIMITS = text("""
    SELECT current_setting('max_connections')::int,
           current_setting('superuser_reserved_connections')::int,
           coalesce(current_setting('reserved_connections', true), '0')::int,
           (SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user),
           (SELECT datconnlimit FROM pg_database WHERE datname = current_database())
""")


def connection_budget_warning(
    engine: Engine, *, pool_size: int, max_overflow: int, processes: int, headroom: int = DEFAULT_HEADROOM
) -> str | None:
    """A warning when `processes` serving processes, each with a pool of `pool_size` +
    `max_overflow` connections and its listener's one, could open more connections than
    PostgreSQL lets them (max_connections less the reserved ones less `headroom`, or the
    role's or the database's CONNECTION LIMIT); None when they fit, and on SQLite."""
    if engine.dialect.name != "postgresql":
        return None
    per_process = pool_size + max_overflow + CONNECTIONS_OUTSIDE_THE_POOL
    wanted = processes * per_process
    try:
        with engine.connect() as connection:
            max_connections, superuser_reserved, reserved, role_limit, database_limit = connection.execute(
                _LIMITS
            ).one()
    except DBAPIError as error:
        return f"could not check the database connection budget: {type(error.orig).__name__}"
    shape = (
        f"{processes} process(es) x ({pool_size} pooled + {max_overflow} overflow + "
        f"{CONNECTIONS_OUTSIDE_THE_POOL} listener) = {wanted} connections"
    )
    fix = "lower INVENTORY_DB_POOL_SIZE or the number of processes, or raise the limit"
    available = max_connections - superuser_reserved - reserved - headroom
    if wanted > available:
        return (
            f"{shape} may not fit: PostgreSQL allows {max_connections} connections, "
            f"{superuser_reserved + reserved} of them reserved, and {headroom} are left for others, so "
            f"{available}; calls beyond that answer UNAVAILABLE ('too many clients'): {fix}"
        )
    for what, limit in (("role", role_limit), ("database", database_limit)):
        if limit is not None and limit >= 0 and wanted > limit:
            return (
                f"{shape} may not fit: the {what}'s CONNECTION LIMIT is {limit}; calls beyond that "
                f"answer UNAVAILABLE: {fix}"
            )
    return None
