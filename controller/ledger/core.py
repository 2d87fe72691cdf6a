"""The ledger's transaction, idempotency and audit core.

Every command runs through `_run`: one transaction, keyed by an idempotency key whose
first result is stored, so a retry with the same key returns that result and books
nothing. `_tx` writes what the transaction noted to the hash-chained audit trail before
it commits. The id and name lookups every part of the ledger shares live here too.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select
from sqlalchemy.exc import IntegrityError, OperationalError

from controller.ledger.audit import Change, write_audit
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


def utcnow() -> datetime:
    return datetime.now(UTC)


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
        self.clock = clock
        self.min_shelf_life_days = min_shelf_life_days
        self._local = threading.local()
        self._names: dict[tuple[str, int], str] = {}

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
        with self.engine.connect() as conn:
            found = conn.execute(select(commands.c.key).where(commands.c.key == key)).first()
        return found is not None

    # ------------------------------------------------------------------ transactions

    @contextmanager
    def _tx(self, actor: str, action: str, reason: str) -> Iterator[Connection]:
        """One transaction whose changes are written to the audit trail before commit."""
        if len(actor) > MAX_ACTOR:
            raise LedgerError(f"actor: {actor[:40]!r}... is longer than {MAX_ACTOR} characters")
        with self.engine.begin() as conn:
            self._local.changes = []
            self._local.actor, self._local.reason = actor, reason
            try:
                yield conn
                write_audit(
                    conn,
                    ts=self.clock(),
                    actor=actor,
                    action=action,
                    reason=reason,
                    changes=self._local.changes,
                )
            finally:
                self._local.changes = None

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
        if not key or len(key) > 200:
            raise LedgerError(f"invalid idempotency key: {key!r}")
        if not actor:
            raise LedgerError(f"{kind} {key!r}: actor is missing")
        for attempt in range(6):
            try:
                with self._tx(actor, kind, reason) as conn:
                    stored = self._stored(conn, key, kind)
                    if stored is not None:
                        self._local.changes.clear()
                        return stored
                    result = fn(conn)
                    conn.execute(
                        insert(commands).values(
                            key=key, kind=kind, result=json.dumps(result), ts=self.clock()
                        )
                    )
                    self._note("command", key, None, {"kind": kind, **result})
                    return result
            except IntegrityError as exc:
                # A concurrent twin with the same key won the race: its result stands.
                stored = self._twin_result(key, kind)
                if stored is not None:
                    return stored
                raise LedgerError(f"{kind} {key!r} refused by the database: {exc.orig}") from exc
            except LedgerError:
                # Refused because a twin with the same key committed first while this one
                # waited for its row locks (it found the reservation resolved, or the stock
                # gone): the twin's result is this command's result.
                stored = self._twin_result(key, kind)
                if stored is not None:
                    return stored
                raise
            except OperationalError as exc:
                if getattr(exc.orig, "sqlstate", None) not in RETRYABLE_SQLSTATES or attempt == 5:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")

    def _twin_result(self, key: str, kind: str) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            return self._stored(conn, key, kind)

    @staticmethod
    def _stored(conn: Connection, key: str, kind: str) -> dict[str, Any] | None:
        row = conn.execute(
            select(commands.c.kind, commands.c.result).where(commands.c.key == key)
        ).first()
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

    @staticmethod
    def _product_id(conn: Connection, gtin: str | None) -> int:
        row = conn.execute(select(products.c.id).where(products.c.gtin == gtin)).first()
        if row is None:
            raise UnknownEntity("gtin", gtin)
        return int(row.id)

    @staticmethod
    def _location_id(conn: Connection, code: str | None, *, required: bool = True) -> Any:
        row = conn.execute(select(locations.c.id).where(locations.c.code == code)).first()
        if row is None:
            if required:
                raise UnknownEntity("location", code)
            return None
        return int(row.id)

    def _internal_location_id(self, conn: Connection, code: str) -> int:
        row = conn.execute(
            select(locations.c.id, locations.c.kind).where(locations.c.code == code)
        ).first()
        if row is None:
            raise UnknownEntity("location", code)
        if row.kind not in INTERNAL_KINDS:
            raise LedgerError(f"location {code!r} is a {row.kind}: it holds no stock")
        return int(row.id)

    def _lot_id_in(self, conn: Connection, gtin: str, batch: str) -> int:
        product_id = self._product_id(conn, gtin)
        row = conn.execute(
            select(lots.c.id).where(lots.c.product_id == product_id, lots.c.batch == batch)
        ).first()
        if row is None:
            raise UnknownEntity("batch", f"{gtin}/{batch}")
        return int(row.id)

    def _location_name(self, conn: Connection, loc_id: int) -> str:
        cached = self._names.get(("loc", loc_id))
        if cached is None:
            cached = str(
                conn.execute(select(locations.c.code).where(locations.c.id == loc_id)).scalar_one()
            )
            self._names[("loc", loc_id)] = cached
        return cached

    def _lot_name(self, conn: Connection, lot_id: int) -> str:
        cached = self._names.get(("lot", lot_id))
        if cached is None:
            row = conn.execute(
                select(products.c.gtin, lots.c.batch)
                .join(products, products.c.id == lots.c.product_id)
                .where(lots.c.id == lot_id)
            ).one()
            cached = f"{row.gtin}/{row.batch}"
            self._names[("lot", lot_id)] = cached
        return cached
