"""Ledger commands and queries.

Every command is one transaction and carries an idempotency key: the first run stores
its result under the key, a retry with the same key returns that result and books
nothing. Stock only leaves a (location, lot) row through a conditional UPDATE whose
WHERE clause checks that enough is there, so concurrent writers (several controllers on
one PostgreSQL) can never drive a balance below zero or reserve the same tablet twice.
Every change is written to the hash-chained audit trail in the same transaction.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    bindparam,
    exists,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError, OperationalError

from controller.ledger.audit import Change, movement_record, write_audit
from controller.ledger.errors import (
    DiscrepancyClosed,
    HoldClosed,
    InsufficientStock,
    InvalidQuantity,
    LedgerError,
    ReservationClosed,
    UnknownEntity,
)
from controller.ledger.schema import (
    DISCREPANCY_STATUSES,
    EXTERNAL_KINDS,
    HOLD_STATUSES,
    INTERNAL_KINDS,
    PRODUCT_CATEGORIES,
    STORAGE,
    WASTE_REASONS,
    balances,
    commands,
    counter_marks,
    exemptions,
    locations,
    lots,
    metadata,
    movements,
    order_lines,
    products,
    reservation_lines,
    reservations,
    stock_discrepancies,
    stock_holds,
)

SUPPLIER = "SUPPLIER"
CONSUMED = "CONSUMED"
log = logging.getLogger("doseline.ledger")
WASTE = "WASTE"
ADJUSTMENT = "ADJUSTMENT"
LOT_STATUSES = ("released", "quarantined", "recalled")
# PostgreSQL: deadlock detected, serialization failure. Both are safe to run again.
RETRYABLE_SQLSTATES = ("40P01", "40001")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class CounterMark:
    """A device counter value that a command accounts for up to."""

    device: str
    counter: str
    value: int


MAX_ACTOR = 100  # characters of who did something, as the audit trail stores it
MAX_HOLD_KEY = 190  # a hold's rows are keyed key#n within the 200 characters of a key


@dataclass(frozen=True)
class Need:
    """So much of a product, wanted from a reservation; with `batch`, of that lot only
    (a canister is topped up from the lot it already holds, never with a second one)."""

    gtin: str
    quantity: int
    batch: str | None = None


@dataclass(frozen=True)
class Use:
    """What became of reserved stock: `quantity` of `gtin` went to `to_location`.

    `gtin` is the product that was ordered; lines that substituted another product
    of its substitution group serve it too, and the movement says so.
    """

    gtin: str
    quantity: int
    to_location: str
    kind: str = "consume"
    reason: str = ""
    reason_code: str | None = None
    # only from the reservation's lines of this lot (a pack scanned at picking)
    batch: str | None = None


@dataclass(frozen=True)
class LotMove:
    """`quantity` of one lot moved from one location to another: a physical fact, so the
    lot need not be usable. From an external location (ADJUSTMENT) nothing is taken."""

    gtin: str
    batch: str
    quantity: int
    from_location: str
    to_location: str
    kind: str = "transfer"
    reason: str = ""
    reason_code: str | None = None


@dataclass(frozen=True)
class Allocation:
    """One reservation line: a lot at a location, held for a reservation."""

    gtin: str
    batch: str
    expiry: date
    location: str
    quantity: int
    posted: int
    substituted_for: str | None = None


@dataclass(frozen=True)
class ReservationView:
    key: str
    purpose: str
    status: str
    expires_at: datetime
    lines: tuple[Allocation, ...]

    def reserved_of(self, gtin: str) -> int:
        return sum(line.quantity for line in self.lines if line.gtin == gtin)


@dataclass(frozen=True)
class LotStock:
    """A balance row. `held`: a location hold quarantines it here, so none of it is
    available, whatever the lot's status."""

    location: str
    gtin: str
    batch: str
    expiry: date
    status: str
    on_hand: int
    reserved: int
    held: bool = False

    @property
    def available(self) -> int:
        return 0 if self.held else self.on_hand - self.reserved


@dataclass(frozen=True)
class HoldView:
    """A location hold: a lot quarantined at one location, and what became of it."""

    id: int
    key: str
    location: str
    gtin: str
    batch: str
    expiry: date
    quantity_at_hold: int
    on_hand_now: int
    reason: str
    status: str
    raised_at: datetime
    raised_by: str
    resolved_at: datetime | None
    resolved_by: str | None
    resolution_note: str | None


@dataclass(frozen=True)
class DiscrepancyView:
    """A device (or a count) that disagreed with the ledger, until someone resolves it."""

    id: int
    key: str
    location: str
    gtin: str
    source: str
    device_value: int
    ledger_value: int
    difference: int
    detail: str
    status: str
    raised_at: datetime
    raised_by: str
    resolved_at: datetime | None
    resolved_by: str | None
    resolution_note: str | None


@dataclass(frozen=True)
class DeliveryLine:
    """One line of a delivery: a lot of a product into a location."""

    gtin: str
    batch: str
    expiry: date
    quantity: int
    location: str
    # SEK per dispensing unit as bought (None: not given). Stored on the lot when the
    # lot is created; a later delivery of the same lot keeps the first price.
    unit_price: Decimal | None = None


