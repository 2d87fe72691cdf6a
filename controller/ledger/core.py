"""The ledger's transaction, idempotency and audit core.

Every command runs through `_run`: one transaction, keyed by an idempotency key whose
first result is stored, so a retry with the same key returns that result and books
nothing. `_tx` writes what the transaction noted to the hash-chained audit trail before
it commits. Under `batch()` (group commit) the commands share one transaction and each
runs in a savepoint of its own: a refused command rolls back alone, with its audit
entries, and the chain is appended once for the whole batch at its end. Reads go through
`_reading`: inside a batch they see the batch's own uncommitted work, outside it they
use a read-only connection that takes no write lock. The id and name lookups every part
of the ledger shares live here too; ids never change once created, so they are cached
once the transaction that read them has committed.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, bindparam, insert, select
from sqlalchemy.exc import DBAPIError, IntegrityError

from controller.ledger.audit import AuditEntry, Change, write_audit_entries
from controller.ledger.engine import is_disconnect, read_only
from controller.ledger.errors import LedgerError, UnknownEntity
from controller.ledger.schema import (
    INTERNAL_KINDS,
    commands,
    locations,
    lots,
    products,
)

SUPPLIER = "SUPPLIER"
CONSUMED = "CONSUMED"
WASTE = "WASTE"
ADJUSTMENT = "ADJUSTMENT"
LOT_STATUSES = ("released", "quarantined", "recalled")
# PostgreSQL: deadlock detected, serialization failure. Both are safe to run again.
RETRYABLE_SQLSTATES = ("40P01", "40001")
MAX_ACTOR = 100  # characters of who did something, as the audit trail stores it
T = TypeVar("T")


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Batch:
    """The transaction a batch of commands shares, and the audit entries of those of
    its commands that succeeded."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.entries: list[AuditEntry] = []
        self.cache: dict[tuple[str, str], Any] = {}


# The lookups of every command, built once (bind parameters instead of a new statement
# object per call).
_PRODUCT_BY_GTIN = select(products.c.id).where(products.c.gtin == bindparam("gtin"))
_LOCATION_BY_CODE = select(locations.c.id, locations.c.kind).where(
    locations.c.code == bindparam("code")
)
_STORED_COMMAND = select(commands.c.kind, commands.c.result).where(
    commands.c.key == bindparam("key")
)
_COMMAND_KEY = select(commands.c.key).where(commands.c.key == bindparam("key"))
_INSERT_COMMAND = insert(commands)
_LOCATION_KIND = select(locations.c.kind).where(locations.c.id == bindparam("id"))
_LOCATION_CODE = select(locations.c.code).where(locations.c.id == bindparam("id"))
_LOT_ID = select(lots.c.id).where(
    lots.c.product_id == bindparam("product_id"), lots.c.batch == bindparam("batch")
)
_LOT_NAME = (
    select(products.c.gtin, lots.c.batch)
    .join(products, products.c.id == lots.c.product_id)
    .where(lots.c.id == bindparam("id"))
)


