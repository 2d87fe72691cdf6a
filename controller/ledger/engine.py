"""Engine set-up for the two supported backends.

SQLite is the embedded default: WAL so readers never block the one writer, a busy
timeout, and `BEGIN IMMEDIATE` so a write transaction takes the write lock up front
instead of failing half-way on a lock upgrade. Read-only work goes through
`read_only(engine)`, whose transactions begin DEFERRED: in WAL mode such a reader takes
no lock at all, so a report in another process never holds up the controller's writer.

PostgreSQL runs with READ COMMITTED, where the conditional UPDATEs of the ledger re-check
their condition after a row lock. No connection is pinged on checkout (a round trip per
transaction); a connection found dead while in use raises an error that `is_disconnect`
recognises, the pool drops its connections, and the ledger runs the command again.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DBAPIError

READ_ONLY = "doseline_read_only"


def make_engine(url: str, *, echo: bool = False) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, echo=echo, connect_args={"timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # let SQLAlchemy's BEGIN below decide
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            if conn.get_execution_options().get(READ_ONLY):
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    return create_engine(url, echo=echo, pool_pre_ping=False)


def read_only(engine: Engine) -> Engine:
    """The same engine and pool, for work that only reads (no write lock on SQLite)."""
    if engine.get_execution_options().get(READ_ONLY):
        return engine
    return engine.execution_options(**{READ_ONLY: True})


def is_disconnect(exc: BaseException) -> bool:
    """True when the database connection itself was lost (server restart, backend
    terminated, network cut). A ledger command caught by it runs again under the same
    idempotency key, which is safe whether or not its commit reached the server."""
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def is_memory_sqlite(engine: Engine) -> bool:
    """An in-memory SQLite database lives in one connection: one thread must do all its work."""
    return engine.dialect.name == "sqlite" and engine.url.database in (None, "", ":memory:")
