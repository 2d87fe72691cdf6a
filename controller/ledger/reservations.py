"""Two-phase reservations: stock held for a purpose, then posted or released.

`reserve` holds stock for a job with a timeout; `post` books what was really used and
releases the rest; `void` releases it all; `expire_overdue` releases what timed out.
The code below guarantees (tests/unit/test_reservation_guarantees.py names each one):

G1  No unit is reserved twice: a line is held by a conditional UPDATE that only adds to
    a balance's `reserved` while `on_hand - reserved` covers it, so the reserved units
    of a (location, lot) never exceed what is on hand, whoever reserves at the same time.
G2  No negative balance: stock leaves a row only through the same kind of conditional
    UPDATE (`on_hand >= quantity`, `reserved >= quantity`); a post never takes more than
    its lines hold, unless the caller allows an overdraw from free stock, which is again
    taken conditionally.
G3  First expiry first out among free lots: lines are allocated from usable lots
    (released, not under a location hold, at least the minimum shelf life left) in
    order of expiry, then lot, then location; blocked or short-dated lots are never
    allocated.
G4  A retry with the same idempotency key books nothing: it returns the first run's
    result; a key used for another kind of command is refused.
G5  Resolve once: a reservation is posted, voided or expired at most once; resolving
    it again under a new key raises ReservationClosed and changes nothing.
G6  What is not posted is released: a post releases every unit its uses did not take,
    a void releases all of them, and posting more than was reserved is refused (nothing
    of that post is booked) unless `allow_overdraw`.
G7  `expire_overdue` releases every open reservation past its timeout (status
    `expired`) and leaves resolved and not yet overdue ones alone.
G8  All or nothing: a reservation that cannot be filled holds nothing, unless
    `partial`; a refused one still records its demand as unfilled order lines when it
    has an `order_source`.
G9  A lot that is blocked (quarantined, recalled) or held after it was reserved takes
    its open reservations along: they move to other usable stock in their locations,
    or shrink, and one left without lines is voided.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from controller.ledger.booking import Booking
from controller.ledger.errors import (
    InsufficientStock,
    LedgerError,
    ReservationClosed,
    UnknownEntity,
)
from controller.ledger.schema import (
    INTERNAL_KINDS,
    locations,
    lots,
    order_lines,
    products,
    reservation_lines,
    reservations,
)
from controller.ledger.views import (
    Allocation,
    LotMove,
    Need,
    ReservationView,
    Use,
    check_waste_reason,
    positive,
)

# The statements of reserve, post, void and expiry, built once with bind parameters:
# building and hashing a new statement object per call cost more than running it.
_INSERT_RESERVATION = insert(reservations).returning(reservations.c.id)
_INSERT_LINE = insert(reservation_lines)
_INSERT_ORDER_LINE = insert(order_lines)
_POST_LINE = (
    update(reservation_lines)
    .where(reservation_lines.c.id == bindparam("line_id"))
    .values(posted=reservation_lines.c.posted + bindparam("take"))
)
_RESERVATION_BY_KEY = select(reservations).where(reservations.c.key == bindparam("key"))
# PostgreSQL: the reservation's row is locked while it is resolved.
_RESERVATION_BY_KEY_LOCKED = _RESERVATION_BY_KEY.with_for_update()
_CLOSE_RESERVATION = (
    update(reservations)
    .where(reservations.c.id == bindparam("reservation_id"), reservations.c.status == "open")
    .values(status=bindparam("new_status"), resolved_at=bindparam("closed_at"))
)
_LOTS_OF_BATCH = select(lots.c.id).where(lots.c.batch == bindparam("batch"))
_SUBSTITUTION_GROUP = select(products.c.substitution_group).where(
    products.c.id == bindparam("product_id")
)
_SUBSTITUTES = (
    select(products.c.id)
    .where(
        products.c.substitution_group == bindparam("group"),
        products.c.id != bindparam("product_id"),
        products.c.active == 1,
    )
    .order_by(products.c.id)
)
_LINES_OF = (
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
    .where(reservation_lines.c.reservation_id == bindparam("reservation_id"))
    .order_by(lots.c.expiry, reservation_lines.c.id)
)


@dataclass
class _Line:
    id: int
    product_id: int
    location_id: int
    lot_id: int
    quantity: int
    posted: int
    substituted_for: int | None


class Reservations(Booking):
    """Reservations, their lines, and how they give way when a lot is blocked."""

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
            positive(f"quantity of {need.gtin}", need.quantity)
        if timeout_s <= 0:
            raise LedgerError(f"invalid timeout_s: {timeout_s!r}")

        def run(conn: Connection) -> dict[str, Any]:
            now = self.clock()
            loc_ids = [self._internal_location_id(conn, code) for code in from_locations]
            res_id = conn.execute(
                _INSERT_RESERVATION,
                {
                    "key": key,
                    "purpose": purpose,
                    "status": "open",
                    "created_at": now,
                    "expires_at": now + timedelta(seconds=timeout_s),
                    "actor": actor,
                    "locations": json.dumps(list(from_locations)),
                },
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
            _result, view = self._run_then(
                key, "reserve", run, actor, purpose, lambda conn: _view(conn, key)
            )
        except InsufficientStock:
            if order_source:
                self._record_refused(key, needs, order_source)
            raise
        assert view is not None
        return view

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
            positive(f"quantity of {use.gtin}", use.quantity)
            if use.kind == "waste":
                check_waste_reason(use.reason_code or "other")

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
                    conn.execute(_POST_LINE, {"line_id": line.id, "take": take})
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

        _result, view = self._run_then(
            key, "post", run, actor, f"post {reservation_key}", lambda c: _view(c, reservation_key)
        )
        assert view is not None
        return view

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
            positive(f"quantity of {move.gtin} batch {move.batch}", move.quantity)
            if move.kind == "waste":
                check_waste_reason(move.reason_code or "other")

        def run(conn: Connection) -> dict[str, Any]:
            for move in moves:
                lot_id = self._lot_id_in(conn, move.gtin, move.batch)
                src = self._location_id(conn, move.from_location)
                dest = self._location_id(conn, move.to_location)
                src_kind = self._location_kind(conn, src)
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
        return {int(i) for i in conn.execute(_LOTS_OF_BATCH, {"batch": batch}).scalars()}

    def void(self, key: str, *, reservation_key: str, actor: str, reason: str) -> ReservationView:
        """Releases a whole reservation: nothing of it was used."""

        def run(conn: Connection) -> dict[str, Any]:
            res = self._open_reservation(conn, reservation_key)
            self._release_rest(conn, self._lines(conn, res.id))
            self._close(conn, res, "voided")
            return {"reservation": reservation_key}

        _result, view = self._run_then(
            key, "void", run, actor, reason, lambda conn: _view(conn, reservation_key)
        )
        assert view is not None
        return view

    def expire_overdue(self) -> list[str]:
        """Releases every open reservation past its timeout; returns their keys."""
        now = self.clock()
        with self._reading() as conn:
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
        with self._reading() as conn:
            return _view(conn, key)

    def open_reservation_count(self) -> int:
        with self._reading() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(reservations)
                    .where(reservations.c.status == "open")
                ).scalar_one()
            )

    def open_reservations(self) -> list[tuple[str, str]]:
        """(key, purpose) of every open reservation, oldest first: what is still held."""
        with self._reading() as conn:
            rows = conn.execute(
                select(reservations.c.key, reservations.c.purpose)
                .where(reservations.c.status == "open")
                .order_by(reservations.c.id)
            ).all()
        return [(r.key, r.purpose) for r in rows]

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
                    _INSERT_LINE,
                    {
                        "reservation_id": res_id,
                        "product_id": product_id,
                        "location_id": loc_id,
                        "lot_id": lot_id,
                        "quantity": took,
                        "substituted_for": substituted_for,
                    },
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

    def _substitutes(self, conn: Connection, product_id: int) -> list[int]:
        group = conn.execute(_SUBSTITUTION_GROUP, {"product_id": product_id}).scalar()
        if not group:
            return []
        return [
            int(p)
            for p in conn.execute(
                _SUBSTITUTES, {"group": group, "product_id": product_id}
            ).scalars()
        ]

    def _release_rest(self, conn: Connection, lines: Sequence[_Line]) -> None:
        for line in lines:
            rest = line.quantity - line.posted
            if rest > 0:
                self._release_held(conn, line.location_id, line.lot_id, rest, consume=False)

    def _order_line(
        self, conn: Connection, key: str, product_id: int, requested: int, filled: int, source: str
    ) -> None:
        conn.execute(
            _INSERT_ORDER_LINE,
            {
                "key": key,
                "ts": self.clock(),
                "product_id": product_id,
                "requested": requested,
                "filled": filled,
                "source": source,
            },
        )
        self._note(
            "order-line", key, None, {"requested": requested, "filled": filled, "source": source}
        )

    def _open_reservation(self, conn: Connection, key: str) -> Any:
        postgres = conn.dialect.name == "postgresql"
        query = _RESERVATION_BY_KEY_LOCKED if postgres else _RESERVATION_BY_KEY
        row = conn.execute(query, {"key": key}).first()
        if row is None:
            raise UnknownEntity("reservation", key)
        if row.status != "open":
            raise ReservationClosed(key, row.status)
        return row

    def _close(self, conn: Connection, res: Any, status: str) -> None:
        result = conn.execute(
            _CLOSE_RESERVATION,
            {"reservation_id": res.id, "new_status": status, "closed_at": self.clock()},
        )
        if result.rowcount != 1:
            raise ReservationClosed(res.key, "resolved")
        self._note("reservation", res.key, {"status": "open"}, {"status": status})

    @staticmethod
    def _lines(conn: Connection, res_id: int) -> list[_Line]:
        rows = conn.execute(_LINES_OF, {"reservation_id": res_id}).all()
        return [_Line(*row) for row in rows]


_ORDERED = products.alias("ordered")
_RESERVATION_LINES = (
    select(
        products.c.gtin,
        lots.c.batch,
        lots.c.expiry,
        locations.c.code,
        reservation_lines.c.quantity,
        reservation_lines.c.posted,
        _ORDERED.c.gtin,
    )
    .join(products, products.c.id == reservation_lines.c.product_id)
    .join(lots, lots.c.id == reservation_lines.c.lot_id)
    .join(locations, locations.c.id == reservation_lines.c.location_id)
    .outerjoin(_ORDERED, _ORDERED.c.id == reservation_lines.c.substituted_for)
    .where(reservation_lines.c.reservation_id == bindparam("reservation_id"))
    .order_by(reservation_lines.c.id)
)


def _view(conn: Connection, key: str) -> ReservationView:
    """A reservation as its caller sees it, read on the connection given (inside the
    command's own transaction, so nothing is read back after the commit)."""
    row = conn.execute(_RESERVATION_BY_KEY, {"key": key}).first()
    if row is None:
        raise UnknownEntity("reservation", key)
    rows = conn.execute(_RESERVATION_LINES, {"reservation_id": row.id}).all()
    return ReservationView(
        key=row.key,
        purpose=row.purpose,
        status=row.status,
        expires_at=row.expires_at,
        lines=tuple(Allocation(*r) for r in rows),
    )