class LedgerCore:
    """The stock ledger's base on one SQLAlchemy engine (SQLite or PostgreSQL): the
    transaction every command runs in, and the lookups all commands share."""

    def __init__(
        self,
        engine: Engine,
        *,
        clock: Callable[[], datetime] = utcnow,
        min_shelf_life_days: int = 0,
    ) -> None:
        self.engine = engine
        self.reader = read_only(engine)
        self.clock = clock
        self.min_shelf_life_days = min_shelf_life_days
        self._local = threading.local()
        self._names: dict[tuple[str, int], str] = {}
        self._ids: dict[tuple[str, str], Any] = {}

    # ------------------------------------------------------------------ set-up

    def create_schema(self) -> None:
        """Brings the schema up to date and creates the standard external locations."""
        from controller.ledger.migrations import upgrade

        upgrade(self.engine)
        with self._tx("system", "schema", "ledger set-up") as conn:
            for code, kind in (
                (SUPPLIER, "supplier"),
                (CONSUMED, "consumed"),
                (WASTE, "waste"),
                (ADJUSTMENT, "adjustment"),
            ):
                if self._location_id(conn, code, required=False) is None:
                    conn.execute(insert(locations).values(code=code, kind=kind))
                    self._note("location", code, None, {"kind": kind})

    def command_done(self, key: str) -> bool:
        """Whether a command with this idempotency key has been booked."""
        with self._reading() as conn:
            found = conn.execute(_COMMAND_KEY, {"key": key}).first()
        return found is not None

    # ------------------------------------------------------------------ transactions

    def batch(self, *, lock_wait_s: float | None = None) -> AbstractContextManager[None]:
        """Group commit: the commands called inside share one transaction, each in a
        savepoint of its own, and their audit rows are chained once, at the end.

        A command refused inside (LedgerError) rolls back to its savepoint and its caller
        gets the error; the others commit. An error that leaves the transaction unusable
        (a lost connection, a deadlock) propagates out, and nothing of the batch commits.
        With `lock_wait_s` (PostgreSQL), the batch gives up when it waits longer than that
        for a row another transaction holds: a batch holds its rows until it commits, so
        two batches that each hold what the other wants would otherwise wait for the
        server's deadlock timeout. Inside a batch already, this joins it."""
        return self._batch_scope(lock_wait_s)

    @contextmanager
    def _batch_scope(self, lock_wait_s: float | None) -> Iterator[None]:
        if self._current_batch() is not None:
            yield
            return
        batch = None
        with self.engine.begin() as conn:
            if lock_wait_s is not None and conn.dialect.name == "postgresql":
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = {max(1, int(lock_wait_s * 1000))}")
            batch = _Batch(conn)
            self._local.batch = batch
            try:
                yield
                write_audit_entries(conn, batch.entries)
            finally:
                self._local.batch = None
        self._ids.update(batch.cache)

    def _current_batch(self) -> _Batch | None:
        batch: _Batch | None = getattr(self._local, "batch", None)
        return batch

    @contextmanager
    def _reading(self) -> Iterator[Connection]:
        """A connection to read from: the batch's own inside a batch (it sees what the
        batch has done so far), else a read-only one (no write lock on SQLite)."""
        batch = self._current_batch()
        if batch is not None:
            yield batch.conn
            return
        with self.reader.connect() as conn:
            yield conn

    @contextmanager
    def _tx(self, actor: str, action: str, reason: str) -> Iterator[Connection]:
        """One transaction whose changes are written to the audit trail before commit;
        inside a batch, a savepoint whose changes join the batch's audit entries."""
        if len(actor) > MAX_ACTOR:
            raise LedgerError(f"actor: {actor[:40]!r}... is longer than {MAX_ACTOR} characters")
        batch = self._current_batch()
        if batch is not None:
            with batch.conn.begin_nested():
                self._local.changes, self._local.seen = [], {}
                self._local.actor, self._local.reason = actor, reason
                try:
                    yield batch.conn
                    batch.entries.append(
                        AuditEntry(self.clock(), actor, action, reason, tuple(self._local.changes))
                    )
                    batch.cache.update(self._local.seen)
                finally:
                    self._local.changes = self._local.seen = None
            return
        seen: dict[tuple[str, str], Any] = {}
        with self.engine.begin() as conn:
            self._local.changes, self._local.seen = [], seen
            self._local.actor, self._local.reason = actor, reason
            try:
                yield conn
                entry = AuditEntry(self.clock(), actor, action, reason, tuple(self._local.changes))
                write_audit_entries(conn, [entry])
            finally:
                self._local.changes = self._local.seen = None
        self._ids.update(seen)

    def audited(self, actor: str, action: str, reason: str) -> AbstractContextManager[Connection]:
        """A transaction for tables beside the ledger (dose orders, packing jobs): what
        is noted with `note` inside it goes to the same hash-chained audit trail, in the
        same commit."""
        if not actor or not action:
            raise LedgerError(f"audited change needs an actor and an action: {actor!r}, {action!r}")
        return self._tx(actor, action, reason)

    def note(self, entity: str, key: str, old: Any, new: Any) -> None:
        """Records one change of the running `audited` transaction."""
        self._note(entity, key, old, new)

    def _note(self, entity: str, key: str, old: Any, new: Any) -> None:
        changes = getattr(self._local, "changes", None)
        if changes is None:
            raise RuntimeError("ledger change outside an audited transaction")
        changes.append(Change(entity, key, old, new))

    def _run(
        self,
        key: str,
        kind: str,
        fn: Callable[[Connection], dict[str, Any]],
        actor: str,
        reason: str,
    ) -> dict[str, Any]:
        return self._run_then(key, kind, fn, actor, reason, None)[0]

    def _run_then(
        self,
        key: str,
        kind: str,
        fn: Callable[[Connection], dict[str, Any]],
        actor: str,
        reason: str,
        then: Callable[[Connection], T] | None,
    ) -> tuple[dict[str, Any], T | None]:
        """Runs a command once under its key; `then` reads what the caller returns in
        the same transaction (nothing is read back after the commit)."""
        if not key or len(key) > 200:
            raise LedgerError(f"invalid idempotency key: {key!r}")
        if not actor:
            raise LedgerError(f"{kind} {key!r}: actor is missing")
        in_batch = self._current_batch() is not None
        for attempt in range(6):
            try:
                with self._tx(actor, kind, reason) as conn:
                    stored = self._stored(conn, key, kind)
                    if stored is not None:
                        self._local.changes.clear()
                        return stored, then(conn) if then else None
                    result = fn(conn)
                    conn.execute(
                        _INSERT_COMMAND,
                        {
                            "key": key,
                            "kind": kind,
                            "result": json.dumps(result),
                            "ts": self.clock(),
                        },
                    )
                    self._note("command", key, None, {"kind": kind, **result})
                    return result, then(conn) if then else None
            except IntegrityError as exc:
                # A concurrent twin with the same key won the race: its result stands.
                twin = self._twin_result(key, kind, then)
                if twin is not None:
                    return twin
                raise LedgerError(f"{kind} {key!r} refused by the database: {exc.orig}") from exc
            except LedgerError:
                # Refused because a twin with the same key committed first while this one
                # waited for its row locks (it found the reservation resolved, or the stock
                # gone): the twin's result is this command's result.
                twin = self._twin_result(key, kind, then)
                if twin is not None:
                    return twin
                raise
            except DBAPIError as exc:
                # A deadlock, a serialization failure or a lost connection: nothing
                # committed (or, for a connection lost at commit, the key tells). Alone,
                # the command runs again; in a batch, the batch as a whole does.
                retryable = is_disconnect(exc) or (
                    getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES
                )
                if in_batch or not retryable or attempt == 5:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    def _twin_result(
        self, key: str, kind: str, then: Callable[[Connection], T] | None
    ) -> tuple[dict[str, Any], T | None] | None:
        with self._reading() as conn:
            stored = self._stored(conn, key, kind)
            if stored is None:
                return None
            return stored, then(conn) if then else None

    @staticmethod
    def _stored(conn: Connection, key: str, kind: str) -> dict[str, Any] | None:
        row = conn.execute(_STORED_COMMAND, {"key": key}).first()
        if row is None:
            return None
        if row.kind != kind:
            raise LedgerError(
                f"idempotency key {key!r} was already used for a {row.kind}, not a {kind}"
            )
        return dict(json.loads(row.result))

    def _actor(self) -> str:
        return str(getattr(self._local, "actor", "") or "")

    def _reason(self) -> str:
        return str(getattr(self._local, "reason", "") or "")[:200]

    def _cached(self, kind: str, key: str) -> Any:
        return self._ids.get((kind, key))

    def _remember(self, kind: str, key: str, value: Any) -> None:
        """Caches an id once the transaction that read it commits (a row created by a
        transaction that then rolls back must not be remembered)."""
        seen = getattr(self._local, "seen", None)
        if seen is None:
            self._ids[(kind, key)] = value
        else:
            seen[(kind, key)] = value

    def _product_id(self, conn: Connection, gtin: str | None) -> int:
        if gtin is not None:
            cached = self._cached("product", gtin)
            if cached is not None:
                return int(cached)
        row = conn.execute(_PRODUCT_BY_GTIN, {"gtin": gtin}).first()
        if row is None:
            raise UnknownEntity("gtin", gtin)
        self._remember("product", str(gtin), int(row.id))
        return int(row.id)

    def _location_row(self, conn: Connection, code: str | None) -> tuple[int, str] | None:
        if code is not None:
            cached = self._cached("location", code)
            if cached is not None:
                return cached  # type: ignore[no-any-return]
        row = conn.execute(_LOCATION_BY_CODE, {"code": code}).first()
        if row is None:
            return None
        found = (int(row.id), str(row.kind))
        self._remember("location", str(code), found)
        return found

    def _location_id(self, conn: Connection, code: str | None, *, required: bool = True) -> Any:
        row = self._location_row(conn, code)
        if row is None:
            if required:
                raise UnknownEntity("location", code)
            return None
        return row[0]

    def _internal_location_id(self, conn: Connection, code: str) -> int:
        row = self._location_row(conn, code)
        if row is None:
            raise UnknownEntity("location", code)
        if row[1] not in INTERNAL_KINDS:
            raise LedgerError(f"location {code!r} is a {row[1]}: it holds no stock")
        return row[0]

    def _location_kind(self, conn: Connection, loc_id: int) -> str:
        """A location's kind by id (a movement's destination: does it keep a balance?)."""
        cached = self._cached("location-kind", str(loc_id))
        if cached is not None:
            return str(cached)
        kind = str(conn.execute(_LOCATION_KIND, {"id": loc_id}).scalar_one())
        self._remember("location-kind", str(loc_id), kind)
        return kind

    def _lot_id_in(self, conn: Connection, gtin: str, batch: str) -> int:
        product_id = self._product_id(conn, gtin)
        row = conn.execute(_LOT_ID, {"product_id": product_id, "batch": batch}).first()
        if row is None:
            raise UnknownEntity("batch", f"{gtin}/{batch}")
        return int(row.id)

    def _location_name(self, conn: Connection, loc_id: int) -> str:
        cached = self._names.get(("loc", loc_id))
        if cached is None:
            cached = str(conn.execute(_LOCATION_CODE, {"id": loc_id}).scalar_one())
            self._names[("loc", loc_id)] = cached
        return cached

    def _lot_name(self, conn: Connection, lot_id: int) -> str:
        cached = self._names.get(("lot", lot_id))
        if cached is None:
            row = conn.execute(_LOT_NAME, {"id": lot_id}).one()
            cached = f"{row.gtin}/{row.batch}"
            self._names[("lot", lot_id)] = cached
        return cached
