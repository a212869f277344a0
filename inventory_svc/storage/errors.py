"""What a database error means to the service: a clash of unique keys, or an outage that a
client may retry (Unavailable)."""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from inventory_svc.domain import DatabaseUnavailable
from servicekit.errors import Unavailable


def sqlstate(error: DBAPIError) -> str | None:
    """PostgreSQL's code of the error (psycopg2 calls it pgcode, psycopg 3 sqlstate); None on SQLite."""
    code = getattr(error.orig, "pgcode", None) or getattr(error.orig, "sqlstate", None)
    return str(code) if code is not None else None


def is_unique_violation(error: IntegrityError) -> bool:
    code = sqlstate(error)
    if code is not None:
        return code == "23505"
    return "UNIQUE constraint failed" in str(error.orig)


def unavailable_for(error: BaseException | None) -> Unavailable | None:
    """What a database error that nothing was committed through means to a client: worth a
    retry (None: an error of ours, or of the request)."""
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        # The pool drops the broken connection; the next call gets a fresh one.
        return DatabaseUnavailable("the database connection was lost; try again")
    if isinstance(error, OperationalError) and "database is locked" in str(error.orig):
        # SQLite's busy timeout ran out behind another writer.
        return DatabaseUnavailable("the database is busy; try again")
    if isinstance(error, OperationalError) and sqlstate(error) in _UNDONE_BY_POSTGRESQL:
        # Writers take their locks in one order so that this should not happen; if it does,
        # nothing was kept.
        return DatabaseUnavailable("the database undid this call to break a deadlock: nothing was written; try again")
    return None


# A deadlock, and a serialization failure: PostgreSQL rolled the transaction back.
_UNDONE_BY_POSTGRESQL = frozenset({"40P01", "40001"})


def lost_while_writing(stage: str) -> Unavailable:
    """The connection went while a write was `stage` ("writing", "committing"): it may have committed."""
    return DatabaseUnavailable(
        f"the database connection was lost while {stage}: the change may or may not "
        "have been made; read it again, or retry with the same request_id"
    )
