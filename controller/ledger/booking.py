"""Booking stock: the movements and balance changes every command is made of.

A movement is appended and added to its destination's balance in one step (`_book`).
Stock only leaves a (location, lot) row, or is reserved on it, through a conditional
UPDATE whose WHERE clause checks that enough is free (`_conditional`), so concurrent
writers never drive a balance below zero nor reserve the same tablet twice. Each balance
change is noted for the audit trail with its old and new value.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, bindparam, exists, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from controller.ledger.audit import movement_record
from controller.ledger.core import LedgerCore
from controller.ledger.errors import LedgerError
from controller.ledger.schema import (
    INTERNAL_KINDS,
    balances,
    lots,
    movements,
    stock_holds,
)


def per_dialect(build: Callable[[Any], Any]) -> Callable[[Connection], Any]:
    """An upsert built once per database kind, on first use, from the INSERT construct
    with ON CONFLICT of that database (SQLite's and PostgreSQL's differ)."""
    built: dict[str, Any] = {}

    def statement(conn: Connection) -> Any:
        name = conn.dialect.name
        stmt = built.get(name)
        if stmt is None:
            stmt = built[name] = build(pg_insert if name == "postgresql" else sqlite_insert)
        return stmt

    return statement


def under_hold() -> ColumnElement[bool]:
    """Whether a balance row is under an open location hold (correlated to `balances`)."""
    return exists().where(
        stock_holds.c.location_id == balances.c.location_id,
        stock_holds.c.lot_id == balances.c.lot_id,
        stock_holds.c.status == "held",
    )


# The statements of every booking, built once with bind parameters: building and
# hashing a new statement object per call cost more than running it.
_FREE = balances.c.on_hand - balances.c.reserved
_ROW = (balances.c.location_id == bindparam("loc"), balances.c.lot_id == bindparam("lot"))

_FEFO_ANY = (
    select(balances.c.location_id, balances.c.lot_id, _FREE)
    .join(lots, lots.c.id == balances.c.lot_id)
    .where(
        lots.c.product_id == bindparam("product_id"),
        balances.c.location_id.in_(bindparam("loc_ids", expanding=True)),
        _FREE > 0,
    )
    .order_by(lots.c.expiry, lots.c.id, balances.c.location_id)
)
_FEFO_USABLE = _FEFO_ANY.where(
    lots.c.status == "released", lots.c.expiry >= bindparam("cutoff"), ~under_hold()
)
# PostgreSQL: a share lock on the lots allocated from (see `_fefo_candidates`).
_FEFO_USABLE_LOCKED = _FEFO_USABLE.with_for_update(read=True, of=lots)


def _conditional_update(column: Any, *extra: ColumnElement[bool]) -> Any:
    """Adds `delta` to one column of a row only while `want` is free on it: the check
    and the change are one statement, so a rival cannot slip in between."""
    return (
        update(balances)
        .where(*_ROW, _FREE >= bindparam("want"), *extra)
        .values({column.name: column + bindparam("delta")})
        .returning(balances.c.on_hand, balances.c.reserved)
    )


# Holding (reserving) re-checks location holds in the same statement; taking does not.
_HOLD = _conditional_update(balances.c.reserved, ~under_hold())
_HOLD_FREE = select(_FREE).where(*_ROW, ~under_hold())
_TAKE = _conditional_update(balances.c.on_hand)
_TAKE_FREE = select(_FREE).where(*_ROW)


def _release_update(consume: bool) -> Any:
    """Gives back `quantity` reserved (and, consumed, takes it off hand too), never
    below zero."""
    values: dict[str, Any] = {"reserved": balances.c.reserved - bindparam("quantity")}
    if consume:
        values["on_hand"] = balances.c.on_hand - bindparam("quantity")
    return (
        update(balances)
        .where(
            *_ROW,
            balances.c.reserved >= bindparam("quantity"),
            balances.c.on_hand >= bindparam("quantity"),
        )
        .values(values)
        .returning(balances.c.on_hand, balances.c.reserved)
    )


_RELEASE = _release_update(consume=False)
_RELEASE_CONSUMED = _release_update(consume=True)

_INSERT_MOVEMENT = insert(movements).returning(movements.c.id)
_ADD_TO_BALANCE = per_dialect(
    lambda dialect_insert_: (
        dialect_insert_(balances)
        .values(
            location_id=bindparam("loc"),
            lot_id=bindparam("lot"),
            on_hand=bindparam("quantity"),
            reserved=0,
        )
        .on_conflict_do_update(
            index_elements=[balances.c.location_id, balances.c.lot_id],
            set_={"on_hand": balances.c.on_hand + bindparam("quantity")},
        )
        .returning(balances.c.on_hand, balances.c.reserved)
    )
)


class Booking(LedgerCore):
    """Movements, balances and the first-expiry-first-out order of free stock."""

    def _fefo_candidates(
        self,
        conn: Connection,
        product_id: int,
        location_ids: Iterable[int],
        *,
        usable_only: bool = True,
    ) -> list[tuple[int, int, int]]:
        """(location, lot, free quantity) of a product, first expiry first."""
        params: dict[str, Any] = {"product_id": product_id, "loc_ids": list(location_ids)}
        query = _FEFO_ANY
        if usable_only:
            params["cutoff"] = self.clock().date() + timedelta(days=self.min_shelf_life_days)
            # On PostgreSQL, a share lock on the lots allocated from: quarantining,
            # recalling or holding one of them waits until this transaction's lines
            # exist (and then moves them), and an allocation that waited re-checks the
            # lot's new status (and `_conditional` re-checks holds).
            postgres = conn.dialect.name == "postgresql"
            query = _FEFO_USABLE_LOCKED if postgres else _FEFO_USABLE
        return [(int(a), int(b), int(c)) for a, b, c in conn.execute(query, params)]

    def _conditional(
        self, conn: Connection, loc_id: int, lot_id: int, want: int, *, hold: bool
    ) -> int:
        """Holds (or takes) `want` if free on the row; retries smaller if a rival took some."""
        # Reserving checks for a location hold in the same statement: a hold committed
        # while this transaction waited for the lot's lock is seen here (a new statement
        # takes a new snapshot), so held stock is never reserved.
        change, free_now = (_HOLD, _HOLD_FREE) if hold else (_TAKE, _TAKE_FREE)
        sign = 1 if hold else -1
        while want > 0:
            row = conn.execute(
                change, {"loc": loc_id, "lot": lot_id, "want": want, "delta": sign * want}
            ).first()
            if row is not None:
                if hold:
                    self._note_balance(conn, loc_id, lot_id, row, reserved=want)
                else:
                    self._note_balance(conn, loc_id, lot_id, row, on_hand=-want)
                return want
            free = conn.execute(free_now, {"loc": loc_id, "lot": lot_id}).scalar()
            want = min(want - 1, int(free or 0))
        return 0

    def _hold(self, conn: Connection, loc_id: int, lot_id: int, want: int) -> int:
        return self._conditional(conn, loc_id, lot_id, want, hold=True)

    def _take(self, conn: Connection, loc_id: int, lot_id: int, want: int) -> int:
        return self._conditional(conn, loc_id, lot_id, want, hold=False)

    def _release_held(
        self, conn: Connection, loc_id: int, lot_id: int, quantity: int, *, consume: bool
    ) -> None:
        row = conn.execute(
            _RELEASE_CONSUMED if consume else _RELEASE,
            {"loc": loc_id, "lot": lot_id, "quantity": quantity},
        ).first()
        if row is None:
            raise LedgerError(
                f"balance of lot {lot_id} at location {loc_id} holds less than {quantity} reserved"
            )
        self._note_balance(
            conn, loc_id, lot_id, row, reserved=-quantity, on_hand=-quantity if consume else 0
        )

    def _book(
        self,
        conn: Connection,
        key: str,
        kind: str,
        lot_id: int,
        from_id: int,
        to_id: int,
        quantity: int,
        *,
        reservation_id: int | None = None,
        reason_code: str | None = None,
        substituted_for: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Appends a movement and adds it to the destination's balance."""
        movement_id = conn.execute(
            _INSERT_MOVEMENT,
            {
                "ts": self.clock(),
                "kind": kind,
                "lot_id": lot_id,
                "from_location_id": from_id,
                "to_location_id": to_id,
                "quantity": quantity,
                "reservation_id": reservation_id,
                "idempotency_key": key,
                "actor": self._actor(),
                "reason": (reason or self._reason())[:200],
                "reason_code": reason_code,
                "substituted_for": substituted_for,
            },
        ).scalar_one()
        self._note(
            "movement",
            str(movement_id),
            None,
            movement_record(
                movement_id,
                kind=kind,
                lot_id=lot_id,
                from_id=from_id,
                to_id=to_id,
                quantity=quantity,
                key=key,
                reason_code=reason_code,
                substituted_for=substituted_for,
            ),
        )
        if self._location_kind(conn, to_id) in INTERNAL_KINDS:
            row = conn.execute(
                _ADD_TO_BALANCE(conn), {"loc": to_id, "lot": lot_id, "quantity": quantity}
            ).one()
            self._note_balance(conn, to_id, lot_id, row, on_hand=quantity)

    def _note_balance(
        self,
        conn: Connection,
        loc_id: int,
        lot_id: int,
        row: Any,
        *,
        on_hand: int = 0,
        reserved: int = 0,
    ) -> None:
        new = {"on_hand": int(row.on_hand), "reserved": int(row.reserved)}
        old = {"on_hand": new["on_hand"] - on_hand, "reserved": new["reserved"] - reserved}
        self._note(
            "balance",
            f"{self._location_name(conn, loc_id)} {self._lot_name(conn, lot_id)}",
            old,
            new,
        )
