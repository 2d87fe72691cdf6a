"""Stock movements: goods in (one line, a whole delivery, a GS1 scan), transfers,
consumption, waste, returns of consumed doses, stocktakes and counts, and lot status.

Every command is one idempotent transaction (`_run`); stock leaves a location only
through the conditional UPDATEs of `Booking`, first expiry first.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, select, update

from controller.ledger.core import ADJUSTMENT, CONSUMED, LOT_STATUSES, SUPPLIER, WASTE
from controller.ledger.delivery_csv import read_ledger_delivery
from controller.ledger.errors import InsufficientStock, InvalidQuantity, LedgerError
from controller.ledger.marks import CounterMarks
from controller.ledger.masterdata import MasterData
from controller.ledger.reservations import Reservations
from controller.ledger.schema import balances, lots, movements
from controller.ledger.views import (
    CounterMark,
    DeliveryError,
    DeliveryLine,
    check_waste_reason,
    delivery_line_problem,
    positive,
)


class Movements(Reservations, MasterData, CounterMarks):
    """Commands that move stock in, around and out of the pharmacy."""

    # ------------------------------------------------------------------ receiving

    def receive(
        self,
        key: str,
        *,
        gtin: str,
        batch: str,
        expiry: date,
        quantity: int,
        to_location: str,
        actor: str,
        reason: str = "delivery",
        unit_price: Decimal | None = None,
    ) -> None:
        """Books goods in from a supplier. An expired lot is refused. `unit_price` (SEK
        per unit) becomes the lot's purchase price when the lot is new."""
        self.receive_many(
            key,
            [DeliveryLine(gtin, batch, expiry, quantity, to_location, unit_price)],
            actor=actor,
            reason=reason,
        )

    def receive_many(
        self,
        key: str,
        lines: Sequence[DeliveryLine],
        *,
        actor: str,
        reason: str = "delivery",
        within: Callable[[Connection, list[int]], dict[str, Any]] | None = None,
    ) -> dict[str, Any] | None:
        """Books a whole delivery in one transaction: every line, or none of them.

        A single line fails with its own error; a file of lines fails with every bad
        line listed by number, field and value. `within(conn, lot_ids)` runs in the same
        transaction after the movements (lot ids in line order): purchasing records the
        delivery against its order there. Returns the command's stored result (a
        concurrent twin's when that one committed first), or None when `key` was
        booked before.
        """
        if not lines:
            raise LedgerError("a delivery needs at least one line")
        if self.command_done(key):
            return None  # a retry of a delivery already booked (perhaps before its lot expired)
        today = self.clock().date()
        found = [
            (i, e)
            for i, line in enumerate(lines, start=1)
            if (e := delivery_line_problem(line, today)) is not None
        ]
        if found and len(lines) == 1:
            raise found[0][1]
        if found:
            raise DeliveryError([f"line {i}: {e}" for i, e in found])

        def run(conn: Connection) -> dict[str, Any]:
            supplier = self._location_id(conn, SUPPLIER)
            problems: list[str] = []
            lot_ids: list[int] = []
            for number, line in enumerate(lines, start=1):
                try:
                    product_id = self._product_id(conn, line.gtin)
                    dest = self._internal_location_id(conn, line.location)
                    lot_id = self._ensure_lot(
                        conn, product_id, line.gtin, line.batch, line.expiry, line.unit_price
                    )
                except LedgerError as exc:
                    if len(lines) == 1:
                        raise
                    problems.append(f"line {number}: {exc}")
                    continue
                self._book(conn, key, "receive", lot_id, supplier, dest, line.quantity)
                lot_ids.append(lot_id)
            if problems:
                raise DeliveryError(problems)
            result = {"lines": len(lines), "units": sum(line.quantity for line in lines)}
            if within is not None:
                result.update(within(conn, lot_ids))
            return result

        return self._run(key, "receive", run, actor, reason)

    def receive_scan(
        self,
        key: str,
        *,
        data: str,
        quantity: int,
        to_location: str,
        actor: str,
        reason: str = "delivery",
        unit_price: Decimal | None = None,
    ) -> DeliveryLine:
        """Books goods in from a GS1 scan of the pack (GTIN, expiry, batch), with the
        purchase price per unit when it is known."""
        from controller.gs1 import ScanError, parse_pack

        try:
            pack = parse_pack(data)
        except ScanError as exc:
            raise LedgerError(str(exc)) from exc
        line = DeliveryLine(pack.gtin, pack.batch, pack.expiry, quantity, to_location, unit_price)
        self.receive_many(key, [line], actor=actor, reason=reason)
        return line

    @staticmethod
    def parse_delivery_csv(text: str, default_location: str | None = None) -> list[DeliveryLine]:
        """Reads a delivery file: `gtin;batch;expiry;quantity[;location][;unit_price]`,
        header first (see `controller.ledger.delivery_csv`). Every bad line is reported
        with its number, field and value in a DeliveryError; none is booked."""
        return read_ledger_delivery(text, default_location)

    # ------------------------------------------------------------------ moving stock

    def transfer(
        self,
        key: str,
        *,
        gtin: str,
        quantity: int,
        from_location: str,
        to_location: str,
        actor: str,
        reason: str,
    ) -> None:
        """Moves free (unreserved) stock, first expiry first, between two locations."""
        self._take_free(key, "transfer", gtin, quantity, from_location, to_location, actor, reason)

    def consume(
        self,
        key: str,
        *,
        gtin: str,
        quantity: int,
        location: str,
        actor: str,
        reason: str,
        mark: CounterMark | None = None,
    ) -> None:
        """Books stock used up at a location (a dose taken from a cabinet pocket).

        With `mark`, the device counter that reported the use is recorded in the same
        transaction, so the next delta starts exactly where this one ended.
        """
        self._take_free(
            key, "consume", gtin, quantity, location, CONSUMED, actor, reason, mark=mark
        )

    def waste(
        self,
        key: str,
        *,
        gtin: str,
        quantity: int,
        location: str,
        actor: str,
        reason: str,
        reason_code: str = "other",
        mark: CounterMark | None = None,
    ) -> None:
        """Books stock destroyed at a location, with the reason why (and, like
        `consume`, the device counter that reported it)."""
        check_waste_reason(reason_code)
        self._take_free(
            key,
            "waste",
            gtin,
            quantity,
            location,
            WASTE,
            actor,
            reason,
            reason_code=reason_code,
            mark=mark,
        )

    def return_consumed(
        self,
        key: str,
        *,
        gtin: str,
        quantity: int,
        location: str,
        actor: str,
        reason: str,
        mark: CounterMark | None = None,
    ) -> None:
        """Books doses put back at a location after they were booked as consumed.

        A returned dose comes from the lots most recently consumed there, latest first;
        more than was ever consumed there is refused.
        """
        positive("quantity", quantity)

        def run(conn: Connection) -> dict[str, Any]:
            if mark is not None:
                self._set_mark(conn, mark)
            product_id = self._product_id(conn, gtin)
            loc_id = self._internal_location_id(conn, location)
            consumed_id = self._location_id(conn, CONSUMED)
            net: dict[int, int] = {}
            for m in conn.execute(
                select(movements.c.lot_id, movements.c.from_location_id, movements.c.quantity)
                .join(lots, lots.c.id == movements.c.lot_id)
                .where(
                    lots.c.product_id == product_id,
                    (
                        (movements.c.from_location_id == loc_id)
                        & (movements.c.to_location_id == consumed_id)
                    )
                    | (
                        (movements.c.from_location_id == consumed_id)
                        & (movements.c.to_location_id == loc_id)
                    ),
                )
                .order_by(movements.c.id.desc())
            ):
                sign = 1 if m.from_location_id == loc_id else -1
                net[m.lot_id] = net.get(m.lot_id, 0) + sign * m.quantity
            remaining = quantity
            for lot_id, returnable in net.items():  # latest consumed lot first
                take = min(remaining, returnable)
                if take > 0:
                    self._book(conn, key, "return", lot_id, consumed_id, loc_id, take)
                    remaining -= take
                if remaining == 0:
                    break
            if remaining:
                raise InsufficientStock(
                    gtin, f"consumed from {location}", quantity, quantity - remaining
                )
            return {"quantity": quantity}

        self._run(key, "return", run, actor, reason)

    def stocktake(
        self,
        key: str,
        *,
        location: str,
        counted: Mapping[tuple[str, str], int],
        actor: str,
        reason: str = "stocktake",
        complete: bool = True,
    ) -> dict[str, int]:
        """Turns a counted snapshot of a location into adjustment movements.

        `counted` maps (gtin, batch) to the units found. With `complete`, a lot that is
        on record at the location but not in the count was not found: it is counted as
        zero. A loss of stock that open reservations hold takes the reservations along:
        they are re-allocated to other lots, or shrink. Returns the differences.
        """
        for (gtin, batch), units in counted.items():
            if not isinstance(units, int) or isinstance(units, bool) or units < 0:
                raise InvalidQuantity(f"count of {gtin}/{batch}", units)

        def run(conn: Connection) -> dict[str, Any]:
            loc_id = self._internal_location_id(conn, location)
            adjustment = self._location_id(conn, ADJUSTMENT)
            targets: dict[int, int] = {}
            for (gtin, batch), units in counted.items():
                targets[self._lot_id_in(conn, gtin, batch)] = units
            if complete:
                for row in conn.execute(
                    select(balances.c.lot_id).where(
                        balances.c.location_id == loc_id, balances.c.on_hand > 0
                    )
                ):
                    targets.setdefault(int(row.lot_id), 0)
            differences: dict[str, int] = {}
            for lot_id, units in sorted(targets.items()):
                bal = conn.execute(
                    select(balances.c.on_hand, balances.c.reserved).where(
                        balances.c.location_id == loc_id, balances.c.lot_id == lot_id
                    )
                ).first()
                on_hand = int(bal.on_hand) if bal else 0
                reserved = int(bal.reserved) if bal else 0
                diff = units - on_hand
                if diff == 0:
                    continue
                differences[self._lot_name(conn, lot_id)] = diff
                if diff > 0:
                    self._book(conn, key, "adjust", lot_id, adjustment, loc_id, diff)
                    continue
                loss = -diff
                if loss > on_hand - reserved:
                    self._reallocate(conn, loc_id, lot_id, loss - (on_hand - reserved))
                took = self._take(conn, loc_id, lot_id, loss)
                if took != loss:
                    raise LedgerError(f"stocktake of {location}: could not book a loss of {loss}")
                self._book(conn, key, "adjust", lot_id, loc_id, adjustment, loss)
            return {"differences": differences}

        return dict(self._run(key, "stocktake", run, actor, reason)["differences"])

    def count_to(
        self,
        key: str,
        *,
        location: str,
        gtin: str,
        counted: int,
        actor: str,
        reason: str,
        marks: Sequence[CounterMark] = (),
    ) -> int:
        """A device counted one product at a location (a cabinet pocket's count keyed
        in at the cabinet) without telling lots apart: adjusts the ledger to `counted`.

        Doses missing are taken first expiry first, as nurses take them; doses found
        are put on the latest-expiring lot there (or the one last there). `marks`, the
        counters that reported the count, move in the same transaction. Returns the
        change (counted - on hand before).
        """
        if not isinstance(counted, int) or isinstance(counted, bool) or counted < 0:
            raise InvalidQuantity(f"count of {gtin} at {location}", counted)

        def run(conn: Connection) -> dict[str, Any]:
            for mark in marks:
                self._set_mark(conn, mark)
            loc_id = self._internal_location_id(conn, location)
            adjustment = self._location_id(conn, ADJUSTMENT)
            product_id = self._product_id(conn, gtin)
            held = conn.execute(
                select(balances.c.lot_id, balances.c.on_hand, balances.c.reserved)
                .join(lots, lots.c.id == balances.c.lot_id)
                .where(
                    balances.c.location_id == loc_id,
                    lots.c.product_id == product_id,
                    balances.c.on_hand > 0,
                )
                .order_by(lots.c.expiry, lots.c.id)
            ).all()
            change = counted - sum(int(r.on_hand) for r in held)
            if change > 0:
                lot_id = (
                    int(held[-1].lot_id) if held else self._last_lot_at(conn, loc_id, product_id)
                )
                if lot_id is None:
                    raise LedgerError(
                        f"count of {gtin} at {location}: {counted} counted, but no lot of it "
                        "was ever there; book the found stock with a stocktake by lot"
                    )
                self._book(conn, key, "adjust", lot_id, adjustment, loc_id, change)
            remaining = -change
            for row in held:
                if remaining <= 0:
                    break
                loss = min(remaining, int(row.on_hand))
                free = int(row.on_hand) - int(row.reserved)
                if loss > free:
                    self._reallocate(conn, loc_id, int(row.lot_id), loss - free)
                if self._take(conn, loc_id, int(row.lot_id), loss) != loss:
                    raise LedgerError(f"count of {location}: could not book a loss of {loss}")
                self._book(conn, key, "adjust", int(row.lot_id), loc_id, adjustment, loss)
                remaining -= loss
            return {"change": change}

        return int(self._run(key, "count", run, actor, reason)["change"])

    def _last_lot_at(self, conn: Connection, loc_id: int, product_id: int) -> int | None:
        row = conn.execute(
            select(movements.c.lot_id)
            .join(lots, lots.c.id == movements.c.lot_id)
            .where(movements.c.to_location_id == loc_id, lots.c.product_id == product_id)
            .order_by(movements.c.id.desc())
            .limit(1)
        ).first()
        return None if row is None else int(row.lot_id)

    # ------------------------------------------------------------------ lot status

    def set_lot_status(
        self,
        gtin: str,
        batch: str,
        status: str,
        *,
        key: str | None = None,
        actor: str = "pharmacist",
        reason: str = "",
    ) -> dict[str, Any]:
        """Quarantines, recalls or releases a lot.

        A blocked lot is never allocated again, anywhere. Open reservations on it are
        moved to other usable lots in their locations, first expiry first; what cannot
        be moved is released (the reservation shrinks, or is voided when nothing is
        left). Returns how much was moved and released.
        """
        if status not in LOT_STATUSES:
            raise LedgerError(f"invalid lot status: {status!r} (one of {LOT_STATUSES})")
        # Without a key each call is its own command; setting a status twice changes
        # nothing the second time, so a retry is harmless either way.
        key = key or f"lot-status:{gtin}:{batch}:{status}:{uuid.uuid4().hex}"

        def run(conn: Connection) -> dict[str, Any]:
            lot_id = self._lot_id_in(conn, gtin, batch)
            old = conn.execute(select(lots.c.status).where(lots.c.id == lot_id)).scalar_one()
            moved = released = 0
            if old != status:
                conn.execute(update(lots).where(lots.c.id == lot_id).values(status=status))
                self._note("lot", f"{gtin}/{batch}", {"status": old}, {"status": status})
            if status != "released":
                for row in conn.execute(
                    select(balances.c.location_id).where(
                        balances.c.lot_id == lot_id, balances.c.reserved > 0
                    )
                ).all():
                    m, r = self._reallocate(conn, int(row.location_id), lot_id, None)
                    moved += m
                    released += r
            return {"moved": moved, "released": released}

        return self._run(key, "lot-status", run, actor, reason or f"lot {status}")

    def _take_free(
        self,
        key: str,
        kind: str,
        gtin: str,
        quantity: int,
        from_location: str,
        to_location: str,
        actor: str,
        reason: str,
        *,
        mark: CounterMark | None = None,
        reason_code: str | None = None,
    ) -> None:
        positive("quantity", quantity)

        def run(conn: Connection) -> dict[str, Any]:
            if mark is not None:
                self._set_mark(conn, mark)
            product_id = self._product_id(conn, gtin)
            src = self._internal_location_id(conn, from_location)
            dest = self._location_id(conn, to_location)
            remaining = quantity
            # Physical events (a dose taken, a pouch rejected) happen to whatever lot is
            # there, usable or not; planned transfers only move usable lots.
            usable_only = kind == "transfer"
            for loc_id, lot_id, available in self._fefo_candidates(
                conn, product_id, [src], usable_only=usable_only
            ):
                if remaining == 0:
                    break
                took = self._take(conn, loc_id, lot_id, min(remaining, available))
                if took:
                    self._book(conn, key, kind, lot_id, loc_id, dest, took, reason_code=reason_code)
                    remaining -= took
            if remaining:
                raise InsufficientStock(gtin, from_location, quantity, quantity - remaining)
            return {"quantity": quantity}

        self._run(key, kind, run, actor, reason)
