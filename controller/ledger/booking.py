"""Booking stock: the movements and balance changes every command is made of.

A movement is appended and added to its destination's balance in one step (`_book`).
Stock only leaves a (location, lot) row, or is reserved on it, through a conditional
UPDATE whose WHERE clause checks that enough is free (`_conditional`), so concurrent
writers never drive a balance below zero nor reserve the same tablet twice. Each balance
change is noted for the audit trail with its old and new value.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Connection, exists, insert, select, update
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


def dialect_insert(conn: Connection) -> Any:
    """The INSERT construct with ON CONFLICT of the connection's database."""
    return pg_insert if conn.dialect.name == "postgresql" else sqlite_insert


def under_hold() -> ColumnElement[bool]:
    """Whether a balance row is under an open location hold (correlated to `balances`)."""
    return exists().where(
        stock_holds.c.location_id == balances.c.location_id,
        stock_holds.c.lot_id == balances.c.lot_id,
        stock_holds.c.status == "held",
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
        query = (
            select(
                balances.c.location_id, balances.c.lot_id, balances.c.on_hand - balances.c.reserved
            )
            .join(lots, lots.c.id == balances.c.lot_id)
            .where(
                lots.c.product_id == product_id,
                balances.c.location_id.in_(list(location_ids)),
                balances.c.on_hand - balances.c.reserved > 0,
            )
            .order_by(lots.c.expiry, lots.c.id, balances.c.location_id)
        )
        if usable_only:
            cutoff = self.clock().date() + timedelta(days=self.min_shelf_life_days)
            query = query.where(lots.c.status == "released", lots.c.expiry >= cutoff, ~under_hold())
            if conn.dialect.name == "postgresql":
                # A share lock on the lots allocated from: quarantining, recalling or
                # holding one of them waits until this transaction's lines exist (and
                # then moves them), and an allocation that waited re-checks the lot's
                # new status (and `_conditional` re-checks holds).
                query = query.with_for_update(read=True, of=lots)
        return [(int(a), int(b), int(c)) for a, b, c in conn.execute(query)]

    def _conditional(
        self, conn: Connection, loc_id: int, lot_id: int, want: int, *, hold: bool
    ) -> int:
        """Holds (or takes) `want` if free on the row; retries smaller if a rival took some."""
        column = balances.c.reserved if hold else balances.c.on_hand
        sign = 1 if hold else -1
        # Reserving checks for a location hold in the same statement: a hold committed
        # while this transaction waited for the lot's lock is seen here (a new statement
        # takes a new snapshot), so held stock is never reserved.
        unheld = [~under_hold()] if hold else []
        while want > 0:
            row = conn.execute(
                update(balances)
                .where(
                    balances.c.location_id == loc_id,
                    balances.c.lot_id == lot_id,
                    balances.c.on_hand - balances.c.reserved >= want,
                    *unheld,
                )
                .values({column.name: column + sign * want})
                .returning(balances.c.on_hand, balances.c.reserved)
            ).first()
            if row is not None:
                self._note_balance(conn, loc_id, lot_id, row, **{column.name: sign * want})
                return want
            free = conn.execute(
                select(balances.c.on_hand - balances.c.reserved).where(
                    balances.c.location_id == loc_id, balances.c.lot_id == lot_id, *unheld
                )
            ).scalar()
            want = min(want - 1, int(free or 0))
        return 0

    def _hold(self, conn: Connection, loc_id: int, lot_id: int, want: int) -> int:
        return self._conditional(conn, loc_id, lot_id, want, hold=True)

    def _take(self, conn: Connection, loc_id: int, lot_id: int, want: int) -> int:
        return self._conditional(conn, loc_id, lot_id, want, hold=False)

    def _release_held(
        self, conn: Connection, loc_id: int, lot_id: int, quantity: int, *, consume: bool
    ) -> None:
        values: dict[str, Any] = {"reserved": balances.c.reserved - quantity}
        if consume:
            values["on_hand"] = balances.c.on_hand - quantity
        row = conn.execute(
            update(balances)
            .where(
                balances.c.location_id == loc_id,
                balances.c.lot_id == lot_id,
                balances.c.reserved >= quantity,
                balances.c.on_hand >= quantity,
            )
            .values(values)
            .returning(balances.c.on_hand, balances.c.reserved)
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
            insert(movements)
            .values(
                ts=self.clock(),
                kind=kind,
                lot_id=lot_id,
                from_location_id=from_id,
                to_location_id=to_id,
                quantity=quantity,
                reservation_id=reservation_id,
                idempotency_key=key,
                actor=self._actor(),
                reason=(reason or self._reason())[:200],
                reason_code=reason_code,
                substituted_for=substituted_for,
            )
            .returning(movements.c.id)
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
            stmt = dialect_insert(conn)(balances).values(
                location_id=to_id, lot_id=lot_id, on_hand=quantity, reserved=0
            )
            row = conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[balances.c.location_id, balances.c.lot_id],
                    set_={"on_hand": balances.c.on_hand + quantity},
                ).returning(balances.c.on_hand, balances.c.reserved)
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