class DeliveryError(LedgerError):
    """A delivery with bad lines; nothing of it was booked."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("delivery refused:\n" + "\n".join(f"  {p}" for p in problems))
        self.problems = problems


def _positive(field: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidQuantity(field, value)
    return value


def _dialect_insert(conn: Connection) -> Any:
    return pg_insert if conn.dialect.name == "postgresql" else sqlite_insert


@dataclass
class _Line:
    id: int
    product_id: int
    location_id: int
    lot_id: int
    quantity: int
    posted: int
    substituted_for: int | None


class Ledger:
    """The stock ledger on one SQLAlchemy engine (SQLite or PostgreSQL)."""

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

    def add_product(
        self,
        *,
        gtin: str,
        article: int,
        name: str,
        substance: str,
        atc: str,
        strength: str,
        form: str,
        unit: str = "tablet",
        pack_size: int = 1,
        unit_price: Decimal | float | str = 0,
        category: str = "drug",
        storage: str = "room",
        controlled_class: str | None = None,
        substitution_group: str | None = None,
        actor: str = "site-setup",
    ) -> None:
        """Adds a product, or updates its descriptive fields and price if known."""
        if category not in PRODUCT_CATEGORIES:
            raise LedgerError(f"invalid category: {category!r} (one of {PRODUCT_CATEGORIES})")
        if storage not in STORAGE:
            raise LedgerError(f"invalid storage: {storage!r} (one of {STORAGE})")
        values = {
            "gtin": gtin,
            "article": article,
            "name": name,
            "substance": substance,
            "atc": atc,
            "strength": strength,
            "form": form,
            "unit": unit,
            "pack_size": pack_size,
            "unit_price": Decimal(str(unit_price)),
            "category": category,
            "storage": storage,
            "controlled_class": controlled_class,
            "substitution_group": substitution_group,
        }
        with self._tx(actor, "product", "catalogue") as conn:
            row = conn.execute(select(products).where(products.c.gtin == gtin)).first()
            if row is None:
                conn.execute(insert(products).values(**values))
                self._note("product", gtin, None, values)
                return
            old = {k: row._mapping[k] for k in values}
            if old != values:
                conn.execute(update(products).where(products.c.id == row.id).values(**values))
                self._note("product", gtin, old, values)

    def add_location(
        self, code: str, kind: str, *, parent: str | None = None, product_gtin: str | None = None
    ) -> None:
        """Adds a location (idempotent by code). Canisters and pockets name their product."""
        if kind not in INTERNAL_KINDS + EXTERNAL_KINDS:
            raise LedgerError(f"invalid location kind: {kind!r}")
        with self._tx("site-setup", "location", "site layout") as conn:
            if self._location_id(conn, code, required=False) is not None:
                return
            values = {
                "code": code,
                "kind": kind,
                "parent_id": self._location_id(conn, parent) if parent else None,
                "product_id": self._product_id(conn, product_gtin) if product_gtin else None,
            }
            conn.execute(insert(locations).values(**values))
            self._note(
                "location", code, None, {"kind": kind, "parent": parent, "product": product_gtin}
            )

    def set_exemption(
        self,
        *,
        gtin: str,
        reason: str,
        risk_assessment: str,
        review_date: date,
        decided_by: str,
        actor: str,
    ) -> None:
        """Exempts a product from the one-month obligation, for a documented reason."""
        if len(reason.strip()) < 10 or len(risk_assessment.strip()) < 10:
            raise LedgerError(
                f"exemption of {gtin}: reason and risk_assessment must be written out "
                f"(got {reason!r}, {risk_assessment!r})"
            )
        with self._tx(actor, "exemption", reason) as conn:
            product_id = self._product_id(conn, gtin)
            row = conn.execute(
                select(exemptions).where(exemptions.c.product_id == product_id)
            ).first()
            new = {
                "reason": reason,
                "risk_assessment": risk_assessment,
                "review_date": review_date,
                "decided_by": decided_by,
            }
            if row is not None:
                old = {k: row._mapping[k] for k in new}
                if old == new:
                    return
                conn.execute(
                    update(exemptions)
                    .where(exemptions.c.product_id == product_id)
                    .values(**new, decided_at=self.clock())
                )
            else:
                old = None
                conn.execute(
                    insert(exemptions).values(product_id=product_id, **new, decided_at=self.clock())
                )
            self._note("exemption", gtin, old, new)

    def record_event(
        self,
        *,
        actor: str,
        action: str,
        entity: str,
        key: str,
        old: Any,
        new: Any,
        reason: str,
    ) -> None:
        """Writes a change made outside the ledger (a packing job's transition, an
        order's review) to the same hash-chained audit trail."""
        if not actor or not action or not entity or not key:
            raise LedgerError(
                f"audit event needs actor, action, entity and key: "
                f"{actor!r}, {action!r}, {entity!r}, {key!r}"
            )
        with self._tx(actor, action, reason) as _conn:
            self._note(entity, key, old, new)

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
            if (e := _line_problem(line, today)) is not None
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
        header first. `unit_price` is SEK per unit (decimal point or comma, at most 4
        decimals); an empty one means not given.

        Every bad line is reported with its number, field and value; none is booked.
        """
        from controller.config import valid_gtin

        reader = csv.DictReader(io.StringIO(text), delimiter=";")
        wanted = {"gtin", "batch", "expiry", "quantity"}
        if reader.fieldnames is None or not wanted <= set(reader.fieldnames):
            raise DeliveryError(
                [
                    f"header: expected gtin;batch;expiry;quantity[;location][;unit_price], "
                    f"got {';'.join(reader.fieldnames or [])!r}"
                ]
            )
        lines: list[DeliveryLine] = []
        problems: list[str] = []
        for number, row in enumerate(reader, start=2):
            where = f"line {number}"
            try:
                gtin = valid_gtin(row["gtin"] or "")
            except ValueError as exc:
                problems.append(f"{where}: gtin: {exc}")
                continue
            try:
                expiry = date.fromisoformat((row["expiry"] or "").strip())
            except ValueError:
                problems.append(f"{where}: expiry: {row['expiry']!r} is not a date (YYYY-MM-DD)")
                continue
            try:
                quantity = int(row["quantity"])
            except (TypeError, ValueError):
                problems.append(f"{where}: quantity: {row['quantity']!r} is not a whole number")
                continue
            location = (row.get("location") or default_location or "").strip()
            if not location:
                problems.append(f"{where}: location: missing")
                continue
            price_text = (row.get("unit_price") or "").strip()
            try:
                unit_price = _unit_price(price_text) if price_text else None
            except ValueError as exc:
                problems.append(f"{where}: unit_price: {price_text!r} {exc}")
                continue
            lines.append(
                DeliveryLine(
                    gtin, (row["batch"] or "").strip(), expiry, quantity, location, unit_price
                )
            )
        if problems:
            raise DeliveryError(problems)
        return lines

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
        _check_waste_reason(reason_code)
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
        _positive("quantity", quantity)

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

    # ------------------------------------------------------------------ location holds

    def hold_location(self, key: str, location: str, *, reason: str, actor: str) -> list[HoldView]:
        """Quarantines the stock at one location (and the locations under it): every lot
        on hand there that is not held yet. The same lots elsewhere stay usable.

        Held stock is not reserved, transferred or counted as available until a
        pharmacist releases or wastes it; open reservations on it are moved to other
        stock, or shrink, as for a quarantined lot. Consumption booked there still goes
        through: it is what a cabinet's counter says happened. A repeat with the same
        key returns the same holds.
        """
        reason = _text("reason", reason, 300)
        _check_actor(actor)
        if len(key) > MAX_HOLD_KEY:
            raise LedgerError(
                f"invalid idempotency key: {key!r} (at most {MAX_HOLD_KEY} characters for a "
                "hold: each held lot is stored as key#n)"
            )

        def run(conn: Connection) -> dict[str, Any]:
            loc_ids = self._subtree(conn, location)
            rows = self._unheld_stock(conn, loc_ids)
            if conn.dialect.name == "postgresql":
                # Lock the lots: a reservation allocating from them finishes first (and
                # its lines are then moved below), or waits and sees the holds; a
                # concurrent hold of the same stock waits and finds it held.
                locked: set[int] = set()
                while wanted := sorted({r.lot_id for r in rows} - locked):
                    conn.execute(
                        select(lots.c.id)
                        .where(lots.c.id.in_(wanted))
                        .order_by(lots.c.id)
                        .with_for_update()
                    )
                    locked.update(wanted)
                    rows = self._unheld_stock(conn, loc_ids)
            now = self.clock()
            ids: list[int] = []
            moved = released = 0
            for number, row in enumerate(rows, start=1):
                hold_id = conn.execute(
                    insert(stock_holds)
                    .values(
                        key=f"{key}#{number}",
                        location_id=row.location_id,
                        lot_id=row.lot_id,
                        quantity=row.on_hand,
                        reason=reason,
                        raised_at=now,
                        raised_by=actor,
                        status="held",
                    )
                    .returning(stock_holds.c.id)
                ).scalar_one()
                ids.append(int(hold_id))
                self._note(
                    "hold",
                    str(hold_id),
                    None,
                    {
                        "location": self._location_name(conn, row.location_id),
                        "lot": self._lot_name(conn, row.lot_id),
                        "quantity": int(row.on_hand),
                        "reason": reason,
                        "status": "held",
                    },
                )
            for row in rows:
                if row.reserved > 0:
                    m, r = self._reallocate(conn, row.location_id, row.lot_id, None)
                    moved += m
                    released += r
            return {"holds": ids, "moved": moved, "released": released}

        result = self._run(key, "hold", run, actor, reason)
        return self._hold_views([int(i) for i in result["holds"]])

    def release_hold(self, hold_id: int, *, actor: str, note: str) -> HoldView:
        """A pharmacist's decision that held stock is fit for use: it is available again."""
        note = _text("note", note, 300)
        _check_actor(actor)
        with self._tx(actor, "hold-release", note) as conn:
            self._resolve_hold(conn, hold_id, "released", actor, note)
        return self._hold_views([hold_id])[0]

    def waste_hold(
        self,
        key: str,
        hold_id: int,
        *,
        actor: str,
        note: str,
        reason_code: str = "temperature",
    ) -> HoldView:
        """A pharmacist's decision that held stock is unfit: all of the lot still on hand
        at the location is booked to `WASTE`, and the hold is closed as wasted."""
        note = _text("note", note, 300)
        _check_actor(actor)
        _check_waste_reason(reason_code)

        def run(conn: Connection) -> dict[str, Any]:
            loc_id, lot_id = self._resolve_hold(conn, hold_id, "wasted", actor, note, key)
            reserved = conn.execute(
                select(balances.c.reserved).where(
                    balances.c.location_id == loc_id, balances.c.lot_id == lot_id
                )
            ).scalar()
            if reserved:
                self._reallocate(conn, loc_id, lot_id, None)
            on_hand = conn.execute(
                select(balances.c.on_hand).where(
                    balances.c.location_id == loc_id, balances.c.lot_id == lot_id
                )
            ).scalar()
            took = self._take(conn, loc_id, lot_id, int(on_hand)) if on_hand else 0
            if took == 0:
                raise LedgerError(
                    f"hold {hold_id}: nothing of {self._lot_name(conn, lot_id)} is left at "
                    f"{self._location_name(conn, loc_id)} to waste; release the hold instead"
                )
            waste_id = self._location_id(conn, WASTE)
            self._book(conn, key, "waste", lot_id, loc_id, waste_id, took, reason_code=reason_code)
            return {"hold": hold_id, "quantity": took}

        result = self._run(key, "hold-waste", run, actor, note)
        return self._hold_views([int(result["hold"])])[0]

    def holds(self, *, location: str | None = None, status: str | None = "held") -> list[HoldView]:
        """Holds, oldest first; `location` includes the locations under it, and a
        `status` of None lists every hold."""
        if status is not None and status not in HOLD_STATUSES:
            raise LedgerError(f"invalid status: {status!r} (one of {HOLD_STATUSES} or None)")
        with self.engine.connect() as conn:
            query = self._hold_query()
            if status is not None:
                query = query.where(stock_holds.c.status == status)
            if location is not None:
                query = query.where(stock_holds.c.location_id.in_(self._subtree(conn, location)))
            return [HoldView(*row) for row in conn.execute(query)]

    def _hold_views(self, ids: Sequence[int]) -> list[HoldView]:
        if not ids:
            return []
        with self.engine.connect() as conn:
            rows = conn.execute(self._hold_query().where(stock_holds.c.id.in_(list(ids))))
            views = {view.id: view for view in (HoldView(*row) for row in rows)}
        missing = [i for i in ids if i not in views]
        if missing:
            raise UnknownEntity("hold", missing[0])
        return [views[i] for i in ids]

    @staticmethod
    def _hold_query() -> Any:
        return (
            select(
                stock_holds.c.id,
                stock_holds.c.key,
                locations.c.code,
                products.c.gtin,
                lots.c.batch,
                lots.c.expiry,
                stock_holds.c.quantity,
                func.coalesce(balances.c.on_hand, 0),
                stock_holds.c.reason,
                stock_holds.c.status,
                stock_holds.c.raised_at,
                stock_holds.c.raised_by,
                stock_holds.c.resolved_at,
                stock_holds.c.resolved_by,
                stock_holds.c.resolution_note,
            )
            .join(locations, locations.c.id == stock_holds.c.location_id)
            .join(lots, lots.c.id == stock_holds.c.lot_id)
            .join(products, products.c.id == lots.c.product_id)
            .outerjoin(
                balances,
                (balances.c.location_id == stock_holds.c.location_id)
                & (balances.c.lot_id == stock_holds.c.lot_id),
            )
            .order_by(stock_holds.c.id)
        )

    @staticmethod
    def _unheld_stock(conn: Connection, loc_ids: Sequence[int]) -> list[Any]:
        return list(
            conn.execute(
                select(
                    balances.c.location_id,
                    balances.c.lot_id,
                    balances.c.on_hand,
                    balances.c.reserved,
                )
                .where(balances.c.location_id.in_(list(loc_ids)), balances.c.on_hand > 0, ~_held())
                .order_by(balances.c.location_id, balances.c.lot_id)
            ).all()
        )

    def _resolve_hold(
        self,
        conn: Connection,
        hold_id: int,
        status: str,
        actor: str,
        note: str,
        waste_key: str | None = None,
    ) -> tuple[int, int]:
        """Closes an open hold (only once: the UPDATE checks that it is still held);
        returns its (location, lot)."""
        row = conn.execute(
            update(stock_holds)
            .where(stock_holds.c.id == hold_id, stock_holds.c.status == "held")
            .values(
                status=status,
                resolved_at=self.clock(),
                resolved_by=actor,
                resolution_note=note,
                waste_key=waste_key,
            )
            .returning(stock_holds.c.location_id, stock_holds.c.lot_id)
        ).first()
        if row is None:
            current = conn.execute(
                select(stock_holds.c.status).where(stock_holds.c.id == hold_id)
            ).scalar()
            if current is None:
                raise UnknownEntity("hold", hold_id)
            raise HoldClosed(hold_id, str(current))
        self._note("hold", str(hold_id), {"status": "held"}, {"status": status, "note": note})
        return int(row.location_id), int(row.lot_id)

    def _subtree(self, conn: Connection, code: str) -> list[int]:
        """A stock-keeping location and every one under it (a cabinet and its pockets)."""
        root = self._internal_location_id(conn, code)
        children: dict[int, list[int]] = defaultdict(list)
        for row in conn.execute(
            select(locations.c.id, locations.c.parent_id).where(
                locations.c.parent_id.is_not(None), locations.c.kind.in_(INTERNAL_KINDS)
            )
        ):
            children[int(row.parent_id)].append(int(row.id))
        found, todo = [root], [root]
        while todo:
            for child in children.get(todo.pop(), []):
                if child not in found:
                    found.append(child)
                    todo.append(child)
        return found

    # ------------------------------------------------------------------ discrepancies

    def raise_discrepancy(
        self,
        key: str,
        location: str,
        gtin: str,
        *,
        source: str,
        device_value: int,
        ledger_value: int,
        detail: str,
        actor: str,
    ) -> DiscrepancyView:
        """Records that a device (or a count) disagrees with the ledger, for an operator
        to look at; the ledger's balances are not changed by it. Idempotent by key."""
        source = _text("source", source, 20)
        detail = _text("detail", detail, 300)
        _check_actor(actor)
        _count("device_value", device_value)
        _count("ledger_value", ledger_value)

        def run(conn: Connection) -> dict[str, Any]:
            loc_id = self._internal_location_id(conn, location)
            product_id = self._product_id(conn, gtin)
            values = {
                "source": source,
                "device_value": device_value,
                "ledger_value": ledger_value,
                "difference": device_value - ledger_value,
                "detail": detail,
            }
            found_id = conn.execute(
                insert(stock_discrepancies)
                .values(
                    key=key,
                    location_id=loc_id,
                    product_id=product_id,
                    raised_at=self.clock(),
                    raised_by=actor,
                    status="open",
                    **values,
                )
                .returning(stock_discrepancies.c.id)
            ).scalar_one()
            self._note(
                "discrepancy",
                str(found_id),
                None,
                {"location": location, "gtin": gtin, "status": "open", **values},
            )
            return {"discrepancy": int(found_id)}

        result = self._run(key, "discrepancy", run, actor, detail)
        return self._discrepancy_views([int(result["discrepancy"])])[0]

    def resolve_discrepancy(self, discrepancy_id: int, *, actor: str, note: str) -> DiscrepancyView:
        """Closes a discrepancy with what was found or done about it (once)."""
        note = _text("note", note, 300)
        _check_actor(actor)
        with self._tx(actor, "discrepancy-resolve", note) as conn:
            done = conn.execute(
                update(stock_discrepancies)
                .where(
                    stock_discrepancies.c.id == discrepancy_id,
                    stock_discrepancies.c.status == "open",
                )
                .values(
                    status="resolved",
                    resolved_at=self.clock(),
                    resolved_by=actor,
                    resolution_note=note,
                )
            ).rowcount
            if done != 1:
                current = conn.execute(
                    select(stock_discrepancies.c.status).where(
                        stock_discrepancies.c.id == discrepancy_id
                    )
                ).scalar()
                if current is None:
                    raise UnknownEntity("discrepancy", discrepancy_id)
                raise DiscrepancyClosed(discrepancy_id, str(current))
            self._note(
                "discrepancy",
                str(discrepancy_id),
                {"status": "open"},
                {"status": "resolved", "note": note},
            )
        return self._discrepancy_views([discrepancy_id])[0]

    def discrepancies(
        self, *, status: str | None = "open", location: str | None = None
    ) -> list[DiscrepancyView]:
        """Discrepancies, oldest first; `location` includes the locations under it, and
        a `status` of None lists every one."""
        if status is not None and status not in DISCREPANCY_STATUSES:
            raise LedgerError(f"invalid status: {status!r} (one of {DISCREPANCY_STATUSES} or None)")
        with self.engine.connect() as conn:
            query = self._discrepancy_query()
            if status is not None:
                query = query.where(stock_discrepancies.c.status == status)
            if location is not None:
                query = query.where(
                    stock_discrepancies.c.location_id.in_(self._subtree(conn, location))
                )
            return [DiscrepancyView(*row) for row in conn.execute(query)]

    def open_discrepancy_count(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(stock_discrepancies)
                    .where(stock_discrepancies.c.status == "open")
                ).scalar_one()
            )

    def _discrepancy_views(self, ids: Sequence[int]) -> list[DiscrepancyView]:
        with self.engine.connect() as conn:
            rows = conn.execute(
                self._discrepancy_query().where(stock_discrepancies.c.id.in_(list(ids)))
            )
            views = {view.id: view for view in (DiscrepancyView(*row) for row in rows)}
        missing = [i for i in ids if i not in views]
        if missing:
            raise UnknownEntity("discrepancy", missing[0])
        return [views[i] for i in ids]

    @staticmethod
    def _discrepancy_query() -> Any:
        d = stock_discrepancies
        return (
            select(
                d.c.id,
                d.c.key,
                locations.c.code,
                products.c.gtin,
                d.c.source,
                d.c.device_value,
                d.c.ledger_value,
                d.c.difference,
                d.c.detail,
                d.c.status,
                d.c.raised_at,
                d.c.raised_by,
                d.c.resolved_at,
                d.c.resolved_by,
                d.c.resolution_note,
            )
            .join(locations, locations.c.id == d.c.location_id)
            .join(products, products.c.id == d.c.product_id)
            .order_by(d.c.id)
        )

    # ------------------------------------------------------------------ reservations

    def reserve(
        self,
        key: str,
        *,
        purpose: str,
        needs: Sequence[Need],
        from_locations: Sequence[str],
        timeout_s: float,
        actor: str,
        substitute: bool = False,
        partial: bool = False,
        order_source: str | None = None,
    ) -> ReservationView:
        """Holds stock for a purpose, first expiry first.

        Only released lots with at least the minimum remaining shelf life are taken.
        All or nothing, unless `partial`. With `substitute`, a product that is short is
        made up from other products of its substitution group, and the lines say so.
        With `order_source`, each need is recorded as an order line (requested, filled)
        for the service level, also when the reservation is refused.
        """
        if not needs:
            raise LedgerError("a reservation needs at least one line")
        for need in needs:
            _positive(f"quantity of {need.gtin}", need.quantity)
        if timeout_s <= 0:
            raise LedgerError(f"invalid timeout_s: {timeout_s!r}")

        def run(conn: Connection) -> dict[str, Any]:
            now = self.clock()
            loc_ids = [self._internal_location_id(conn, code) for code in from_locations]
            res_id = conn.execute(
                insert(reservations)
                .values(
                    key=key,
                    purpose=purpose,
                    status="open",
                    created_at=now,
                    expires_at=now + timedelta(seconds=timeout_s),
                    actor=actor,
                    locations=json.dumps(list(from_locations)),
                )
                .returning(reservations.c.id)
            ).scalar_one()
            self._note("reservation", key, None, {"status": "open", "purpose": purpose})
            filled: list[int] = []
            for number, need in enumerate(needs):
                product_id = self._product_id(conn, need.gtin)
                candidates: list[tuple[int, int | None]] = [(product_id, None)]
                only_lot = None
                if need.batch is not None:
                    only_lot = self._lot_id_in(conn, need.gtin, need.batch)
                elif substitute:
                    candidates += [(p, product_id) for p in self._substitutes(conn, product_id)]
                remaining = need.quantity
                for give_id, substituted_for in candidates:
                    remaining -= self._hold_fefo(
                        conn, res_id, give_id, loc_ids, remaining, substituted_for, lot=only_lot
                    )
                    if remaining == 0:
                        break
                filled.append(need.quantity - remaining)
                if remaining and not partial:
                    raise InsufficientStock(
                        need.gtin,
                        ",".join(from_locations),
                        need.quantity,
                        need.quantity - remaining,
                    )
                if order_source:
                    self._order_line(
                        conn,
                        f"{key}:{number}",
                        product_id,
                        need.quantity,
                        need.quantity - remaining,
                        order_source,
                    )
            if not any(filled):
                raise InsufficientStock(
                    needs[0].gtin, ",".join(from_locations), needs[0].quantity, 0
                )
            return {"reservation": key}

        try:
            self._run(key, "reserve", run, actor, purpose)
        except InsufficientStock:
            if order_source:
                self._record_refused(key, needs, order_source)
            raise
        return self.reservation(key)

    def post(
        self,
        key: str,
        *,
        reservation_key: str,
        uses: Sequence[Use],
        actor: str,
        allow_overdraw: bool = False,
    ) -> ReservationView:
        """Resolves a reservation with what was really used; the rest is released.

        Each use is taken from the reservation's lines of its product (and of products
        that substitute it), first expiry first. More than was reserved is refused,
        unless `allow_overdraw`: then the excess comes from free stock at the
        reservation's locations (a machine that packed a rejected pouch again used more
        than planned, and that is a fact).
        """
        for use in uses:
            _positive(f"quantity of {use.gtin}", use.quantity)
            if use.kind == "waste":
                _check_waste_reason(use.reason_code or "other")

        def run(conn: Connection) -> dict[str, Any]:
            res = self._open_reservation(conn, reservation_key)
            lines = self._lines(conn, res.id)
            for use in uses:
                product_id = self._product_id(conn, use.gtin)
                dest = self._location_id(conn, use.to_location)
                code = (use.reason_code or "other") if use.kind == "waste" else use.reason_code
                only_lots = self._batch_lots(conn, use.batch) if use.batch is not None else None
                remaining = use.quantity
                for line in lines:
                    if remaining == 0:
                        break
                    if product_id not in (line.product_id, line.substituted_for):
                        continue
                    if only_lots is not None and line.lot_id not in only_lots:
                        continue
                    take = min(remaining, line.quantity - line.posted)
                    if take <= 0:
                        continue
                    self._release_held(conn, line.location_id, line.lot_id, take, consume=True)
                    conn.execute(
                        update(reservation_lines)
                        .where(reservation_lines.c.id == line.id)
                        .values(posted=reservation_lines.c.posted + take)
                    )
                    line.posted += take
                    self._book(
                        conn,
                        key,
                        use.kind,
                        line.lot_id,
                        line.location_id,
                        dest,
                        take,
                        reservation_id=res.id,
                        reason_code=code,
                        substituted_for=line.substituted_for,
                        reason=use.reason or res.purpose,
                    )
                    remaining -= take
                if remaining and allow_overdraw:
                    loc_ids = sorted(
                        {
                            ln.location_id
                            for ln in lines
                            if product_id in (ln.product_id, ln.substituted_for)
                        }
                    )
                    for loc_id, lot_id, available in self._fefo_candidates(
                        conn, product_id, loc_ids, usable_only=False
                    ):
                        if remaining == 0:
                            break
                        took = self._take(conn, loc_id, lot_id, min(remaining, available))
                        if took:
                            self._book(
                                conn,
                                key,
                                use.kind,
                                lot_id,
                                loc_id,
                                dest,
                                took,
                                reservation_id=res.id,
                                reason_code=code,
                                reason=use.reason or res.purpose,
                            )
                            remaining -= took
                if remaining:
                    raise InsufficientStock(
                        use.gtin,
                        f"reservation {reservation_key}",
                        use.quantity,
                        use.quantity - remaining,
                    )
            self._release_rest(conn, lines)
            self._close(conn, res, "posted")
            return {"reservation": reservation_key}

        self._run(key, "post", run, actor, f"post {reservation_key}")
        return self.reservation(reservation_key)

    def move_lots(
        self,
        key: str,
        moves: Sequence[LotMove],
        *,
        actor: str,
        reason: str,
        within: Callable[[Connection], dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Books several lot-exact moves in one transaction: all of them, or none.

        Stock in transit arrives on the ward as the lots that were picked, so these moves
        name their lot; a move from an internal location takes free stock of that lot
        there (never below zero). `within(conn)` runs in the same transaction after the
        movements (ward supply records the receipt there). Idempotent by `key`.
        """
        if not moves:
            raise LedgerError("a move needs at least one line")
        for move in moves:
            _positive(f"quantity of {move.gtin} batch {move.batch}", move.quantity)
            if move.kind == "waste":
                _check_waste_reason(move.reason_code or "other")

        def run(conn: Connection) -> dict[str, Any]:
            for move in moves:
                lot_id = self._lot_id_in(conn, move.gtin, move.batch)
                src = self._location_id(conn, move.from_location)
                dest = self._location_id(conn, move.to_location)
                src_kind = conn.execute(
                    select(locations.c.kind).where(locations.c.id == src)
                ).scalar_one()
                if src_kind in INTERNAL_KINDS:
                    took = self._take(conn, src, lot_id, move.quantity)
                    if took < move.quantity:
                        raise InsufficientStock(move.gtin, move.from_location, move.quantity, took)
                code = (move.reason_code or "other") if move.kind == "waste" else move.reason_code
                self._book(
                    conn,
                    key,
                    move.kind,
                    lot_id,
                    src,
                    dest,
                    move.quantity,
                    reason_code=code,
                    reason=move.reason or None,
                )
            result: dict[str, Any] = {
                "moves": len(moves),
                "units": sum(m.quantity for m in moves),
            }
            if within is not None:
                result.update(within(conn))
            return result

        return self._run(key, "move", run, actor, reason)

    @staticmethod
    def _batch_lots(conn: Connection, batch: str) -> set[int]:
        return {
            int(i) for i in conn.execute(select(lots.c.id).where(lots.c.batch == batch)).scalars()
        }

    def void(self, key: str, *, reservation_key: str, actor: str, reason: str) -> ReservationView:
        """Releases a whole reservation: nothing of it was used."""

        def run(conn: Connection) -> dict[str, Any]:
            res = self._open_reservation(conn, reservation_key)
            self._release_rest(conn, self._lines(conn, res.id))
            self._close(conn, res, "voided")
            return {"reservation": reservation_key}

        self._run(key, "void", run, actor, reason)
        return self.reservation(reservation_key)

    def expire_overdue(self) -> list[str]:
        """Releases every open reservation past its timeout; returns their keys."""
        now = self.clock()
        with self.engine.connect() as conn:
            keys = list(
                conn.execute(
                    select(reservations.c.key).where(
                        reservations.c.status == "open", reservations.c.expires_at < now
                    )
                ).scalars()
            )
        expired: list[str] = []
        for res_key in keys:
            try:
                with self._tx("system", "expire", "reservation timed out") as conn:
                    res = self._open_reservation(conn, res_key)
                    self._release_rest(conn, self._lines(conn, res.id))
                    self._close(conn, res, "expired")
                expired.append(res_key)
            except ReservationClosed:
                continue  # resolved by someone else in the meantime
        return expired

    # ------------------------------------------------------------------ queries

    def reservation(self, key: str) -> ReservationView:
        with self.engine.connect() as conn:
            row = conn.execute(select(reservations).where(reservations.c.key == key)).first()
            if row is None:
                raise UnknownEntity("reservation", key)
            ordered = products.alias("ordered")
            rows = conn.execute(
                select(
                    products.c.gtin,
                    lots.c.batch,
                    lots.c.expiry,
                    locations.c.code,
                    reservation_lines.c.quantity,
                    reservation_lines.c.posted,
                    ordered.c.gtin,
                )
                .join(products, products.c.id == reservation_lines.c.product_id)
                .join(lots, lots.c.id == reservation_lines.c.lot_id)
                .join(locations, locations.c.id == reservation_lines.c.location_id)
                .outerjoin(ordered, ordered.c.id == reservation_lines.c.substituted_for)
                .where(reservation_lines.c.reservation_id == row.id)
                .order_by(reservation_lines.c.id)
            ).all()
        return ReservationView(
            key=row.key,
            purpose=row.purpose,
            status=row.status,
            expires_at=row.expires_at,
            lines=tuple(Allocation(*r) for r in rows),
        )

    def open_reservation_count(self) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(reservations)
                    .where(reservations.c.status == "open")
                ).scalar_one()
            )

    def open_reservations(self) -> list[tuple[str, str]]:
        """(key, purpose) of every open reservation, oldest first: what is still held."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(reservations.c.key, reservations.c.purpose)
                .where(reservations.c.status == "open")
                .order_by(reservations.c.id)
            ).all()
        return [(r.key, r.purpose) for r in rows]

    def stock(self, *, location: str | None = None, gtin: str | None = None) -> list[LotStock]:
        """Balances per (location, lot), optionally for one location or product."""
        query = (
            select(
                locations.c.code,
                products.c.gtin,
                lots.c.batch,
                lots.c.expiry,
                lots.c.status,
                balances.c.on_hand,
                balances.c.reserved,
                _held().label("held"),
            )
            .join(locations, locations.c.id == balances.c.location_id)
            .join(lots, lots.c.id == balances.c.lot_id)
            .join(products, products.c.id == lots.c.product_id)
            .where(balances.c.on_hand > 0)
            .order_by(locations.c.code, products.c.gtin, lots.c.expiry)
        )
        if location is not None:
            query = query.where(locations.c.code == location)
        if gtin is not None:
            query = query.where(products.c.gtin == gtin)
        with self.engine.connect() as conn:
            return [
                LotStock(
                    location=r.code,
                    gtin=r.gtin,
                    batch=r.batch,
                    expiry=r.expiry,
                    status=r.status,
                    on_hand=r.on_hand,
                    reserved=r.reserved,
                    held=bool(r.held),
                )
                for r in conn.execute(query)
            ]

    def available(self, location: str, gtin: str) -> int:
        """Free stock of a product at a location (usable lots only)."""
        with self.engine.connect() as conn:
            loc_id = self._internal_location_id(conn, location)
            product_id = self._product_id(conn, gtin)
            return sum(a for _, _, a in self._fefo_candidates(conn, product_id, [loc_id]))

    def free_lots(self, gtin: str, locations_: Sequence[str]) -> list[tuple[str, date, int]]:
        """(batch, expiry, free quantity) of the usable lots of a product over some
        locations, first expiry first: what a single-lot reservation can choose from."""
        with self.engine.connect() as conn:
            loc_ids = [self._internal_location_id(conn, code) for code in locations_]
            product_id = self._product_id(conn, gtin)
            free: dict[int, int] = {}
            for _, lot_id, quantity in self._fefo_candidates(conn, product_id, loc_ids):
                free[lot_id] = free.get(lot_id, 0) + quantity
            if not free:
                return []
            rows = {
                int(r.id): (r.batch, r.expiry)
                for r in conn.execute(
                    select(lots.c.id, lots.c.batch, lots.c.expiry).where(lots.c.id.in_(list(free)))
                )
            }
        # dicts keep insertion order, and the candidates came first expiry first
        return [(rows[lot_id][0], rows[lot_id][1], qty) for lot_id, qty in free.items()]

    def on_hand(self, location: str, gtin: str) -> int:
        return sum(s.on_hand for s in self.stock(location=location, gtin=gtin))

    def products(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [
                dict(r._mapping) for r in conn.execute(select(products).order_by(products.c.id))
            ]

    def product_by_article(self, article: int) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = conn.execute(select(products).where(products.c.article == article)).first()
        if row is None:
            raise UnknownEntity("article", article)
        return dict(row._mapping)

    def lot(self, gtin: str, batch: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            lot_id = self._lot_id_in(conn, gtin, batch)
            row = conn.execute(select(lots).where(lots.c.id == lot_id)).one()
        return dict(row._mapping)

    def movement_count(self, kind: str | None = None) -> int:
        query = select(func.count()).select_from(movements)
        if kind is not None:
            query = query.where(movements.c.kind == kind)
        with self.engine.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def moved_quantity(self, kind: str) -> int:
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.coalesce(func.sum(movements.c.quantity), 0)).where(
                        movements.c.kind == kind
                    )
                ).scalar_one()
            )

    def command_done(self, key: str) -> bool:
        """Whether a command with this idempotency key has been booked."""
        with self.engine.connect() as conn:
            found = conn.execute(select(commands.c.key).where(commands.c.key == key)).first()
        return found is not None

    def set_counter_mark(self, mark: CounterMark) -> None:
        """Records a counter value with no movement (commissioning, or nothing to book)."""
        with self._tx("system", "counter", "device counter") as conn:
            self._set_mark(conn, mark)

    def counter_mark(self, device: str, counter: str) -> int | None:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(counter_marks.c.value).where(
                    counter_marks.c.device == device, counter_marks.c.counter == counter
                )
            ).scalar()
        return None if value is None else int(value)

    def marks_and_on_hand(
        self, device: str, locations_: Sequence[str]
    ) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
        """Every booked counter value of a device (by counter name) and `on_hand_many`
        of some locations, in one call: what a cabinet poll needs from the ledger."""
        with self.engine.connect() as conn:
            return self._counter_marks(conn, device), self._on_hand_many(conn, locations_)

    @staticmethod
    def _counter_marks(conn: Connection, device: str) -> dict[str, int]:
        rows = conn.execute(_MARKS_OF_DEVICE, {"device": device}).all()
        return {str(r.counter): int(r.value) for r in rows}

    def on_hand_many(self, locations_: Sequence[str]) -> dict[tuple[str, str], int]:
        """On hand per (location, GTIN) at some locations, in one query: `on_hand` for
        many locations at once. A pair with nothing on hand is left out."""
        with self.engine.connect() as conn:
            return self._on_hand_many(conn, locations_)

    @staticmethod
    def _on_hand_many(conn: Connection, locations_: Sequence[str]) -> dict[tuple[str, str], int]:
        if not locations_:
            return {}
        rows = conn.execute(_ON_HAND_AT, {"codes": list(locations_)})
        return {(str(code), str(gtin)): int(total) for code, gtin, total in rows}

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

    def _record_refused(self, key: str, needs: Sequence[Need], source: str) -> None:
        """A refused reservation is still demand: its lines count as not filled."""
        try:
            with self._tx("system", "order-line", "reservation refused") as conn:
                for number, need in enumerate(needs):
                    line_key = f"{key}:{number}"
                    exists = conn.execute(
                        select(order_lines.c.id).where(order_lines.c.key == line_key)
                    ).first()
                    if exists is None:
                        self._order_line(
                            conn,
                            line_key,
                            self._product_id(conn, need.gtin),
                            need.quantity,
                            0,
                            source,
                        )
        except (LedgerError, IntegrityError):
            pass  # unknown product, or a twin recorded it: nothing to add

    # ------------------------------------------------------------------ internals

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
        _positive("quantity", quantity)

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

    def _hold_fefo(
        self,
        conn: Connection,
        res_id: int,
        product_id: int,
        loc_ids: Sequence[int],
        wanted: int,
        substituted_for: int | None,
        *,
        avoid: tuple[int, int] | None = None,
        lot: int | None = None,
    ) -> int:
        """Holds up to `wanted` of a product for a reservation; returns how much.
        `avoid` is a (location, lot) that must not be used (the one being vacated);
        `lot` restricts the hold to one lot."""
        got = 0
        for loc_id, lot_id, available in self._fefo_candidates(conn, product_id, loc_ids):
            if got == wanted:
                break
            if (loc_id, lot_id) == avoid or (lot is not None and lot_id != lot):
                continue
            took = self._hold(conn, loc_id, lot_id, min(wanted - got, available))
            if took:
                conn.execute(
                    insert(reservation_lines).values(
                        reservation_id=res_id,
                        product_id=product_id,
                        location_id=loc_id,
                        lot_id=lot_id,
                        quantity=took,
                        substituted_for=substituted_for,
                    )
                )
                got += took
        return got

    def _reallocate(
        self, conn: Connection, loc_id: int, lot_id: int, quantity: int | None
    ) -> tuple[int, int]:
        """Takes `quantity` (None: all) of what open reservations hold on a lot at a
        location off it: onto other usable lots in each reservation's locations, first
        expiry first, or released. Returns (moved, released)."""
        moved = released = 0
        rows = conn.execute(
            select(reservation_lines, reservations.c.key, reservations.c.locations)
            .join(reservations, reservations.c.id == reservation_lines.c.reservation_id)
            .where(
                reservations.c.status == "open",
                reservation_lines.c.location_id == loc_id,
                reservation_lines.c.lot_id == lot_id,
                reservation_lines.c.quantity > reservation_lines.c.posted,
            )
            .order_by(reservations.c.expires_at.desc())  # the latest-needed give way first
        ).all()
        left = quantity
        for row in rows:
            if left is not None and left <= 0:
                break
            held = row.quantity - row.posted
            off = held if left is None else min(held, left)
            self._release_held(conn, loc_id, lot_id, off, consume=False)
            if row.quantity - off == 0:
                conn.execute(reservation_lines.delete().where(reservation_lines.c.id == row.id))
            else:
                conn.execute(
                    update(reservation_lines)
                    .where(reservation_lines.c.id == row.id)
                    .values(quantity=reservation_lines.c.quantity - off)
                )
            codes = json.loads(row.locations or "[]")
            loc_ids = [self._internal_location_id(conn, c) for c in codes] or [loc_id]
            got = self._hold_fefo(
                conn,
                row.reservation_id,
                row.product_id,
                loc_ids,
                off,
                row.substituted_for,
                avoid=(loc_id, lot_id),
            )
            moved += got
            released += off - got
            self._note(
                "reservation",
                row.key,
                {"lot": lot_id, "held": held},
                {"moved": got, "released": off - got},
            )
            remaining_lines = conn.execute(
                select(func.count())
                .select_from(reservation_lines)
                .where(reservation_lines.c.reservation_id == row.reservation_id)
            ).scalar_one()
            if remaining_lines == 0:
                res = conn.execute(
                    select(reservations).where(reservations.c.id == row.reservation_id)
                ).one()
                self._close(conn, res, "voided")
            if left is not None:
                left -= off
        return moved, released

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
            query = query.where(lots.c.status == "released", lots.c.expiry >= cutoff, ~_held())
            if conn.dialect.name == "postgresql":
                # A share lock on the lots allocated from: quarantining, recalling or
                # holding one of them waits until this transaction's lines exist (and
                # then moves them), and an allocation that waited re-checks the lot's
                # new status (and `_conditional` re-checks holds).
                query = query.with_for_update(read=True, of=lots)
        return [(int(a), int(b), int(c)) for a, b, c in conn.execute(query)]

    def _substitutes(self, conn: Connection, product_id: int) -> list[int]:
        group = conn.execute(
            select(products.c.substitution_group).where(products.c.id == product_id)
        ).scalar()
        if not group:
            return []
        return [
            int(p)
            for p in conn.execute(
                select(products.c.id)
                .where(
                    products.c.substitution_group == group,
                    products.c.id != product_id,
                    products.c.active == 1,
                )
                .order_by(products.c.id)
            ).scalars()
        ]

    def _conditional(
        self, conn: Connection, loc_id: int, lot_id: int, want: int, *, hold: bool
    ) -> int:
        """Holds (or takes) `want` if free on the row; retries smaller if a rival took some."""
        column = balances.c.reserved if hold else balances.c.on_hand
        sign = 1 if hold else -1
        # Reserving checks for a location hold in the same statement: a hold committed
        # while this transaction waited for the lot's lock is seen here (a new statement
        # takes a new snapshot), so held stock is never reserved.
        unheld = [~_held()] if hold else []
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

    def _release_rest(self, conn: Connection, lines: Sequence[_Line]) -> None:
        for line in lines:
            rest = line.quantity - line.posted
            if rest > 0:
                self._release_held(conn, line.location_id, line.lot_id, rest, consume=False)

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
        kind_of_dest = conn.execute(
            select(locations.c.kind).where(locations.c.id == to_id)
        ).scalar_one()
        if kind_of_dest in INTERNAL_KINDS:
            stmt = _dialect_insert(conn)(balances).values(
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

    def _order_line(
        self, conn: Connection, key: str, product_id: int, requested: int, filled: int, source: str
    ) -> None:
        conn.execute(
            insert(order_lines).values(
                key=key,
                ts=self.clock(),
                product_id=product_id,
                requested=requested,
                filled=filled,
                source=source,
            )
        )
        self._note(
            "order-line", key, None, {"requested": requested, "filled": filled, "source": source}
        )

    @staticmethod
    def _set_mark_stmt(conn: Connection, mark: CounterMark) -> Any:
        stmt = _dialect_insert(conn)(counter_marks).values(
            device=mark.device, counter=mark.counter, value=mark.value
        )
        return stmt.on_conflict_do_update(
            index_elements=[counter_marks.c.device, counter_marks.c.counter],
            set_={"value": mark.value},
        )

    def _set_mark(self, conn: Connection, mark: CounterMark) -> None:
        conn.execute(self._set_mark_stmt(conn, mark))
        self._note("counter", f"{mark.device}/{mark.counter}", None, {"value": mark.value})

    def _open_reservation(self, conn: Connection, key: str) -> Any:
        query = select(reservations).where(reservations.c.key == key)
        if conn.dialect.name == "postgresql":
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is None:
            raise UnknownEntity("reservation", key)
        if row.status != "open":
            raise ReservationClosed(key, row.status)
        return row

    def _close(self, conn: Connection, res: Any, status: str) -> None:
        result = conn.execute(
            update(reservations)
            .where(reservations.c.id == res.id, reservations.c.status == "open")
            .values(status=status, resolved_at=self.clock())
        )
        if result.rowcount != 1:
            raise ReservationClosed(res.key, "resolved")
        self._note("reservation", res.key, {"status": "open"}, {"status": status})

    @staticmethod
    def _lines(conn: Connection, res_id: int) -> list[_Line]:
        rows = conn.execute(
            select(
                reservation_lines.c.id,
                reservation_lines.c.product_id,
                reservation_lines.c.location_id,
                reservation_lines.c.lot_id,
                reservation_lines.c.quantity,
                reservation_lines.c.posted,
                reservation_lines.c.substituted_for,
            )
            .join(lots, lots.c.id == reservation_lines.c.lot_id)
            .where(reservation_lines.c.reservation_id == res_id)
            .order_by(lots.c.expiry, reservation_lines.c.id)
        ).all()
        return [_Line(*row) for row in rows]

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

    def _ensure_lot(
        self,
        conn: Connection,
        product_id: int,
        gtin: str,
        batch: str,
        expiry: date,
        unit_price: Decimal | None = None,
    ) -> int:
        """The lot's id, created on its first delivery with the purchase price given.

        A later delivery of a known lot keeps the recorded price (the first one wins:
        the lot is one purchase); a different price is logged as a warning. A lot
        recorded without a price takes the first price a delivery gives it.
        """
        row = conn.execute(
            select(lots.c.id, lots.c.expiry, lots.c.purchase_price).where(
                lots.c.product_id == product_id, lots.c.batch == batch
            )
        ).first()
        if row is not None:
            if row.expiry != expiry:
                raise LedgerError(
                    f"expiry {expiry} of batch {batch!r} of {gtin} differs from the "
                    f"recorded {row.expiry}"
                )
            if unit_price is not None:
                if row.purchase_price is None:
                    conn.execute(
                        update(lots).where(lots.c.id == row.id).values(purchase_price=unit_price)
                    )
                    self._note(
                        "lot",
                        f"{gtin}/{batch}",
                        {"purchase_price": None},
                        {"purchase_price": unit_price},
                    )
                elif Decimal(row.purchase_price) != unit_price:
                    log.warning(
                        "lot %s/%s: delivered at %s SEK per unit, recorded at %s: the "
                        "recorded purchase price is kept",
                        gtin,
                        batch,
                        unit_price,
                        row.purchase_price,
                    )
            return int(row.id)
        lot_id = int(
            conn.execute(
                insert(lots)
                .values(
                    product_id=product_id,
                    batch=batch,
                    expiry=expiry,
                    status="released",
                    purchase_price=unit_price,
                )
                .returning(lots.c.id)
            ).scalar_one()
        )
        new: dict[str, Any] = {"expiry": expiry, "status": "released"}
        if unit_price is not None:
            new["purchase_price"] = unit_price
        self._note("lot", f"{gtin}/{batch}", None, new)
        return lot_id


# The two reads of every cabinet poll, built once: building a statement per call cost
# more than running it (docs/performance.md).
_MARKS_OF_DEVICE = select(counter_marks.c.counter, counter_marks.c.value).where(
    counter_marks.c.device == bindparam("device")
)
_ON_HAND_AT = (
    select(locations.c.code, products.c.gtin, func.sum(balances.c.on_hand))
    .join(locations, locations.c.id == balances.c.location_id)
    .join(lots, lots.c.id == balances.c.lot_id)
    .join(products, products.c.id == lots.c.product_id)
    .where(locations.c.code.in_(bindparam("codes", expanding=True)), balances.c.on_hand > 0)
    .group_by(locations.c.code, products.c.gtin)
)


def _unit_price(text: str) -> Decimal:
    """A price per unit from a delivery file: SEK, >= 0, at most 4 decimals, with a
    decimal point or a decimal comma."""
    try:
        value = Decimal(text.replace(",", "."))
    except InvalidOperation:
        raise ValueError("is not a number") from None
    problem = _price_problem(value)
    if problem:
        raise ValueError(problem)
    return value


def _price_problem(value: Decimal) -> str | None:
    if not value.is_finite() or value < 0 or value >= 10**8:
        return "must be a number from 0 to below 100000000"
    if value != value.quantize(Decimal("0.0001")):
        return "has more than 4 decimals"
    return None


def _line_problem(line: DeliveryLine, today: date) -> LedgerError | None:
    if not isinstance(line.quantity, int) or isinstance(line.quantity, bool) or line.quantity <= 0:
        return InvalidQuantity("quantity", line.quantity)
    if line.unit_price is not None:
        price = line.unit_price
        problem = "is not a Decimal" if not isinstance(price, Decimal) else _price_problem(price)
        if problem:
            return LedgerError(f"unit_price: {price!r} {problem}")
    if not line.batch or len(line.batch) > 20:
        return LedgerError(f"invalid batch: {line.batch!r}")
    if line.expiry < today:
        return LedgerError(
            f"expired lot: batch {line.batch!r} of {line.gtin} expired on {line.expiry}"
        )
    return None


def _held() -> ColumnElement[bool]:
    """Whether a balance row is under an open location hold (correlated to `balances`)."""
    return exists().where(
        stock_holds.c.location_id == balances.c.location_id,
        stock_holds.c.lot_id == balances.c.lot_id,
        stock_holds.c.status == "held",
    )


def _text(field: str, value: object, limit: int) -> str:
    """A required free text (a reason, a note): blank or too long is refused."""
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise LedgerError(
            f"invalid {field}: {value!r} (must be non-blank, at most {limit} characters)"
        )
    return value.strip()


INT32 = 2**31 - 1  # the largest value an Integer column holds on PostgreSQL


def _count(field: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= INT32:
        raise LedgerError(f"invalid {field}: {value!r} (must be a whole number 0..{INT32})")
    return value


def _check_actor(actor: str) -> None:
    if not isinstance(actor, str) or not actor.strip():
        raise LedgerError(f"invalid actor: {actor!r} (who decided must be named)")


def _check_waste_reason(code: str) -> None:
    if code not in WASTE_REASONS:
        raise LedgerError(f"invalid waste reason_code: {code!r} (one of {WASTE_REASONS})")


__all__ = ["Ledger", "metadata"]
