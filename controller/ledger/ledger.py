"""Ledger commands and queries.

Every command is one transaction and carries an idempotency key: the first run stores
its result under the key, a retry with the same key returns that result and books
nothing. Stock only leaves a (location, lot) row through a conditional UPDATE whose
WHERE clause checks that enough is there, so concurrent writers (several controllers on
one PostgreSQL) can never drive a balance below zero or reserve the same tablet twice.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError

from controller.ledger.errors import (
    InsufficientStock,
    InvalidQuantity,
    LedgerError,
    ReservationClosed,
    UnknownEntity,
)
from controller.ledger.schema import (
    EXTERNAL_KINDS,
    INTERNAL_KINDS,
    balances,
    commands,
    counter_marks,
    locations,
    lots,
    metadata,
    movements,
    products,
    reservation_lines,
    reservations,
)

SUPPLIER = "SUPPLIER"
CONSUMED = "CONSUMED"
WASTE = "WASTE"
LOT_STATUSES = ("released", "quarantined", "recalled")


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Need:
    """So much of a product, wanted from a reservation."""

    gtin: str
    quantity: int


@dataclass(frozen=True)
class Use:
    """What became of reserved stock: `quantity` of `gtin` went to `to_location`."""

    gtin: str
    quantity: int
    to_location: str
    kind: str = "consume"
    reason: str = ""


@dataclass(frozen=True)
class CounterMark:
    """A device counter value that a command accounts for up to."""

    device: str
    counter: str
    value: int


@dataclass(frozen=True)
class Allocation:
    """One reservation line: a lot at a location, held for a reservation."""

    gtin: str
    batch: str
    expiry: date
    location: str
    quantity: int
    posted: int


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
    location: str
    gtin: str
    batch: str
    expiry: date
    status: str
    on_hand: int
    reserved: int

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved


def _positive(field: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidQuantity(field, value)
    return value


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

    # ------------------------------------------------------------------ set-up

    def create_schema(self) -> None:
        metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            for code in (SUPPLIER, CONSUMED, WASTE):
                if self._location_id(conn, code, required=False) is None:
                    conn.execute(insert(locations).values(code=code, kind=code.lower()))

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
    ) -> None:
        """Adds a product, or leaves it as it is if its GTIN is already known."""
        with self.engine.begin() as conn:
            if conn.execute(select(products.c.id).where(products.c.gtin == gtin)).first():
                return
            conn.execute(
                insert(products).values(
                    gtin=gtin,
                    article=article,
                    name=name,
                    substance=substance,
                    atc=atc,
                    strength=strength,
                    form=form,
                    unit=unit,
                    pack_size=pack_size,
                    unit_price=Decimal(str(unit_price)),
                )
            )

    def add_location(
        self, code: str, kind: str, *, parent: str | None = None, product_gtin: str | None = None
    ) -> None:
        """Adds a location (idempotent by code). Canisters and pockets name their product."""
        if kind not in INTERNAL_KINDS + EXTERNAL_KINDS:
            raise LedgerError(f"invalid location kind: {kind!r}")
        with self.engine.begin() as conn:
            if self._location_id(conn, code, required=False) is not None:
                return
            conn.execute(
                insert(locations).values(
                    code=code,
                    kind=kind,
                    parent_id=self._location_id(conn, parent) if parent else None,
                    product_id=self._product_id(conn, product_gtin) if product_gtin else None,
                )
            )

    def set_lot_status(self, gtin: str, batch: str, status: str) -> None:
        if status not in LOT_STATUSES:
            raise LedgerError(f"invalid lot status: {status!r}")
        with self.engine.begin() as conn:
            lot_id = self._lot_id(conn, gtin, batch)
            conn.execute(update(lots).where(lots.c.id == lot_id).values(status=status))

    # ------------------------------------------------------------------ commands

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
    ) -> None:
        """Books goods in from a supplier. An expired lot is refused."""
        _positive("quantity", quantity)
        if not batch or len(batch) > 20:
            raise LedgerError(f"invalid batch: {batch!r}")
        if expiry < self.clock().date():
            raise LedgerError(f"expired lot: batch {batch!r} of {gtin} expired on {expiry}")

        def run(conn: Connection) -> dict[str, Any]:
            product_id = self._product_id(conn, gtin)
            lot_id = self._ensure_lot(conn, product_id, gtin, batch, expiry)
            dest = self._internal_location_id(conn, to_location)
            self._book(
                conn,
                key,
                "receive",
                lot_id,
                self._location_id(conn, SUPPLIER),
                dest,
                quantity,
                actor,
                reason,
            )
            return {"quantity": quantity}

        self._run(key, "receive", run)

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
            remaining = quantity
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
            for lot_id, returnable in net.items():  # latest consumed lot first
                take = min(remaining, returnable)
                if take > 0:
                    self._book(
                        conn, key, "return", lot_id, consumed_id, loc_id, take, actor, reason
                    )
                    remaining -= take
                if remaining == 0:
                    break
            if remaining:
                raise InsufficientStock(
                    gtin, f"consumed from {location}", quantity, quantity - remaining
                )
            return {"quantity": quantity}

        self._run(key, "return", run)

    def set_counter_mark(self, mark: CounterMark) -> None:
        """Records a counter value with no movement (commissioning, or nothing to book)."""
        with self.engine.begin() as conn:
            self._set_mark(conn, mark)

    def counter_mark(self, device: str, counter: str) -> int | None:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(counter_marks.c.value).where(
                    counter_marks.c.device == device, counter_marks.c.counter == counter
                )
            ).scalar()
        return None if value is None else int(value)

    def waste(
        self, key: str, *, gtin: str, quantity: int, location: str, actor: str, reason: str
    ) -> None:
        """Books stock destroyed at a location, with the reason why."""
        self._take_free(key, "waste", gtin, quantity, location, WASTE, actor, reason)

    def reserve(
        self,
        key: str,
        *,
        purpose: str,
        needs: Sequence[Need],
        from_locations: Sequence[str],
        timeout_s: float,
        actor: str,
    ) -> ReservationView:
        """Holds stock for a purpose, first expiry first, all or nothing.

        Only released lots with at least the minimum remaining shelf life are taken.
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
                )
                .returning(reservations.c.id)
            ).scalar_one()
            for need in needs:
                product_id = self._product_id(conn, need.gtin)
                remaining = need.quantity
                for loc_id, lot_id, available in self._fefo_candidates(conn, product_id, loc_ids):
                    if remaining == 0:
                        break
                    took = self._hold(conn, loc_id, lot_id, min(remaining, available))
                    if took:
                        conn.execute(
                            insert(reservation_lines).values(
                                reservation_id=res_id,
                                product_id=product_id,
                                location_id=loc_id,
                                lot_id=lot_id,
                                quantity=took,
                            )
                        )
                        remaining -= took
                if remaining:
                    raise InsufficientStock(
                        need.gtin,
                        ",".join(from_locations),
                        need.quantity,
                        need.quantity - remaining,
                    )
            return {"reservation": key}

        self._run(key, "reserve", run)
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

        Each use is taken from the reservation's lines of its product, first expiry
        first. More than was reserved is refused, unless `allow_overdraw`: then the
        excess comes from free stock at the reservation's locations (a machine that
        packed a rejected pouch again used more than planned, and that is a fact).
        """
        for use in uses:
            _positive(f"quantity of {use.gtin}", use.quantity)

        def run(conn: Connection) -> dict[str, Any]:
            res = self._open_reservation(conn, reservation_key)
            lines = self._lines(conn, res.id)
            for use in uses:
                product_id = self._product_id(conn, use.gtin)
                dest = self._location_id(conn, use.to_location)
                remaining = use.quantity
                for line in lines:
                    if remaining == 0:
                        break
                    if line.product_id != product_id:
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
                        actor,
                        use.reason or res.purpose,
                        reservation_id=res.id,
                    )
                    remaining -= take
                if remaining and allow_overdraw:
                    loc_ids = sorted(
                        {ln.location_id for ln in lines if ln.product_id == product_id}
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
                                actor,
                                use.reason or res.purpose,
                                reservation_id=res.id,
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
            self._close(conn, res.id, "posted")
            return {"reservation": reservation_key}

        self._run(key, "post", run)
        return self.reservation(reservation_key)

    def void(self, key: str, *, reservation_key: str, actor: str, reason: str) -> ReservationView:
        """Releases a whole reservation: nothing of it was used."""

        def run(conn: Connection) -> dict[str, Any]:
            res = self._open_reservation(conn, reservation_key)
            self._release_rest(conn, self._lines(conn, res.id))
            self._close(conn, res.id, "voided")
            return {"reservation": reservation_key, "reason": reason, "actor": actor}

        self._run(key, "void", run)
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
                with self.engine.begin() as conn:
                    res = self._open_reservation(conn, res_key)
                    self._release_rest(conn, self._lines(conn, res.id))
                    self._close(conn, res.id, "expired")
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
            rows = conn.execute(
                select(
                    products.c.gtin,
                    lots.c.batch,
                    lots.c.expiry,
                    locations.c.code,
                    reservation_lines.c.quantity,
                    reservation_lines.c.posted,
                )
                .join(products, products.c.id == reservation_lines.c.product_id)
                .join(lots, lots.c.id == reservation_lines.c.lot_id)
                .join(locations, locations.c.id == reservation_lines.c.location_id)
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
            return [LotStock(*row) for row in conn.execute(query)]

    def available(self, location: str, gtin: str) -> int:
        """Free stock of a product at a location (usable lots only)."""
        with self.engine.connect() as conn:
            loc_id = self._internal_location_id(conn, location)
            product_id = self._product_id(conn, gtin)
            return sum(a for _, _, a in self._fefo_candidates(conn, product_id, [loc_id]))

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
            lot_id = self._lot_id(conn, gtin, batch)
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
            return (
                conn.execute(select(commands.c.key).where(commands.c.key == key)).first()
                is not None
            )

    # ------------------------------------------------------------------ internals

    def _run(
        self, key: str, kind: str, fn: Callable[[Connection], dict[str, Any]]
    ) -> dict[str, Any]:
        if not key or len(key) > 200:
            raise LedgerError(f"invalid idempotency key: {key!r}")
        try:
            with self.engine.begin() as conn:
                stored = self._stored(conn, key, kind)
                if stored is not None:
                    return stored
                result = fn(conn)
                conn.execute(
                    insert(commands).values(
                        key=key, kind=kind, result=json.dumps(result), ts=self.clock()
                    )
                )
                return result
        except IntegrityError as exc:
            # A concurrent twin with the same key won the race: its result stands.
            with self.engine.connect() as conn:
                stored = self._stored(conn, key, kind)
            if stored is not None:
                return stored
            raise LedgerError(f"{kind} {key!r} refused by the database: {exc.orig}") from exc

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
                    self._book(conn, key, kind, lot_id, loc_id, dest, took, actor, reason)
                    remaining -= took
            if remaining:
                raise InsufficientStock(gtin, from_location, quantity, quantity - remaining)
            return {"quantity": quantity}

        self._run(key, kind, run)

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
            query = query.where(lots.c.status == "released", lots.c.expiry >= cutoff)
        return [(int(a), int(b), int(c)) for a, b, c in conn.execute(query)]

    def _conditional(
        self, conn: Connection, loc_id: int, lot_id: int, want: int, **values: Any
    ) -> int:
        """Applies `values` if `want` is free on the row; retries smaller if a rival took some."""
        while want > 0:
            result = conn.execute(
                update(balances)
                .where(
                    and_(
                        balances.c.location_id == loc_id,
                        balances.c.lot_id == lot_id,
                        balances.c.on_hand - balances.c.reserved >= want,
                    )
                )
                .values({k: v(want) for k, v in values.items()})
            )
            if result.rowcount == 1:
                return want
            free = conn.execute(
                select(balances.c.on_hand - balances.c.reserved).where(
                    balances.c.location_id == loc_id, balances.c.lot_id == lot_id
                )
            ).scalar()
            want = min(want - 1, int(free or 0))
        return 0

    def _hold(self, conn: Connection, loc_id: int, lot_id: int, want: int) -> int:
        return self._conditional(
            conn, loc_id, lot_id, want, reserved=lambda q: balances.c.reserved + q
        )

    def _take(self, conn: Connection, loc_id: int, lot_id: int, want: int) -> int:
        return self._conditional(
            conn, loc_id, lot_id, want, on_hand=lambda q: balances.c.on_hand - q
        )

    def _release_held(
        self, conn: Connection, loc_id: int, lot_id: int, quantity: int, *, consume: bool
    ) -> None:
        values: dict[str, Any] = {"reserved": balances.c.reserved - quantity}
        if consume:
            values["on_hand"] = balances.c.on_hand - quantity
        result = conn.execute(
            update(balances)
            .where(
                balances.c.location_id == loc_id,
                balances.c.lot_id == lot_id,
                balances.c.reserved >= quantity,
                balances.c.on_hand >= quantity,
            )
            .values(values)
        )
        if result.rowcount != 1:
            raise LedgerError(
                f"balance of lot {lot_id} at location {loc_id} holds less than {quantity} reserved"
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
        actor: str,
        reason: str,
        *,
        reservation_id: int | None = None,
    ) -> None:
        """Appends a movement and adds it to the destination's balance."""
        conn.execute(
            insert(movements).values(
                ts=self.clock(),
                kind=kind,
                lot_id=lot_id,
                from_location_id=from_id,
                to_location_id=to_id,
                quantity=quantity,
                reservation_id=reservation_id,
                idempotency_key=key,
                actor=actor,
                reason=reason[:200],
            )
        )
        kind_of_dest = conn.execute(
            select(locations.c.kind).where(locations.c.id == to_id)
        ).scalar_one()
        if kind_of_dest in INTERNAL_KINDS:
            dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
            stmt = dialect_insert(balances).values(
                location_id=to_id, lot_id=lot_id, on_hand=quantity, reserved=0
            )
            conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=[balances.c.location_id, balances.c.lot_id],
                    set_={"on_hand": balances.c.on_hand + quantity},
                )
            )

    @staticmethod
    def _set_mark(conn: Connection, mark: CounterMark) -> None:
        dialect_insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        stmt = dialect_insert(counter_marks).values(
            device=mark.device, counter=mark.counter, value=mark.value
        )
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[counter_marks.c.device, counter_marks.c.counter],
                set_={"value": mark.value},
            )
        )

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

    def _close(self, conn: Connection, res_id: int, status: str) -> None:
        result = conn.execute(
            update(reservations)
            .where(reservations.c.id == res_id, reservations.c.status == "open")
            .values(status=status, resolved_at=self.clock())
        )
        if result.rowcount != 1:
            raise ReservationClosed(str(res_id), "resolved")

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
            )
            .join(lots, lots.c.id == reservation_lines.c.lot_id)
            .where(reservation_lines.c.reservation_id == res_id)
            .order_by(lots.c.expiry, reservation_lines.c.id)
        ).all()
        return [_Line(*row) for row in rows]

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

    def _lot_id(self, conn: Connection, gtin: str, batch: str) -> int:
        product_id = self._product_id(conn, gtin)
        row = conn.execute(
            select(lots.c.id).where(lots.c.product_id == product_id, lots.c.batch == batch)
        ).first()
        if row is None:
            raise UnknownEntity("batch", f"{gtin}/{batch}")
        return int(row.id)

    @staticmethod
    def _ensure_lot(conn: Connection, product_id: int, gtin: str, batch: str, expiry: date) -> int:
        row = conn.execute(
            select(lots.c.id, lots.c.expiry).where(
                lots.c.product_id == product_id, lots.c.batch == batch
            )
        ).first()
        if row is not None:
            if row.expiry != expiry:
                raise LedgerError(
                    f"expiry {expiry} of batch {batch!r} of {gtin} differs from the "
                    f"recorded {row.expiry}"
                )
            return int(row.id)
        return int(
            conn.execute(
                insert(lots)
                .values(product_id=product_id, batch=batch, expiry=expiry, status="released")
                .returning(lots.c.id)
            ).scalar_one()
        )


@dataclass
class _Line:
    id: int
    product_id: int
    location_id: int
    lot_id: int
    quantity: int
    posted: int
